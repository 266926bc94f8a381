//! Cases for concurrent writers: the store, not its callers, keeps names unique.
//!
//! The futures run together on one task; the backend's connections make the statements race
//! in the database.

use std::collections::BTreeSet;

use futures::future::join_all;

use super::{assert_conflict, sample, T0, WS_A};
use crate::Store;

/// 50 concurrent creates of distinct names all succeed and are all listed.
pub async fn concurrent_creates_of_distinct_names_all_succeed<S: Store>(store: &S) {
    let creates = (0..50).map(|i| store.create_deployment(sample(WS_A, &format!("m{i:02}"), T0)));
    for (i, result) in join_all(creates).await.into_iter().enumerate() {
        let created = result.unwrap_or_else(|e| panic!("create m{i:02}: {e}"));
        assert_eq!(created.deployed_model, format!("m{i:02}"));
    }
    let (page, total) = store.list_deployments(WS_A, 0, 200).await.unwrap();
    assert_eq!(total, 50);
    let listed: BTreeSet<_> = page.iter().map(|d| d.deployed_model.clone()).collect();
    assert_eq!(listed, (0..50).map(|i| format!("m{i:02}")).collect());
}

/// 20 concurrent creates of one name: exactly one wins, 19 are `Conflict`s, and the stored
/// row is the winner's.
pub async fn concurrent_creates_of_one_name_conflict_all_but_one<S: Store>(store: &S) {
    let creates = (0..20).map(|i| {
        let mut new = sample(WS_A, "same", T0);
        new.creator = format!("key-{i}");
        store.create_deployment(new)
    });
    let mut winners = Vec::new();
    for result in join_all(creates).await {
        match result {
            Ok(created) => winners.push(created),
            conflict => assert_conflict(conflict, "same"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one create succeeds");
    let stored = store.get_deployment(WS_A, "same").await.unwrap();
    assert_eq!(stored.as_ref(), winners.first());
    assert_eq!(store.list_deployments(WS_A, 0, 10).await.unwrap().1, 1);
}
