//! What the reconciler measures, for the admin listener's `/metrics`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use berth_runtime::{ObservedReplica, ReplicaState};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReplicaStateLabels {
    pub workspace: String,
    pub deployment: String,
    /// `starting`, `ready`, `unhealthy` or `exited`.
    pub state: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct StartFailureLabels {
    pub workspace: String,
    pub deployment: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct AutoscaleLabels {
    pub workspace: String,
    pub deployment: String,
    /// `up` or `down`.
    pub direction: &'static str,
}

/// The reconciler's Prometheus families. Cheap to clone (the families are shared).
#[derive(Debug, Clone)]
pub struct ReconcilerMetrics {
    pass_duration: Histogram,
    passes: Counter,
    pass_failures: Counter,
    start_failures: Family<StartFailureLabels, Counter>,
    replicas: Family<ReplicaStateLabels, Gauge>,
    autoscale_decisions: Family<AutoscaleLabels, Counter>,
    autoscale_target: Family<StartFailureLabels, Gauge>,
    /// The replica series the last pass set, to drop those that are gone.
    replica_series: Arc<Mutex<HashSet<ReplicaStateLabels>>>,
}

impl Default for ReconcilerMetrics {
    fn default() -> Self {
        Self {
            pass_duration: Histogram::new([
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            passes: Counter::default(),
            pass_failures: Counter::default(),
            start_failures: Family::default(),
            replicas: Family::default(),
            autoscale_decisions: Family::default(),
            autoscale_target: Family::default(),
            replica_series: Arc::default(),
        }
    }
}

impl ReconcilerMetrics {
    /// Adds the families to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register_with_unit(
            "reconcile_pass_duration",
            "Time one reconcile pass took, including the replica starts it waited for",
            Unit::Seconds,
            self.pass_duration.clone(),
        );
        registry.register(
            "reconcile_pass_failures",
            "Reconcile passes that failed (the store could not be read or written)",
            self.pass_failures.clone(),
        );
        registry.register(
            "replica_start_failures",
            "Replicas that failed to start or exited unasked",
            self.start_failures.clone(),
        );
        registry.register(
            "replicas",
            "Replicas by deployment and state, as the last pass saw them",
            self.replicas.clone(),
        );
        registry.register(
            "autoscale_decisions",
            "Targets the autoscaler chose, by deployment and direction",
            self.autoscale_decisions.clone(),
        );
        registry.register(
            "autoscale_target_capacity",
            "The capacity the autoscaler last chose, per autoscaled deployment",
            self.autoscale_target.clone(),
        );
    }

    /// Records an autoscaler decision.
    pub(crate) fn autoscaled(
        &self,
        workspace: &str,
        deployment: &str,
        direction: &'static str,
        capacity: u32,
    ) {
        self.autoscale_decisions
            .get_or_create(&AutoscaleLabels {
                workspace: workspace.to_owned(),
                deployment: deployment.to_owned(),
                direction,
            })
            .inc();
        self.autoscale_target(workspace, deployment, capacity);
    }

    /// Sets the target gauge of an autoscaled deployment.
    pub(crate) fn autoscale_target(&self, workspace: &str, deployment: &str, capacity: u32) {
        self.autoscale_target
            .get_or_create(&StartFailureLabels {
                workspace: workspace.to_owned(),
                deployment: deployment.to_owned(),
            })
            .set(i64::from(capacity));
    }

    /// Drops the target gauge of a deployment no longer autoscaled (or gone).
    pub(crate) fn autoscale_gone(&self, workspace: &str, deployment: &str) {
        self.autoscale_target.remove(&StartFailureLabels {
            workspace: workspace.to_owned(),
            deployment: deployment.to_owned(),
        });
    }

    /// Records one pass.
    pub fn pass(&self, seconds: f64, ok: bool) {
        self.pass_duration.observe(seconds);
        self.passes.inc();
        if !ok {
            self.pass_failures.inc();
        }
    }

    /// Passes recorded so far, failed ones included.
    pub fn passes(&self) -> u64 {
        self.passes.get()
    }

    pub(crate) fn start_failed(&self, workspace: &str, deployment: &str) {
        self.start_failures
            .get_or_create(&StartFailureLabels {
                workspace: workspace.to_owned(),
                deployment: deployment.to_owned(),
            })
            .inc();
    }

    /// Sets the replica gauges from what a pass observed; series of replicas gone disappear.
    pub(crate) fn replicas(&self, observed: &[ObservedReplica]) {
        let mut counts: HashMap<(&str, &str, &'static str), i64> = HashMap::new();
        for r in observed {
            let state = match r.state {
                ReplicaState::Starting => "starting",
                ReplicaState::Ready => "ready",
                ReplicaState::Unhealthy => "unhealthy",
                ReplicaState::Exited { .. } => "exited",
            };
            *counts
                .entry((&r.workspace_id, &r.deployed_model, state))
                .or_default() += 1;
        }
        let mut now = HashSet::new();
        for ((workspace, deployment, state), n) in counts {
            let labels = ReplicaStateLabels {
                workspace: workspace.to_owned(),
                deployment: deployment.to_owned(),
                state,
            };
            self.replicas.get_or_create(&labels).set(n);
            now.insert(labels);
        }
        let mut last = self
            .replica_series
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for gone in last.difference(&now) {
            self.replicas.remove(gone);
        }
        *last = now;
    }
}
