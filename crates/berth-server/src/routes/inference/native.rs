//! `POST /api/v1/services/aigc/text-generation/generation`: the native DashScope API.
//! Errors before the answer starts are the native envelope; errors after a stream started are
//! `event:error` events, written by the gateway.

use std::convert::Infallible;

use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::response::Response;
use bytes::Bytes;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::request_id::RequestId;
use crate::state::AppState;

/// The header that asks for a server-sent-event answer.
pub(crate) const SSE_HEADER: &str = "x-dashscope-sse";

/// Whether the request asked for server-sent events (`X-DashScope-SSE: enable`).
pub struct SseRequested(pub bool);

impl<S: Send + Sync> FromRequestParts<S> for SseRequested {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(SseRequested(sse_enabled(
            parts.headers.get(SSE_HEADER).map(|v| v.as_bytes()),
        )))
    }
}

/// Whether the value of `X-DashScope-SSE` asks for events.
pub(crate) fn sse_enabled(value: Option<&[u8]>) -> bool {
    value
        .and_then(crate::auth::header_str)
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("enable"))
}

pub async fn generation(
    State(state): State<AppState>,
    caller: Caller,
    RequestId(request_id): RequestId,
    SseRequested(stream): SseRequested,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(super::body_error)?;
    let resp = state
        .gateway
        .generation(&caller.workspace_id, &request_id, stream, body)
        .await
        .map_err(super::api_error)?;
    Ok(super::into_response(resp))
}
