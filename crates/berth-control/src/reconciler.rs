//! Applies plans: the reconciler loop, its timers, and its bookkeeping of failures and stops.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_core::{Deployment, ModelCatalog, RoutingTable, Status, Timestamp};
use berth_runtime::{ObservedReplica, ReplicaSpec, ReplicaState, Runtime};
use berth_store::Store;
use rand::RngCore;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::autoscale::{decide, Demand, ScaleState, Signals, Windows};
use crate::events::{self, Event, EventHub};
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

/// A deployment's load (workspace, deployment), as the gateway measures it; the autoscaler
/// reads it without knowing the gateway.
pub type DemandProbe = Arc<dyn Fn(&str, &str) -> Demand + Send + Sync>;

/// Autoscaler timing.
#[derive(Debug, Clone, Copy)]
pub struct AutoscaleSettings {
    /// How often autoscaled deployments are sampled (a pass runs at least this often while any
    /// deployment is autoscaled).
    pub tick: Duration,
    pub windows: Windows,
}

impl Default for AutoscaleSettings {
    fn default() -> Self {
        Self {
            tick: Duration::from_secs(1),
            windows: Windows::default(),
        }
    }
}

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
    demand: DemandProbe,
    autoscale: AutoscaleSettings,
    scalers: HashMap<Key, ScaleState>,
    last_sample: Option<Instant>,
    autoscaled_any: bool,
    /// Replicas seen starting, by id, with their model: their start is timed when they are
    /// first seen ready (adopted ones, whose start berth did not see, are not).
    starting: HashMap<String, String>,
    /// The last measured start time of each model, seconds rounded up.
    start_secs: HashMap<String, u64>,
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
            demand: Arc::new(|_, _| Demand::default()),
            autoscale: AutoscaleSettings::default(),
            scalers: HashMap::new(),
            last_sample: None,
            autoscaled_any: false,
            starting: HashMap::new(),
            start_secs: HashMap::new(),
            metrics: ReconcilerMetrics::default(),
        }
    }

    /// Where pass durations, failures and replica states are counted.
    pub fn with_metrics(mut self, metrics: ReconcilerMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Where the autoscaler's signals come from (the gateway), and its timing; without it an
    /// autoscaled deployment sees no demand.
    pub fn with_autoscaler(mut self, demand: DemandProbe, settings: AutoscaleSettings) -> Self {
        self.demand = demand;
        self.autoscale = settings;
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
            let mut sleep = next_retry
                .map(|t| t.saturating_duration_since(Instant::now()))
                .unwrap_or(self.settings.resync)
                .min(self.settings.resync);
            if self.autoscaled_any {
                sleep = sleep.min(self.autoscale.tick);
            }
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
        let mut desired = self.store.all_deployments().await?;
        let observed = self.runtime.observe();
        let stopping = self.stopping.lock().map(|s| s.clone()).unwrap_or_default();
        self.time_starts(&observed);
        self.autoscale(&mut desired, &observed, &stopping, Instant::now())
            .await?;
        let models: HashMap<String, ModelInfo> = self
            .catalog
            .models
            .iter()
            .map(|m| {
                (
                    m.model_name.clone(),
                    ModelInfo {
                        unavailable: m.missing_weights_reason(),
                        start_secs: self.start_secs.get(&m.model_name).copied(),
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

    /// Times the starts of replicas this reconciler started: from their start to the first
    /// pass that sees them ready.
    fn time_starts(&mut self, observed: &[ObservedReplica]) {
        let now = Timestamp::now().millis();
        for r in observed {
            if r.state == ReplicaState::Ready {
                if let Some(model) = self.starting.remove(&r.id) {
                    let ms = u64::try_from(now - r.started_at.millis()).unwrap_or(0);
                    let secs = ms.div_ceil(1000).max(1);
                    tracing::info!(model = %model, replica = %r.id, start_ms = ms, "replica start timed");
                    self.start_secs.insert(model, secs);
                }
            }
        }
        let live: HashSet<&str> = observed
            .iter()
            .filter(|r| !matches!(r.state, ReplicaState::Exited { .. }))
            .map(|r| r.id.as_str())
            .collect();
        self.starting.retain(|id, _| live.contains(id.as_str()));
    }

    /// Samples every autoscaled deployment, decides, and writes new targets (gated on the
    /// generation read), replacing them in `desired` so that this pass plans them.
    async fn autoscale(
        &mut self,
        desired: &mut [Deployment],
        observed: &[ObservedReplica],
        stopping: &HashSet<String>,
        now: Instant,
    ) -> Result<(), berth_store::StoreError> {
        let sample = self
            .last_sample
            .is_none_or(|t| now.saturating_duration_since(t) >= self.autoscale.tick / 2);
        if sample {
            self.last_sample = Some(now);
        }
        let mut starting: HashMap<(&str, &str), u32> = HashMap::new();
        for r in observed {
            if r.state == ReplicaState::Starting && !stopping.contains(&r.id) {
                *starting
                    .entry((r.workspace_id.as_str(), r.deployed_model.as_str()))
                    .or_default() += 1;
            }
        }
        let mut live_keys = HashSet::new();
        let mut decisions = Vec::new();
        for d in desired.iter_mut() {
            let Some(a) = d.autoscaling else { continue };
            if matches!(d.status, Status::Deleting | Status::Failed) {
                continue;
            }
            let key = (d.workspace_id.clone(), d.deployed_model.clone());
            let base = d.base_capacity.max(1);
            let signals = Signals {
                demand: (self.demand)(&d.workspace_id, &d.deployed_model),
                replicas: d.capacity / base,
                starting: starting
                    .get(&(d.workspace_id.as_str(), d.deployed_model.as_str()))
                    .copied()
                    .unwrap_or(0),
                generation: d.generation,
                now,
            };
            let state = self.scalers.entry(key.clone()).or_default();
            live_keys.insert(key);
            let windows = self.autoscale.windows;
            let Some(decision) = decide(&a, base, &windows, state, &signals, sample) else {
                self.metrics
                    .autoscale_target(&d.workspace_id, &d.deployed_model, d.capacity);
                continue;
            };
            let capacity = decision.to * base;
            // None: an API change landed since this pass read the deployment; the next pass
            // decides again on it.
            if let Some(updated) = self
                .store
                .set_autoscaled_capacity(&d.workspace_id, &d.deployed_model, d.generation, capacity)
                .await?
            {
                tracing::info!(
                    deployment = %d.deployed_model,
                    workspace = %d.workspace_id,
                    from = decision.from * base,
                    to = capacity,
                    reason = decision.reason,
                    in_flight = decision.in_flight,
                    queued = decision.queued,
                    stable_avg = decision.stable_avg,
                    panic_avg = decision.panic_avg,
                    "autoscaled"
                );
                self.metrics.autoscaled(
                    &d.workspace_id,
                    &d.deployed_model,
                    decision.direction.as_str(),
                    capacity,
                );
                decisions.push(Event::Autoscaled {
                    workspace_id: d.workspace_id.clone(),
                    deployed_model: d.deployed_model.clone(),
                    from_capacity: decision.from * base,
                    to_capacity: capacity,
                    direction: decision.direction.as_str(),
                    reason: decision.reason,
                    in_flight: decision.in_flight,
                    queued: decision.queued,
                    stable_avg: decision.stable_avg,
                    panic_avg: decision.panic_avg,
                });
                *d = updated;
            }
        }
        let metrics = &self.metrics;
        self.scalers.retain(|k, _| {
            let keep = live_keys.contains(k);
            if !keep {
                metrics.autoscale_gone(&k.0, &k.1);
            }
            keep
        });
        self.autoscaled_any = !live_keys.is_empty();
        self.events.publish(decisions);
        Ok(())
    }

    async fn start(&mut self, key: &Key, model_name: &str) -> Result<(), String> {
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
        let id = spec.id.clone();
        // The runtime records the replica (ahead of the spawn) in its journal.
        let started = self.runtime.start(spec).await.map_err(|e| e.to_string())?;
        self.starting.insert(id, model_name.to_owned());
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
