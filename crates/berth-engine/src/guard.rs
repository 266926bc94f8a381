//! Who may call this replica, and when it should stop on its own.
//!
//! berth gives each replica a secret at spawn (`BERTH_REPLICA_SECRET`); with one set, every
//! route answers only calls that carry it as `Authorization: Bearer <secret>`, so no other local
//! process (or a web page rebinding DNS to loopback) can bypass berth's keys, workspaces and
//! rate limits. Without one (a hand-started `berth engine`), every call is served.
//!
//! With `BERTH_ORPHAN_TIMEOUT_SECS` set as well, the replica stops by itself once it has heard
//! no authenticated `GET /health` (its supervisor's checks) for that long: its berth is gone
//! and did not come back to adopt it. Other callers of `/health` do not count.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use tokio::time::Instant;

use crate::api::{ErrorBody, ErrorEnvelope};

/// The environment variable holding the replica's secret.
pub const SECRET_ENV: &str = "BERTH_REPLICA_SECRET";
/// The environment variable holding the orphan timeout, in seconds.
pub const ORPHAN_TIMEOUT_ENV: &str = "BERTH_ORPHAN_TIMEOUT_SECS";

/// The replica's secret and the time of its supervisor's last check.
#[derive(Debug)]
pub struct Guard {
    secret: Option<String>,
    orphan_timeout: Option<Duration>,
    started: Instant,
    /// Milliseconds after `started` of the last authenticated `/health`.
    last_check_ms: AtomicU64,
}

impl Default for Guard {
    fn default() -> Self {
        Self::new(None, None)
    }
}

impl Guard {
    pub fn new(secret: Option<String>, orphan_timeout: Option<Duration>) -> Self {
        Self {
            secret: secret.filter(|s| !s.is_empty()),
            orphan_timeout: orphan_timeout.filter(|t| !t.is_zero()),
            started: Instant::now(),
            last_check_ms: AtomicU64::new(0),
        }
    }

    /// Whether calls need the secret.
    pub fn enforced(&self) -> bool {
        self.secret.is_some()
    }

    fn allows(&self, req: &Request) -> bool {
        let Some(secret) = &self.secret else {
            return true;
        };
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .unwrap_or_default();
        // Constant time in the secret's content.
        given.len() == secret.len()
            && given
                .iter()
                .zip(secret.as_bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }

    fn checked(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_check_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// How long since the supervisor last checked (or since start, before its first check).
    pub fn since_last_check(&self) -> Duration {
        let last = Duration::from_millis(self.last_check_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }

    /// Resolves once the replica counts as orphaned; never without both a secret and an
    /// orphan timeout.
    pub async fn orphaned(&self) -> Duration {
        let (Some(timeout), true) = (self.orphan_timeout, self.enforced()) else {
            return std::future::pending().await;
        };
        loop {
            let since = self.since_last_check();
            if since >= timeout {
                return since;
            }
            tokio::time::sleep((timeout - since).min(Duration::from_secs(1))).await;
        }
    }
}

/// Middleware: refuses calls without the secret; counts authenticated `/health` calls.
pub async fn require_secret(State(guard): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    if !guard.allows(&req) {
        let body = ErrorEnvelope {
            error: ErrorBody {
                message: "this replica answers only its berth: missing or wrong replica secret"
                    .to_owned(),
                kind: "invalid_request_error",
                param: None,
                code: Some("invalid_api_key"),
            },
        };
        return (StatusCode::UNAUTHORIZED, Json(body)).into_response();
    }
    let health = req.uri().path() == "/health";
    let response = next.run(req).await;
    if health && guard.enforced() {
        guard.checked();
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    fn req(auth: Option<&str>) -> Request {
        let mut b = axum::http::Request::builder().uri("/health");
        if let Some(a) = auth {
            b = b.header(header::AUTHORIZATION, a);
        }
        b.body(Body::empty()).unwrap()
    }

    #[test]
    fn only_the_exact_bearer_secret_passes() {
        let g = Guard::new(Some("s3cret".into()), None);
        assert!(g.allows(&req(Some("Bearer s3cret"))));
        for bad in [
            None,
            Some("Bearer s3cre"),
            Some("Bearer s3cret2"),
            Some("s3cret"),
            Some("Basic s3cret"),
        ] {
            assert!(!g.allows(&req(bad)), "{bad:?}");
        }
        let open = Guard::default();
        assert!(open.allows(&req(None)));
        assert!(!open.enforced());
    }

    #[tokio::test]
    async fn orphaned_only_after_the_timeout_without_checks() {
        let timeout = Duration::from_millis(400);
        let g = Guard::new(Some("s".into()), Some(timeout));
        tokio::time::sleep(Duration::from_millis(250)).await;
        g.checked();
        let checked_at = Instant::now();
        let since = g.orphaned().await;
        let waited = checked_at.elapsed();
        assert!(since >= timeout, "{since:?}");
        assert!(waited >= timeout - Duration::from_millis(5), "{waited:?}");
        // Without a secret there is no supervisor to miss: never orphaned.
        let never = Guard::new(None, Some(Duration::from_millis(10)));
        assert!(
            tokio::time::timeout(Duration::from_millis(300), never.orphaned())
                .await
                .is_err()
        );
    }
}
