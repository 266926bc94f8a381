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
