//! Envelopes: the native `{request_id, output}` / `{request_id, code, message}` and the OpenAI
//! `{"error": {...}}` shapes.

use serde::Serialize;
use utoipa::ToSchema;

/// A successful native response.
#[derive(Debug, Serialize, ToSchema)]
pub struct Success<T> {
    pub request_id: String,
    pub output: T,
}

/// A failed native response (any non-2xx status).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorBody {
    pub request_id: String,
    /// DashScope error code, e.g. `InvalidParameter`, `NotFound`, `InvalidApiKey`.
    pub code: String,
    pub message: String,
}

/// The OpenAI-compatible error envelope.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OpenAiErrorBody {
    pub error: OpenAiError,
}

/// The inner object of [`OpenAiErrorBody`].
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OpenAiError {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub param: Option<String>,
    pub code: String,
}
