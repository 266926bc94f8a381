//! Applies plans: the reconciler loop, its timers, and its bookkeeping of failures and stops.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_core::{Deployment, ModelCatalog, RoutingTable, Status};
use berth_runtime::{ReplicaSpec, Runtime};
use berth_store::Store;
use rand::RngCore;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::events::{self, EventHub};
use crate::metrics::ReconcilerMetrics;
use crate::plan::{plan, Action, FailureState, Key, ModelInfo, PlanInput};

/// Wakes the reconciler after the API changed desired state.
#[derive(Debug, Clone, Default)]
pub struct Nudge(Arc<Notify>);

impl Nudge {
    /// Asks for a pass as soon as possible (coalesces with pending nudges).
    pub fn nudge(&self) {
        self.0.notify_one();
    }

    async fn notified(&self) {
        self.0.notified().await
    }
}

/// Reconciler settings.
#[derive(Debug, Clone)]
pub struct ReconcilerSettings {
    /// Periodic resync interval.
    pub resync: Duration,
    /// Failed starts (per deployment and generation) before the deployment is `FAILED`.
    pub max_start_failures: u32,
    /// Delay after the first failed start; doubles with each further failure.
    pub backoff: Duration,
    /// Capacity units of this node.
    pub node_units: u32,
    /// Extra environment for every replica.
    pub replica_env: BTreeMap<String, String>,
    /// How long a replica taken out of routing may finish its calls in flight before it is
    /// stopped (scale-down, delete).
    pub drain: Duration,
}

type Publish = Box<dyn Fn(Arc<RoutingTable>) + Send + Sync>;

/// Calls in flight on a replica, by id, as the gateway counts them; the reconciler drains by it
/// without knowing the gateway.
pub type InFlightProbe = Arc<dyn Fn(&str) -> u32 + Send + Sync>;

/// How often a draining replica's calls in flight are looked at.
const DRAIN_POLL: Duration = Duration::from_millis(50);

/// The reconciler. Build it, then `run` it on its own task.
pub struct Reconciler {
    store: Arc<dyn Store>,
    runtime: Arc<dyn Runtime>,
    catalog: Arc<ModelCatalog>,
    settings: ReconcilerSettings,
    nudge: Nudge,
    publish: Publish,
    failures: HashMap<Key, FailureState>,
    stopping: Arc<Mutex<HashSet<String>>>,
    last_routing: Option<Arc<RoutingTable>>,
    in_flight: InFlightProbe,
    keep_replicas: Arc<AtomicBool>,
    events: EventHub,
    seen: events::Seen,
    metrics: ReconcilerMetrics,
}

impl Reconciler {
    /// A reconciler over `store` and `runtime`. `publish` receives every new routing table.
    pub fn new(
        store: Arc<dyn Store>,
        runtime: Arc<dyn Runtime>,
        catalog: Arc<ModelCatalog>,
        settings: ReconcilerSettings,
        publish: impl Fn(Arc<RoutingTable>) + Send + Sync + 'static,
    ) -> Self {
        Self {
            store,
            runtime,
            catalog,
            settings,
            nudge: Nudge::default(),
            publish: Box::new(publish),
            failures: HashMap::new(),
            stopping: Arc::default(),
            last_routing: None,
            in_flight: Arc::new(|_| 0),
            keep_replicas: Arc::default(),
            events: EventHub::default(),
            seen: events::Seen::default(),
            metrics: ReconcilerMetrics::default(),
        }
    }

    /// Where pass durations, failures and replica states are counted.
    pub fn with_metrics(mut self, metrics: ReconcilerMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Where the changes each pass sees are published.
    pub fn with_events(mut self, hub: EventHub) -> Self {
        self.events = hub;
        self
    }

    /// Where calls in flight per replica come from (the gateway); without it nothing is
    /// counted and a drain ends at once.
    pub fn with_in_flight(mut self, probe: InFlightProbe) -> Self {
        self.in_flight = probe;
        self
    }

    /// A flag that, when set by the time `run` ends, leaves every replica running for the
    /// next start of berth to adopt, instead of stopping them.
    pub fn keep_replicas_flag(mut self, flag: Arc<AtomicBool>) -> Self {
        self.keep_replicas = flag;
        self
    }

    /// The handle the API uses to ask for a pass.
    pub fn nudge_handle(&self) -> Nudge {
        self.nudge.clone()
    }

    /// Runs passes until `stop` is cancelled, then stops every replica.
    pub async fn run(mut self, stop: CancellationToken) {
        loop {
            let started = Instant::now();
            let result = self.pass().await;
            self.metrics
                .pass(started.elapsed().as_secs_f64(), result.is_ok());
            if let Err(e) = result {
                tracing::error!(error = %e, "reconcile pass failed");
            }
            let next_retry = self
                .failures
                .values()
                .map(|f| f.retry_at)
                .filter(|t| *t > Instant::now())
                .min();
            let sleep = next_retry
                .map(|t| t.saturating_duration_since(Instant::now()))
                .unwrap_or(self.settings.resync)
                .min(self.settings.resync);
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = self.nudge.notified() => {}
                _ = self.runtime.changed() => {}
                _ = tokio::time::sleep(sleep) => {}
            }
        }
        self.shutdown().await;
    }

    /// Stops every replica (server shutdown), unless told to keep them for the next start.
    /// Desired state is kept either way: the next start brings the deployments back.
    async fn shutdown(&self) {
        (self.publish)(Arc::new(RoutingTable::default()));
        if self.keep_replicas.load(Ordering::SeqCst) {
            tracing::info!("leaving replicas running for the next start to adopt");
            return;
        }
        let ids: Vec<String> = self.runtime.observe().into_iter().map(|r| r.id).collect();
        let stops = ids.iter().map(|id| self.runtime.stop(id));
        for (id, res) in ids.iter().zip(futures::future::join_all(stops).await) {
            if let Err(e) = res {
                tracing::warn!(replica = %id, error = %e, "cannot stop replica");
            }
        }
    }

    /// One reconcile pass.
    pub async fn pass(&mut self) -> Result<(), berth_store::StoreError> {
        let desired = self.store.all_deployments().await?;
        let observed = self.runtime.observe();
        let stopping = self.stopping.lock().map(|s| s.clone()).unwrap_or_default();
        let models: HashMap<String, ModelInfo> = self
            .catalog
            .models
            .iter()
            .map(|m| {
                (
                    m.model_name.clone(),
                    ModelInfo {
                        unavailable: m.missing_weights_reason(),
                    },
                )
            })
            .collect();
        let now = Instant::now();
        let in_flight: HashMap<String, u32> = observed
            .iter()
            .map(|r| (r.id.clone(), (self.in_flight)(&r.id)))
            .filter(|(_, n)| *n > 0)
            .collect();
        let plan = plan(&PlanInput {
            desired: &desired,
            observed: &observed,
            stopping: &stopping,
            in_flight: &in_flight,
            models: &models,
            failures: &self.failures,
            now,
            node_units: self.settings.node_units,
            max_start_failures: self.settings.max_start_failures,
        });
        let generations: HashMap<Key, i64> = desired
            .iter()
            .map(|d| {
                (
                    (d.workspace_id.clone(), d.deployed_model.clone()),
                    d.generation,
                )
            })
            .collect();
        let current: HashMap<Key, &Deployment> = desired
            .iter()
            .map(|d| ((d.workspace_id.clone(), d.deployed_model.clone()), d))
            .collect();

        // Routing first: a replica chosen to stop is out of routing before its drain begins,
        // and a deleted deployment answers 404 at once.
        let routing = Arc::new(plan.routing);
        if self.last_routing.as_deref() != Some(&routing) {
            (self.publish)(routing.clone());
            self.last_routing = Some(routing);
        }

        for action in plan.actions {
            match action {
                Action::Start { key, model_name } => {
                    let generation = generations.get(&key).copied().unwrap_or_default();
                    if let Err(reason) = self.start(&key, &model_name).await {
                        tracing::warn!(deployment = %key.1, error = %reason, "replica failed to start");
                        self.record_failure(key, generation, reason);
                    }
                }
                Action::Stop { replica_id } => self.stop_in_background(replica_id),
                Action::Forget {
                    replica_id,
                    key,
                    failure,
                } => {
                    let _ = self.runtime.stop(&replica_id).await;
                    if let Some(reason) = failure {
                        tracing::warn!(deployment = %key.1, replica = %replica_id, %reason, "replica exited");
                        let generation = generations.get(&key).copied().unwrap_or_default();
                        self.record_failure(key, generation, reason);
                    }
                }
                Action::Remove { key } => {
                    // Gated on the generation this pass planned against.
                    let generation = generations.get(&key).copied().unwrap_or_default();
                    self.store
                        .remove_deployment(&key.0, &key.1, generation)
                        .await?;
                    self.failures.remove(&key);
                    tracing::info!(deployment = %key.1, workspace = %key.0, "deployment removed");
                }
            }
        }

        for (key, observed) in &plan.statuses {
            if observed.status == Status::Running {
                self.failures.remove(key);
            }
            // Write only what changed: with thousands of idle deployments a pass stays a read.
            let unchanged = current.get(key).is_some_and(|d| {
                d.status == observed.status
                    && d.ready_capacity == observed.ready_capacity
                    && d.fail_reason == observed.fail_reason
                    && d.status_message == observed.status_message
            });
            if !unchanged {
                self.store.record_status(&key.0, &key.1, observed).await?;
            }
        }
        self.failures.retain(|k, _| generations.contains_key(k));

        // What changed since the last pass, for the event streams.
        let now = self.store.all_deployments().await?;
        // The replicas as this pass saw them (observing again here would mark changes since as
        // seen, and the loop would not wake for them).
        self.metrics.replicas(&observed);
        let changes = events::diff(&mut self.seen, &now, &observed);
        self.events.publish(changes);
        Ok(())
    }

    async fn start(&self, key: &Key, model_name: &str) -> Result<(), String> {
        let model = self
            .catalog
            .get(model_name)
            .ok_or_else(|| format!("model {model_name} is not in the catalog"))?
            .clone();
        let mut suffix = [0u8; 4];
        rand::thread_rng().fill_bytes(&mut suffix);
        let spec = ReplicaSpec {
            id: format!("{}-{}", key.1, hex::encode(suffix)),
            workspace_id: key.0.clone(),
            deployed_model: key.1.clone(),
            model,
            env: self.settings.replica_env.clone(),
        };
        // The runtime records the replica (ahead of the spawn) in its journal.
        let started = self.runtime.start(spec).await.map_err(|e| e.to_string())?;
        tracing::info!(deployment = %key.1, replica = %started.id, addr = %started.addr, "replica started");
        Ok(())
    }

    fn stop_in_background(&self, replica_id: String) {
        let Ok(mut stopping) = self.stopping.lock() else {
            return;
        };
        if !stopping.insert(replica_id.clone()) {
            return;
        }
        drop(stopping);
        let runtime = self.runtime.clone();
        let set = self.stopping.clone();
        let nudge = self.nudge.clone();
        let in_flight = self.in_flight.clone();
        let drain = self.settings.drain;
        tokio::spawn(async move {
            // Out of routing already (the pass published first): let its calls finish.
            let deadline = tokio::time::Instant::now() + drain;
            let mut left = in_flight(&replica_id);
            while left > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(DRAIN_POLL).await;
                left = in_flight(&replica_id);
            }
            if left > 0 {
                tracing::warn!(replica = %replica_id, calls = left, ?drain, "drain time is up; stopping the replica with calls in flight");
            }
            if let Err(e) = runtime.stop(&replica_id).await {
                tracing::warn!(replica = %replica_id, error = %e, "cannot stop replica");
            }
            if let Ok(mut s) = set.lock() {
                s.remove(&replica_id);
            }
            tracing::info!(replica = %replica_id, "replica stopped");
            nudge.nudge();
        });
    }

    fn record_failure(&mut self, key: Key, generation: i64, reason: String) {
        self.metrics.start_failed(&key.0, &key.1);
        let entry = self.failures.entry(key).or_insert(FailureState {
            generation,
            count: 0,
            last_reason: String::new(),
            retry_at: Instant::now(),
        });
        if entry.generation != generation {
            entry.generation = generation;
            entry.count = 0;
        }
        entry.count += 1;
        entry.last_reason = reason;
        let factor = 2u32.saturating_pow(entry.count.saturating_sub(1).min(10));
        entry.retry_at = Instant::now() + self.settings.backoff.saturating_mul(factor);
    }
}
