//! The one place errors become HTTP responses.
//!
//! Every handler returns [`ApiError`]: a DashScope [`ErrorCode`] and a client-facing message.
//! Internal failures are logged here, once, with their cause, and the client gets a generic
//! message.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use berth_api::envelope::ErrorBody;
use berth_core::ErrorCode;

use crate::request_id::CURRENT_REQUEST_ID;

/// The generic message for internal errors.
pub const INTERNAL_MESSAGE: &str =
    "An internal error has occured, please try again later or contact service support.";

/// An error answered in the native envelope `{request_id, code, message}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidParameter, message)
    }

    /// `NotFound` with the upstream message `Model: X not found!`.
    pub fn model_not_found(name: &str) -> Self {
        Self::new(ErrorCode::NotFound, format!("Model: {name} not found!"))
    }

    pub fn invalid_api_key() -> Self {
        Self::new(ErrorCode::InvalidApiKey, "Invalid API-key provided.")
    }

    /// Logs `cause` and returns the generic internal error.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(ErrorCode::InternalError, INTERNAL_MESSAGE)
    }

    fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl From<berth_store::StoreError> for ApiError {
    fn from(e: berth_store::StoreError) -> Self {
        match e {
            // The store refused the write in the same statement: the deployment is deleting.
            berth_store::StoreError::Deleting(name) => Self::new(
                berth_core::ErrorCode::Conflict,
                format!("Deployed model {name} is being deleted."),
            ),
            e => Self::internal(e),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = ErrorBody {
            request_id: CURRENT_REQUEST_ID
                .try_with(|id| id.clone())
                .unwrap_or_default(),
            code: self.code.as_str().to_owned(),
            message: self.message,
        };
        let mut resp = (status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}
