//! Calling a deployed model: the native DashScope generation route and the OpenAI-compatible
//! routes. The work is done by `berth-gateway`; this module turns its answers and errors into
//! HTTP, in the envelope each API expects.

pub(crate) mod compatible;
pub(crate) mod native;

use axum::body::Body;
use axum::extract::rejection::BytesRejection;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use berth_core::ErrorCode;
use berth_gateway::{GatewayError, GatewayResponse, ResponseBody};

use crate::error::ApiError;
use crate::extract::BODY_LIMIT;
use crate::state::AppState;

/// The native generation route.
pub const NATIVE_PATH: &str = "/api/v1/services/aigc/text-generation/generation";
/// The OpenAI-compatible chat route.
pub const CHAT_PATH: &str = "/compatible-mode/v1/chat/completions";

/// The inference routes.
pub fn router() -> Router<AppState> {
    // Keep in step with `crate::front`, which serves the POST routes itself.
    Router::new()
        .route(NATIVE_PATH, post(native::generation))
        .route(CHAT_PATH, post(compatible::chat_completions))
        .route("/compatible-mode/v1/models", get(compatible::models))
}

/// A gateway answer as an HTTP response; streamed bodies stay streamed.
fn into_response(r: GatewayResponse) -> Response {
    let streamed = matches!(r.body, ResponseBody::Stream(_));
    let body = match r.body {
        ResponseBody::Full(b) => Body::from(b),
        ResponseBody::Stream(s) => Body::from_stream(s),
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(r.content_type),
    );
    if streamed {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    resp
}

/// A gateway error as berth's error; causes of internal failures are logged here, once.
pub(crate) fn api_error(e: GatewayError) -> ApiError {
    if e.code() == ErrorCode::InternalError {
        tracing::warn!(error = %e, cause = ?std::error::Error::source(&e), "inference call failed");
    }
    ApiError {
        code: e.code(),
        message: e.message(),
        retry_after: e.retry_after(),
    }
}

/// An unreadable body (too large, broken connection) as `InvalidParameter`.
fn body_error(e: BytesRejection) -> ApiError {
    if e.body_text().contains("length limit") {
        ApiError::invalid(format!(
            "Request body is too large: the limit is {BODY_LIMIT} bytes."
        ))
    } else {
        ApiError::invalid(format!("Cannot read the request body: {}", e.body_text()))
    }
}
