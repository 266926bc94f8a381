//! The admin listener (`admin_listen`, off unless configured): `/metrics` in the Prometheus
//! text format, `/livez` and `/readyz` for probes and load balancers.
//!
//! It is a listener of its own, not routes on the API port, because its metrics carry every
//! workspace's deployment names; a tenant of the API port never sees them (the API port answers
//! `/metrics` with 404). Its routes take no key: keep it on loopback or a private network.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

/// The content type of the OpenMetrics text `prometheus-client` writes (Prometheus reads it).
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the admin routes read.
pub struct Admin {
    registry: Registry,
    gateway: berth_gateway::Gateway,
    reconciler: berth_control::ReconcilerMetrics,
    /// Set once the API listener accepts connections.
    pub serving: AtomicBool,
    shutdown: CancellationToken,
}

impl Admin {
    /// Every family of the gateway, the reconciler and the store, under the `berth_` prefix,
    /// plus `berth_build_info`.
    pub fn new(
        gateway: berth_gateway::Gateway,
        reconciler: berth_control::ReconcilerMetrics,
        store: &berth_store::StoreMetrics,
        shutdown: CancellationToken,
    ) -> Self {
        let mut registry = Registry::with_prefix("berth");
        registry.register(
            "build",
            "The running berth",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        gateway.metrics().register(&mut registry);
        reconciler.register(&mut registry);
        store.register(&mut registry);
        Self {
            registry,
            gateway,
            reconciler,
            serving: AtomicBool::new(false),
            shutdown,
        }
    }

    /// The exposition text.
    pub fn encode(&self) -> String {
        self.gateway.sample_gauges();
        let mut text = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    /// Why berth should not take traffic now, if it should not.
    fn not_ready(&self) -> Option<&'static str> {
        if self.shutdown.is_cancelled() {
            Some("shutting down")
        } else if !self.serving.load(Ordering::Relaxed) {
            Some("the API listener is not accepting yet")
        } else if self.reconciler.passes() == 0 {
            Some("the first reconcile pass has not finished")
        } else {
            None
        }
    }
}

/// The admin routes.
pub fn router(admin: Arc<Admin>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(admin)
}

async fn metrics(State(admin): State<Arc<Admin>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, OPENMETRICS)], admin.encode())
}

async fn readyz(State(admin): State<Arc<Admin>>) -> impl IntoResponse {
    match admin.not_ready() {
        None => (StatusCode::OK, "ok\n".to_owned()),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ready_only_while_serving_after_a_pass_and_not_shutting_down() {
        let gateway = berth_gateway::Gateway::new(Default::default()).unwrap();
        let reconciler = berth_control::ReconcilerMetrics::default();
        let stop = CancellationToken::new();
        let admin = Admin::new(
            gateway,
            reconciler.clone(),
            &Default::default(),
            stop.clone(),
        );
        assert!(admin.not_ready().is_some());
        admin.serving.store(true, Ordering::Relaxed);
        assert_eq!(
            admin.not_ready(),
            Some("the first reconcile pass has not finished")
        );
        reconciler.pass(0.001, true);
        assert_eq!(admin.not_ready(), None);
        stop.cancel();
        assert_eq!(admin.not_ready(), Some("shutting down"));
        let text = admin.encode();
        assert!(text.contains("berth_build_info{version=\""), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
