//! The HTTP surface: every route, the fallbacks, and the middleware around them.

pub mod deployments;
pub mod inference;

use axum::extract::DefaultBodyLimit;
use axum::http::Method;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use berth_core::ErrorCode;

use crate::error::ApiError;
use crate::extract::BODY_LIMIT;
use crate::state::AppState;

/// The whole router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(deployments::router())
        .merge(inference::router())
        .merge(crate::console::router())
        .route("/openapi.json", get(crate::openapi::serve))
        .route("/healthz", get(|| async { "ok" }))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn(crate::request_id::assign))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "Not found!")
}

async fn method_not_allowed(method: Method) -> impl IntoResponse {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!("Request method '{method}' is not supported."),
    )
}
