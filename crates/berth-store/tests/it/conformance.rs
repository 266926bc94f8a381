//! The shared conformance suite, once per SQLite flavour.

mod in_memory {
    berth_store::store_conformance!(async {
        berth_store::SqliteStore::open_in_memory()
            .await
            .expect("open in-memory store")
    });
}

mod file_backed {
    berth_store::store_conformance!(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = berth_store::SqliteStore::open(&dir.path().join("berth.db"))
            .await
            .expect("open file store");
        // The directory outlives the store: the pair drops in field order.
        (store, dir)
    });
}

/// As `berth serve` runs it: the mirror over timed writes over SQLite.
mod cached_metered_file_backed {
    berth_store::store_conformance!(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = berth_store::SqliteStore::open(&dir.path().join("berth.db"))
            .await
            .expect("open file store");
        let metered = berth_store::Metered::new(store, berth_store::StoreMetrics::default());
        let cached = berth_store::CachedStore::new(metered)
            .await
            .expect("load the mirror");
        (cached, dir)
    });
}

/// The mirror starts from what the store already holds, in creation order.
#[tokio::test]
async fn cached_store_loads_existing_rows() {
    use berth_store::conformance::{sample, T0, WS_A};
    use berth_store::Store;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("berth.db");
    let store = berth_store::SqliteStore::open(&path).await.expect("open");
    for name in ["a", "b", "c"] {
        store
            .create_deployment(sample(WS_A, name, T0))
            .await
            .expect("create");
    }
    let cached = berth_store::CachedStore::new(store).await.expect("load");
    let (page, total) = cached.list_deployments(WS_A, 0, 10).await.expect("list");
    let names: Vec<&str> = page.iter().map(|d| d.deployed_model.as_str()).collect();
    assert_eq!((names, total), (vec!["c", "b", "a"], 3));
    assert!(cached
        .get_deployment(WS_A, "b")
        .await
        .expect("get")
        .is_some());
}

/// Writes are timed by operation; reads are not.
#[tokio::test]
async fn metered_store_times_writes() {
    use berth_store::conformance::{sample, T0, WS_A};
    use berth_store::Store;
    let metrics = berth_store::StoreMetrics::default();
    let store = berth_store::Metered::new(
        berth_store::SqliteStore::open_in_memory()
            .await
            .expect("open"),
        metrics.clone(),
    );
    for name in ["a", "b"] {
        store
            .create_deployment(sample(WS_A, name, T0))
            .await
            .expect("create");
    }
    store.get_deployment(WS_A, "a").await.expect("get");
    let mut registry = prometheus_client::registry::Registry::with_prefix("berth");
    metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    assert!(
        text.contains("berth_store_write_duration_seconds_count{op=\"create_deployment\"} 2"),
        "{text}"
    );
    assert!(!text.contains("get_deployment"), "{text}");
}

/// On PostgreSQL, a fresh database per test (see `postgres.rs`; skipped without a server).
mod postgres {
    berth_store::store_conformance!(optional crate::postgres::fixture(module_path!()));
}

/// As `berth serve --database-url postgres://...` runs it: the mirror over timed writes over
/// PostgreSQL.
mod cached_metered_postgres {
    berth_store::store_conformance!(optional async {
        let (store, db) = crate::postgres::fixture(module_path!()).await?;
        let metered = berth_store::Metered::new(store, berth_store::StoreMetrics::default());
        let cached = berth_store::CachedStore::new(metered)
            .await
            .expect("load the mirror");
        Some((cached, db))
    });
}
