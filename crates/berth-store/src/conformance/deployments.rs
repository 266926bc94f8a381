//! Cases for creating, reading, listing, changing and removing deployments.

use berth_core::{Capacity, Status, Timestamp};

use super::{assert_conflict, create, expected_created, get, names, sample, T0, WS_A, WS_B};
use crate::{DesiredChange, ObservedStatus, Store};

/// A new deployment is `PENDING`, generation 1, modified by its creator at its creation time,
/// and every optional field round-trips, set or not.
pub async fn create_starts_pending_with_every_field<S: Store>(store: &S) {
    let mut full = sample(WS_A, "m-full", T0);
    full.name = Some("My model".into());
    full.plan = Some("mu".into());
    full.model_unit_spec = Some("mu.small".into());
    full.capacity = Capacity::new(4, 2).unwrap();
    full.base_capacity = 2;
    full.max_context_length = Some(2048);
    full.enable_thinking = Some(false);
    full.rpm_limit = Some(60);
    full.tpm_limit = Some(i64::MAX as u64);
    let created = store.create_deployment(full.clone()).await.unwrap();
    assert_eq!(created, expected_created(&full));
    assert_eq!(get(store, WS_A, "m-full").await, created);

    let mut thinking = sample(WS_A, "m-thinking", T0);
    thinking.enable_thinking = Some(true);
    let created = store.create_deployment(thinking.clone()).await.unwrap();
    assert_eq!(
        get(store, WS_A, "m-thinking").await,
        expected_created(&thinking)
    );
    assert_eq!(created.enable_thinking, Some(true));

    let bare = sample(WS_A, "m-bare", T0);
    let created = store.create_deployment(bare.clone()).await.unwrap();
    assert_eq!(created, expected_created(&bare));
    assert_eq!(get(store, WS_A, "m-bare").await, created);
}

/// A second deployment of a name in the same workspace is a `Conflict` and changes nothing.
pub async fn create_conflicts_within_a_workspace<S: Store>(store: &S) {
    let first = create(store, WS_A, "m", T0).await;
    let mut again = sample(WS_A, "m", Timestamp(T0.0 + 5));
    again.model_name = "other-model".into();
    again.creator = "key-other".into();
    assert_conflict(store.create_deployment(again).await, "m");
    assert_eq!(get(store, WS_A, "m").await, first);
    assert_eq!(store.list_deployments(WS_A, 0, 10).await.unwrap().1, 1);
}

/// Names are unique per workspace only.
pub async fn same_name_in_two_workspaces<S: Store>(store: &S) {
    let a = create(store, WS_A, "m", T0).await;
    let mut in_b = sample(WS_B, "m", T0);
    in_b.model_name = "model-b".into();
    let b = store.create_deployment(in_b).await.unwrap();
    assert_eq!(get(store, WS_A, "m").await, a);
    assert_eq!(get(store, WS_B, "m").await, b);
    assert_eq!(b.model_name, "model-b");
    assert_eq!(b.workspace_id, WS_B);
}

/// Another workspace's deployment reads exactly like a missing one.
pub async fn get_is_scoped_to_the_workspace<S: Store>(store: &S) {
    create(store, WS_A, "m", T0).await;
    assert_eq!(store.get_deployment(WS_B, "m").await.unwrap(), None);
    assert_eq!(store.get_deployment(WS_A, "missing").await.unwrap(), None);
    assert_eq!(
        store.get_deployment(WS_A, "M").await.unwrap(),
        None,
        "names are case-sensitive"
    );
}

/// Newest first by creation order (not by timestamp, which may tie or go backwards), with the
/// workspace's own total.
pub async fn list_is_newest_first_with_the_workspace_total<S: Store>(store: &S) {
    for (i, name) in ["a0", "a1", "a2", "a3"].into_iter().enumerate() {
        create(store, WS_A, name, T0).await;
        create(store, WS_B, &format!("b{i}"), T0).await;
    }
    // Created last with an older clock reading: still the newest.
    create(store, WS_A, "a4", Timestamp(T0.0 - 60_000)).await;

    let (page, total) = store.list_deployments(WS_A, 0, 100).await.unwrap();
    assert_eq!(names(&page), ["a4", "a3", "a2", "a1", "a0"]);
    assert_eq!(total, 5);
    assert!(page.iter().all(|d| d.workspace_id == WS_A));

    let (page, total) = store.list_deployments(WS_B, 0, 100).await.unwrap();
    assert_eq!(names(&page), ["b3", "b2", "b1", "b0"]);
    assert_eq!(total, 4);

    let (page, total) = store.list_deployments("ws-empty", 0, 100).await.unwrap();
    assert!(page.is_empty());
    assert_eq!(total, 0);
}

/// Offset and limit page through the list; the total is the workspace's, whatever the page.
pub async fn list_pages<S: Store>(store: &S) {
    for i in 0..7 {
        create(store, WS_A, &format!("m{i}"), T0).await;
    }
    let page =
        |offset, limit| async move { store.list_deployments(WS_A, offset, limit).await.unwrap() };
    let cases: &[(u64, u64, &[&str])] = &[
        (0, 3, &["m6", "m5", "m4"]),
        (3, 3, &["m3", "m2", "m1"]),
        (6, 3, &["m0"]),
        (7, 3, &[]),
        (100, 3, &[]),
        (2, 1, &["m4"]),
        (0, 0, &[]),
        (5, u64::MAX, &["m1", "m0"]),
        (u64::MAX, 10, &[]),
    ];
    for &(offset, limit, want) in cases {
        let (got, total) = page(offset, limit).await;
        assert_eq!(names(&got), want, "offset {offset} limit {limit}");
        assert_eq!(total, 7, "offset {offset} limit {limit}");
    }
}

/// Removing and re-creating a name makes it the newest; positions are never reused.
pub async fn list_order_is_creation_order_after_removals<S: Store>(store: &S) {
    for name in ["a", "b", "c"] {
        create(store, WS_A, name, T0).await;
    }
    assert!(delete_and_remove(store, WS_A, "c").await);
    assert!(delete_and_remove(store, WS_A, "b").await);
    create(store, WS_A, "b", T0).await;
    create(store, WS_A, "d", T0).await;
    let (page, total) = store.list_deployments(WS_A, 0, 10).await.unwrap();
    assert_eq!(names(&page), ["d", "b", "a"]);
    assert_eq!(total, 3);
}

/// The reconciler's view holds every workspace's deployments.
pub async fn all_deployments_spans_workspaces<S: Store>(store: &S) {
    assert!(store.all_deployments().await.unwrap().is_empty());
    let mut want = vec![
        create(store, WS_A, "m", T0).await,
        create(store, WS_B, "m", T0).await,
        create(store, WS_B, "n", T0).await,
    ];
    let mut all = store.all_deployments().await.unwrap();
    all.sort_by(|x, y| x.key().cmp(&y.key()));
    want.sort_by(|x, y| x.key().cmp(&y.key()));
    assert_eq!(all, want);
}

/// Scaling a deployment that never came up keeps it `PENDING`; the change bumps the
/// generation and records who and when, nothing else.
pub async fn scale_of_a_pending_deployment_stays_pending<S: Store>(store: &S) {
    let before = create(store, WS_A, "m", T0).await;
    let t1 = Timestamp(T0.0 + 1_000);
    let scaled = store
        .change_deployment(WS_A, "m", DesiredChange::Scale { capacity: 5 }, "key-2", t1)
        .await
        .unwrap()
        .expect("exists");
    let want = berth_core::Deployment {
        capacity: 5,
        generation: 2,
        modifier: "key-2".into(),
        gmt_modified: t1,
        ..before
    };
    assert_eq!(scaled, want);
    assert_eq!(get(store, WS_A, "m").await, want);
}

/// Scaling a deployment that ran (or failed) makes it `UPDATING` and clears `fail_reason`;
/// `ready_capacity` and `status_message` stay as observed.
pub async fn scale_of_a_running_deployment_updates_and_clears_fail_reason<S: Store>(store: &S) {
    for (name, status, fail_reason) in [
        ("running", Status::Running, None),
        (
            "failed",
            Status::Failed,
            Some("engine exited with status 1".to_owned()),
        ),
    ] {
        create(store, WS_A, name, T0).await;
        let observed = ObservedStatus {
            generation: 1,
            status,
            ready_capacity: 1,
            fail_reason,
            status_message: Some("waiting for capacity units".into()),
        };
        assert!(store.record_status(WS_A, name, &observed).await.unwrap());
        let scaled = store
            .change_deployment(
                WS_A,
                name,
                DesiredChange::Scale { capacity: 0 },
                "key-2",
                T0,
            )
            .await
            .unwrap()
            .expect("exists");
        assert_eq!(scaled.status, Status::Updating, "{name}");
        assert_eq!(scaled.capacity, 0, "{name}");
        assert_eq!(scaled.ready_capacity, 1, "{name}");
        assert_eq!(scaled.fail_reason, None, "{name}");
        assert_eq!(
            scaled.status_message.as_deref(),
            Some("waiting for capacity units"),
            "{name}"
        );
        assert_eq!(scaled.generation, 2, "{name}");
        assert_eq!(get(store, WS_A, name).await, scaled);
    }
}

/// `None` leaves a limit alone; every change bumps the generation; status is untouched.
pub async fn limits_change_only_what_is_given<S: Store>(store: &S) {
    let mut new = sample(WS_A, "m", T0);
    new.rpm_limit = Some(10);
    new.tpm_limit = Some(1_000);
    store.create_deployment(new).await.unwrap();
    let running = ObservedStatus {
        generation: 1,
        status: Status::Running,
        ready_capacity: 2,
        fail_reason: None,
        status_message: None,
    };
    assert!(store.record_status(WS_A, "m", &running).await.unwrap());

    let steps = [
        (Some(20), None, (Some(20), Some(1_000))),
        (None, Some(5), (Some(20), Some(5))),
        (None, None, (Some(20), Some(5))),
        (Some(7), Some(8), (Some(7), Some(8))),
    ];
    for (i, (rpm_limit, tpm_limit, want)) in steps.into_iter().enumerate() {
        let now = Timestamp(T0.0 + 1 + i as i64);
        let changed = store
            .change_deployment(
                WS_A,
                "m",
                DesiredChange::Limits {
                    rpm_limit,
                    tpm_limit,
                    autoscaling: None,
                },
                "key-l",
                now,
            )
            .await
            .unwrap()
            .expect("exists");
        assert_eq!((changed.rpm_limit, changed.tpm_limit), want, "step {i}");
        assert_eq!(changed.status, Status::Running, "step {i}");
        assert_eq!(changed.capacity, 2, "step {i}");
        assert_eq!(changed.generation, 2 + i as i64, "step {i}");
        assert_eq!(
            (changed.modifier.as_str(), changed.gmt_modified),
            ("key-l", now),
            "step {i}"
        );
        assert_eq!(get(store, WS_A, "m").await, changed, "step {i}");
    }
}

/// Delete marks `DELETING` (from any status) and bumps the generation once; deleting again
/// returns the same object unchanged.
pub async fn delete_marks_deleting_and_is_idempotent<S: Store>(store: &S) {
    let before = create(store, WS_A, "m", T0).await;
    let failed = ObservedStatus {
        generation: 1,
        status: Status::Failed,
        ready_capacity: 0,
        fail_reason: Some("no weights".into()),
        status_message: None,
    };
    assert!(store.record_status(WS_A, "m", &failed).await.unwrap());
    let t1 = Timestamp(T0.0 + 10);
    let deleting = store
        .change_deployment(WS_A, "m", DesiredChange::Delete, "key-d", t1)
        .await
        .unwrap()
        .expect("exists");
    assert_eq!(deleting.status, Status::Deleting);
    assert_eq!(deleting.generation, 2);
    assert_eq!(
        (deleting.modifier.as_str(), deleting.gmt_modified),
        ("key-d", t1)
    );
    assert_eq!(
        (deleting.capacity, deleting.gmt_create),
        (before.capacity, before.gmt_create)
    );

    let again = store
        .change_deployment(
            WS_A,
            "m",
            DesiredChange::Delete,
            "key-e",
            Timestamp(T0.0 + 20),
        )
        .await
        .unwrap()
        .expect("exists");
    assert_eq!(again, deleting);
    assert_eq!(get(store, WS_A, "m").await, deleting);
}

/// A change names its workspace: another workspace's deployment of the name is untouched and
/// a missing one is `None`.
pub async fn changes_are_scoped_to_the_workspace<S: Store>(store: &S) {
    let a = create(store, WS_A, "m", T0).await;
    create(store, WS_B, "m", T0).await;
    let b = store
        .change_deployment(WS_B, "m", DesiredChange::Scale { capacity: 9 }, "key-b", T0)
        .await
        .unwrap()
        .expect("exists");
    assert_eq!((b.workspace_id.as_str(), b.capacity), (WS_B, 9));
    assert_eq!(get(store, WS_A, "m").await, a);

    for change in [
        DesiredChange::Scale { capacity: 1 },
        DesiredChange::Limits {
            rpm_limit: Some(1),
            tpm_limit: None,
            autoscaling: None,
        },
        DesiredChange::Delete,
    ] {
        let missing = store
            .change_deployment("ws-c", "m", change.clone(), "key-c", T0)
            .await
            .unwrap();
        assert_eq!(missing, None, "{change:?}");
        let missing = store
            .change_deployment(WS_A, "missing", change.clone(), "key-c", T0)
            .await
            .unwrap();
        assert_eq!(missing, None, "{change:?}");
    }
    assert_eq!(get(store, WS_A, "m").await, a);
}

/// Removing deletes the row once and frees the name for a brand-new deployment.
pub async fn remove_deployment_frees_the_name<S: Store>(store: &S) {
    create(store, WS_A, "m", T0).await;
    let b = create(store, WS_B, "m", T0).await;
    let deleting = store
        .change_deployment(WS_A, "m", DesiredChange::Delete, "key-d", T0)
        .await
        .unwrap()
        .expect("exists");

    let g = deleting.generation;
    assert!(!store.remove_deployment("ws-c", "m", g).await.unwrap());
    assert!(store.remove_deployment(WS_A, "m", g).await.unwrap());
    assert_eq!(store.get_deployment(WS_A, "m").await.unwrap(), None);
    assert!(!store.remove_deployment(WS_A, "m", g).await.unwrap());
    assert_eq!(get(store, WS_B, "m").await, b);
    assert_eq!(
        store.list_deployments(WS_A, 0, 10).await.unwrap(),
        (vec![], 0)
    );

    let t1 = Timestamp(T0.0 + 1);
    let fresh = store
        .create_deployment(sample(WS_A, "m", t1))
        .await
        .unwrap();
    assert_eq!(fresh, expected_created(&sample(WS_A, "m", t1)));
}

/// Marks `name` deleted and removes it at that generation, as the reconciler does.
pub async fn delete_and_remove<S: Store>(store: &S, ws: &str, name: &str) -> bool {
    let d = store
        .change_deployment(ws, name, DesiredChange::Delete, "key-d", T0)
        .await
        .unwrap()
        .expect("exists");
    store
        .remove_deployment(ws, name, d.generation)
        .await
        .unwrap()
}

/// `DELETING` is terminal, enforced by the store in the same statement as the write: neither a
/// scale nor a limits change can bring a deleting deployment back, whatever the caller read.
pub async fn deleting_is_terminal<S: Store>(store: &S) {
    create(store, WS_A, "m", T0).await;
    let deleting = store
        .change_deployment(WS_A, "m", DesiredChange::Delete, "key-d", T0)
        .await
        .unwrap()
        .expect("exists");
    for change in [
        DesiredChange::Scale { capacity: 3 },
        DesiredChange::Limits {
            rpm_limit: Some(5),
            tpm_limit: None,
            autoscaling: None,
        },
    ] {
        let err = store
            .change_deployment(WS_A, "m", change.clone(), "key-x", T0)
            .await
            .unwrap_err();
        assert!(
            matches!(err, crate::StoreError::Deleting(ref n) if n == "m"),
            "{change:?}: {err:?}"
        );
    }
    assert_eq!(get(store, WS_A, "m").await, deleting);
    // A missing deployment is still None, not Deleting.
    let missing = store
        .change_deployment(WS_A, "nope", DesiredChange::Scale { capacity: 1 }, "k", T0)
        .await
        .unwrap();
    assert_eq!(missing, None);
}

/// Remove takes only a `DELETING` row at the generation the caller planned against.
pub async fn remove_is_gated_on_deleting_and_generation<S: Store>(store: &S) {
    let live = create(store, WS_A, "m", T0).await;
    assert!(!store
        .remove_deployment(WS_A, "m", live.generation)
        .await
        .unwrap());
    assert_eq!(get(store, WS_A, "m").await, live);
    let deleting = store
        .change_deployment(WS_A, "m", DesiredChange::Delete, "key-d", T0)
        .await
        .unwrap()
        .expect("exists");
    assert!(!store
        .remove_deployment(WS_A, "m", deleting.generation - 1)
        .await
        .unwrap());
    assert!(store
        .remove_deployment(WS_A, "m", deleting.generation)
        .await
        .unwrap());
}
