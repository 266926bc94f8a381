//! The routing snapshot: what the reconciler last published, in the shape the hot path reads.
//!
//! The reconciler hands over a [`RoutingTable`]; [`Routes::publish`] turns it into a [`Snapshot`]
//! (deployments by workspace then name, so a lookup borrows `&str` and allocates nothing) and
//! swaps it in with one atomic store. Per-replica state (in-flight count, ejection) and
//! per-deployment state (rate-limit windows, the wait queue) are carried over from the previous
//! snapshot, so a re-publish neither forgets load nor resets limits. Requests waiting for a
//! replica watch a version counter; nothing else does.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use arc_swap::ArcSwap;
use berth_core::{RoutingEntry, RoutingTable, Status};
use tokio::sync::watch;

use crate::limit::Window;
use crate::metrics::{DeploymentLabels, DeploymentMetrics, GatewayMetrics, ReplicaLabels};
use crate::upstream::IdleConns;

/// One ready replica of a deployment, as the balancer sees it.
#[derive(Debug)]
pub struct Backend {
    pub replica_id: String,
    pub addr: SocketAddr,
    /// Idle keep-alive connections to the replica.
    pub(crate) idle: Arc<IdleConns>,
    in_flight: AtomicU32,
    /// Clock reading (see [`Clock`]) until which the replica is skipped; 0 when not ejected.
    ejected_until: AtomicU64,
}

impl Backend {
    /// A replica at `addr` that takes `secret` as its bearer token (empty: none).
    pub fn new(replica_id: String, addr: SocketAddr, secret: &str) -> Self {
        Self {
            idle: Arc::new(IdleConns::with_secret(secret)),
            replica_id,
            addr,
            in_flight: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
        }
    }

    /// Requests sent to this replica whose responses have not ended yet.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// True while the replica is ejected (it refused a connection recently).
    pub fn is_ejected(&self, now: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > now
    }

    pub(crate) fn eject_until(&self, until: u64) {
        self.ejected_until.fetch_max(until, Ordering::Relaxed);
    }

    fn ejected_until(&self) -> u64 {
        self.ejected_until.load(Ordering::Relaxed)
    }
}

/// Counts one request against a [`Backend`] for as long as it lives. It is moved into the
/// response body, so it is released when the response ends or the client goes away.
#[derive(Debug)]
pub struct InFlight(Arc<Backend>);

impl InFlight {
    pub fn new(backend: Arc<Backend>) -> Self {
        backend.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(backend)
    }

    pub fn backend(&self) -> &Arc<Backend> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// State of one deployment that outlives snapshots.
#[derive(Debug)]
pub(crate) struct DeploymentState {
    pub rpm: Window,
    pub tpm: Window,
    /// Requests waiting for a ready replica.
    pub waiting: AtomicUsize,
    /// Calls admitted (past the rate limits) since the gateway started.
    pub calls: AtomicU64,
    /// Tokens used by answered requests (from the replicas' `usage`).
    pub tokens_total: AtomicU64,
    pub metrics: DeploymentMetrics,
}

impl DeploymentState {
    fn new(metrics: DeploymentMetrics) -> Self {
        Self {
            rpm: Window::default(),
            tpm: Window::default(),
            waiting: AtomicUsize::new(0),
            calls: AtomicU64::new(0),
            tokens_total: AtomicU64::new(0),
            metrics,
        }
    }
}

/// One deployment in a snapshot.
#[derive(Debug)]
pub(crate) struct Route {
    pub entry: Arc<RoutingEntry>,
    pub backends: Vec<Arc<Backend>>,
    pub state: Arc<DeploymentState>,
}

impl Route {
    /// Callable at all: a deployment being deleted answers like a missing one.
    fn visible(&self) -> bool {
        self.entry.status != Status::Deleting
    }

    /// The earliest time an ejected backend comes back, if all are ejected.
    pub fn next_unejection(&self) -> Option<u64> {
        self.backends.iter().map(|b| b.ejected_until()).min()
    }
}

/// An immutable routing snapshot.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    by_workspace: HashMap<String, HashMap<String, Arc<Route>>>,
}

impl Snapshot {
    pub fn get(&self, workspace_id: &str, deployed_model: &str) -> Option<&Arc<Route>> {
        self.by_workspace
            .get(workspace_id)?
            .get(deployed_model)
            .filter(|r| r.visible())
    }

    pub fn workspace(&self, workspace_id: &str) -> impl Iterator<Item = &Arc<Route>> {
        self.by_workspace
            .get(workspace_id)
            .into_iter()
            .flat_map(|m| m.values())
            .filter(|r| r.visible())
    }

    fn build(table: &RoutingTable, previous: &Snapshot, metrics: &GatewayMetrics) -> Self {
        let mut by_workspace: HashMap<String, HashMap<String, Arc<Route>>> = HashMap::new();
        for entry in table.entries.values() {
            let old = previous
                .by_workspace
                .get(&entry.workspace_id)
                .and_then(|m| m.get(&entry.deployed_model));
            let backends = entry
                .endpoints
                .iter()
                .map(|ep| {
                    old.and_then(|r| {
                        r.backends
                            .iter()
                            .find(|b| b.addr == ep.addr && b.replica_id == ep.replica_id)
                    })
                    .cloned()
                    .unwrap_or_else(|| {
                        Arc::new(Backend::new(ep.replica_id.clone(), ep.addr, &ep.secret))
                    })
                })
                .collect();
            let state = old.map(|r| r.state.clone()).unwrap_or_else(|| {
                Arc::new(DeploymentState::new(
                    metrics.deployment(&entry.workspace_id, &entry.deployed_model),
                ))
            });
            by_workspace
                .entry(entry.workspace_id.clone())
                .or_default()
                .insert(
                    entry.deployed_model.clone(),
                    Arc::new(Route {
                        entry: entry.clone(),
                        backends,
                        state,
                    }),
                );
        }
        Self { by_workspace }
    }
}

/// Monotonic nanoseconds since the gateway started; cheap to compare and to store in atomics.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock(Instant);

impl Clock {
    pub fn new() -> Self {
        Self(Instant::now())
    }

    pub fn now(&self) -> u64 {
        self.0.elapsed().as_nanos() as u64
    }
}

/// The published routes and their change signal.
#[derive(Debug)]
pub(crate) struct Routes {
    current: ArcSwap<Snapshot>,
    version: watch::Sender<u64>,
    /// Replicas taken out of routing, while calls they were given may still run: each call holds
    /// its backend, so the backend lives exactly as long as its calls do.
    retired: Mutex<HashMap<String, Weak<Backend>>>,
    pub metrics: GatewayMetrics,
}

impl Routes {
    pub fn new(metrics: GatewayMetrics) -> Self {
        Self {
            current: ArcSwap::from_pointee(Snapshot::default()),
            version: watch::Sender::new(0),
            retired: Mutex::default(),
            metrics,
        }
    }

    /// Sets the gauges (calls in flight per replica, calls waiting per deployment) from the
    /// current snapshot; series of replicas and deployments that left routing disappear.
    pub fn sample_gauges(&self) {
        let snap = self.current.load();
        self.metrics.in_flight.clear();
        self.metrics.waiting.clear();
        for route in snap.by_workspace.values().flat_map(|m| m.values()) {
            let labels: &DeploymentLabels = &route.state.metrics.labels;
            for b in &route.backends {
                self.metrics
                    .in_flight
                    .get_or_create(&ReplicaLabels {
                        workspace: labels.workspace.clone(),
                        deployment: labels.deployment.clone(),
                        replica: b.replica_id.clone(),
                    })
                    .set(i64::from(b.in_flight()));
            }
            self.metrics
                .waiting
                .get_or_create(labels)
                .set(route.state.waiting.load(Ordering::Relaxed) as i64);
        }
    }

    /// Swaps in a new table and wakes the requests waiting for a replica.
    pub fn publish(&self, table: &RoutingTable) {
        // Publishers are serialised by the watch channel's lock; readers never take it.
        self.version.send_modify(|v| {
            let previous = self.current.load_full();
            let next = Snapshot::build(table, &previous, &self.metrics);
            let kept: std::collections::HashSet<*const Backend> = next
                .by_workspace
                .values()
                .flat_map(|m| m.values())
                .flat_map(|r| r.backends.iter().map(Arc::as_ptr))
                .collect();
            self.current.store(Arc::new(next));
            let mut retired = self.retired.lock().unwrap_or_else(|e| e.into_inner());
            retired.retain(|_, b| b.strong_count() > 0);
            for backend in previous
                .by_workspace
                .values()
                .flat_map(|m| m.values())
                .flat_map(|r| r.backends.iter())
            {
                if !kept.contains(&Arc::as_ptr(backend)) {
                    retired.insert(backend.replica_id.clone(), Arc::downgrade(backend));
                }
            }
            *v += 1;
        });
    }

    /// Calls in flight on replica `replica_id`, routed or retired (0 when unknown).
    pub fn in_flight(&self, replica_id: &str) -> u32 {
        let snap = self.current.load();
        let routed: u32 = snap
            .by_workspace
            .values()
            .flat_map(|m| m.values())
            .flat_map(|r| r.backends.iter())
            .filter(|b| b.replica_id == replica_id)
            .map(|b| b.in_flight())
            .sum();
        let retired = self.retired.lock().unwrap_or_else(|e| e.into_inner());
        routed
            + retired
                .get(replica_id)
                .and_then(Weak::upgrade)
                .map_or(0, |b| b.in_flight())
    }

    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// A receiver that sees every publish after this call.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }
}
