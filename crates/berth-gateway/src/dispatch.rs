//! Admission and sending: from (workspace, deployment) to an upstream response.
//!
//! The hot path loads the snapshot, checks the deployment's rate limits, asks the balancer for a
//! replica and sends; no lock, no store. Only when no replica is ready does a request subscribe
//! to publishes and wait, in a bounded per-deployment queue, until the hold time runs out.
//! A replica that refuses the connection (nothing was sent) is ejected and the request tries
//! another; any failure after the request went out is final.
//!
//! Both streamed and whole answers go through [`crate::upstream`], which does the exchange in
//! the calling task.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::balance::Balancer;
use crate::error::GatewayError;
use crate::routing::{Backend, Clock, DeploymentState, InFlight, Route, Routes};
use crate::upstream::{self, Answer, BodyReader, Streaming};
use crate::GatewayConfig;

/// The path every replica serves chat completions on.
pub(crate) const CHAT_PATH: &str = "/v1/chat/completions";

/// How long an idle connection to a replica is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The shared state behind [`crate::Gateway`].
#[derive(Debug)]
pub(crate) struct Inner {
    pub config: GatewayConfig,
    pub routes: Routes,
    pub balancer: Arc<dyn Balancer>,
    pub clock: Clock,
    /// Told (workspace, deployment) when a call starts waiting for a replica, so that a
    /// deployment scaled to zero is woken at once.
    pub wake: std::sync::OnceLock<Wake>,
}

/// See [`Inner::wake`].
pub(crate) struct Wake(pub Box<dyn Fn(&str, &str) + Send + Sync>);

impl std::fmt::Debug for Wake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Wake")
    }
}

/// Reads a replica's whole response body.
pub(crate) async fn read_body(body: BodyReader) -> Result<Bytes, GatewayError> {
    body.collect()
        .await
        .map_err(|e| GatewayError::Upstream(e.into()))
}

/// What a replica answered: a response whose body is still arriving, or a whole answer.
pub(crate) enum Reply {
    /// Dropping its body before the end closes the connection to the replica (a half-read
    /// HTTP/1.1 response cannot go back to the pool).
    Streaming(Streaming),
    Whole(Answer),
}

/// A request that reached a replica: its answer, and what must live as long as the answer.
pub(crate) struct Dispatched {
    pub reply: Reply,
    pub guard: InFlight,
    pub usage: Accounting,
}

/// Why sending to one replica failed.
enum SendFailure {
    /// Nothing reached the replica; another may be tried.
    Connect(Box<dyn std::error::Error + Send + Sync>),
    /// Final.
    Other(Box<dyn std::error::Error + Send + Sync>),
}

/// Charges the tokens of one response to its deployment, once.
///
/// A stream reports its exact usage in its last chunk (and, with continuous usage stats, the
/// usage so far in every chunk). One that ends before it (the client left, the replica broke
/// off) is charged, when it is dropped, the last running usage it carried, or else the content
/// chunks it delivered: a lower bound (about one token a chunk; its prompt is not known),
/// rather than nothing.
pub(crate) struct Accounting {
    state: Arc<DeploymentState>,
    tpm_limit: Option<u64>,
    clock: Clock,
    /// Content chunks seen in a stream whose usage has not come yet.
    seen: u64,
    /// The latest running total seen in a stream.
    running: Option<u64>,
    charged: bool,
}

impl Accounting {
    /// Charges the response's exact usage (only the first call counts).
    pub fn record(&mut self, total_tokens: u64) {
        if !self.charged {
            self.charged = true;
            self.charge(total_tokens);
        }
    }

    /// Counts streamed content chunks, charged on drop if no usage is ever recorded.
    pub fn saw_chunks(&mut self, n: u64) {
        self.seen += n;
    }

    /// Notes a running total (usage so far) of a stream; the latest is charged if the stream
    /// ends without [`Self::record`] or [`Self::record_running`] (when it is dropped).
    pub fn observe(&mut self, total_tokens: u64) {
        self.running = Some(total_tokens);
    }

    /// Charges the latest running total, if any, at the end of a stream.
    pub fn record_running(&mut self) {
        if let Some(total) = self.running {
            self.record(total);
        }
    }

    fn charge(&self, tokens: u64) {
        self.state.tokens_total.fetch_add(tokens, Ordering::Relaxed);
        if let Some(limit) = self.tpm_limit {
            self.state.tpm.charge(tokens, limit, self.clock.now());
        }
    }
}

impl Drop for Accounting {
    fn drop(&mut self) {
        if !self.charged {
            match self.running {
                Some(total) => self.charge(total),
                None if self.seen > 0 => self.charge(self.seen),
                None => {}
            }
        }
    }
}

/// Leaves the wait queue when dropped.
struct QueueSlot(Arc<DeploymentState>);

impl Drop for QueueSlot {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Inner {
    pub fn new(config: GatewayConfig, balancer: Arc<dyn Balancer>) -> Result<Self, GatewayError> {
        Ok(Self {
            config,
            routes: Routes::new(),
            balancer,
            clock: Clock::new(),
            wake: std::sync::OnceLock::new(),
        })
    }

    /// Sends `body` to a ready replica of `deployed_model` in `workspace_id`; with `stream`,
    /// returns as soon as the response head is in, otherwise with the whole answer.
    pub async fn dispatch(
        &self,
        workspace_id: &str,
        deployed_model: &str,
        body: Bytes,
        stream: bool,
    ) -> Result<Dispatched, GatewayError> {
        let mut admitted = false;
        let mut waiter: Option<(tokio::sync::watch::Receiver<u64>, QueueSlot, Instant)> = None;
        loop {
            let route = self.lookup(workspace_id, deployed_model)?;
            let now = self.clock.now();
            if !admitted {
                admit(&route, now)?;
                admitted = true;
                route.state.calls.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(backend) = self.balancer.pick(&route.backends, now) {
                let guard = InFlight::new(backend.clone());
                let sent = if stream {
                    self.send_streaming(backend, body.clone()).await
                } else {
                    self.send_whole(backend, &body).await
                };
                match sent {
                    Ok(reply) => {
                        let usage = Accounting {
                            state: route.state.clone(),
                            tpm_limit: route.entry.tpm_limit,
                            clock: self.clock,
                            seen: 0,
                            running: None,
                            charged: false,
                        };
                        return Ok(Dispatched {
                            reply,
                            guard,
                            usage,
                        });
                    }
                    Err(SendFailure::Connect(e)) => {
                        // Nothing reached the replica: skip it for a while and try another.
                        let until = now + self.config.eject_for.as_nanos() as u64;
                        backend.eject_until(until);
                        tracing::warn!(
                            deployment = deployed_model,
                            replica = %backend.replica_id,
                            addr = %backend.addr,
                            error = %e,
                            "replica refused the connection; ejected"
                        );
                        continue;
                    }
                    Err(SendFailure::Other(e)) => return Err(GatewayError::Upstream(e)),
                }
            }
            // No replica to send to. Subscribe first, then look again, so a publish between
            // the look and the wait is never missed.
            let Some((rx, _, deadline)) = waiter.as_mut() else {
                waiter = Some(self.enqueue(&route)?);
                if let Some(wake) = self.wake.get() {
                    (wake.0)(workspace_id, deployed_model);
                }
                continue;
            };
            let deadline = *deadline;
            let mut wake = deadline;
            if let Some(back) = route
                .next_unejection()
                .filter(|_| !route.backends.is_empty())
            {
                let in_ns = back.saturating_sub(self.clock.now());
                wake = wake.min(Instant::now() + Duration::from_nanos(in_ns));
            }
            tokio::select! {
                _ = rx.changed() => {}
                _ = tokio::time::sleep_until(wake) => {}
            }
            if Instant::now() >= deadline {
                tracing::info!(
                    deployment = deployed_model,
                    "no ready replica within the hold time"
                );
                // The route as it is now: its measured start time may be newer.
                let route = self.lookup(workspace_id, deployed_model).unwrap_or(route);
                return Err(self.unavailable(&route));
            }
        }
    }

    async fn send_streaming(&self, backend: &Backend, body: Bytes) -> Result<Reply, SendFailure> {
        match upstream::post_streaming(
            &backend.idle,
            backend.addr,
            CHAT_PATH,
            &body,
            self.settings(),
        )
        .await
        {
            Ok(resp) => Ok(Reply::Streaming(resp)),
            Err(e) if e.is_connect() => Err(SendFailure::Connect(e.into())),
            Err(e) => Err(SendFailure::Other(e.into())),
        }
    }

    fn settings(&self) -> upstream::Settings {
        upstream::Settings {
            connect_timeout: self.config.connect_timeout,
            idle_timeout: IDLE_TIMEOUT,
            read_timeout: self.config.read_timeout,
        }
    }

    async fn send_whole(&self, backend: &Backend, body: &[u8]) -> Result<Reply, SendFailure> {
        match upstream::post(
            &backend.idle,
            backend.addr,
            CHAT_PATH,
            body,
            self.settings(),
        )
        .await
        {
            Ok(answer) => Ok(Reply::Whole(answer)),
            Err(e) if e.is_connect() => Err(SendFailure::Connect(e.into())),
            Err(e) => Err(SendFailure::Other(e.into())),
        }
    }

    fn lookup(&self, workspace_id: &str, deployed_model: &str) -> Result<Arc<Route>, GatewayError> {
        self.routes
            .load()
            .get(workspace_id, deployed_model)
            .cloned()
            .ok_or_else(|| GatewayError::ModelNotFound(deployed_model.to_owned()))
    }

    fn enqueue(
        &self,
        route: &Route,
    ) -> Result<(tokio::sync::watch::Receiver<u64>, QueueSlot, Instant), GatewayError> {
        let rx = self.routes.subscribe();
        let waiting = route.state.waiting.fetch_add(1, Ordering::Relaxed);
        let slot = QueueSlot(route.state.clone());
        if waiting >= self.config.queue_bound || self.config.hold.is_zero() {
            return Err(self.unavailable(route));
        }
        Ok((rx, slot, Instant::now() + self.config.hold))
    }

    /// 503 with `Retry-After`: how long a replica of this model took to start, as the
    /// reconciler measured it, else the configured default.
    fn unavailable(&self, route: &Route) -> GatewayError {
        GatewayError::ModelUnavailable {
            retry_after: route
                .entry
                .start_secs
                .map_or(self.config.unavailable_retry_after, |s| s.max(1)),
        }
    }
}

/// Rate limits, checked once per request before it waits or is sent.
fn admit(route: &Route, now: u64) -> Result<(), GatewayError> {
    let limited = |retry_after| GatewayError::RateLimited { retry_after };
    if route.entry.tpm_limit.is_some() {
        route.state.tpm.check(now).map_err(limited)?;
    }
    if let Some(rpm) = route.entry.rpm_limit {
        route.state.rpm.take_one(rpm, now).map_err(limited)?;
    }
    Ok(())
}
