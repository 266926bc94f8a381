//! berth inference gateway: routing snapshot, balancing, admission, streaming proxy.
//!
//! [`Gateway`] is built once by the server ([`Gateway::new`]) and shared (it is an `Arc` inside).
//! The reconciler publishes the ready replicas of every deployment with [`Gateway::publish`];
//! the two never import each other, the server passes the gateway's publish function along.
//!
//! A call goes: look up the deployment in the caller's workspace in the current snapshot
//! (lock-free) -> check its rate limits -> pick a replica (least outstanding requests) or wait,
//! bounded, for one to become ready -> send -> stream the answer back with the in-flight guard
//! inside the body, so load is released when the response ends or the client leaves. Both wire
//! formats share this path: [`Gateway::chat_completions`] passes OpenAI bodies through,
//! [`Gateway::generation`] translates the native DashScope API.
//!
//! The gateway knows no HTTP server framework: it answers [`GatewayResponse`]s and
//! [`GatewayError`]s (each with its `ErrorCode`), and the server renders them.

mod balance;
mod compatible;
mod dispatch;
mod error;
mod limit;
mod metrics;
mod native;
mod routing;
mod sse;
mod upstream;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use berth_core::{RoutingEntry, RoutingTable};
use bytes::Bytes;
use futures::Stream;

pub use balance::{Balancer, LeastOutstanding};

/// Entry points for the fuzz targets and the arbitrary-input tests: each runs one parser on
/// arbitrary bytes and panics if an invariant breaks.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::sse::check_frames;
    pub use crate::upstream::check_response;
}
pub use error::GatewayError;
pub use metrics::{Api, GatewayMetrics};
pub use routing::{Backend, InFlight};

/// Tunables of the gateway. `Default` gives the documented defaults.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// How long a request for a deployment without a ready replica waits for one (30 s).
    pub hold: Duration,
    /// Requests that may wait per deployment; beyond it, 503 at once (256).
    pub queue_bound: usize,
    /// TCP connect timeout to a replica (1 s). There is no total timeout: streams last as
    /// long as the model writes.
    pub connect_timeout: Duration,
    /// Longest time a replica may send nothing while an answer is expected (300 s): the wait
    /// for the head of a call that is not streamed is the whole generation.
    pub read_timeout: Duration,
    /// How long a replica that refused a connection is skipped (5 s). The reconciler
    /// re-publishes ready replicas on every health pass, so a replica that stays down is
    /// removed from the table; one that comes back is used again when this expires.
    pub eject_for: Duration,
    /// `Retry-After` on 503 `ModelUnavailable`, in seconds (5).
    pub unavailable_retry_after: u64,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            hold: Duration::from_secs(30),
            queue_bound: 256,
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(300),
            eject_for: Duration::from_secs(5),
            unavailable_retry_after: 5,
        }
    }
}

/// A deployment's load as the gateway sees it ([`Gateway::demand`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Demand {
    pub in_flight: u32,
    pub queued: u32,
    pub calls: u64,
}

/// A streamed response body. Dropping it drops the upstream response, which closes the
/// connection to the replica and so cancels the generation.
pub type BodyStream = Pin<Box<dyn Stream<Item = Result<Bytes, GatewayError>> + Send>>;

/// A response body: complete, or streamed as it comes.
pub enum ResponseBody {
    Full(Bytes),
    Stream(BodyStream),
}

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Full(b) => f.debug_tuple("Full").field(b).finish(),
            Self::Stream(_) => f.write_str("Stream"),
        }
    }
}

/// What the gateway answers; the server turns it into an HTTP response.
#[derive(Debug)]
pub struct GatewayResponse {
    pub status: u16,
    pub content_type: &'static str,
    pub body: ResponseBody,
}

impl GatewayResponse {
    fn full(status: u16, content_type: &'static str, body: Bytes) -> Self {
        Self {
            status,
            content_type,
            body: ResponseBody::Full(body),
        }
    }

    fn stream(content_type: &'static str, body: BodyStream) -> Self {
        Self {
            status: 200,
            content_type,
            body: ResponseBody::Stream(body),
        }
    }

    /// Collects the whole body (tests and non-streaming callers).
    pub async fn into_bytes(self) -> Result<Bytes, GatewayError> {
        use futures::TryStreamExt;
        match self.body {
            ResponseBody::Full(b) => Ok(b),
            ResponseBody::Stream(s) => {
                let parts: Vec<Bytes> = s.try_collect().await?;
                Ok(parts.concat().into())
            }
        }
    }
}

/// The inference gateway. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Gateway {
    inner: Arc<dispatch::Inner>,
}

impl Gateway {
    /// A gateway with the least-outstanding-requests balancer and an empty routing table.
    pub fn new(config: GatewayConfig) -> Result<Self, GatewayError> {
        Self::with_balancer(config, Arc::new(LeastOutstanding::default()))
    }

    /// A gateway with another balancing policy.
    pub fn with_balancer(
        config: GatewayConfig,
        balancer: Arc<dyn Balancer>,
    ) -> Result<Self, GatewayError> {
        Ok(Self {
            inner: Arc::new(dispatch::Inner::new(
                config,
                balancer,
                GatewayMetrics::default(),
            )?),
        })
    }

    /// The gateway's Prometheus families, to register with the server's registry.
    pub fn metrics(&self) -> &GatewayMetrics {
        &self.inner.routes.metrics
    }

    /// Sets the gauges from the current routing snapshot; call before encoding a scrape.
    pub fn sample_gauges(&self) {
        self.inner.routes.sample_gauges();
    }

    /// A deployment's recent intervals ([`berth_api::stats`]), oldest first; `None` when it
    /// is not in routing.
    pub fn stats(
        &self,
        workspace_id: &str,
        deployed_model: &str,
    ) -> Option<Vec<berth_api::stats::StatsPoint>> {
        let snap = self.inner.routes.load();
        snap.get(workspace_id, deployed_model)
            .map(|r| r.state.metrics.points())
    }

    /// Replaces the routing table (called by the reconciler after every pass, through the
    /// server's wiring). Cheap for readers: one atomic swap; requests waiting for a replica
    /// are woken.
    pub fn publish(&self, table: Arc<RoutingTable>) {
        self.inner.routes.publish(&table);
    }

    /// A publish function to hand to the reconciler without it knowing this crate.
    pub fn publisher(&self) -> impl Fn(Arc<RoutingTable>) + Send + Sync + 'static {
        let this = self.clone();
        move |table| this.publish(table)
    }

    /// Calls in flight on one replica, whether it is still routed or was just taken out of
    /// routing (the reconciler drains a replica before it stops it).
    pub fn in_flight(&self, replica_id: &str) -> u32 {
        self.inner.routes.in_flight(replica_id)
    }

    /// What a deployment carries right now: calls in flight on its routed replicas, calls
    /// waiting for a replica, and calls admitted so far (the autoscaler's signals). Zero for a
    /// deployment the gateway does not route.
    pub fn demand(&self, workspace_id: &str, deployed_model: &str) -> Demand {
        use std::sync::atomic::Ordering::Relaxed;
        let snap = self.inner.routes.load();
        snap.get(workspace_id, deployed_model)
            .map_or(Demand::default(), |r| Demand {
                in_flight: r.backends.iter().map(|b| b.in_flight()).sum(),
                queued: u32::try_from(r.state.waiting.load(Relaxed)).unwrap_or(u32::MAX),
                calls: r.state.calls.load(Relaxed),
            })
    }

    /// Sets what is told (workspace, deployment) when a call starts waiting for a replica (the
    /// server wires it to the reconciler, so a deployment at zero starts one at once). Only
    /// the first call of this has an effect.
    pub fn on_hold(&self, wake: impl Fn(&str, &str) + Send + Sync + 'static) {
        let _ = self.inner.wake.set(dispatch::Wake(Box::new(wake)));
    }

    /// The deployments callable in a workspace, sorted by name (for `GET /models`).
    pub fn deployments(&self, workspace_id: &str) -> Vec<Arc<RoutingEntry>> {
        let snap = self.inner.routes.load();
        let mut v: Vec<_> = snap
            .workspace(workspace_id)
            .map(|r| r.entry.clone())
            .collect();
        v.sort_by(|a, b| a.deployed_model.cmp(&b.deployed_model));
        v
    }

    /// Tokens used by a deployment's answered requests since the gateway started.
    pub fn tokens_used(&self, workspace_id: &str, deployed_model: &str) -> Option<u64> {
        let snap = self.inner.routes.load();
        snap.get(workspace_id, deployed_model).map(|r| {
            r.state
                .tokens_total
                .load(std::sync::atomic::Ordering::Relaxed)
        })
    }
}
