use axum::{Json, extract::State};
use serde::Serialize;
use serde_json::value::RawValue;
use utoipa::ToSchema;

use super::{
    AppState,
    decode::json_number,
    error::{ApiError, ErrorBody, Result},
    extract::ApiJson,
};
use crate::{
    circuit_breaker::BreakerStatus,
    enrichment::{Enrichment, EnrichmentData},
    metric::FieldError,
};

/// The metric type asked for when the service is called directly.
const DIRECT_CALL_TYPE: &str = "external_check";

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(super) enum CallStatus {
    Success,
    Fallback,
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct ExternalResponse {
    status: CallStatus,
    /// The service's answer; null for a fallback.
    data: Option<EnrichmentData>,
    message: &'static str,
}

/// Call the external service through the circuit breaker.
#[utoipa::path(
    get, path = "/api/external", tag = "external",
    responses(
        (status = 200, description = "success, or fallback while the circuit is open", body = ExternalResponse),
        (status = 503, description = "The call failed or timed out", body = ErrorBody),
    )
)]
pub(super) async fn call_external(State(state): State<AppState>) -> Result<Json<ExternalResponse>> {
    match state.enrichment.call(DIRECT_CALL_TYPE).await {
        Enrichment::Ok(data) => Ok(Json(ExternalResponse {
            status: CallStatus::Success,
            data: Some(data),
            message: "the external service answered",
        })),
        Enrichment::CircuitOpen => Ok(Json(ExternalResponse {
            status: CallStatus::Fallback,
            data: None,
            message: "the circuit is open; the external service was not called",
        })),
        Enrichment::Failed(failure) => Err(ApiError::ExternalService(failure)),
    }
}

/// The failure-rate body as sent: the field stays raw JSON until checked, so any other JSON
/// in it is this field's error.
#[derive(Debug, serde::Deserialize)]
pub(super) struct FailureRateBody {
    failure_rate: Option<Box<RawValue>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct FailureRate {
    /// Probability, from 0 to 1, that a call to the simulated service fails.
    #[schema(minimum = 0.0, maximum = 1.0)]
    failure_rate: f64,
}

/// Change the simulated service's failure rate at run time.
#[utoipa::path(
    put, path = "/api/external/failure-rate", tag = "external",
    request_body = FailureRate,
    responses(
        (status = 200, description = "The rate now in force", body = FailureRate),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 408, description = "The body did not arrive within BODY_READ_TIMEOUT_SECONDS", body = ErrorBody),
        (status = 413, description = "Body over 1 MiB", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "Not a number from 0 to 1", body = ErrorBody),
    )
)]
pub(super) async fn set_failure_rate(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<FailureRateBody>,
) -> Result<Json<FailureRate>> {
    let rate = body
        .failure_rate
        .as_deref()
        .and_then(json_number)
        .filter(|rate| (0.0..=1.0).contains(rate))
        .ok_or_else(|| {
            ApiError::Validation(vec![FieldError::new(
                "failure_rate",
                "must be a number from 0 to 1",
            )])
        })?;
    state.enrichment.service().set_failure_rate(rate);
    tracing::Span::current().record("failure_rate", rate);
    Ok(Json(FailureRate { failure_rate: rate }))
}

/// The circuit breaker's state and counters.
#[utoipa::path(
    get, path = "/api/circuit-breaker/status", tag = "external",
    responses((status = 200, body = BreakerStatus))
)]
pub(super) async fn breaker_status(State(state): State<AppState>) -> Json<BreakerStatus> {
    Json(state.enrichment.breaker_status())
}
