//! What changed, as it happens: the reconciler compares each pass with the last and publishes
//! every change of a deployment (status, capacity, ready capacity, limits, reasons) and of its
//! replicas (started, ready, unhealthy, exited, stopped) on a broadcast channel. The API's event
//! streams subscribe to it. Pure diffing lives in [`diff`], table-tested.

use std::collections::HashMap;
use std::sync::Arc;

use berth_core::Deployment;
use berth_runtime::{ObservedReplica, ReplicaState};
use tokio::sync::broadcast;

use crate::plan::Key;

/// One change.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The deployment as it is now (it is new, or something visible changed).
    Deployment(Arc<Deployment>),
    /// A replica of a deployment changed state.
    Replica {
        workspace_id: String,
        deployed_model: String,
        replica_id: String,
        /// `started`, `ready`, `unhealthy`, `exited` or `stopped`.
        state: &'static str,
        reason: Option<String>,
    },
    /// The autoscaler chose a new target, with the signals that caused it.
    Autoscaled {
        workspace_id: String,
        deployed_model: String,
        from_capacity: u32,
        to_capacity: u32,
        /// `up` or `down`.
        direction: &'static str,
        /// See [`crate::autoscale::Decision::reason`].
        reason: &'static str,
        in_flight: u32,
        queued: u32,
        stable_avg: f64,
        panic_avg: f64,
    },
    /// The deployment is gone (its delete finished).
    Removed {
        workspace_id: String,
        deployed_model: String,
    },
}

impl Event {
    /// The deployment the event is about.
    pub fn key(&self) -> (&str, &str) {
        match self {
            Event::Deployment(d) => (&d.workspace_id, &d.deployed_model),
            Event::Replica {
                workspace_id,
                deployed_model,
                ..
            }
            | Event::Autoscaled {
                workspace_id,
                deployed_model,
                ..
            }
            | Event::Removed {
                workspace_id,
                deployed_model,
            } => (workspace_id, deployed_model),
        }
    }
}

/// The broadcast side; cheap to clone.
#[derive(Debug, Clone)]
pub struct EventHub {
    tx: broadcast::Sender<Event>,
}

impl Default for EventHub {
    fn default() -> Self {
        Self {
            tx: broadcast::channel(1024).0,
        }
    }
}

impl EventHub {
    /// A receiver of every event published after this call.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }

    pub(crate) fn publish(&self, events: Vec<Event>) {
        if self.tx.receiver_count() == 0 {
            return;
        }
        for e in events {
            let _ = self.tx.send(e);
        }
    }
}

/// What the last pass saw.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    deployments: HashMap<Key, Deployment>,
    replicas: HashMap<String, (Key, ReplicaState)>,
}

fn visible_change(a: &Deployment, b: &Deployment) -> bool {
    a.status != b.status
        || a.capacity != b.capacity
        || a.ready_capacity != b.ready_capacity
        || a.fail_reason != b.fail_reason
        || a.status_message != b.status_message
        || a.rpm_limit != b.rpm_limit
        || a.tpm_limit != b.tpm_limit
        || a.autoscaling != b.autoscaling
}

fn state_name(s: &ReplicaState) -> (&'static str, Option<String>) {
    match s {
        ReplicaState::Starting => ("started", None),
        ReplicaState::Ready => ("ready", None),
        ReplicaState::Unhealthy => ("unhealthy", None),
        ReplicaState::Exited { reason } => ("exited", Some(reason.clone())),
    }
}

/// The events between what was seen and what is now; updates `seen`.
pub(crate) fn diff(
    seen: &mut Seen,
    deployments: &[Deployment],
    replicas: &[ObservedReplica],
) -> Vec<Event> {
    let mut events = Vec::new();
    let mut now: HashMap<Key, Deployment> = HashMap::with_capacity(deployments.len());
    for d in deployments {
        let key = (d.workspace_id.clone(), d.deployed_model.clone());
        if seen
            .deployments
            .get(&key)
            .is_none_or(|old| visible_change(old, d))
        {
            events.push(Event::Deployment(Arc::new(d.clone())));
        }
        now.insert(key, d.clone());
    }
    let mut live: HashMap<String, (Key, ReplicaState)> = HashMap::with_capacity(replicas.len());
    for r in replicas {
        let key = (r.workspace_id.clone(), r.deployed_model.clone());
        let changed = match seen.replicas.get(&r.id) {
            None => true,
            Some((_, old)) => old != &r.state,
        };
        if changed {
            let (state, reason) = state_name(&r.state);
            events.push(Event::Replica {
                workspace_id: key.0.clone(),
                deployed_model: key.1.clone(),
                replica_id: r.id.clone(),
                state,
                reason,
            });
        }
        live.insert(r.id.clone(), (key, r.state.clone()));
    }
    for (id, (key, state)) in &seen.replicas {
        if !live.contains_key(id) {
            events.push(Event::Replica {
                workspace_id: key.0.clone(),
                deployed_model: key.1.clone(),
                replica_id: id.clone(),
                state: "stopped",
                reason: matches!(state, ReplicaState::Exited { .. })
                    .then(|| "cleaned up after it exited".to_owned()),
            });
        }
    }
    for key in seen.deployments.keys() {
        if !now.contains_key(key) {
            events.push(Event::Removed {
                workspace_id: key.0.clone(),
                deployed_model: key.1.clone(),
            });
        }
    }
    seen.deployments = now;
    seen.replicas = live;
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_core::{Status, Timestamp};
    use std::net::SocketAddr;

    fn dep(name: &str, status: Status, ready: u32) -> Deployment {
        Deployment {
            deployed_model: name.into(),
            workspace_id: "ws".into(),
            model_name: "m".into(),
            base_model: "m".into(),
            name: None,
            plan: None,
            model_unit_spec: None,
            status,
            capacity: 1,
            base_capacity: 1,
            ready_capacity: ready,
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

    fn rep(id: &str, state: ReplicaState) -> ObservedReplica {
        ObservedReplica {
            id: id.into(),
            workspace_id: "ws".into(),
            deployed_model: "a".into(),
            pid: Some(1),
            addr: SocketAddr::from(([127, 0, 0, 1], 1)),
            started_at: Timestamp(1),
            state,
            secret: String::new(),
        }
    }

    fn kinds(events: &[Event]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                Event::Deployment(d) => format!("{} {}", d.deployed_model, d.status.as_str()),
                Event::Replica {
                    replica_id, state, ..
                } => format!("{replica_id} {state}"),
                Event::Removed { deployed_model, .. } => format!("{deployed_model} removed"),
                Event::Autoscaled { deployed_model, .. } => format!("{deployed_model} autoscaled"),
            })
            .collect()
    }

    #[test]
    fn a_deployment_from_creation_to_removal() {
        let mut seen = Seen::default();
        let steps: Vec<(Vec<Deployment>, Vec<ObservedReplica>, Vec<&str>)> = vec![
            (
                vec![dep("a", Status::Pending, 0)],
                vec![],
                vec!["a PENDING"],
            ),
            (
                vec![dep("a", Status::Pending, 0)],
                vec![rep("r1", ReplicaState::Starting)],
                vec!["r1 started"],
            ),
            (
                vec![dep("a", Status::Running, 1)],
                vec![rep("r1", ReplicaState::Ready)],
                vec!["a RUNNING", "r1 ready"],
            ),
            // Nothing changed: nothing is said.
            (
                vec![dep("a", Status::Running, 1)],
                vec![rep("r1", ReplicaState::Ready)],
                vec![],
            ),
            (
                vec![dep("a", Status::Deleting, 0)],
                vec![rep("r1", ReplicaState::Ready)],
                vec!["a DELETING"],
            ),
            // Autoscaling turned on is a visible change.
            (
                vec![Deployment {
                    autoscaling: Some(berth_core::Autoscaling {
                        min_capacity: 0,
                        max_capacity: 1,
                        target_inflight_per_replica: 4,
                        scale_down_delay_secs: 60,
                        scale_to_zero_after_secs: 300,
                    }),
                    ..dep("a", Status::Deleting, 0)
                }],
                vec![rep("r1", ReplicaState::Ready)],
                vec!["a DELETING"],
            ),
            (vec![], vec![], vec!["r1 stopped", "a removed"]),
        ];
        for (i, (deps, reps, want)) in steps.into_iter().enumerate() {
            assert_eq!(kinds(&diff(&mut seen, &deps, &reps)), want, "step {i}");
        }
    }
}
