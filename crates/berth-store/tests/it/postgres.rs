//! PostgreSQL test databases, and what is specific to the PostgreSQL store.
//!
//! The tests need a server: `BERTH_TEST_POSTGRES_URL` names a database on it that a role able to
//! create databases can connect to (e.g. `postgres://berth:berth@127.0.0.1:5432/postgres`;
//! `scripts/setup` makes one and `scripts/test` sets it). Each test gets a database of its own,
//! `berth_test_<random>`, dropped afterwards. Unset, the tests say so and pass without running;
//! set to a server that cannot be reached, they fail.

use std::hash::{BuildHasher, Hasher};

use berth_store::{PostgresStore, Store};
use sqlx::Connection;

/// The variable that names the test server.
pub const URL_VAR: &str = "BERTH_TEST_POSTGRES_URL";

/// Connections per test store: small, so that many tests in parallel stay within the server's
/// `max_connections`.
const POOL_SIZE: u32 = 4;

/// A database created for one test, dropped (with whatever is still connected) on drop.
pub struct TestDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl TestDatabase {
    /// A fresh, empty database, or `None` (after a skip line) when no server is configured.
    pub async fn create(test: &str) -> Option<Self> {
        #[allow(clippy::disallowed_methods)] // the test server's address, not configuration
        let Ok(admin_url) = std::env::var(URL_VAR) else {
            eprintln!("SKIP {test}: {URL_VAR} is not set, so no PostgreSQL server to test on");
            return None;
        };
        let name = format!(
            "berth_test_{:016x}",
            std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish()
        );
        let mut admin = sqlx::PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("{URL_VAR} is set but the server is unreachable: {e}"));
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("create database {name}: {e}"));
        let _ = admin.close().await;
        let url = with_database(&admin_url, &name);
        Some(Self {
            admin_url,
            name,
            url,
        })
    }

    /// A store on this database.
    pub async fn store(&self) -> PostgresStore {
        PostgresStore::connect_with(&self.url, POOL_SIZE)
            .await
            .unwrap_or_else(|e| panic!("open the PostgreSQL store on {}: {e}", self.name))
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime, which cannot be blocked on: a thread of its own
        // with a runtime of its own does the dropping.
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                let mut admin = sqlx::PgConnection::connect(&admin_url).await?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut admin)
                    .await?;
                admin.close().await
            })
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("could not drop test database {}: {e}", self.name);
        }
    }
}

/// `url` with its database (the path) replaced by `name`, its query kept.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    let mut out = format!("{}/{name}", &base[..host_end]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// A test's store and its database, dropped in that order.
pub async fn fixture(test: &str) -> Option<(PostgresStore, TestDatabase)> {
    let db = TestDatabase::create(test).await?;
    let store = db.store().await;
    Some((store, db))
}

#[test]
fn database_urls_are_rewritten() {
    assert_eq!(
        with_database("postgres://u:p@h:5432/postgres", "x"),
        "postgres://u:p@h:5432/x"
    );
    assert_eq!(with_database("postgres://h", "x"), "postgres://h/x");
    assert_eq!(
        with_database("postgres://h/db?sslmode=disable", "x"),
        "postgres://h/x?sslmode=disable"
    );
}

/// Opening an existing database again applies nothing and keeps its rows.
#[tokio::test]
async fn reopening_keeps_rows_and_migrations() {
    use berth_store::conformance::{sample, T0, WS_A};
    let Some(db) = TestDatabase::create("reopening_keeps_rows_and_migrations").await else {
        return;
    };
    let store = db.store().await;
    store
        .create_deployment(sample(WS_A, "kept", T0))
        .await
        .expect("create");
    store.close().await;
    let again = db.store().await;
    assert!(again
        .get_deployment(WS_A, "kept")
        .await
        .expect("get")
        .is_some());
    let applied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations")
        .fetch_one(again.pool())
        .await
        .expect("migrations table");
    assert_eq!(applied, 1);
    again.close().await;
}

/// A row the schema forbids cannot be written: the CHECKs are there.
#[tokio::test]
async fn the_schema_checks_its_rows() {
    let Some((store, _db)) = fixture("the_schema_checks_its_rows").await else {
        return;
    };
    store
        .create_deployment(berth_store::conformance::sample(
            "ws",
            "m",
            berth_store::conformance::T0,
        ))
        .await
        .expect("create");
    for edit in [
        "status = 'running'",
        "capacity = -1",
        "autoscale_target_inflight = 0",
    ] {
        let refused = sqlx::query(&format!("UPDATE deployments SET {edit}"))
            .execute(store.pool())
            .await;
        assert!(refused.is_err(), "{edit} was accepted");
    }
}

/// A rate limit beyond a BIGINT is refused before it is written, never wrapped.
#[tokio::test]
async fn a_limit_a_bigint_cannot_hold_is_refused_not_wrapped() {
    use berth_store::conformance::{sample, T0, WS_A};
    use berth_store::{DesiredChange, StoreError};
    let Some((store, _db)) = fixture("a_limit_a_bigint_cannot_hold_is_refused_not_wrapped").await
    else {
        return;
    };
    let mut new = sample(WS_A, "m", T0);
    new.rpm_limit = Some(u64::MAX);
    let err = store.create_deployment(new).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Database(sqlx::Error::Encode(_))),
        "{err:?}"
    );
    assert!(store.get_deployment(WS_A, "m").await.unwrap().is_none());
    store
        .create_deployment(sample(WS_A, "m", T0))
        .await
        .unwrap();
    let change = DesiredChange::Limits {
        rpm_limit: None,
        tpm_limit: Some(u64::MAX),
        autoscaling: None,
    };
    let err = store
        .change_deployment(WS_A, "m", change, "k", T0)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Database(sqlx::Error::Encode(_))),
        "{err:?}"
    );
    assert_eq!(
        store
            .get_deployment(WS_A, "m")
            .await
            .unwrap()
            .unwrap()
            .generation,
        1
    );
}

/// The SQLite store's latency benchmark (`sqlite::latency_of_list_and_get_with_10k_deployments`)
/// on PostgreSQL, the same rows and the same targets, without the in-memory mirror: every read
/// is a statement on the server. Run on demand, in release:
/// `BERTH_TEST_POSTGRES_URL=... cargo test -p berth-store --release -- --ignored --nocapture latency`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run in release on demand"]
async fn latency_of_list_and_get_with_10k_deployments_on_postgres() {
    use std::time::Duration;

    use berth_core::Timestamp;
    use berth_store::conformance::{sample, T0, WS_A};

    use crate::sqlite::time;

    let Some((store, _db)) =
        fixture("latency_of_list_and_get_with_10k_deployments_on_postgres").await
    else {
        return;
    };
    for i in 0..10_000 {
        let mut new = sample(WS_A, &format!("m{i:05}"), Timestamp(T0.0 + i as i64));
        new.name = Some(format!("deployment number {i}"));
        new.rpm_limit = Some(600);
        store.create_deployment(new).await.unwrap();
        if i % 10 == 0 {
            store
                .create_deployment(sample("ws-other", &format!("o{i:05}"), T0))
                .await
                .unwrap();
        }
    }
    sqlx::query("ANALYZE deployments")
        .execute(store.pool())
        .await
        .unwrap();

    let (p50, p99) = time(200, |_| async {
        store.list_deployments(WS_A, 0, 200).await.unwrap()
    })
    .await;
    println!("list first page of 200: p50 {p50:?} p99 {p99:?}");
    assert!(p99 < Duration::from_millis(20), "first page p99 {p99:?}");

    let (p50, p99) = time(200, |i| {
        let store = &store;
        async move {
            store
                .list_deployments(WS_A, (i as u64 * 200) % 10_000, 200)
                .await
                .unwrap()
        }
    })
    .await;
    // Reported, not asserted: deep OFFSET pages are over SQLite's 20 ms here (21-26 ms p99,
    // docs/BENCHMARKS.md); keyset paging is the fix once instances read the database directly.
    println!("list any page of 200: p50 {p50:?} p99 {p99:?}");

    let (p50, p99) = time(1_000, |i| {
        let store = &store;
        async move {
            let name = format!("m{:05}", (i * 7) % 10_000);
            store.get_deployment(WS_A, &name).await.unwrap().unwrap()
        }
    })
    .await;
    println!("get: p50 {p50:?} p99 {p99:?}");
    assert!(p99 < Duration::from_millis(5), "get p99 {p99:?}");
}
