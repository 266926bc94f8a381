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
use crate::metrics::{Api, Ended, GatewayMetrics};
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

/// A function of (workspace, deployment).
type WakeFn = dyn Fn(&str, &str) + Send + Sync;

/// See [`Inner::wake`].
pub(crate) struct Wake(pub Box<WakeFn>);

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

/// Token counts of one call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Tokens {
    pub input: u64,
    pub output: u64,
    pub total: u64,
}

impl From<&berth_api::openai::Usage> for Tokens {
    fn from(u: &berth_api::openai::Usage) -> Self {
        Self {
            input: u.prompt_tokens,
            output: u.completion_tokens,
            total: u.total_tokens,
        }
    }
}

/// One call, from the moment it names a deployment of its workspace until it ends.
///
/// It charges the call's tokens to the deployment once (the `tpm_limit` window) and, when
/// dropped, records how the call ended ([`crate::metrics`]): status, duration, time to the
/// first streamed chunk, tokens.
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
    api: Api,
    started: std::time::Instant,
    first_chunk: Option<f64>,
    code: u16,
    /// Content chunks seen in a stream whose usage has not come yet.
    seen: u64,
    /// The latest running usage seen in a stream.
    running: Option<Tokens>,
    charged: Option<Tokens>,
}

impl Accounting {
    fn new(route: &Route, clock: Clock, api: Api, started: std::time::Instant) -> Self {
        Self {
            state: route.state.clone(),
            tpm_limit: route.entry.tpm_limit,
            clock,
            api,
            started,
            first_chunk: None,
            code: 200,
            seen: 0,
            running: None,
            charged: None,
        }
    }

    /// Charges the response's exact usage (only the first call counts).
    pub fn record(&mut self, tokens: Tokens) {
        if self.charged.is_none() {
            self.charge(tokens);
        }
    }

    /// Counts streamed content chunks, charged on drop if no usage is ever recorded.
    pub fn saw_chunks(&mut self, n: u64) {
        self.seen += n;
    }

    /// Notes a running usage (so far) of a stream; the latest is charged if the stream ends
    /// without [`Self::record`] or [`Self::record_running`] (when it is dropped).
    pub fn observe(&mut self, tokens: Tokens) {
        self.running = Some(tokens);
    }

    /// Charges the latest running usage, if any, at the end of a stream.
    pub fn record_running(&mut self) {
        if let Some(t) = self.running {
            self.record(t);
        }
    }

    /// The first chunk of a stream goes to the client now.
    pub fn first_chunk(&mut self) {
        if self.first_chunk.is_none() {
            self.first_chunk = Some(self.started.elapsed().as_secs_f64());
        }
    }

    /// The HTTP status the client gets (200 unless set).
    pub fn set_code(&mut self, code: u16) {
        self.code = code;
    }

    /// The call ends with `e`: recorded with its status.
    pub fn failed(&mut self, e: GatewayError) -> GatewayError {
        self.code = e.code().http_status();
        e
    }

    fn charge(&mut self, tokens: Tokens) {
        self.charged = Some(tokens);
        self.state
            .tokens_total
            .fetch_add(tokens.total, Ordering::Relaxed);
        if let Some(limit) = self.tpm_limit {
            self.state.tpm.charge(tokens.total, limit, self.clock.now());
        }
    }
}

impl Drop for Accounting {
    fn drop(&mut self) {
        if self.charged.is_none() {
            match self.running {
                Some(t) => self.charge(t),
                None if self.seen > 0 => self.charge(Tokens {
                    input: 0,
                    output: self.seen,
                    total: self.seen,
                }),
                None => {}
            }
        }
        let tokens = self.charged.unwrap_or_default();
        self.state.metrics.ended(&Ended {
            api: self.api,
            code: self.code,
            duration_s: self.started.elapsed().as_secs_f64(),
            ttft_s: self.first_chunk,
            input_tokens: tokens.input,
            output_tokens: tokens.output,
        });
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
    pub fn new(
        config: GatewayConfig,
        balancer: Arc<dyn Balancer>,
        metrics: GatewayMetrics,
    ) -> Result<Self, GatewayError> {
        Ok(Self {
            config,
            routes: Routes::new(metrics),
            balancer,
            clock: Clock::new(),
            wake: std::sync::OnceLock::new(),
        })
    }

    /// Sends `body` to a ready replica of `deployed_model` in `workspace_id`; with `stream`,
    /// returns as soon as the response head is in, otherwise with the whole answer. The call
    /// is recorded as coming through `api`; one that fails here is recorded with its error.
    pub async fn dispatch(
        &self,
        workspace_id: &str,
        deployed_model: &str,
        body: Bytes,
        stream: bool,
        api: Api,
    ) -> Result<Dispatched, GatewayError> {
        let started = std::time::Instant::now();
        let mut route = match self.lookup(workspace_id, deployed_model) {
            Ok(route) => route,
            Err(e) => {
                self.routes
                    .metrics
                    .unrouted(workspace_id, api, e.code().http_status());
                return Err(e);
            }
        };
        let mut usage = Accounting::new(&route, self.clock, api, started);
        if let Err(e) = admit(&route, self.clock.now()) {
            return Err(usage.failed(e));
        }
        route.state.calls.fetch_add(1, Ordering::Relaxed);
        let mut waiter: Option<(tokio::sync::watch::Receiver<u64>, QueueSlot, Instant)> = None;
        let held = |waiter: &Option<(_, _, Instant)>, route: &Route| {
            if let Some((_, _, deadline)) = waiter {
                route
                    .state
                    .metrics
                    .held((*deadline - self.config.hold).into_std());
            }
        };
        loop {
            let now = self.clock.now();
            if let Some(backend) = self.balancer.pick(&route.backends, now) {
                let guard = InFlight::new(backend.clone());
                let sent = if stream {
                    self.send_streaming(backend, body.clone()).await
                } else {
                    self.send_whole(backend, &body).await
                };
                match sent {
                    Ok(reply) => {
                        held(&waiter, &route);
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
                    }
                    Err(SendFailure::Other(e)) => {
                        held(&waiter, &route);
                        return Err(usage.failed(GatewayError::Upstream(e)));
                    }
                }
            } else {
                // No replica to send to. Subscribe first, then look again, so a publish
                // between the look and the wait is never missed.
                let Some((rx, _, deadline)) = waiter.as_mut() else {
                    match self.enqueue(&route) {
                        Ok(w) => waiter = Some(w),
                        Err(e) => return Err(usage.failed(e)),
                    }
                    if let Some(wake) = self.wake.get() {
                        (wake.0)(workspace_id, deployed_model);
                    }
                    route = self.relookup(workspace_id, deployed_model, &mut usage)?;
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
                    held(&waiter, &route);
                    // The route as it is now: its measured start time may be newer.
                    let latest = self.lookup(workspace_id, deployed_model).unwrap_or(route);
                    return Err(usage.failed(self.unavailable(&latest)));
                }
            }
            route = self.relookup(workspace_id, deployed_model, &mut usage)?;
        }
    }

    /// The deployment's route in the newest snapshot (it may have been deleted meanwhile).
    fn relookup(
        &self,
        workspace_id: &str,
        deployed_model: &str,
        usage: &mut Accounting,
    ) -> Result<Arc<Route>, GatewayError> {
        self.lookup(workspace_id, deployed_model)
            .map_err(|e| usage.failed(e))
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
    let limited = |limit: &'static str| {
        move |retry_after| {
            route.state.metrics.throttled(limit);
            GatewayError::RateLimited { retry_after }
        }
    };
    if route.entry.tpm_limit.is_some() {
        route.state.tpm.check(now).map_err(limited("tpm"))?;
    }
    if let Some(rpm) = route.entry.rpm_limit {
        route.state.rpm.take_one(rpm, now).map_err(limited("rpm"))?;
    }
    Ok(())
}
