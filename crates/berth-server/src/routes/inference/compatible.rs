//! `/compatible-mode/v1`: the OpenAI-compatible routes. Every error, authentication included,
//! is answered in the OpenAI envelope `{"error": {message, type, param, code}}`.

use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use berth_api::envelope::{OpenAiError, OpenAiErrorBody};
use berth_api::openai::{Model, ModelList};
use bytes::Bytes;

use crate::auth::{authenticate, Caller};
use crate::error::ApiError;
use crate::state::AppState;

/// An [`ApiError`] in the OpenAI envelope.
pub struct OpenAiApiError(pub ApiError);

impl From<ApiError> for OpenAiApiError {
    fn from(e: ApiError) -> Self {
        Self(e)
    }
}

impl IntoResponse for OpenAiApiError {
    fn into_response(self) -> Response {
        let e = self.0;
        let status =
            StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = OpenAiErrorBody {
            error: OpenAiError {
                message: e.message,
                kind: e.code.openai_type().to_owned(),
                param: None,
                code: e.code.openai_code().to_owned(),
            },
        };
        let mut resp = (status, axum::Json(body)).into_response();
        if let Some(secs) = e.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// The caller of an OpenAI-compatible route; authentication failures in the OpenAI envelope.
pub struct OpenAiCaller(pub Caller);

impl FromRequestParts<AppState> for OpenAiCaller {
    type Rejection = OpenAiApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        authenticate(&parts.headers, state)
            .await
            .map(OpenAiCaller)
            .map_err(auth_error)
    }
}

/// An authentication failure in the OpenAI envelope.
pub(crate) fn auth_error(e: ApiError) -> OpenAiApiError {
    if e.code == berth_core::ErrorCode::InvalidApiKey {
        // OpenAI's wording, which its SDKs and users recognise.
        OpenAiApiError(ApiError {
            message: "Incorrect API key provided.".into(),
            ..e
        })
    } else {
        OpenAiApiError(e)
    }
}

/// `POST /compatible-mode/v1/chat/completions`.
pub async fn chat_completions(
    State(state): State<AppState>,
    OpenAiCaller(caller): OpenAiCaller,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, OpenAiApiError> {
    let body = body.map_err(super::body_error)?;
    let resp = state
        .gateway
        .chat_completions(&caller.workspace_id, body)
        .await
        .map_err(super::api_error)?;
    Ok(super::into_response(resp))
}

/// `GET /compatible-mode/v1/models`: the deployments of the caller's workspace.
pub async fn models(
    State(state): State<AppState>,
    OpenAiCaller(caller): OpenAiCaller,
) -> Result<axum::Json<ModelList>, OpenAiApiError> {
    let data = state
        .gateway
        .deployments(&caller.workspace_id)
        .iter()
        .map(|e| Model {
            id: e.deployed_model.clone(),
            object: "model",
            created: e.created,
            owned_by: e.workspace_id.clone(),
        })
        .collect();
    Ok(axum::Json(ModelList {
        object: "list",
        data,
    }))
}
