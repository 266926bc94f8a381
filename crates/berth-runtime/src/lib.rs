//! Where replicas run: the [`Runtime`] trait and its local-process implementation.
//!
//! A runtime starts replica processes, probes their readiness (`GET /health` answers 200), and
//! reports what it sees; it never decides how many replicas there should be (that is the
//! reconciler's job).

pub mod local;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use async_trait::async_trait;
use berth_core::{CatalogModel, ReplicaRecord, Timestamp};

pub use local::identity::{ORPHAN_TIMEOUT_ENV, REPLICA_ID_ENV, REPLICA_SECRET_ENV};
pub use local::{kill_leftover, AdoptReport, LocalRuntime, LocalRuntimeConfig};

/// Errors starting or stopping a replica.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("no free port: {0}")]
    NoPort(#[source] std::io::Error),
    #[error("cannot start `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("engine command is empty")]
    EmptyCommand,
    #[error("cannot signal replica: {0}")]
    Signal(#[from] nix::Error),
    /// The replica could not be recorded, so it was not started (or was stopped again).
    #[error("cannot record replica: {0}")]
    Journal(#[source] JournalError),
}

/// Why a [`ReplicaJournal`] write failed.
pub type JournalError = Box<dyn std::error::Error + Send + Sync>;

/// Where a runtime records its replicas durably, so a restarted berth finds every process it
/// started. The runtime writes ahead: a record exists before its process is spawned, is updated
/// with the pid right after, and is removed only once the process is gone.
#[async_trait]
pub trait ReplicaJournal: Send + Sync + 'static {
    /// Inserts or replaces the record of `replica.id`.
    async fn record(&self, replica: &ReplicaRecord) -> Result<(), JournalError>;
    /// Removes the record of `id` (absent is fine).
    async fn forget(&self, id: &str) -> Result<(), JournalError>;
}

/// A journal in memory: for tests and benchmarks, where nothing needs to survive the process.
#[derive(Debug, Default)]
pub struct MemoryJournal(Mutex<BTreeMap<String, ReplicaRecord>>);

impl MemoryJournal {
    /// Every record, by id.
    pub fn records(&self) -> Vec<ReplicaRecord> {
        self.0
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }
}

#[async_trait]
impl ReplicaJournal for MemoryJournal {
    async fn record(&self, replica: &ReplicaRecord) -> Result<(), JournalError> {
        if let Ok(mut m) = self.0.lock() {
            m.insert(replica.id.clone(), replica.clone());
        }
        Ok(())
    }

    async fn forget(&self, id: &str) -> Result<(), JournalError> {
        if let Ok(mut m) = self.0.lock() {
            m.remove(id);
        }
        Ok(())
    }
}

/// What to start.
#[derive(Debug, Clone)]
pub struct ReplicaSpec {
    /// Unique replica id, chosen by the caller.
    pub id: String,
    pub workspace_id: String,
    pub deployed_model: String,
    /// The model; its engine command template is rendered with the port the runtime picks.
    pub model: CatalogModel,
    /// Extra environment variables for the replica (the environment is otherwise explicit and
    /// minimal, never inherited wholesale).
    pub env: BTreeMap<String, String>,
}

/// The life of a replica as the runtime sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaState {
    /// Process running, `/health` not yet 200.
    Starting,
    /// `/health` answered 200.
    Ready,
    /// Was ready, health checks now fail; the gateway should not use it.
    Unhealthy,
    /// The process is gone (crashed, exited, or never became ready in time and was killed).
    Exited { reason: String },
}

/// One replica the runtime knows about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedReplica {
    pub id: String,
    pub workspace_id: String,
    pub deployed_model: String,
    pub pid: Option<u32>,
    pub addr: SocketAddr,
    pub started_at: Timestamp,
    pub state: ReplicaState,
    /// The secret the replica was given at spawn; callers send it as a bearer token.
    pub secret: String,
}

/// Starts, stops and observes replicas.
#[async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// Starts a replica process and begins probing its readiness. Returns once the process is
    /// spawned (not when it is ready).
    async fn start(&self, spec: ReplicaSpec) -> Result<ObservedReplica, RuntimeError>;

    /// Stops a replica: SIGTERM to its process group, a grace period, then SIGKILL; waits until
    /// the process is gone and forgets it. Idempotent: unknown or exited ids are simply forgotten.
    async fn stop(&self, id: &str) -> Result<(), RuntimeError>;

    /// Everything the runtime knows now, exited replicas included until they are stopped.
    fn observe(&self) -> Vec<ObservedReplica>;

    /// Wakes when any replica changes state (became ready, unhealthy, or exited), so the
    /// reconciler reacts at once instead of at its next periodic pass.
    async fn changed(&self);
}
