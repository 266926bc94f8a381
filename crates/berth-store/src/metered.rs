//! [`Metered`]: any [`Store`] with the latency of its writes measured, for `/metrics`
//! (`berth_store_write_duration_seconds{op}`). Reads pass through untimed: the server answers
//! them from its in-memory mirror.

use std::time::Instant;

use async_trait::async_trait;
use berth_core::{ApiKeyRecord, Deployment, KeyHash, ReplicaRecord, Timestamp};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::{DesiredChange, NewDeployment, ObservedStatus, Result, Store};

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct WriteLabels {
    /// The store operation, e.g. `create_deployment`, `record_status`, `put_replica`.
    pub op: &'static str,
}

/// The write-latency family. Cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct StoreMetrics {
    writes: Family<WriteLabels, Histogram, fn() -> Histogram>,
}

fn write_histogram() -> Histogram {
    Histogram::new([
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
    ])
}

impl Default for StoreMetrics {
    fn default() -> Self {
        Self {
            writes: Family::new_with_constructor(write_histogram),
        }
    }
}

impl StoreMetrics {
    /// Adds the family to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register_with_unit(
            "store_write_duration",
            "Time a write to the durable store took, by operation (failed writes included)",
            Unit::Seconds,
            self.writes.clone(),
        );
    }

    fn observe(&self, op: &'static str, since: Instant) {
        self.writes
            .get_or_create(&WriteLabels { op })
            .observe(since.elapsed().as_secs_f64());
    }
}

/// A store whose writes are timed.
pub struct Metered<S> {
    inner: S,
    metrics: StoreMetrics,
}

impl<S: Store> Metered<S> {
    pub fn new(inner: S, metrics: StoreMetrics) -> Self {
        Self { inner, metrics }
    }

    async fn timed<T>(&self, op: &'static str, f: impl std::future::Future<Output = T>) -> T {
        let started = Instant::now();
        let out = f.await;
        self.metrics.observe(op, started);
        out
    }
}

#[async_trait]
impl<S: Store> Store for Metered<S> {
    async fn create_deployment(&self, new: NewDeployment) -> Result<Deployment> {
        self.timed("create_deployment", self.inner.create_deployment(new))
            .await
    }

    async fn get_deployment(
        &self,
        workspace_id: &str,
        deployed_model: &str,
    ) -> Result<Option<Deployment>> {
        self.inner
            .get_deployment(workspace_id, deployed_model)
            .await
    }

    async fn list_deployments(
        &self,
        workspace_id: &str,
        offset: u64,
        limit: u64,
    ) -> Result<(Vec<Deployment>, u64)> {
        self.inner
            .list_deployments(workspace_id, offset, limit)
            .await
    }

    async fn all_deployments(&self) -> Result<Vec<Deployment>> {
        self.inner.all_deployments().await
    }

    async fn change_deployment(
        &self,
        workspace_id: &str,
        deployed_model: &str,
        change: DesiredChange,
        modifier: &str,
        now: Timestamp,
    ) -> Result<Option<Deployment>> {
        self.timed(
            "change_deployment",
            self.inner
                .change_deployment(workspace_id, deployed_model, change, modifier, now),
        )
        .await
    }

    async fn set_autoscaled_capacity(
        &self,
        workspace_id: &str,
        deployed_model: &str,
        generation: i64,
        capacity: u32,
    ) -> Result<Option<Deployment>> {
        self.timed(
            "set_autoscaled_capacity",
            self.inner
                .set_autoscaled_capacity(workspace_id, deployed_model, generation, capacity),
        )
        .await
    }

    async fn record_status(
        &self,
        workspace_id: &str,
        deployed_model: &str,
        observed: &ObservedStatus,
    ) -> Result<bool> {
        self.timed(
            "record_status",
            self.inner
                .record_status(workspace_id, deployed_model, observed),
        )
        .await
    }

    async fn remove_deployment(
        &self,
        workspace_id: &str,
        deployed_model: &str,
        generation: i64,
    ) -> Result<bool> {
        self.timed(
            "remove_deployment",
            self.inner
                .remove_deployment(workspace_id, deployed_model, generation),
        )
        .await
    }

    async fn insert_api_key(&self, key: &ApiKeyRecord) -> Result<()> {
        self.timed("insert_api_key", self.inner.insert_api_key(key))
            .await
    }

    async fn find_api_key(&self, hash: &KeyHash) -> Result<Option<ApiKeyRecord>> {
        self.inner.find_api_key(hash).await
    }

    async fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>> {
        self.inner.list_api_keys().await
    }

    async fn revoke_api_key(&self, id: &str) -> Result<bool> {
        self.timed("revoke_api_key", self.inner.revoke_api_key(id))
            .await
    }

    async fn put_replica(&self, replica: &ReplicaRecord) -> Result<()> {
        self.timed("put_replica", self.inner.put_replica(replica))
            .await
    }

    async fn remove_replica(&self, id: &str) -> Result<bool> {
        self.timed("remove_replica", self.inner.remove_replica(id))
            .await
    }

    async fn list_replicas(&self) -> Result<Vec<ReplicaRecord>> {
        self.inner.list_replicas().await
    }
}
