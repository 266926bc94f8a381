//! The closed table of DashScope error codes berth answers with, and their HTTP statuses.
//!
//! Every domain error maps onto one of these; the HTTP layer renders them as the native
//! `{request_id, code, message}` envelope or the OpenAI `{"error": {...}}` envelope.

/// A DashScope error code. The string is what clients see in `code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    InvalidParameter,
    InvalidApiKey,
    AccessDenied,
    NotFound,
    ModelNotFound,
    MethodNotAllowed,
    Conflict,
    Throttling,
    ThrottlingRateQuota,
    /// Over a workspace's quota of deployments or capacity units.
    ThrottlingAllocationQuota,
    InternalError,
    ModelUnavailable,
    RequestTimeOut,
}

impl ErrorCode {
    /// The native `code` string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidParameter => "InvalidParameter",
            Self::InvalidApiKey => "InvalidApiKey",
            Self::AccessDenied => "AccessDenied",
            Self::NotFound => "NotFound",
            Self::ModelNotFound => "ModelNotFound",
            Self::MethodNotAllowed => "MethodNotAllowed",
            Self::Conflict => "Conflict",
            Self::Throttling => "Throttling",
            Self::ThrottlingRateQuota => "Throttling.RateQuota",
            Self::ThrottlingAllocationQuota => "Throttling.AllocationQuota",
            Self::InternalError => "InternalError",
            Self::ModelUnavailable => "ModelUnavailable",
            Self::RequestTimeOut => "RequestTimeOut",
        }
    }

    /// The code used in the OpenAI-compatible envelope (`error.code`).
    pub fn openai_code(self) -> &'static str {
        match self {
            Self::InvalidParameter => "invalid_parameter",
            Self::InvalidApiKey => "invalid_api_key",
            Self::AccessDenied => "access_denied",
            Self::NotFound => "not_found",
            Self::ModelNotFound => "model_not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Conflict => "conflict",
            Self::Throttling => "throttling",
            Self::ThrottlingRateQuota => "rate_limit_exceeded",
            Self::ThrottlingAllocationQuota => "allocation_quota_exceeded",
            Self::InternalError => "internal_error",
            Self::ModelUnavailable => "model_unavailable",
            Self::RequestTimeOut => "request_timeout",
        }
    }

    /// The OpenAI `error.type` for this code.
    pub fn openai_type(self) -> &'static str {
        match self {
            Self::InvalidApiKey => "authentication_error",
            Self::AccessDenied => "permission_error",
            Self::ThrottlingRateQuota | Self::Throttling | Self::ThrottlingAllocationQuota => {
                "rate_limit_error"
            }
            Self::InternalError | Self::ModelUnavailable | Self::RequestTimeOut => "server_error",
            _ => "invalid_request_error",
        }
    }

    /// The HTTP status this code is answered with.
    pub fn http_status(self) -> u16 {
        match self {
            Self::InvalidParameter => 400,
            Self::InvalidApiKey => 401,
            Self::AccessDenied => 403,
            Self::NotFound | Self::ModelNotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::Conflict => 409,
            Self::Throttling | Self::ThrottlingRateQuota | Self::ThrottlingAllocationQuota => 429,
            Self::InternalError => 500,
            Self::ModelUnavailable => 503,
            Self::RequestTimeOut => 504,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_platform_table() {
        let table = [
            (ErrorCode::InvalidParameter, 400, "InvalidParameter"),
            (ErrorCode::InvalidApiKey, 401, "InvalidApiKey"),
            (ErrorCode::AccessDenied, 403, "AccessDenied"),
            (ErrorCode::NotFound, 404, "NotFound"),
            (ErrorCode::ModelNotFound, 404, "ModelNotFound"),
            (ErrorCode::Conflict, 409, "Conflict"),
            (ErrorCode::ThrottlingRateQuota, 429, "Throttling.RateQuota"),
            (
                ErrorCode::ThrottlingAllocationQuota,
                429,
                "Throttling.AllocationQuota",
            ),
            (ErrorCode::InternalError, 500, "InternalError"),
            (ErrorCode::ModelUnavailable, 503, "ModelUnavailable"),
        ];
        for (code, status, s) in table {
            assert_eq!(code.http_status(), status, "{s}");
            assert_eq!(code.as_str(), s);
        }
        assert_eq!(
            ErrorCode::ThrottlingRateQuota.openai_code(),
            "rate_limit_exceeded"
        );
        assert_eq!(
            ErrorCode::ModelUnavailable.openai_code(),
            "model_unavailable"
        );
    }
}
