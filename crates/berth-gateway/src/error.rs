//! The gateway's errors. Each knows its DashScope [`ErrorCode`], the message the client sees and,
//! where it helps the client, a `Retry-After` in seconds. The HTTP layer renders them in the
//! native or the OpenAI envelope.

use berth_core::ErrorCode;

/// Why the gateway did not (or could not fully) answer a call.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The request is malformed or a parameter is out of range; nothing was sent upstream.
    #[error("{0}")]
    InvalidParameter(String),
    /// No deployment of that name in the caller's workspace.
    #[error(
        "The model `{}` does not exist or you do not have access to it.",
        berth_core::deployment::shorten(.0)
    )]
    ModelNotFound(String),
    /// The deployment exists but no replica became ready within the hold time, or its wait
    /// queue is full.
    #[error("Model is unavailable, please try again later.")]
    ModelUnavailable { retry_after: u64 },
    /// Over the deployment's `rpm_limit` or `tpm_limit`.
    #[error("Requests rate limit exceeded, please try again later.")]
    RateLimited { retry_after: u64 },
    /// The replica could not be reached or broke off the response.
    #[error("Failed to request model service.")]
    Upstream(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The replica answered with an error status.
    #[error("{message}")]
    UpstreamStatus { status: u16, message: String },
    /// The replica answered something that is not the OpenAI API.
    #[error("Failed to request model service: {0}")]
    UpstreamProtocol(String),
}

impl GatewayError {
    /// The DashScope code this error is answered with.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::InvalidParameter(_) => ErrorCode::InvalidParameter,
            Self::ModelNotFound(_) => ErrorCode::ModelNotFound,
            Self::ModelUnavailable { .. } => ErrorCode::ModelUnavailable,
            Self::RateLimited { .. } => ErrorCode::ThrottlingRateQuota,
            Self::UpstreamStatus { status, .. } => match status {
                400 | 413 | 422 => ErrorCode::InvalidParameter,
                429 => ErrorCode::Throttling,
                503 => ErrorCode::ModelUnavailable,
                _ => ErrorCode::InternalError,
            },
            Self::Upstream(_) | Self::UpstreamProtocol(_) => ErrorCode::InternalError,
        }
    }

    /// The message the client sees.
    pub fn message(&self) -> String {
        self.to_string()
    }

    /// Seconds for a `Retry-After` header, where one applies.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Self::ModelUnavailable { retry_after } | Self::RateLimited { retry_after } => {
                Some(*retry_after)
            }
            _ => None,
        }
    }
}
