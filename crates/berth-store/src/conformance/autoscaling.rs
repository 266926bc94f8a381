//! Autoscaling (a berth extension): stored with the deployment, changed by update, and the
//! autoscaler's capacity writes gated like status writes.

use berth_core::{Autoscaling, Status, Timestamp};

use super::{get, sample, T0, WS_A};
use crate::{DesiredChange, ObservedStatus, Store};

fn bounds(min_capacity: u32, max_capacity: u32) -> Autoscaling {
    Autoscaling {
        min_capacity,
        max_capacity,
        target_inflight_per_replica: 4,
        scale_down_delay_secs: 60,
        scale_to_zero_after_secs: 300,
    }
}

fn update(autoscaling: Option<Option<Autoscaling>>) -> DesiredChange {
    DesiredChange::Limits {
        rpm_limit: None,
        tpm_limit: None,
        autoscaling,
    }
}

/// Created with autoscaling, it comes back as given; an update that turns it on brings
/// `capacity` within the bounds (and changes the status as a scale does); limits alone leave
/// it; `null` turns it off and leaves `capacity` where it was.
pub async fn autoscaling_is_stored_updated_and_turned_off<S: Store>(store: &S) {
    let mut new = sample(WS_A, "m", T0);
    new.autoscaling = Some(bounds(0, 4));
    let created = store.create_deployment(new).await.unwrap();
    assert_eq!(created.autoscaling, Some(bounds(0, 4)));
    assert_eq!(get(store, WS_A, "m").await, created);

    // Running at 2, then bounds of 3..=5: capacity goes up to 3 and the status to UPDATING.
    store
        .record_status(
            WS_A,
            "m",
            &ObservedStatus {
                generation: 1,
                status: Status::Running,
                ready_capacity: 2,
                fail_reason: None,
                status_message: None,
            },
        )
        .await
        .unwrap();
    let t1 = Timestamp(T0.0 + 1_000);
    let d = store
        .change_deployment(WS_A, "m", update(Some(Some(bounds(3, 5)))), "k", t1)
        .await
        .unwrap()
        .expect("exists");
    assert_eq!((d.capacity, d.status), (3, Status::Updating));
    assert_eq!(d.autoscaling, Some(bounds(3, 5)));
    assert_eq!(d.generation, 2);

    // Within the bounds: capacity and status stay.
    let d = store
        .change_deployment(WS_A, "m", update(Some(Some(bounds(0, 8)))), "k", t1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((d.capacity, d.status), (3, Status::Updating));

    let limits = DesiredChange::Limits {
        rpm_limit: Some(9),
        tpm_limit: None,
        autoscaling: None,
    };
    let d = store
        .change_deployment(WS_A, "m", limits, "k", t1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.autoscaling, Some(bounds(0, 8)));
    assert_eq!(d.rpm_limit, Some(9));

    let d = store
        .change_deployment(WS_A, "m", update(Some(None)), "k", t1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((d.autoscaling, d.capacity), (None, 3));
    assert_eq!(get(store, WS_A, "m").await, d);
}

/// The autoscaler's write lands only at the generation it decided on, within the bounds,
/// while autoscaling is on and the deployment is not being deleted; it makes no generation.
pub async fn autoscaled_capacity_is_gated<S: Store>(store: &S) {
    let mut new = sample(WS_A, "m", T0);
    new.autoscaling = Some(bounds(0, 4));
    store.create_deployment(new).await.unwrap();
    let d = store
        .set_autoscaled_capacity(WS_A, "m", 1, 4)
        .await
        .unwrap()
        .expect("written");
    assert_eq!((d.capacity, d.generation), (4, 1));
    assert_eq!(get(store, WS_A, "m").await, d);
    assert!(store
        .set_autoscaled_capacity(WS_A, "m", 1, 5)
        .await
        .unwrap()
        .is_none());
    assert!(store
        .set_autoscaled_capacity(WS_A, "m", 0, 1)
        .await
        .unwrap()
        .is_none());
    assert!(store
        .set_autoscaled_capacity(WS_A, "nope", 1, 1)
        .await
        .unwrap()
        .is_none());
    assert_eq!(get(store, WS_A, "m").await.capacity, 4);

    // Without autoscaling: refused.
    store
        .create_deployment(sample(WS_A, "fixed", T0))
        .await
        .unwrap();
    assert!(store
        .set_autoscaled_capacity(WS_A, "fixed", 1, 1)
        .await
        .unwrap()
        .is_none());
    assert_eq!(get(store, WS_A, "fixed").await.capacity, 2);

    // Deleting: refused.
    let deleting = store
        .change_deployment(WS_A, "m", DesiredChange::Delete, "k", T0)
        .await
        .unwrap()
        .unwrap();
    assert!(store
        .set_autoscaled_capacity(WS_A, "m", deleting.generation, 0)
        .await
        .unwrap()
        .is_none());
    assert_eq!(get(store, WS_A, "m").await.capacity, 4);
}
