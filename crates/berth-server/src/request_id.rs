//! Request ids: every response carries `x-request-id`, equal to the envelope's `request_id`.
//!
//! A client-supplied `X-Request-Id` is echoed; otherwise a random (version 4) UUID is generated,
//! from a per-thread generator rather than the system's: an id must be unique, not secret, and
//! a system call per request is a measurable share of the gateway's cost. The id is also
//! available to handlers through the [`RequestId`] extension and, for error rendering, through a
//! task-local, so no handler has to thread it by hand.

use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use std::convert::Infallible;

tokio::task_local! {
    /// The id of the request being handled on this task.
    pub static CURRENT_REQUEST_ID: String;
}

/// The id of the current request.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// The header that carries the id, both ways.
pub const HEADER: &str = "x-request-id";
/// Client ids longer than this, or not visible ASCII, are replaced.
const MAX_CLIENT_ID: usize = 128;

fn pick_id(req: &Request) -> String {
    pick(req.headers().get(HEADER).map(|v| v.as_bytes()))
}

/// The id for a request whose `X-Request-Id` header (the first) is `client`: the client's own
/// when it is usable, a fresh one otherwise.
pub fn pick(client: Option<&[u8]>) -> String {
    client
        .filter(|v| !v.is_empty() && v.len() <= MAX_CLIENT_ID && v.iter().all(u8::is_ascii_graphic))
        .and_then(|v| std::str::from_utf8(v).ok())
        .map(str::to_owned)
        .unwrap_or_else(new_id)
}

/// A fresh random UUID, as text.
pub fn new_id() -> String {
    uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes())
        .into_uuid()
        .to_string()
}

/// Middleware: assigns the id, runs the handler with it in scope, stamps the response header.
pub async fn assign(mut req: Request, next: Next) -> Response {
    let id = pick_id(&req);
    req.extensions_mut().insert(RequestId(id.clone()));
    let mut resp = CURRENT_REQUEST_ID.scope(id.clone(), next.run(req)).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(HEADER, v);
    }
    resp
}

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<RequestId>()
            .cloned()
            .unwrap_or_else(|| RequestId(new_id())))
    }
}
