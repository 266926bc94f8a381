//! The supervisor task of one replica: probes `GET /health` with the replica's secret, waits on
//! the process, and records every state change until the process is gone.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::unistd::Pid;
use tokio::process::Child;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{identity, process, Inner};
use crate::ReplicaState;

/// The process of a replica: a child of this berth, or one adopted after a restart, which can
/// only be watched through `/proc`.
pub(super) enum Proc {
    Child(Child),
    Adopted { pid: u32, start: u64 },
}

/// How often an adopted process is checked for having exited.
const ADOPTED_EXIT_POLL: Duration = Duration::from_millis(100);

impl Proc {
    /// Waits until the process has exited (and, for a child, is reaped); says why it ended.
    pub(super) async fn wait(&mut self) -> String {
        match self {
            Proc::Child(child) => match child.wait().await {
                Ok(status) => process::exit_reason(status),
                Err(e) => format!("cannot wait for replica process: {e}"),
            },
            Proc::Adopted { pid, start } => {
                while identity::is_same_process(*pid, *start) {
                    tokio::time::sleep(ADOPTED_EXIT_POLL).await;
                }
                "replica process exited (adopted after a restart of berth: its exit status is \
                 not known)"
                    .to_owned()
            }
        }
    }
}

/// Everything the supervisor needs about its replica.
pub(super) struct Supervised {
    pub id: String,
    pub deployed_model: String,
    pub serial: u64,
    pub addr: SocketAddr,
    pub secret: String,
    /// The state to start from: `Starting`, or `Ready` for an adopted replica that passed its
    /// first check.
    pub initial: ReplicaState,
    pub pgid: Pid,
    pub proc: Proc,
    /// Set to `true` once the process is reaped and its group swept.
    pub exited: watch::Sender<bool>,
    pub stopping: Arc<AtomicBool>,
    pub log_stop: CancellationToken,
}

/// Kills the process group if the supervisor is dropped before the process was reaped (the
/// tokio runtime shutting down, say), so no replica outlives berth, unless the runtime was
/// detached on purpose (the replicas are left for the next start to adopt).
struct GroupGuard<'a> {
    pgid: Pid,
    armed: bool,
    detached: &'a AtomicBool,
}

impl Drop for GroupGuard<'_> {
    fn drop(&mut self) {
        if self.armed && !self.detached.load(Ordering::SeqCst) {
            process::kill_group(self.pgid);
        }
    }
}

/// What one round of health checking concluded.
enum Probe {
    /// A new state to record (may equal the current one).
    State(ReplicaState),
    /// Still starting, and the ready timeout has passed.
    TimedOut,
}

/// Runs until the replica process has been reaped.
pub(super) async fn run(inner: Arc<Inner>, replica: Supervised) {
    let Supervised {
        id,
        deployed_model,
        serial,
        addr,
        secret,
        initial,
        pgid,
        mut proc,
        exited,
        stopping,
        log_stop,
    } = replica;
    let mut guard = GroupGuard {
        pgid,
        armed: true,
        detached: &inner.detached,
    };
    let mut checker = HealthChecker::new(&inner, addr, &secret, initial);
    let mut killed_reason: Option<String> = None;

    let status = {
        let wait = proc.wait();
        tokio::pin!(wait);
        loop {
            tokio::select! {
                status = &mut wait => break status,
                probe = checker.next(), if killed_reason.is_none() => match probe {
                    Probe::State(state) => {
                        if state != checker.state {
                            log_transition(&deployed_model, &id, &checker.state, &state);
                            checker.state = state.clone();
                            inner.set_state(&id, serial, state);
                        }
                    }
                    Probe::TimedOut => {
                        let reason = process::ready_timeout_reason(inner.config.ready_timeout);
                        tracing::warn!(deployment = %deployed_model, replica = %id, "{reason}; killing it");
                        process::kill_group(pgid);
                        killed_reason = Some(reason);
                    }
                },
            }
        }
    };

    // Whatever else the replica started in its group goes with it.
    process::kill_group(pgid);
    guard.armed = false;
    log_stop.cancel();
    let reason = killed_reason.unwrap_or(status);
    if stopping.load(Ordering::SeqCst) {
        tracing::info!(deployment = %deployed_model, replica = %id, "replica stopped: {reason}");
    } else {
        tracing::warn!(deployment = %deployed_model, replica = %id, "replica exited: {reason}");
    }
    inner.set_state(&id, serial, ReplicaState::Exited { reason });
    exited.send_replace(true);
}

fn log_transition(deployment: &str, replica: &str, from: &ReplicaState, to: &ReplicaState) {
    match to {
        ReplicaState::Ready => tracing::info!(deployment, replica, ?from, "replica is ready"),
        ReplicaState::Unhealthy => {
            tracing::warn!(deployment, replica, "replica failed its health checks")
        }
        _ => {}
    }
}

/// One authenticated `GET /health`: whether it answers 200 within the client's timeout.
pub(super) async fn probe(http: &reqwest::Client, addr: SocketAddr, secret: &str) -> bool {
    let mut request = http.get(format!("http://{addr}/health"));
    if !secret.is_empty() {
        request = request.bearer_auth(secret);
    }
    match request.send().await {
        Ok(response) => response.status() == reqwest::StatusCode::OK,
        Err(_) => false,
    }
}

/// Paces and interprets `/health` probes.
struct HealthChecker<'a> {
    inner: &'a Inner,
    addr: SocketAddr,
    secret: &'a str,
    state: ReplicaState,
    ready_deadline: Instant,
    consecutive_failures: u32,
}

impl<'a> HealthChecker<'a> {
    fn new(inner: &'a Inner, addr: SocketAddr, secret: &'a str, initial: ReplicaState) -> Self {
        Self {
            inner,
            addr,
            secret,
            state: initial,
            ready_deadline: Instant::now() + inner.config.ready_timeout,
            consecutive_failures: 0,
        }
    }

    /// Waits for the next probe time, probes, and says what the replica's state is now.
    async fn next(&mut self) -> Probe {
        let config = &self.inner.config;
        if self.state == ReplicaState::Starting {
            let now = Instant::now();
            if now >= self.ready_deadline {
                return Probe::TimedOut;
            }
            let wake = (now + config.startup_health_interval).min(self.ready_deadline);
            tokio::time::sleep_until(wake).await;
            if self.probe().await {
                return Probe::State(ReplicaState::Ready);
            }
            if Instant::now() >= self.ready_deadline {
                return Probe::TimedOut;
            }
            return Probe::State(ReplicaState::Starting);
        }
        tokio::time::sleep(config.health_interval).await;
        if self.probe().await {
            self.consecutive_failures = 0;
            return Probe::State(ReplicaState::Ready);
        }
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        if self.consecutive_failures >= config.unhealthy_after.max(1) {
            Probe::State(ReplicaState::Unhealthy)
        } else {
            Probe::State(self.state.clone())
        }
    }

    /// Whether `/health` answers 200 within the health timeout.
    async fn probe(&self) -> bool {
        probe(&self.inner.http, self.addr, self.secret).await
    }
}
