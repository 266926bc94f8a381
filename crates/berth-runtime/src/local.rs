//! The local process runtime: each replica is a child process of berth.
//!
//! A replica runs in its own process group with an explicit, minimal environment; its stdout and
//! stderr go into `tracing` with `deployment` and `replica` fields. One supervisor task per
//! replica probes `GET /health`, waits on the process, and records state changes; `stop` sends
//! SIGTERM to the group, waits a grace period, then SIGKILL, and returns once the process has
//! been reaped (the scheme text-generation-inference's launcher uses).

mod logs;
mod process;
mod supervisor;

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use berth_core::{EngineArgs, Timestamp};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::{ObservedReplica, ReplicaSpec, ReplicaState, Runtime, RuntimeError};

pub use process::kill_leftover;

/// How the local runtime starts, probes and stops replicas.
#[derive(Debug, Clone)]
pub struct LocalRuntimeConfig {
    /// Substituted for `{berth}` in engine commands.
    pub berth_exe: PathBuf,
    /// Substituted for `{host}`: the IP address replicas listen on. Ports are picked free on it,
    /// and a wildcard address is probed over loopback.
    pub host: String,
    /// The environment every replica starts from (typically PATH and HOME), on top of
    /// `LANG=C.UTF-8`; each replica's own variables are added last. Nothing else is inherited.
    pub base_env: BTreeMap<String, String>,
    /// How often `/health` is probed while a replica is starting.
    pub startup_health_interval: Duration,
    /// How often `/health` is probed once a replica has been ready.
    pub health_interval: Duration,
    /// How long one `/health` probe may take before it counts as failed.
    pub health_timeout: Duration,
    /// How long a replica may take to pass `/health` before it is killed and reported exited.
    pub ready_timeout: Duration,
    /// How long `stop` waits after SIGTERM before it sends SIGKILL.
    pub stop_grace: Duration,
    /// Consecutive failed probes after which a ready replica is reported unhealthy.
    pub unhealthy_after: u32,
}

impl LocalRuntimeConfig {
    /// PATH and HOME of the current process, where set: the usual `base_env`.
    pub fn inherited_base_env() -> BTreeMap<String, String> {
        std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .filter(|(k, _)| k == "PATH" || k == "HOME")
            .collect()
    }
}

impl Default for LocalRuntimeConfig {
    fn default() -> Self {
        Self {
            berth_exe: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("berth")),
            host: "127.0.0.1".to_owned(),
            base_env: Self::inherited_base_env(),
            startup_health_interval: Duration::from_millis(250),
            health_interval: Duration::from_secs(2),
            health_timeout: Duration::from_secs(1),
            ready_timeout: Duration::from_secs(300),
            stop_grace: Duration::from_secs(10),
            unhealthy_after: 3,
        }
    }
}

/// Runs replicas as local child processes. See the module documentation.
pub struct LocalRuntime {
    inner: Arc<Inner>,
}

/// State shared by the runtime handle and the supervisor tasks.
struct Inner {
    config: LocalRuntimeConfig,
    http: reqwest::Client,
    replicas: Mutex<HashMap<String, Entry>>,
    /// Bumped, under the `replicas` lock, on every change `observe` could see.
    version: watch::Sender<u64>,
    /// The version the last `observe` (or `changed`) saw; `changed` waits for a newer one.
    seen: AtomicU64,
    next_serial: AtomicU64,
}

/// One replica the runtime knows about.
struct Entry {
    /// Distinguishes this replica from a later one started under the same id.
    serial: u64,
    observed: ObservedReplica,
    pgid: Pid,
    /// Becomes `true` once the process has been reaped and its group swept.
    exited: watch::Receiver<bool>,
    /// Set by `stop`, so the supervisor logs the exit as expected rather than as a failure.
    stopping: Arc<AtomicBool>,
}

impl LocalRuntime {
    /// A runtime with no replicas.
    pub fn new(config: LocalRuntimeConfig) -> Arc<Self> {
        let http = reqwest::Client::builder()
            .timeout(config.health_timeout)
            // Replicas are on this host: an HTTP_PROXY in berth's environment must not apply.
            .no_proxy()
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Arc::new(Self {
            inner: Arc::new(Inner {
                config,
                http,
                replicas: Mutex::new(HashMap::new()),
                version: watch::Sender::new(0),
                seen: AtomicU64::new(0),
                next_serial: AtomicU64::new(0),
            }),
        })
    }

    /// The configuration this runtime runs with.
    pub fn config(&self) -> &LocalRuntimeConfig {
        &self.inner.config
    }

    /// A receiver of the change counter, for consumers that want their own cursor rather than
    /// the shared one [`Runtime::changed`] keeps.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.version.subscribe()
    }

    /// Stops every replica concurrently (server shutdown). Returns the first error, after all
    /// stops have finished.
    pub async fn shutdown_all(&self) -> Result<(), RuntimeError> {
        let ids: Vec<String> = self.inner.lock().keys().cloned().collect();
        let mut stops = JoinSet::new();
        for id in ids {
            let inner = Arc::clone(&self.inner);
            stops.spawn(async move { inner.stop(&id).await });
        }
        let mut first_err = None;
        while let Some(joined) = stops.join_next().await {
            if let Ok(Err(e)) = joined {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.replicas.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn bump(&self) {
        self.version.send_modify(|v| *v += 1);
    }

    /// Records a new state for replica `id` if it is still the one started as `serial`.
    fn set_state(&self, id: &str, serial: u64, state: ReplicaState) {
        let mut replicas = self.lock();
        if let Some(entry) = replicas.get_mut(id).filter(|e| e.serial == serial) {
            if entry.observed.state != state {
                if matches!(state, ReplicaState::Exited { .. }) {
                    // The pid is no longer ours once the process is reaped.
                    entry.observed.pid = None;
                }
                entry.observed.state = state;
                self.bump();
            }
        }
    }

    async fn start(self: &Arc<Self>, spec: ReplicaSpec) -> Result<ObservedReplica, RuntimeError> {
        if self.lock().contains_key(&spec.id) {
            return Err(duplicate(&spec.id));
        }
        let ip = process::parse_host(&self.config.host)?;
        let port = process::pick_port(ip)?;
        let argv = spec.model.render_command(&EngineArgs {
            berth_exe: &self.config.berth_exe.to_string_lossy(),
            host: &self.config.host,
            port,
            alias: &spec.deployed_model,
        });
        let env = process::build_env(&self.config.base_env, &spec.env);
        let mut child = process::spawn(&argv, &env)?;
        let Some(pid) = child.id() else {
            // Only possible if the child was already reaped, which nothing here does.
            return Err(RuntimeError::Spawn {
                command: process::display_command(&argv),
                source: io::Error::other("the process has no pid"),
            });
        };
        let pgid = Pid::from_raw(pid as i32);
        let observed = ObservedReplica {
            id: spec.id.clone(),
            workspace_id: spec.workspace_id.clone(),
            deployed_model: spec.deployed_model.clone(),
            pid: Some(pid),
            addr: process::probe_addr(ip, port),
            started_at: Timestamp::now(),
            state: ReplicaState::Starting,
        };
        if let Some(stdout) = child.stdout.take() {
            logs::forward(
                stdout,
                logs::Stream::Stdout,
                spec.deployed_model.clone(),
                spec.id.clone(),
            );
        }
        if let Some(stderr) = child.stderr.take() {
            logs::forward(
                stderr,
                logs::Stream::Stderr,
                spec.deployed_model.clone(),
                spec.id.clone(),
            );
        }

        let serial = self.next_serial.fetch_add(1, Ordering::Relaxed);
        let (exited_tx, exited_rx) = watch::channel(false);
        let stopping = Arc::new(AtomicBool::new(false));
        let inserted = {
            let mut replicas = self.lock();
            let free = !replicas.contains_key(&spec.id);
            if free {
                replicas.insert(
                    spec.id.clone(),
                    Entry {
                        serial,
                        observed: observed.clone(),
                        pgid,
                        exited: exited_rx,
                        stopping: Arc::clone(&stopping),
                    },
                );
                self.bump();
            }
            free
        };
        if !inserted {
            // A concurrent start with the same id won: undo ours.
            process::kill_group(pgid);
            let _ = child.wait().await;
            return Err(duplicate(&spec.id));
        }
        tracing::info!(
            deployment = %spec.deployed_model,
            replica = %spec.id,
            pid,
            addr = %observed.addr,
            command = %process::display_command(&argv),
            "replica process started"
        );
        tokio::spawn(supervisor::run(
            Arc::clone(self),
            supervisor::Supervised {
                id: spec.id,
                deployed_model: spec.deployed_model,
                serial,
                addr: observed.addr,
                pgid,
                child,
                exited: exited_tx,
                stopping,
            },
        ));
        Ok(observed)
    }

    async fn stop(&self, id: &str) -> Result<(), RuntimeError> {
        let Some((serial, pgid, mut exited, deployed_model)) = self.lock().get(id).map(|e| {
            e.stopping.store(true, Ordering::SeqCst);
            (
                e.serial,
                e.pgid,
                e.exited.clone(),
                e.observed.deployed_model.clone(),
            )
        }) else {
            return Ok(());
        };
        if !*exited.borrow() {
            // The group may already be gone (the supervisor sweeps it once the process exits).
            process::signal_group(pgid, Signal::SIGTERM)?;
            let graceful = tokio::time::timeout(self.config.stop_grace, exited.wait_for(|e| *e))
                .await
                .is_ok();
            if !graceful {
                tracing::warn!(
                    deployment = %deployed_model,
                    replica = %id,
                    grace = ?self.config.stop_grace,
                    "replica ignored SIGTERM; sending SIGKILL"
                );
                process::signal_group(pgid, Signal::SIGKILL)?;
                // Err means the supervisor is gone, and its guard killed the group on the way out.
                let _ = exited.wait_for(|e| *e).await;
            }
        }
        let mut replicas = self.lock();
        if replicas.get(id).is_some_and(|e| e.serial == serial) {
            replicas.remove(id);
            self.bump();
        }
        Ok(())
    }

    fn observe(&self) -> Vec<ObservedReplica> {
        let replicas = self.lock();
        let mut all: Vec<ObservedReplica> = replicas.values().map(|e| e.observed.clone()).collect();
        // Read under the same lock as the snapshot: every bump happens under it too.
        let version = *self.version.borrow();
        drop(replicas);
        self.seen.fetch_max(version, Ordering::SeqCst);
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    async fn changed(&self) {
        let seen = self.seen.load(Ordering::SeqCst);
        let mut rx = self.version.subscribe();
        // The sender lives as long as `self`, so this only ends by a newer version.
        let version = match rx.wait_for(|v| *v > seen).await {
            Ok(v) => *v,
            Err(_) => return,
        };
        self.seen.fetch_max(version, Ordering::SeqCst);
    }
}

fn duplicate(id: &str) -> RuntimeError {
    RuntimeError::Spawn {
        command: format!("replica {id}"),
        source: io::Error::new(
            io::ErrorKind::AlreadyExists,
            "a replica with this id is already running",
        ),
    }
}

#[async_trait]
impl Runtime for LocalRuntime {
    async fn start(&self, spec: ReplicaSpec) -> Result<ObservedReplica, RuntimeError> {
        self.inner.start(spec).await
    }

    async fn stop(&self, id: &str) -> Result<(), RuntimeError> {
        self.inner.stop(id).await
    }

    fn observe(&self) -> Vec<ObservedReplica> {
        self.inner.observe()
    }

    /// Returns once something changed after the most recent [`Runtime::observe`] (or the most
    /// recent return of `changed`), so a change between `observe` and `changed` is never missed.
    /// The cursor is shared by all callers, so this suits one consumer (the reconciler); others
    /// should keep their own cursor with [`LocalRuntime::subscribe`].
    async fn changed(&self) {
        self.inner.changed().await
    }
}
