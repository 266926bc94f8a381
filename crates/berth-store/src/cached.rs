//! [`CachedStore`]: an in-memory mirror of the deployments in front of another store.
//!
//! Reads of deployments (get, list pages, the reconciler's full view) are answered from memory;
//! every write goes to the inner store first and the mirror is updated from the row it returns.
//! Deployment writes are serialised through one async mutex so that the mirror applies them in
//! the order the inner store did. This is correct as long as this process is the only writer of
//! deployments, which is how `berth serve` runs (`berth keys` only writes keys, which are not
//! mirrored).
//!
//! A write lands in both the inner store and the mirror, or in neither, whatever the caller
//! does: each write runs on a task of its own, so a caller that goes away mid-write (an HTTP
//! client that disconnects, dropping its handler's future) cannot leave a row committed in the
//! inner store but missing from the mirror.

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
    shared: Arc<Shared<S>>,
}

struct Shared<S> {
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
            shared: Arc::new(Shared {
                inner,
                mirror: RwLock::new(mirror),
                writes: Mutex::new(()),
            }),
        })
    }

    /// The store behind the cache.
    pub fn inner(&self) -> &S {
        &self.shared.inner
    }

    /// Runs one deployment write to completion on its own task (see the module documentation),
    /// serialised with the other writes.
    async fn write_through<T, F>(&self, write: impl FnOnce(Arc<Shared<S>>) -> F) -> Result<T>
    where
        T: Send + 'static,
        F: std::future::Future<Output = Result<T>> + Send + 'static,
    {
        let task = tokio::spawn(write(Arc::clone(&self.shared)));
        match task.await {
            Ok(result) => result,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
}

impl<S> Shared<S> {
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
        self.write_through(|sh| async move {
            let _serial = sh.writes.lock().await;
            let d = sh.inner.create_deployment(new).await?;
            sh.write().put(d.clone());
            Ok(d)
        })
        .await
    }

    async fn get_deployment(
        &self,
        workspace_id: &str,
        deployed_model: &str,
    ) -> Result<Option<Deployment>> {
        Ok(self
            .shared
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
        let mirror = self.shared.read();
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
        let mirror = self.shared.read();
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
        let (ws, name, modifier) = (
            workspace_id.to_owned(),
            deployed_model.to_owned(),
            modifier.to_owned(),
        );
        self.write_through(|sh| async move {
            let _serial = sh.writes.lock().await;
            let d = sh
                .inner
                .change_deployment(&ws, &name, change, &modifier, now)
                .await?;
            if let Some(d) = &d {
                sh.write().put(d.clone());
            }
            Ok(d)
        })
        .await
    }

    async fn set_autoscaled_capacity(
        &self,
        workspace_id: &str,
        deployed_model: &str,
        generation: i64,
        capacity: u32,
    ) -> Result<Option<Deployment>> {
        let (ws, name) = (workspace_id.to_owned(), deployed_model.to_owned());
        self.write_through(|sh| async move {
            let _serial = sh.writes.lock().await;
            let d = sh
                .inner
                .set_autoscaled_capacity(&ws, &name, generation, capacity)
                .await?;
            if let Some(d) = &d {
                sh.write().put(d.clone());
            }
            Ok(d)
        })
        .await
    }

    async fn record_status(
        &self,
        workspace_id: &str,
        deployed_model: &str,
        observed: &ObservedStatus,
    ) -> Result<bool> {
        let (ws, name, observed) = (
            workspace_id.to_owned(),
            deployed_model.to_owned(),
            observed.clone(),
        );
        self.write_through(|sh| async move {
            let _serial = sh.writes.lock().await;
            let found = sh.inner.record_status(&ws, &name, &observed).await?;
            // The store decides what the write did (generation gating, gmt_modified): read it
            // back.
            match sh.inner.get_deployment(&ws, &name).await? {
                Some(d) => sh.write().put(d),
                None => sh.write().remove(&ws, &name),
            }
            Ok(found)
        })
        .await
    }

    async fn remove_deployment(
        &self,
        workspace_id: &str,
        deployed_model: &str,
        generation: i64,
    ) -> Result<bool> {
        let (ws, name) = (workspace_id.to_owned(), deployed_model.to_owned());
        self.write_through(|sh| async move {
            let _serial = sh.writes.lock().await;
            let removed = sh.inner.remove_deployment(&ws, &name, generation).await?;
            if removed {
                sh.write().remove(&ws, &name);
            }
            Ok(removed)
        })
        .await
    }

    async fn insert_api_key(&self, key: &ApiKeyRecord) -> Result<()> {
        self.shared.inner.insert_api_key(key).await
    }

    async fn find_api_key(&self, hash: &KeyHash) -> Result<Option<ApiKeyRecord>> {
        self.shared.inner.find_api_key(hash).await
    }

    async fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>> {
        self.shared.inner.list_api_keys().await
    }

    async fn revoke_api_key(&self, id: &str) -> Result<bool> {
        self.shared.inner.revoke_api_key(id).await
    }

    async fn put_replica(&self, replica: &ReplicaRecord) -> Result<()> {
        self.shared.inner.put_replica(replica).await
    }

    async fn remove_replica(&self, id: &str) -> Result<bool> {
        self.shared.inner.remove_replica(id).await
    }

    async fn list_replicas(&self) -> Result<Vec<ReplicaRecord>> {
        self.shared.inner.list_replicas().await
    }
}
