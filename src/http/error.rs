//! The one place where errors become HTTP responses, all with the same body.

use std::time::Duration;

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use crate::{
    app::{
        access::{AuthError, KeyError},
        writes::WriteError,
    },
    auth::Scope,
    enrichment::CallFailure,
    metric::FieldError,
    storage::StorageError,
};

/// Clients are asked to come back after this long when a dependency is down.
const UNAVAILABLE_RETRY_AFTER: Duration = Duration::from_secs(5);

pub(super) type Result<T, E = ApiError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the request failed validation")]
    Validation(Vec<FieldError>),
    #[error("invalid query parameters")]
    InvalidQuery(Vec<FieldError>),
    #[error("invalid request header")]
    InvalidHeader(FieldError),
    #[error("this Idempotency-Key was used for another request within the last 24 hours")]
    IdempotencyKeyReused,
    #[error("a request with this Idempotency-Key is still being handled; retry shortly")]
    IdempotencyKeyInFlight,
    #[error("the body is not valid JSON: {0}")]
    MalformedJson(String),
    /// The content types the endpoint takes, in words.
    #[error("the body must be sent with Content-Type: {0}")]
    UnsupportedMediaType(&'static str),
    /// The encodings the endpoint takes, in words.
    #[error("the body must be sent {0}")]
    UnsupportedEncoding(&'static str),
    /// A binary body that is not the protocol's message.
    #[error("the body cannot be decoded: {0}")]
    Undecodable(String),
    /// Samples of a receiver's request that break the rules; the rest were stored.
    #[error("{0}; the other samples were stored")]
    SamplesRefused(String),
    #[error("a request holds at most {limit} samples")]
    TooManySamples { limit: usize },
    #[error("the body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("a batch holds at most {limit} points")]
    TooManyPoints { limit: usize },
    #[error("a point of a batch is at most {limit} bytes")]
    PointTooLarge { limit: usize },
    #[error("the server is at its memory budget for request bodies; retry shortly")]
    Busy,
    #[error("rate limit exceeded; retry in {} s", retry_after_secs(*.retry_after))]
    RateLimited { retry_after: Duration },
    /// No credential, or one that is not (or no longer) valid; the reason is the message.
    #[error("{reason}")]
    Unauthorized {
        reason: &'static str,
        credential_sent: bool,
    },
    #[error("this API key lacks the {0} scope")]
    Forbidden(Scope),
    #[error("too many failed authentications from this client; retry in {} s", retry_after_secs(*.retry_after))]
    TooManyFailedAuthentications { retry_after: Duration },
    #[error("a dependency is unavailable; retry shortly")]
    Unavailable,
    #[error("the external service call failed: {0}")]
    ExternalService(CallFailure),
    #[error("the request took too long to handle")]
    RequestTimeout,
    #[error("the request body was not received in time")]
    BodyReadTimeout,
    #[error("no such resource")]
    NotFound,
    #[error("method not allowed for this resource")]
    MethodNotAllowed,
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// A stable, machine-readable code, e.g. VALIDATION_ERROR.
    pub code: &'static str,
    pub message: String,
    pub timestamp: DateTime<Utc>,
    /// One entry per offending field, for validation errors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<FieldError>>,
}

/// Whole seconds, rounded up, at least 1.
pub(crate) fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::Validation(_) => (StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_ERROR"),
            Self::InvalidQuery(_) => (StatusCode::BAD_REQUEST, "INVALID_QUERY"),
            Self::InvalidHeader(_) => (StatusCode::BAD_REQUEST, "INVALID_HEADER"),
            Self::IdempotencyKeyReused => {
                (StatusCode::UNPROCESSABLE_ENTITY, "IDEMPOTENCY_KEY_REUSED")
            }
            Self::IdempotencyKeyInFlight => (StatusCode::CONFLICT, "IDEMPOTENCY_KEY_IN_FLIGHT"),
            Self::MalformedJson(_) => (StatusCode::BAD_REQUEST, "MALFORMED_JSON"),
            Self::UnsupportedMediaType(_) | Self::UnsupportedEncoding(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "UNSUPPORTED_MEDIA_TYPE")
            }
            Self::Undecodable(_) => (StatusCode::BAD_REQUEST, "MALFORMED_BODY"),
            Self::SamplesRefused(_) => (StatusCode::BAD_REQUEST, "INVALID_SAMPLES"),
            Self::PayloadTooLarge { .. }
            | Self::TooManySamples { .. }
            | Self::TooManyPoints { .. }
            | Self::PointTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE"),
            Self::RateLimited { .. } | Self::TooManyFailedAuthentications { .. } => {
                (StatusCode::TOO_MANY_REQUESTS, "RATE_LIMIT_EXCEEDED")
            }
            Self::Unauthorized { .. } => (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "FORBIDDEN"),
            Self::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "SERVICE_UNAVAILABLE"),
            Self::Busy => (StatusCode::SERVICE_UNAVAILABLE, "SERVER_BUSY"),
            Self::ExternalService(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "EXTERNAL_SERVICE_UNAVAILABLE",
            ),
            Self::RequestTimeout => (StatusCode::SERVICE_UNAVAILABLE, "REQUEST_TIMEOUT"),
            Self::BodyReadTimeout => (StatusCode::REQUEST_TIMEOUT, "BODY_READ_TIMEOUT"),
            Self::NotFound => (StatusCode::NOT_FOUND, "NOT_FOUND"),
            Self::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR"),
        }
    }

    fn retry_after(&self) -> Option<u64> {
        match self {
            Self::RateLimited { retry_after }
            | Self::TooManyFailedAuthentications { retry_after } => {
                Some(retry_after_secs(*retry_after))
            }
            Self::Unavailable | Self::ExternalService(_) => {
                Some(retry_after_secs(UNAVAILABLE_RETRY_AFTER))
            }
            Self::IdempotencyKeyInFlight | Self::Busy => Some(1),
            _ => None,
        }
    }
}

impl From<StorageError> for ApiError {
    fn from(error: StorageError) -> Self {
        match error {
            StorageError::Unavailable(reason) => {
                tracing::warn!(%reason, "database unavailable");
                Self::Unavailable
            }
            // Only the constraint's name is shown: the database's message may carry data.
            StorageError::Rejected(constraint) => Self::Validation(vec![FieldError::new(
                "body",
                format!("the database refused the data ({constraint})"),
            )]),
            // A 503 all the same: the client retries, with its Idempotency-Key if it has one.
            StorageError::OutcomeUnknown(reason) => {
                tracing::warn!(%reason, "database outcome unknown");
                Self::Unavailable
            }
            StorageError::Query(error) => Self::Internal(Box::new(error)),
            StorageError::Corrupt(reason) => Self::Internal(reason.into()),
        }
    }
}

impl From<WriteError> for ApiError {
    fn from(error: WriteError) -> Self {
        match error {
            WriteError::Invalid(errors) => Self::Validation(errors),
            WriteError::KeyReused => Self::IdempotencyKeyReused,
            WriteError::KeyInFlight => Self::IdempotencyKeyInFlight,
            WriteError::Storage(error) => error.into(),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        let unauthorized = |reason, credential_sent| Self::Unauthorized {
            reason,
            credential_sent,
        };
        match error {
            AuthError::Missing => unauthorized(
                "this endpoint needs an API key: Authorization: Bearer <key> (or Token <key>, or X-API-Key)",
                false,
            ),
            AuthError::Invalid => unauthorized("the API key is not valid", true),
            AuthError::Expired => unauthorized("the API key has expired", true),
            AuthError::Revoked => unauthorized("the API key has been revoked", true),
            AuthError::TooManyFailures { retry_after } => {
                Self::TooManyFailedAuthentications { retry_after }
            }
            AuthError::Storage(error) => error.into(),
        }
    }
}

impl From<KeyError> for ApiError {
    fn from(error: KeyError) -> Self {
        match error {
            KeyError::InvalidExpiry => {
                Self::Validation(vec![FieldError::new("expires_in_days", error.to_string())])
            }
            KeyError::Storage(error) => error.into(),
        }
    }
}

/// Whether `E` is anywhere in the error's chain of sources.
pub(super) fn caused_by<E: std::error::Error + 'static>(
    error: &(dyn std::error::Error + 'static),
) -> bool {
    std::iter::successors(Some(error), |e| e.source()).any(|e| e.is::<E>())
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if let Self::Internal(error) = &self {
            // Details go to the log, never to the client.
            tracing::error!(error = %error, "internal error");
        }
        let retry_after = self.retry_after();
        // RFC 6750: a refused credential is an invalid_token; a missing one is just a challenge.
        let challenge = match &self {
            Self::Unauthorized {
                credential_sent: true,
                ..
            } => Some(r#"Bearer realm="resilient-analytics", error="invalid_token""#),
            Self::Unauthorized { .. } => Some(r#"Bearer realm="resilient-analytics""#),
            _ => None,
        };
        let message = self.to_string();
        let errors = match self {
            Self::Validation(errors) | Self::InvalidQuery(errors) => Some(errors),
            Self::InvalidHeader(error) => Some(vec![error]),
            _ => None,
        };
        let body = ErrorBody {
            code,
            message,
            timestamp: Utc::now(),
            errors,
        };
        let mut response = (status, Json(body)).into_response();
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if let Some(challenge) = challenge {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_whole_seconds_rounded_up_and_at_least_one() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(300)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(6_001)), 7);
        assert_eq!(retry_after_secs(Duration::from_secs(6)), 6);
    }
}
