//! API errors in the Cloud Foundry V3 error body:
//! `{"errors":[{"code":10008,"title":"CF-UnprocessableEntity","detail":"..."}]}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// An error the API answers with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 401: no token.
    #[error("Authentication error")]
    NotAuthenticated,
    /// 401: a token that is not valid (bad signature, expired, malformed).
    #[error("Invalid Auth Token: {0}")]
    InvalidAuthToken(String),
    /// 403.
    #[error("You are not authorized to perform the requested action")]
    Forbidden,
    /// 404, naming the kind of resource.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// 422, naming the bad field.
    #[error("{0}")]
    Unprocessable(String),
    /// 400: the body is not valid JSON (or not the JSON expected).
    #[error("The request is invalid: {0}")]
    BadRequest(String),
    /// 409.
    #[error("{0}")]
    Conflict(String),
    /// 413.
    #[error("The upload is larger than the limit of {0} MiB")]
    TooLarge(u64),
    /// 500: something on our side; logged with its cause.
    #[error("An unknown error occurred.")]
    Internal(String),
}

impl ApiError {
    fn parts(&self) -> (StatusCode, u32, &'static str) {
        match self {
            ApiError::NotAuthenticated => (StatusCode::UNAUTHORIZED, 10002, "CF-NotAuthenticated"),
            ApiError::InvalidAuthToken(_) => {
                (StatusCode::UNAUTHORIZED, 1000, "CF-InvalidAuthToken")
            }
            ApiError::Forbidden => (StatusCode::FORBIDDEN, 10003, "CF-NotAuthorized"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, 10010, "CF-ResourceNotFound"),
            ApiError::Unprocessable(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                10008,
                "CF-UnprocessableEntity",
            ),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, 1001, "CF-MessageParseError"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, 10016, "CF-Conflict"),
            ApiError::TooLarge(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                10017,
                "CF-RequestEntityTooLarge",
            ),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, 10001, "UnknownError"),
        }
    }

    /// An internal error, logged with its cause; the client sees only that it happened.
    pub fn internal(context: &str, e: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %e, "{context}");
        ApiError::Internal(format!("{context}: {e}"))
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        ApiError::internal("database", e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, title) = self.parts();
        let body = json!({"errors": [{"code": code, "title": title, "detail": self.to_string()}]});
        (status, Json(body)).into_response()
    }
}

/// The result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;
