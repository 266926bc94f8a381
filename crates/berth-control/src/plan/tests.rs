//! Table tests of `plan`.

use super::*;
use berth_core::Timestamp;
use std::net::SocketAddr;
use std::time::Duration;

fn dep(name: &str, status: Status, capacity: u32, base: u32) -> Deployment {
    Deployment {
        deployed_model: name.into(),
        workspace_id: "ws".into(),
        model_name: "m".into(),
        base_model: "m".into(),
        name: None,
        plan: None,
        model_unit_spec: None,
        status,
        capacity,
        base_capacity: base,
        ready_capacity: 0,
        max_context_length: None,
        enable_thinking: None,
        rpm_limit: None,
        tpm_limit: None,
        fail_reason: None,
        status_message: None,
        autoscaling: None,
        creator: "k".into(),
        modifier: "k".into(),
        gmt_create: Timestamp(1),
        gmt_modified: Timestamp(1),
        generation: 1,
    }
}

fn rep(id: &str, deployment: &str, state: ReplicaState) -> ObservedReplica {
    ObservedReplica {
        id: id.into(),
        workspace_id: "ws".into(),
        deployed_model: deployment.into(),
        pid: Some(1),
        addr: SocketAddr::from(([127, 0, 0, 1], 9000)),
        started_at: Timestamp(1),
        state,
        secret: String::new(),
    }
}

fn autoscaled(mut d: Deployment) -> Deployment {
    d.autoscaling = Some(berth_core::Autoscaling {
        min_capacity: 0,
        max_capacity: 2,
        target_inflight_per_replica: 4,
        scale_down_delay_secs: 60,
        scale_to_zero_after_secs: 300,
    });
    d
}

fn key(name: &str) -> Key {
    ("ws".into(), name.into())
}

struct Case {
    name: &'static str,
    desired: Vec<Deployment>,
    observed: Vec<ObservedReplica>,
    stopping: Vec<&'static str>,
    failures: Vec<(Key, u32, bool)>, // (key, count, retry due)
    unavailable: bool,
    node_units: u32,
    expect_starts: usize,
    expect_stops: Vec<&'static str>,
    expect_remove: bool,
    expect_status: Option<(Status, u32)>,
    expect_message: Option<&'static str>,
    expect_fail: Option<&'static str>,
    in_flight: Vec<(&'static str, u32)>,
}

impl Default for Case {
    fn default() -> Self {
        Self {
            name: "",
            desired: vec![],
            observed: vec![],
            stopping: vec![],
            failures: vec![],
            unavailable: false,
            node_units: 8,
            expect_starts: 0,
            expect_stops: vec![],
            expect_remove: false,
            expect_status: None,
            expect_message: None,
            expect_fail: None,
            in_flight: vec![],
        }
    }
}

fn run(case: &Case) -> Plan {
    let now = Instant::now();
    let stopping: HashSet<String> = case.stopping.iter().map(|s| s.to_string()).collect();
    let mut models = HashMap::new();
    models.insert(
        "m".to_string(),
        ModelInfo {
            unavailable: case
                .unavailable
                .then(|| "weights missing: /x.gguf".to_string()),
            start_secs: None,
        },
    );
    let failures: HashMap<Key, FailureState> = case
        .failures
        .iter()
        .map(|(k, count, due)| {
            let retry_at = if *due {
                now - Duration::from_secs(1)
            } else {
                now + Duration::from_secs(60)
            };
            (
                k.clone(),
                FailureState {
                    generation: 1,
                    count: *count,
                    last_reason: "boom".into(),
                    retry_at,
                },
            )
        })
        .collect();
    let in_flight: HashMap<String, u32> = case
        .in_flight
        .iter()
        .map(|(id, n)| (id.to_string(), *n))
        .collect();
    plan(&PlanInput {
        desired: &case.desired,
        observed: &case.observed,
        stopping: &stopping,
        in_flight: &in_flight,
        models: &models,
        failures: &failures,
        now,
        node_units: case.node_units,
        max_start_failures: 3,
    })
}

#[test]
fn table() {
    use ReplicaState::*;
    let cases = vec![
        Case {
            name: "new deployment starts its replicas",
            desired: vec![dep("a", Status::Pending, 3, 1)],
            expect_starts: 3,
            expect_status: Some((Status::Pending, 0)),
            ..Default::default()
        },
        Case {
            name: "starting replicas are not ready capacity",
            desired: vec![dep("a", Status::Pending, 2, 1)],
            observed: vec![rep("r1", "a", Starting), rep("r2", "a", Ready)],
            expect_status: Some((Status::Pending, 1)),
            ..Default::default()
        },
        Case {
            name: "all ready: running",
            desired: vec![dep("a", Status::Pending, 2, 1)],
            observed: vec![rep("r1", "a", Ready), rep("r2", "a", Ready)],
            expect_status: Some((Status::Running, 2)),
            ..Default::default()
        },
        Case {
            name: "base capacity 2: replicas = capacity / 2, ready counts units",
            desired: vec![dep("a", Status::Updating, 4, 2)],
            observed: vec![rep("r1", "a", Ready)],
            expect_starts: 1,
            expect_status: Some((Status::Updating, 2)),
            ..Default::default()
        },
        Case {
            name: "capacity 0 is running with nothing",
            desired: vec![dep("a", Status::Pending, 0, 1)],
            expect_status: Some((Status::Running, 0)),
            ..Default::default()
        },
        Case {
            name: "autoscaled to zero: running, capacity 0, and says so",
            desired: vec![autoscaled(dep("a", Status::Running, 0, 1))],
            expect_status: Some((Status::Running, 0)),
            expect_message: Some(SCALED_TO_ZERO),
            ..Default::default()
        },
        Case {
            name: "autoscaled to zero: the last replica drains, the message is there already",
            desired: vec![autoscaled(dep("a", Status::Running, 0, 1))],
            observed: vec![rep("r1", "a", Ready)],
            in_flight: vec![("r1", 2)],
            expect_stops: vec!["r1"],
            expect_status: Some((Status::Running, 0)),
            expect_message: Some(SCALED_TO_ZERO),
            ..Default::default()
        },
        Case {
            name: "autoscaled and woken: updating while its replica starts, no zero message",
            desired: vec![autoscaled(dep("a", Status::Running, 1, 1))],
            expect_starts: 1,
            expect_status: Some((Status::Updating, 0)),
            ..Default::default()
        },
        Case {
            name: "scale down stops starting replicas first",
            desired: vec![dep("a", Status::Updating, 1, 1)],
            observed: vec![rep("r1", "a", Ready), rep("r2", "a", Starting), rep("r3", "a", Ready)],
            expect_stops: vec!["r2", "r1"],
            expect_status: Some((Status::Running, 1)),
            ..Default::default()
        },
        Case {
            name: "scale down stops the ready replicas with the fewest calls in flight",
            desired: vec![dep("a", Status::Updating, 1, 1)],
            observed: vec![rep("r1", "a", Ready), rep("r3", "a", Ready), rep("r4", "a", Ready)],
            in_flight: vec![("r1", 3), ("r4", 1)],
            expect_stops: vec!["r3", "r4"],
            expect_status: Some((Status::Running, 1)),
            ..Default::default()
        },
        Case {
            name: "crash: forget, no restart in the same pass, running becomes updating",
            desired: vec![dep("a", Status::Running, 2, 1)],
            observed: vec![rep("r1", "a", Ready), rep("r2", "a", Exited { reason: "exit 1".into() })],
            expect_starts: 0,
            expect_status: Some((Status::Updating, 1)),
            expect_message: Some("Retrying after a failed start: exit 1"),
            ..Default::default()
        },
        Case {
            name: "unhealthy is not ready",
            desired: vec![dep("a", Status::Running, 1, 1)],
            observed: vec![rep("r1", "a", Unhealthy)],
            expect_status: Some((Status::Updating, 0)),
            ..Default::default()
        },
        Case {
            name: "backoff: no start before retry time",
            desired: vec![dep("a", Status::Pending, 1, 1)],
            failures: vec![(key("a"), 1, false)],
            expect_status: Some((Status::Pending, 0)),
            expect_message: Some("Retrying after a failed start"),
            ..Default::default()
        },
        Case {
            name: "backoff over: start again",
            desired: vec![dep("a", Status::Pending, 1, 1)],
            failures: vec![(key("a"), 2, true)],
            expect_starts: 1,
            expect_status: Some((Status::Pending, 0)),
            ..Default::default()
        },
        Case {
            name: "too many failures: FAILED",
            desired: vec![dep("a", Status::Pending, 1, 1)],
            failures: vec![(key("a"), 3, true)],
            expect_status: Some((Status::Failed, 0)),
            expect_fail: Some("failed to start 3 times; last error: boom"),
            ..Default::default()
        },
        Case {
            name: "weights missing: FAILED with the reason",
            desired: vec![dep("a", Status::Pending, 1, 1)],
            unavailable: true,
            expect_status: Some((Status::Failed, 0)),
            expect_fail: Some("weights missing"),
            ..Default::default()
        },
        Case {
            name: "weights missing but capacity 0: running",
            desired: vec![dep("a", Status::Pending, 0, 1)],
            unavailable: true,
            expect_status: Some((Status::Running, 0)),
            ..Default::default()
        },
        Case {
            name: "node full: replicas wait with a message",
            desired: vec![dep("a", Status::Pending, 5, 1)],
            node_units: 3,
            expect_starts: 3,
            expect_status: Some((Status::Pending, 0)),
            expect_message: Some("Waiting for capacity: 2 more replica(s) need 2 unit(s), and the node is out of free capacity units."),
            ..Default::default()
        },
        Case {
            name: "stopping replicas hold units",
            desired: vec![dep("a", Status::Updating, 2, 1)],
            observed: vec![rep("old", "a", Ready)],
            stopping: vec!["old"],
            node_units: 2,
            expect_starts: 1,
            expect_status: Some((Status::Updating, 0)),
            expect_message: Some("Waiting for capacity"),
            ..Default::default()
        },
        Case {
            name: "deleting stops replicas and waits",
            desired: vec![dep("a", Status::Deleting, 2, 1)],
            observed: vec![rep("r1", "a", Ready), rep("r2", "a", Starting)],
            expect_stops: vec!["r1", "r2"],
            expect_status: Some((Status::Deleting, 0)),
            ..Default::default()
        },
        Case {
            name: "deleting with replicas still stopping: no remove yet",
            desired: vec![dep("a", Status::Deleting, 1, 1)],
            observed: vec![rep("r1", "a", Ready)],
            stopping: vec!["r1"],
            expect_status: Some((Status::Deleting, 0)),
            ..Default::default()
        },
        Case {
            name: "deleting and gone: remove",
            desired: vec![dep("a", Status::Deleting, 1, 1)],
            expect_remove: true,
            expect_status: Some((Status::Deleting, 0)),
            ..Default::default()
        },
        Case {
            name: "orphan replica of a removed deployment is stopped",
            observed: vec![rep("ghost", "zzz", Ready)],
            expect_stops: vec!["ghost"],
            ..Default::default()
        },
    ];

    for case in &cases {
        let p = run(case);
        let starts = p
            .actions
            .iter()
            .filter(|a| matches!(a, Action::Start { .. }))
            .count();
        assert_eq!(
            starts, case.expect_starts,
            "{}: starts {:?}",
            case.name, p.actions
        );
        let stops: Vec<&str> = p
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Stop { replica_id } => Some(replica_id.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(stops, case.expect_stops, "{}", case.name);
        let removes = p.actions.iter().any(|a| matches!(a, Action::Remove { .. }));
        assert_eq!(removes, case.expect_remove, "{}", case.name);
        if let Some((status, ready)) = case.expect_status {
            let (_, st) = p
                .statuses
                .iter()
                .find(|(k, _)| k.1 == "a")
                .expect(case.name);
            assert_eq!(
                (st.status, st.ready_capacity),
                (status, ready),
                "{}",
                case.name
            );
            match case.expect_message {
                Some(m) => assert!(
                    st.status_message.as_deref().unwrap_or_default().contains(m),
                    "{}: {:?}",
                    case.name,
                    st.status_message
                ),
                None => assert_eq!(st.status_message, None, "{}", case.name),
            }
            match case.expect_fail {
                Some(m) => assert!(
                    st.fail_reason.as_deref().unwrap_or_default().contains(m),
                    "{}: {:?}",
                    case.name,
                    st.fail_reason
                ),
                None => assert_eq!(st.fail_reason, None, "{}", case.name),
            }
        }
    }
}

#[test]
fn exits_count_as_failures_except_while_deleting() {
    let exited = || {
        vec![rep(
            "r1",
            "a",
            ReplicaState::Exited {
                reason: "status 1".into(),
            },
        )]
    };
    let p = run(&Case {
        desired: vec![dep("a", Status::Running, 1, 1)],
        observed: exited(),
        ..Default::default()
    });
    assert!(p.actions.contains(&Action::Forget {
        replica_id: "r1".into(),
        key: key("a"),
        failure: Some("status 1".into())
    }));
    let p = run(&Case {
        desired: vec![dep("a", Status::Deleting, 1, 1)],
        observed: exited(),
        ..Default::default()
    });
    assert!(p.actions.contains(&Action::Forget {
        replica_id: "r1".into(),
        key: key("a"),
        failure: None
    }));
    assert!(p.actions.contains(&Action::Remove { key: key("a") }));
}

#[test]
fn routing_lists_only_ready_replicas_of_live_deployments() {
    let p = run(&Case {
        desired: vec![
            dep("a", Status::Running, 3, 1),
            dep("gone", Status::Deleting, 1, 1),
        ],
        observed: vec![
            rep("r2", "a", ReplicaState::Ready),
            rep("r1", "a", ReplicaState::Ready),
            rep("r3", "a", ReplicaState::Starting),
        ],
        ..Default::default()
    });
    let entry = p.routing.get("ws", "a").unwrap();
    let ids: Vec<&str> = entry
        .endpoints
        .iter()
        .map(|e| e.replica_id.as_str())
        .collect();
    assert_eq!(ids, ["r1", "r2"]);
    assert!(p.routing.get("ws", "gone").is_none());
}

#[test]
fn older_deployments_get_capacity_first() {
    let mut old = dep("old", Status::Pending, 2, 1);
    old.gmt_create = Timestamp(1);
    let mut new = dep("new", Status::Pending, 2, 1);
    new.gmt_create = Timestamp(2);
    let p = run(&Case {
        desired: vec![new, old],
        node_units: 2,
        ..Default::default()
    });
    let started: Vec<&str> = p
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::Start { key, .. } => Some(key.1.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(started, ["old", "old"]);
}

#[test]
fn routing_carries_the_measured_start_time_of_the_model() {
    let desired = vec![dep("a", Status::Running, 0, 1)];
    let mut models = HashMap::new();
    for start_secs in [None, Some(7)] {
        models.insert(
            "m".to_string(),
            ModelInfo {
                unavailable: None,
                start_secs,
            },
        );
        let plan = plan(&PlanInput {
            desired: &desired,
            observed: &[],
            stopping: &HashSet::new(),
            in_flight: &HashMap::new(),
            models: &models,
            failures: &HashMap::new(),
            now: Instant::now(),
            node_units: 8,
            max_start_failures: 3,
        });
        let entry = plan.routing.get("ws", "a").expect("routed");
        assert_eq!(entry.start_secs, start_secs);
        // Not autoscaled: capacity 0 says nothing of scaling to zero.
        assert_eq!(plan.statuses[0].1.status_message, None);
    }
}
