//! berth's desired state: deployments, API keys and replica records, behind the [`Store`] trait.
//!
//! SQLite (the embedded default) lives in [`sqlite`], PostgreSQL in [`postgres`]; every backend must pass the conformance
//! suite in [`conformance`], which is written once and run against each of them.

pub mod cached;
pub mod conformance;
pub mod metered;
pub mod postgres;
mod sql_impl;
pub mod sqlite;

use async_trait::async_trait;
use berth_core::{
    ApiKeyRecord, Autoscaling, Deployment, KeyHash, NewDeployment, ReplicaRecord, Status, Timestamp,
};

pub use cached::CachedStore;
pub use metered::{Metered, StoreMetrics};
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// Errors a store can return.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A live deployment with this `deployed_model` already exists in the workspace.
    #[error("deployment {0} already exists")]
    Conflict(String),
    /// The deployment is `DELETING`, which is terminal: only another delete may touch it.
    #[error("deployment {0} is being deleted")]
    Deleting(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A row that cannot be turned back into a domain value (a bug or a hand-edited database).
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A change of desired state made through the API. Each bumps the deployment's `generation`
/// and sets `modifier` and `gmt_modified`.
#[derive(Debug, Clone, PartialEq)]
pub enum DesiredChange {
    /// New capacity target; status becomes `status.after_scale()` and `fail_reason` is cleared.
    Scale { capacity: u32 },
    /// New rate limits; `None` leaves a limit unchanged. Status is unchanged.
    ///
    /// `autoscaling`: `None` leaves it unchanged, `Some(None)` turns it off (capacity stays
    /// where it is), `Some(Some(a))` sets it and brings `capacity` within its bounds (a
    /// capacity that moves changes the status as a scale does).
    Limits {
        rpm_limit: Option<u64>,
        tpm_limit: Option<u64>,
        autoscaling: Option<Option<Autoscaling>>,
    },
    /// Mark for deletion: status `DELETING`. Idempotent.
    Delete,
}

/// What the reconciler observed for one deployment in one pass.
#[derive(Debug, Clone, PartialEq)]
pub struct ObservedStatus {
    /// The generation the reconciler planned against.
    pub generation: i64,
    pub status: Status,
    pub ready_capacity: u32,
    pub fail_reason: Option<String>,
    pub status_message: Option<String>,
}

/// Desired-state storage. Every method is a single atomic operation.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Inserts a new deployment with status `PENDING`, `ready_capacity` 0 and generation 1.
    /// `Conflict` if the workspace already has a deployment of that `deployed_model`.
    async fn create_deployment(&self, new: NewDeployment) -> Result<Deployment>;

    /// One deployment of a workspace.
    async fn get_deployment(
        &self,
        workspace_id: &str,
        deployed_model: &str,
    ) -> Result<Option<Deployment>>;

    /// One page of a workspace's deployments, newest first, and the workspace's total.
    async fn list_deployments(
        &self,
        workspace_id: &str,
        offset: u64,
        limit: u64,
    ) -> Result<(Vec<Deployment>, u64)>;

    /// Every deployment of every workspace (the reconciler's view).
    async fn all_deployments(&self) -> Result<Vec<Deployment>>;

    /// Applies an API change; `None` if the deployment does not exist. `DELETING` is terminal
    /// and enforced here, in the same statement as the write: a scale or limits change of a
    /// deleting deployment is `Err(Deleting)`; a repeated delete returns the row unchanged.
    async fn change_deployment(
        &self,
        workspace_id: &str,
        deployed_model: &str,
        change: DesiredChange,
        modifier: &str,
        now: Timestamp,
    ) -> Result<Option<Deployment>>;

    /// Sets the capacity the autoscaler chose, without a new generation: only while the
    /// deployment is at `generation` (an API change since wins), has autoscaling on, is not
    /// `DELETING`, and `capacity` is within its bounds. `None` when nothing was written.
    async fn set_autoscaled_capacity(
        &self,
        workspace_id: &str,
        deployed_model: &str,
        generation: i64,
        capacity: u32,
    ) -> Result<Option<Deployment>>;

    /// Writes what the reconciler observed. `ready_capacity`, `fail_reason` and `status_message`
    /// are always written; `status` only if `observed.generation` is still the current generation
    /// and the deployment is not `DELETING` (a newer API change or a delete wins). `gmt_modified`
    /// changes only when something visible changed. Returns false if the deployment is gone.
    async fn record_status(
        &self,
        workspace_id: &str,
        deployed_model: &str,
        observed: &ObservedStatus,
    ) -> Result<bool>;

    /// Removes a deployment row at the end of its delete: only while it is `DELETING` at
    /// `generation` (the one the reconciler planned against). Returns false when nothing was
    /// removed (already gone, or not that deleting generation).
    async fn remove_deployment(
        &self,
        workspace_id: &str,
        deployed_model: &str,
        generation: i64,
    ) -> Result<bool>;

    /// Stores a new API key.
    async fn insert_api_key(&self, key: &ApiKeyRecord) -> Result<()>;

    /// The unrevoked key with this hash.
    async fn find_api_key(&self, hash: &KeyHash) -> Result<Option<ApiKeyRecord>>;

    /// Every key, revoked ones included, oldest first.
    async fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>>;

    /// Revokes a key by id; false if there is no such key.
    async fn revoke_api_key(&self, id: &str) -> Result<bool>;

    /// Records a started replica (insert or replace by id).
    async fn put_replica(&self, replica: &ReplicaRecord) -> Result<()>;

    /// Forgets a replica; false if it was not recorded.
    async fn remove_replica(&self, id: &str) -> Result<bool>;

    /// Every recorded replica.
    async fn list_replicas(&self) -> Result<Vec<ReplicaRecord>>;
}
