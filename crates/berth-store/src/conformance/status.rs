//! Cases for `record_status`: what the reconciler may write, and when `gmt_modified` moves.

use berth_core::{Status, Timestamp};

use super::{create, get, T0, WS_A, WS_B};
use crate::{DesiredChange, ObservedStatus, Store};

fn observed(generation: i64, status: Status, ready_capacity: u32) -> ObservedStatus {
    ObservedStatus {
        generation,
        status,
        ready_capacity,
        fail_reason: None,
        status_message: None,
    }
}

/// For the current generation everything observed is written; the generation is the API's and
/// does not move.
pub async fn record_status_writes_the_current_generation<S: Store>(store: &S) {
    let before = create(store, WS_A, "m", T0).await;
    let mut seen = observed(1, Status::Running, 2);
    seen.status_message = Some("all replicas ready".into());
    assert!(store.record_status(WS_A, "m", &seen).await.unwrap());
    let after = get(store, WS_A, "m").await;
    assert_eq!(after.status, Status::Running);
    assert_eq!(after.ready_capacity, 2);
    assert_eq!(after.status_message.as_deref(), Some("all replicas ready"));
    assert_eq!(after.generation, 1);
    assert_eq!(
        (after.modifier, after.capacity),
        (before.modifier, before.capacity)
    );

    let failed = ObservedStatus {
        fail_reason: Some("engine exited".into()),
        ..observed(1, Status::Failed, 0)
    };
    assert!(store.record_status(WS_A, "m", &failed).await.unwrap());
    let after = get(store, WS_A, "m").await;
    assert_eq!((after.status, after.ready_capacity), (Status::Failed, 0));
    assert_eq!(after.fail_reason.as_deref(), Some("engine exited"));
    assert_eq!(
        after.status_message, None,
        "an absent message is written as absent"
    );
}

/// A pass planned against an older (or unknown newer) generation cannot set the status, but
/// what it observed is still written.
pub async fn record_status_keeps_status_for_a_stale_generation<S: Store>(store: &S) {
    create(store, WS_A, "m", T0).await;
    store
        .change_deployment(WS_A, "m", DesiredChange::Scale { capacity: 4 }, "key-2", T0)
        .await
        .unwrap()
        .expect("exists");
    for generation in [1, 3] {
        let stale = ObservedStatus {
            fail_reason: Some(format!("from generation {generation}")),
            status_message: Some("waiting".into()),
            ..observed(generation, Status::Running, 2)
        };
        assert!(store.record_status(WS_A, "m", &stale).await.unwrap());
        let after = get(store, WS_A, "m").await;
        assert_eq!(after.status, Status::Pending, "generation {generation}");
        assert_eq!(after.ready_capacity, 2);
        assert_eq!(after.fail_reason, stale.fail_reason);
        assert_eq!(after.status_message.as_deref(), Some("waiting"));
        assert_eq!(after.generation, 2);
    }
    assert!(store
        .record_status(WS_A, "m", &observed(2, Status::Running, 4))
        .await
        .unwrap());
    let after = get(store, WS_A, "m").await;
    assert_eq!(
        (after.status, after.ready_capacity, after.fail_reason),
        (Status::Running, 4, None)
    );
}

/// Once `DELETING`, no observation brings a deployment back, even for its current generation.
pub async fn record_status_never_overrides_deleting<S: Store>(store: &S) {
    create(store, WS_A, "m", T0).await;
    let deleting = store
        .change_deployment(WS_A, "m", DesiredChange::Delete, "key-d", T0)
        .await
        .unwrap()
        .expect("exists");
    for status in [
        Status::Running,
        Status::Updating,
        Status::Failed,
        Status::Pending,
    ] {
        let seen = observed(deleting.generation, status, 1);
        assert!(store.record_status(WS_A, "m", &seen).await.unwrap());
        let after = get(store, WS_A, "m").await;
        assert_eq!(after.status, Status::Deleting, "{status}");
        assert_eq!(after.ready_capacity, 1, "{status}");
    }
}

/// `gmt_modified` moves only when status, `ready_capacity` or `fail_reason` actually change;
/// a new `status_message` alone, a repeat, or a refused status leave it alone.
pub async fn record_status_moves_gmt_modified_only_on_visible_change<S: Store>(store: &S) {
    create(store, WS_A, "m", T0).await;
    let record = |seen: ObservedStatus| async move {
        assert!(store.record_status(WS_A, "m", &seen).await.unwrap());
        get(store, WS_A, "m").await
    };
    // Sets gmt_modified to a known old value (and bumps the generation).
    let reset = |t: i64| async move {
        let limits = DesiredChange::Limits {
            rpm_limit: None,
            tpm_limit: None,
            autoscaling: None,
        };
        store
            .change_deployment(WS_A, "m", limits, "key-r", Timestamp(t))
            .await
            .unwrap()
            .expect("exists")
    };

    let after = record(observed(1, Status::Pending, 0)).await;
    assert_eq!(after.gmt_modified, T0, "nothing changed");
    let after = record(ObservedStatus {
        status_message: Some("waiting for capacity units".into()),
        ..observed(1, Status::Pending, 0)
    })
    .await;
    assert_eq!(
        after.gmt_modified, T0,
        "status_message alone is not a visible change"
    );
    assert_eq!(
        after.status_message.as_deref(),
        Some("waiting for capacity units")
    );

    let visible_changes = [
        ("ready_capacity", observed(1, Status::Pending, 1)),
        (
            "fail_reason",
            ObservedStatus {
                fail_reason: Some("crashed".into()),
                ..observed(1, Status::Pending, 1)
            },
        ),
        (
            "status",
            ObservedStatus {
                fail_reason: Some("crashed".into()),
                ..observed(1, Status::Running, 1)
            },
        ),
    ];
    let mut generation = 1;
    for (i, (what, mut seen)) in visible_changes.into_iter().enumerate() {
        let old = T0.0 + 100 + i as i64;
        generation = reset(old).await.generation;
        seen.generation = generation;
        let unchanged = get(store, WS_A, "m").await;
        let started = Timestamp::now();
        let after = record(seen.clone()).await;
        assert_ne!(after, unchanged, "{what} must change");
        assert!(
            after.gmt_modified >= started,
            "{what}: gmt_modified {:?} not moved",
            after.gmt_modified
        );

        let repeat = reset(old).await;
        seen.generation = repeat.generation;
        generation = repeat.generation;
        assert_eq!(
            record(seen).await.gmt_modified,
            Timestamp(old),
            "{what} repeated"
        );
    }

    // A refused status (stale generation) with the same numbers is no visible change.
    let current = get(store, WS_A, "m").await;
    let stale = ObservedStatus {
        fail_reason: current.fail_reason.clone(),
        ..observed(generation - 1, Status::Failed, current.ready_capacity)
    };
    let after = record(stale).await;
    assert_eq!(after.status, current.status);
    assert_eq!(after.gmt_modified, current.gmt_modified);
}

/// Nothing to write to: false, for a missing name or another workspace's deployment.
pub async fn record_status_of_a_missing_deployment_is_false<S: Store>(store: &S) {
    create(store, WS_A, "m", T0).await;
    let seen = observed(1, Status::Running, 2);
    assert!(!store.record_status(WS_A, "missing", &seen).await.unwrap());
    assert!(!store.record_status(WS_B, "m", &seen).await.unwrap());
    assert_eq!(get(store, WS_A, "m").await.status, Status::Pending);
}
