//! `plan(desired, observed)`: what to start, stop and remove, and what status to report.
//!
//! Pure: no I/O, no clock (the caller passes `now`), so it is table-tested.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use berth_core::{Deployment, Endpoint, RoutingEntry, RoutingTable, Status};
use berth_runtime::{ObservedReplica, ReplicaState};
use berth_store::ObservedStatus;

/// (workspace_id, deployed_model).
pub type Key = (String, String);

/// What the planner needs to know about a catalog model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    /// Why replicas cannot start (e.g. weights missing); `None` when they can.
    pub unavailable: Option<String>,
    /// How long its replicas took to start here, seconds, rounded up (the last measured).
    pub start_secs: Option<u64>,
}

/// `status_message` of an autoscaled deployment at zero: `RUNNING` with capacity 0 (it can
/// answer: a call starts a replica and is held until it is ready).
pub const SCALED_TO_ZERO: &str =
    "Scaled to zero by the autoscaler: no replica runs; the next call starts one and is held until it is ready.";

/// Failed replica starts of one deployment, for the generation they happened in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureState {
    pub generation: i64,
    pub count: u32,
    pub last_reason: String,
    /// No new start before this instant.
    pub retry_at: Instant,
}

/// Inputs of one pass.
#[derive(Debug)]
pub struct PlanInput<'a> {
    pub desired: &'a [Deployment],
    pub observed: &'a [ObservedReplica],
    /// Replicas being stopped right now: they hold node units but do not count as live.
    pub stopping: &'a HashSet<String>,
    /// Calls in flight per replica id, as the gateway counts them (absent: none).
    pub in_flight: &'a HashMap<String, u32>,
    pub models: &'a HashMap<String, ModelInfo>,
    pub failures: &'a HashMap<Key, FailureState>,
    pub now: Instant,
    pub node_units: u32,
    pub max_start_failures: u32,
}

/// One thing to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start one replica of a deployment.
    Start { key: Key, model_name: String },
    /// Stop a live replica.
    Stop { replica_id: String },
    /// Clean up an exited replica; `failure` is set when the exit counts against the deployment.
    Forget {
        replica_id: String,
        key: Key,
        failure: Option<String>,
    },
    /// The deployment is `DELETING` and has no replicas left: remove its row.
    Remove { key: Key },
}

/// The outcome of a pass.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub statuses: Vec<(Key, ObservedStatus)>,
    pub routing: RoutingTable,
}

fn key_of(d: &Deployment) -> Key {
    (d.workspace_id.clone(), d.deployed_model.clone())
}

/// Computes the actions and statuses for one pass.
pub fn plan(input: &PlanInput<'_>) -> Plan {
    let mut actions = Vec::new();
    let mut statuses = Vec::new();
    let mut routing = RoutingTable::default();

    let mut by_deployment: HashMap<Key, Vec<&ObservedReplica>> = HashMap::new();
    for r in input.observed {
        by_deployment
            .entry((r.workspace_id.clone(), r.deployed_model.clone()))
            .or_default()
            .push(r);
    }
    let base_of: HashMap<Key, u32> = input
        .desired
        .iter()
        .map(|d| (key_of(d), d.base_capacity.max(1)))
        .collect();

    // Units held by every replica process that still exists (stopping ones included).
    let mut used: u32 = input
        .observed
        .iter()
        .filter(|r| !matches!(r.state, ReplicaState::Exited { .. }))
        .map(|r| {
            base_of
                .get(&(r.workspace_id.clone(), r.deployed_model.clone()))
                .copied()
                .unwrap_or(1)
        })
        .sum();

    // Replicas of deployments that no longer exist.
    for (key, replicas) in &by_deployment {
        if base_of.contains_key(key) {
            continue;
        }
        for r in replicas {
            match r.state {
                ReplicaState::Exited { .. } => actions.push(Action::Forget {
                    replica_id: r.id.clone(),
                    key: key.clone(),
                    failure: None,
                }),
                _ if !input.stopping.contains(&r.id) => actions.push(Action::Stop {
                    replica_id: r.id.clone(),
                }),
                _ => {}
            }
        }
    }

    // Oldest deployments first, so capacity goes to whoever asked first.
    let mut desired: Vec<&Deployment> = input.desired.iter().collect();
    desired.sort_by_key(|d| (d.gmt_create, d.deployed_model.clone()));

    for d in desired {
        let key = key_of(d);
        let replicas = by_deployment.get(&key).map(Vec::as_slice).unwrap_or(&[]);
        let base = d.base_capacity.max(1);
        let failure = input
            .failures
            .get(&key)
            .filter(|f| f.generation == d.generation);

        let mut live: Vec<&ObservedReplica> = Vec::new();
        // An exit seen in this pass is a failure not yet in `failures`: wait for the next pass,
        // which plans with its backoff, instead of restarting at once.
        let mut just_failed: Option<String> = None;
        for r in replicas {
            if input.stopping.contains(&r.id) {
                continue;
            }
            if let ReplicaState::Exited { reason } = &r.state {
                let failure = (d.status != Status::Deleting).then(|| reason.clone());
                if failure.is_some() {
                    just_failed = failure.clone();
                }
                actions.push(Action::Forget {
                    replica_id: r.id.clone(),
                    key: key.clone(),
                    failure,
                });
            } else {
                live.push(r);
            }
        }

        if d.status == Status::Deleting {
            for r in &live {
                actions.push(Action::Stop {
                    replica_id: r.id.clone(),
                });
            }
            let still_there = replicas
                .iter()
                .any(|r| !matches!(r.state, ReplicaState::Exited { .. }));
            if !still_there {
                actions.push(Action::Remove { key: key.clone() });
            }
            // The status stays DELETING; ready capacity drains to zero.
            statuses.push((
                key,
                ObservedStatus {
                    generation: d.generation,
                    status: Status::Deleting,
                    ready_capacity: 0,
                    fail_reason: d.fail_reason.clone(),
                    status_message: None,
                },
            ));
            continue;
        }

        let want = d.desired_replicas() as usize;
        let unavailable = input
            .models
            .get(&d.model_name)
            .map(|m| m.unavailable.clone())
            .unwrap_or_else(|| {
                Some(format!(
                    "Model {} is not in this node's catalog.",
                    d.model_name
                ))
            });

        // Scale down: stop the least useful replicas first: not ready before ready, then the
        // fewest calls in flight (they drain fastest), then the newest.
        if live.len() > want {
            live.sort_by_key(|r| {
                (
                    matches!(r.state, ReplicaState::Ready),
                    input.in_flight.get(&r.id).copied().unwrap_or(0),
                    std::cmp::Reverse(r.started_at),
                )
            });
            let extra = live.len() - want;
            for r in live.drain(..extra) {
                actions.push(Action::Stop {
                    replica_id: r.id.clone(),
                });
            }
        }

        let mut status_message = (want == 0 && d.autoscaling.is_some() && live.is_empty())
            .then(|| SCALED_TO_ZERO.to_owned());
        let mut fail_reason = None;
        if live.len() < want {
            let missing = want - live.len();
            if let Some(reason) = &unavailable {
                fail_reason = Some(reason.clone());
            } else if let Some(f) = failure.filter(|f| f.count >= input.max_start_failures) {
                fail_reason = Some(format!(
                    "Replicas failed to start {} times; last error: {}",
                    f.count, f.last_reason
                ));
            } else if let Some(reason) = &just_failed {
                status_message = Some(format!("Retrying after a failed start: {reason}"));
            } else if failure.is_some_and(|f| input.now < f.retry_at) {
                status_message =
                    failure.map(|f| format!("Retrying after a failed start: {}", f.last_reason));
            } else {
                let free = input.node_units.saturating_sub(used);
                let fit = ((free / base) as usize).min(missing);
                for _ in 0..fit {
                    actions.push(Action::Start {
                        key: key.clone(),
                        model_name: d.model_name.clone(),
                    });
                }
                used += fit as u32 * base;
                if fit < missing {
                    // Only this deployment's own numbers: how busy the node is would tell every
                    // workspace about the others.
                    status_message = Some(format!(
                        "Waiting for capacity: {} more replica(s) need {} unit(s), and the node is out of free capacity units.",
                        missing - fit,
                        (missing - fit) as u32 * base,
                    ));
                }
            }
        }

        let ready: Vec<&&ObservedReplica> = live
            .iter()
            .filter(|r| r.state == ReplicaState::Ready)
            .collect();
        let ready_capacity = ready.len() as u32 * base;
        let converged = ready.len() == want && live.len() == want;
        let status = if fail_reason.is_some() {
            Status::Failed
        } else if converged {
            Status::Running
        } else {
            match d.status {
                Status::Pending => Status::Pending,
                _ => Status::Updating,
            }
        };

        let mut endpoints: Vec<Endpoint> = ready
            .iter()
            .map(|r| Endpoint {
                replica_id: r.id.clone(),
                addr: r.addr,
                secret: r.secret.clone(),
            })
            .collect();
        endpoints.sort_by(|a, b| a.replica_id.cmp(&b.replica_id));
        routing.entries.insert(
            key.clone(),
            Arc::new(RoutingEntry {
                workspace_id: d.workspace_id.clone(),
                deployed_model: d.deployed_model.clone(),
                model_name: d.model_name.clone(),
                status,
                endpoints,
                rpm_limit: d.rpm_limit,
                tpm_limit: d.tpm_limit,
                created: d.gmt_create.millis() / 1000,
                start_secs: input.models.get(&d.model_name).and_then(|m| m.start_secs),
            }),
        );
        statuses.push((
            key,
            ObservedStatus {
                generation: d.generation,
                status,
                ready_capacity,
                fail_reason,
                status_message,
            },
        ));
    }

    Plan {
        actions,
        statuses,
        routing,
    }
}

#[cfg(test)]
mod tests;
