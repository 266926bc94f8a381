//! [`CachedStore`]: an in-memory mirror of the deployments in front of another store.
//!
//! Reads of deployments (get, list pages, the reconciler's full view) are answered from memory;
//! every write goes to the inner store first and the mirror is updated from the row it returns.
//! Deployment writes are serialised through one async mutex so that the mirror applies them in
//! the order the inner store did. This is correct as long as this process is the only writer of
//! deployments, which is how `berth serve` runs (`berth keys` only writes keys, which are not
//! mirrored).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use berth_core::{ApiKeyRecord, Deployment, KeyHash, NewDeployment, ReplicaRecord, Timestamp};
use tokio::sync::Mutex;

use crate::{DesiredChange, ObservedStatus, Result, Store};

type Key = (String, String);

#[derive(Default)]
struct Mirror {
    /// Creation order of each deployment (the inner store's order, then insertion order).
    order: HashMap<Key, u64>,
    /// Per workspace: creation order -> deployment.
    by_workspace: HashMap<String, BTreeMap<u64, Arc<Deployment>>>,
    next: u64,
}

impl Mirror {
    fn put(&mut self, d: Deployment) {
        let key = (d.workspace_id.clone(), d.deployed_model.clone());
        let order = *self.order.entry(key).or_insert_with(|| {
            self.next += 1;
            self.next
        });
        self.by_workspace
            .entry(d.workspace_id.clone())
            .or_default()
            .insert(order, Arc::new(d));
    }

    fn remove(&mut self, workspace_id: &str, deployed_model: &str) {
        let key = (workspace_id.to_owned(), deployed_model.to_owned());
        if let Some(order) = self.order.remove(&key) {
            if let Some(ws) = self.by_workspace.get_mut(workspace_id) {
                ws.remove(&order);
                if ws.is_empty() {
                    self.by_workspace.remove(workspace_id);
                }
            }
        }
    }

    fn get(&self, workspace_id: &str, deployed_model: &str) -> Option<Arc<Deployment>> {
        let key = (workspace_id.to_owned(), deployed_model.to_owned());
        let order = self.order.get(&key)?;
        self.by_workspace.get(workspace_id)?.get(order).cloned()
    }
}

/// A [`Store`] whose deployment reads come from memory.
pub struct CachedStore<S> {
    inner: S,
    mirror: RwLock<Mirror>,
    writes: Mutex<()>,
}

impl<S: Store> CachedStore<S> {
    /// Loads every deployment of `inner` into memory.
    pub async fn new(inner: S) -> Result<Self> {
        let mut mirror = Mirror::default();
        for d in inner.all_deployments().await? {
            mirror.put(d);
        }
        Ok(Self {
            inner,
            mirror: RwLock::new(mirror),
            writes: Mutex::new(()),
        })
    }

    /// The store behind the cache.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Mirror> {
        // A poisoned lock only means a panic elsewhere while holding it; the data is plain values.
        self.mirror.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Mirror> {
        self.mirror.write().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl<S: Store> Store for CachedStore<S> {
    async fn create_deployment(&self, new: NewDeployment) -> Result<Deployment> {
        let _serial = self.writes.lock().await;
        let d = self.inner.create_deployment(new).await?;
        self.write().put(d.clone());
        Ok(d)
    }

    async fn get_deployment(
        &self,
        workspace_id: &str,
        deployed_model: &str,
    ) -> Result<Option<Deployment>> {
        Ok(self
            .read()
            .get(workspace_id, deployed_model)
            .map(|d| Deployment::clone(&d)))
    }

    async fn list_deployments(
        &self,
        workspace_id: &str,
        offset: u64,
        limit: u64,
    ) -> Result<(Vec<Deployment>, u64)> {
        let mirror = self.read();
        let Some(ws) = mirror.by_workspace.get(workspace_id) else {
            return Ok((Vec::new(), 0));
        };
        let page = ws
            .values()
            .rev()
            .skip(usize::try_from(offset).unwrap_or(usize::MAX))
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .map(|d| Deployment::clone(d))
            .collect();
        Ok((page, ws.len() as u64))
    }

    async fn all_deployments(&self) -> Result<Vec<Deployment>> {
        let mirror = self.read();
        let mut all: Vec<(u64, &Arc<Deployment>)> = mirror
            .by_workspace
            .values()
            .flat_map(|ws| ws.iter().map(|(o, d)| (*o, d)))
            .collect();
        all.sort_unstable_by_key(|(o, _)| *o);
        Ok(all.into_iter().map(|(_, d)| Deployment::clone(d)).collect())
    }

    async fn change_deployment(
        &self,
        workspace_id: &str,
        deployed_model: &str,
        change: DesiredChange,
        modifier: &str,
        now: Timestamp,
    ) -> Result<Option<Deployment>> {
        let _serial = self.writes.lock().await;
        let d = self
            .inner
            .change_deployment(workspace_id, deployed_model, change, modifier, now)
            .await?;
        if let Some(d) = &d {
            self.write().put(d.clone());
        }
        Ok(d)
    }

    async fn record_status(
        &self,
        workspace_id: &str,
        deployed_model: &str,
        observed: &ObservedStatus,
    ) -> Result<bool> {
        let _serial = self.writes.lock().await;
        let found = self
            .inner
            .record_status(workspace_id, deployed_model, observed)
            .await?;
        // The store decides what the write did (generation gating, gmt_modified): read it back.
        match self
            .inner
            .get_deployment(workspace_id, deployed_model)
            .await?
        {
            Some(d) => self.write().put(d),
            None => self.write().remove(workspace_id, deployed_model),
        }
        Ok(found)
    }

    async fn remove_deployment(&self, workspace_id: &str, deployed_model: &str) -> Result<bool> {
        let _serial = self.writes.lock().await;
        let removed = self
            .inner
            .remove_deployment(workspace_id, deployed_model)
            .await?;
        self.write().remove(workspace_id, deployed_model);
        Ok(removed)
    }

    async fn insert_api_key(&self, key: &ApiKeyRecord) -> Result<()> {
        self.inner.insert_api_key(key).await
    }

    async fn find_api_key(&self, hash: &KeyHash) -> Result<Option<ApiKeyRecord>> {
        self.inner.find_api_key(hash).await
    }

    async fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>> {
        self.inner.list_api_keys().await
    }

    async fn revoke_api_key(&self, id: &str) -> Result<bool> {
        self.inner.revoke_api_key(id).await
    }

    async fn put_replica(&self, replica: &ReplicaRecord) -> Result<()> {
        self.inner.put_replica(replica).await
    }

    async fn remove_replica(&self, id: &str) -> Result<bool> {
        self.inner.remove_replica(id).await
    }

    async fn list_replicas(&self) -> Result<Vec<ReplicaRecord>> {
        self.inner.list_replicas().await
    }
}
