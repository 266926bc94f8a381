//! Shared state of the HTTP handlers.

use std::ops::Deref;
use std::sync::Arc;

use berth_control::Nudge;
use berth_core::ModelCatalog;
use berth_store::Store;

use crate::auth::KeyRing;
use crate::config::QuotaConfig;

/// What every handler can reach. Cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<AppInner>);

/// The contents of [`AppState`].
pub struct AppInner {
    pub store: Arc<dyn Store>,
    pub catalog: Arc<ModelCatalog>,
    pub keys: KeyRing,
    /// Asks the reconciler for a pass after desired state changed.
    pub nudge: Nudge,
    /// The inference gateway; the reconciler publishes its routing table into it.
    pub gateway: berth_gateway::Gateway,
    pub quotas: Quotas,
    /// What the reconciler sees change, for the event streams.
    pub events: berth_control::EventHub,
    /// Where replicas' log files are (`<replica id>.log`).
    pub replica_logs: std::path::PathBuf,
    /// The replicas the runtime knows now, with their states.
    pub replicas: ReplicaView,
}

/// What the runtime observes now ([`berth_runtime::Runtime::observe`]).
pub type ReplicaView = Arc<dyn Fn() -> Vec<berth_runtime::ObservedReplica> + Send + Sync>;

/// Per-workspace quotas, and the lock that makes a quota check and the write it allows one step
/// (two creates at once cannot both take the last deployment of a quota).
#[derive(Debug, Default)]
pub struct Quotas {
    pub config: QuotaConfig,
    pub lock: tokio::sync::Mutex<()>,
}

impl Quotas {
    pub fn new(config: QuotaConfig) -> Self {
        Self {
            config,
            lock: tokio::sync::Mutex::new(()),
        }
    }
}

impl AppState {
    pub fn new(inner: AppInner) -> Self {
        Self(Arc::new(inner))
    }

    /// State for answering inference alone, with a routing table published by hand: an empty
    /// catalog and no reconciler behind the nudge (the gateway benchmark and tests).
    pub fn inference_only(
        store: Arc<dyn Store>,
        keys: KeyRing,
        gateway: berth_gateway::Gateway,
    ) -> Self {
        Self::new(AppInner {
            store,
            catalog: Arc::new(ModelCatalog { models: vec![] }),
            keys,
            nudge: Nudge::default(),
            gateway,
            quotas: Quotas::default(),
            events: berth_control::EventHub::default(),
            replica_logs: std::path::PathBuf::new(),
            replicas: Arc::new(Vec::new),
        })
    }
}

impl Deref for AppState {
    type Target = AppInner;

    fn deref(&self) -> &AppInner {
        &self.0
    }
}
