//! The local process runtime: each replica is a process on this machine.
//!
//! A replica runs in its own process group with an explicit, minimal environment that also
//! carries its identity (`BERTH_REPLICA_ID`) and secret (`BERTH_REPLICA_SECRET`); its stdout and
//! stderr go to a log file of its own, followed into `tracing` with `deployment` and `replica`
//! fields. Every replica is recorded in a [`ReplicaJournal`] before it is spawned. One supervisor
//! task per replica probes `GET /health` (with the secret), waits on the process, and records
//! state changes; `stop` sends SIGTERM to the group, waits a grace period, then SIGKILL, and
//! returns once the process is gone.
//!
//! A restarted berth [`adopts`](LocalRuntime::adopt) the recorded replicas that still run and
//! are provably the same processes (pid, process start time and the identity in their
//! environment), and forgets the others; [`detach`](LocalRuntime::detach) leaves every replica
//! running for the next start to adopt.

pub(crate) mod identity;
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
use berth_core::{EngineArgs, ReplicaRecord, Timestamp};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use rand::RngCore;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::{
    MemoryJournal, ObservedReplica, ReplicaJournal, ReplicaSpec, ReplicaState, Runtime,
    RuntimeError,
};

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
    /// Where each replica's output goes (`<log_dir>/<replica id>.log`).
    pub log_dir: PathBuf,
    /// Given to replicas as `BERTH_ORPHAN_TIMEOUT_SECS`: how long a replica that hears no
    /// authenticated health check from its supervisor keeps running before it stops itself.
    pub orphan_timeout: Option<Duration>,
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
            log_dir: std::env::temp_dir().join("berth-replica-logs"),
            orphan_timeout: None,
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
    journal: Arc<dyn ReplicaJournal>,
    /// Set by [`LocalRuntime::detach`]: nothing kills replicas from then on.
    detached: AtomicBool,
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
    /// Ends the follower of the replica's log file.
    log_stop: CancellationToken,
}

/// What [`LocalRuntime::adopt`] did with the recorded replicas.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AdoptReport {
    /// Still running and provably the same process: now supervised again, not restarted.
    pub adopted: Vec<String>,
    /// No such process any more: the record was forgotten.
    pub gone: Vec<String>,
}

impl LocalRuntime {
    /// A runtime with no replicas that records them in memory only (tests, benchmarks).
    pub fn new(config: LocalRuntimeConfig) -> Arc<Self> {
        Self::with_journal(config, Arc::new(MemoryJournal::default()))
    }

    /// A runtime with no replicas that records every replica in `journal`.
    pub fn with_journal(config: LocalRuntimeConfig, journal: Arc<dyn ReplicaJournal>) -> Arc<Self> {
        let http = reqwest::Client::builder()
            .timeout(config.health_timeout)
            // Replicas are on this host: an HTTP_PROXY in berth's environment must not apply.
            .no_proxy()
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Arc::new(Self {
            inner: Arc::new(Inner {
                config,
                journal,
                detached: AtomicBool::new(false),
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

    /// Takes over the recorded replicas of an earlier berth process (after a restart or a
    /// crash). A record whose process still runs, is the same process (pid and start time) and
    /// carries the record's id in its environment is adopted: supervised again, ready at once if
    /// its health check passes, never restarted. A record with no such process is forgotten.
    /// Processes that match no record are never touched.
    pub async fn adopt(&self, records: Vec<ReplicaRecord>) -> AdoptReport {
        self.inner.adopt(records).await
    }

    /// Lets every replica run on after this berth process ends, for the next start to adopt
    /// (an upgrade without replica restarts). The records are kept; nothing is stopped.
    pub fn detach(&self) {
        self.inner.detached.store(true, Ordering::SeqCst);
        for entry in self.inner.lock().values() {
            entry.log_stop.cancel();
        }
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
        let secret = new_secret();
        let mut record = ReplicaRecord {
            id: spec.id.clone(),
            workspace_id: spec.workspace_id.clone(),
            deployed_model: spec.deployed_model.clone(),
            pid: 0,
            port,
            started_at: Timestamp::now(),
            secret: secret.clone(),
            proc_start: 0,
        };
        // Written ahead: if berth dies during the spawn, the next start still finds the process
        // by the id in its environment.
        self.journal
            .record(&record)
            .await
            .map_err(RuntimeError::Journal)?;
        let mut env = process::build_env(&self.config.base_env, &spec.env);
        env.insert(identity::REPLICA_ID_ENV.to_owned(), spec.id.clone());
        env.insert(identity::REPLICA_SECRET_ENV.to_owned(), secret.clone());
        if let Some(t) = self.config.orphan_timeout {
            env.insert(
                identity::ORPHAN_TIMEOUT_ENV.to_owned(),
                t.as_secs_f64().to_string(),
            );
        }
        let log_path = logs::log_path(&self.config.log_dir, &spec.id);
        let spawned = logs::open_for_replica(&log_path)
            .map_err(|source| RuntimeError::Spawn {
                command: format!("log file {}", log_path.display()),
                source,
            })
            .and_then(|log| process::spawn(&argv, &env, log));
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => {
                self.forget_record(&spec.id).await;
                return Err(e);
            }
        };
        let Some(pid) = child.id() else {
            // Only possible if the child was already reaped, which nothing here does.
            self.forget_record(&spec.id).await;
            return Err(RuntimeError::Spawn {
                command: process::display_command(&argv),
                source: io::Error::other("the process has no pid"),
            });
        };
        let pgid = Pid::from_raw(pid as i32);
        record.pid = pid;
        record.proc_start = identity::proc_start(pid).unwrap_or(0);
        if let Err(e) = self.journal.record(&record).await {
            // Unrecorded, it must not live on: the next start could not prove it is ours.
            process::kill_group(pgid);
            let _ = child.wait().await;
            self.forget_record(&spec.id).await;
            return Err(RuntimeError::Journal(e));
        }
        let observed = ObservedReplica {
            id: spec.id.clone(),
            workspace_id: spec.workspace_id.clone(),
            deployed_model: spec.deployed_model.clone(),
            pid: Some(pid),
            addr: process::probe_addr(ip, port),
            started_at: record.started_at,
            state: ReplicaState::Starting,
            secret,
        };
        tracing::info!(
            deployment = %spec.deployed_model,
            replica = %spec.id,
            pid,
            addr = %observed.addr,
            command = %process::display_command(&argv),
            "replica process started"
        );
        let inserted = self.supervise(
            observed.clone(),
            pgid,
            supervisor::Proc::Child(child),
            log_path,
            false,
        );
        if let Err(mut proc) = inserted {
            // A concurrent start with the same id won: undo ours.
            process::kill_group(pgid);
            proc.wait().await;
            self.forget_record(&spec.id).await;
            return Err(duplicate(&spec.id));
        }
        Ok(observed)
    }

    /// Registers a running replica and spawns its supervisor and log follower. Hands the
    /// process back when the id is taken.
    fn supervise(
        self: &Arc<Self>,
        observed: ObservedReplica,
        pgid: Pid,
        proc: supervisor::Proc,
        log_path: PathBuf,
        adopted: bool,
    ) -> Result<(), Box<supervisor::Proc>> {
        let serial = self.next_serial.fetch_add(1, Ordering::Relaxed);
        let (exited_tx, exited_rx) = watch::channel(false);
        let stopping = Arc::new(AtomicBool::new(false));
        let log_stop = CancellationToken::new();
        {
            let mut replicas = self.lock();
            if replicas.contains_key(&observed.id) {
                return Err(Box::new(proc));
            }
            replicas.insert(
                observed.id.clone(),
                Entry {
                    serial,
                    observed: observed.clone(),
                    pgid,
                    exited: exited_rx,
                    stopping: Arc::clone(&stopping),
                    log_stop: log_stop.clone(),
                },
            );
            self.bump();
        }
        logs::follow(
            log_path,
            adopted,
            log_stop.clone(),
            observed.deployed_model.clone(),
            observed.id.clone(),
        );
        tokio::spawn(supervisor::run(
            Arc::clone(self),
            supervisor::Supervised {
                id: observed.id,
                deployed_model: observed.deployed_model,
                serial,
                addr: observed.addr,
                secret: observed.secret,
                initial: observed.state,
                pgid,
                proc,
                exited: exited_tx,
                stopping,
                log_stop,
            },
        ));
        Ok(())
    }

    async fn forget_record(&self, id: &str) {
        if let Err(e) = self.journal.forget(id).await {
            tracing::warn!(replica = %id, error = %e, "cannot forget replica record");
        }
        let _ = std::fs::remove_file(logs::log_path(&self.config.log_dir, id));
    }

    async fn adopt(self: &Arc<Self>, records: Vec<ReplicaRecord>) -> AdoptReport {
        let mut report = AdoptReport::default();
        let Ok(ip) = process::parse_host(&self.config.host) else {
            return report;
        };
        for mut record in records {
            if self.lock().contains_key(&record.id) {
                continue;
            }
            let found = if record.secret.is_empty() {
                // Recorded by a berth that gave replicas no identity: it cannot be proven ours,
                // so it is not adopted; what is left of it is stopped, as such berths did.
                if record.pid != 0 && kill_leftover(record.pid, record.port) {
                    tracing::info!(replica = %record.id, pid = record.pid, "stopped a replica of an older berth");
                }
                None
            } else if record.pid == 0 {
                identity::find_replica_process(std::path::Path::new("/proc"), &record.id)
            } else if identity::is_same_process(record.pid, record.proc_start)
                && identity::process_has_env(record.pid, identity::REPLICA_ID_ENV, &record.id)
            {
                Some((record.pid, record.proc_start))
            } else {
                None
            };
            let Some((pid, start)) = found else {
                self.forget_record(&record.id).await;
                report.gone.push(record.id);
                continue;
            };
            if record.pid != pid || record.proc_start != start {
                record.pid = pid;
                record.proc_start = start;
                if let Err(e) = self.journal.record(&record).await {
                    tracing::warn!(replica = %record.id, error = %e, "cannot update replica record");
                }
            }
            let addr = process::probe_addr(ip, record.port);
            let healthy = supervisor::probe(&self.http, addr, &record.secret).await;
            let observed = ObservedReplica {
                id: record.id.clone(),
                workspace_id: record.workspace_id.clone(),
                deployed_model: record.deployed_model.clone(),
                pid: Some(pid),
                addr,
                started_at: record.started_at,
                state: if healthy {
                    ReplicaState::Ready
                } else {
                    ReplicaState::Starting
                },
                secret: record.secret.clone(),
            };
            tracing::info!(
                deployment = %record.deployed_model,
                replica = %record.id,
                pid,
                %addr,
                ready = healthy,
                "replica adopted"
            );
            let log_path = logs::log_path(&self.config.log_dir, &record.id);
            let proc = supervisor::Proc::Adopted { pid, start };
            if self
                .supervise(observed, Pid::from_raw(pid as i32), proc, log_path, true)
                .is_ok()
            {
                report.adopted.push(record.id);
            }
        }
        report
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
        self.forget_record(id).await;
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

/// 192 random bits, hex: a replica's secret.
fn new_secret() -> String {
    let mut bytes = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
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
