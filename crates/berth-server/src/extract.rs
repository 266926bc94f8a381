//! Extractors that reject in berth's envelope (`InvalidParameter`) instead of axum's plain text.

use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use bytes::Bytes;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// The largest request body accepted on the control-plane and inference routes.
pub const BODY_LIMIT: usize = 1024 * 1024;

/// A JSON body. Content-type is not enforced (upstream clients vary), the syntax and the types
/// are, with the offending field named in the message.
#[derive(Debug)]
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(body_rejection)?;
        parse_json(&bytes).map(Json)
    }
}

/// Parses a JSON body into `T`, naming the field that is wrong.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid(
            "Required body invalid, please check the request body format.",
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::invalid(format!(
                "Required body invalid, please check the request body format: {inner}"
            ))
        } else if path == "." || path.is_empty() {
            ApiError::invalid(format!("Required body invalid: {inner}"))
        } else {
            ApiError::invalid(format!(
                "Required parameter({path}) missing or invalid, please check the request parameters: {inner}"
            ))
        }
    })
}

fn body_rejection(e: BytesRejection) -> ApiError {
    let text = e.body_text();
    if text.contains("length limit") {
        ApiError::invalid(format!(
            "Request body is too large: the limit is {} bytes.",
            BODY_LIMIT
        ))
    } else {
        ApiError::invalid(format!("Cannot read the request body: {text}"))
    }
}

/// A query string.
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Query(q.0))
            .map_err(|e| ApiError::invalid(format!("Invalid query string: {}", e.body_text())))
    }
}

/// A path parameter.
#[derive(Debug)]
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Path(p.0))
            .map_err(|e| ApiError::invalid(format!("Invalid path: {}", e.body_text())))
    }
}
