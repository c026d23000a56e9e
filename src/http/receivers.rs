//! The receivers' endpoints: Prometheus remote write (`POST /api/v1/write`) and OTLP/HTTP
//! metrics (`POST /v1/metrics`). Their status codes follow the senders' retry models: a
//! retry is invited (429, 503) only when it can help, and since a retried sample is never
//! stored twice, a retry after a failure or a lost answer is harmless. Everything a retry
//! cannot fix is a 4xx, so a sender drops it rather than retrying it forever.

use axum::{
    body::{Body, Bytes},
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use prost::Message;

use super::{
    AppState,
    body::{content_type, gunzip, is_gzipped, read_message},
    error::{ApiError, ErrorBody, Result},
};
use crate::{
    app::writes::SamplesStored,
    auth::Caller,
    metric::Source,
    receivers::{ReceiveError, Samples, otlp, remote_write},
};

/// A receiver's body, at most, as sent and once inflated: some thousands of series (a
/// Prometheus request carries 2,000 samples by default).
pub(super) const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

const PROTOBUF: &str = "application/x-protobuf";
const JSON: &str = "application/json";

impl From<ReceiveError> for ApiError {
    fn from(error: ReceiveError) -> Self {
        match error {
            ReceiveError::Undecodable(reason) => Self::Undecodable(reason),
            ReceiveError::TooLarge { limit } => Self::PayloadTooLarge { limit },
            ReceiveError::TooManySamples { limit } => Self::TooManySamples { limit },
        }
    }
}

/// Decodes off the async workers: a large message takes milliseconds of CPU.
async fn decode_off_runtime<T: Send + 'static>(
    decode: impl FnOnce() -> std::result::Result<T, ReceiveError> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(decode)
        .await
        .map_err(|error| ApiError::Internal(Box::new(error)))?
        .map_err(ApiError::from)
}

/// Counts what a receiver left out: by its rules, and as already stored (a retry).
fn count_left_out(receiver: &'static str, samples: &Samples, stored: &SamplesStored) {
    let counter = |reason: &'static str, n: usize| {
        ::metrics::counter!("receiver_samples_dropped_total", "receiver" => receiver, "reason" => reason)
            .increment(n as u64);
    };
    counter("stale_marker", samples.stale);
    counter("no_value", samples.skipped - samples.stale);
    counter("invalid", samples.rejected);
    counter("duplicate", stored.duplicates);
}

/// Store samples sent by Prometheus (or any remote-write 1.0 sender: Grafana Alloy, vmagent,
/// Telegraf, Vector, the OpenTelemetry Collector).
#[utoipa::path(
    post, path = "/api/v1/write", tag = "receivers",
    request_body(content = Vec<u8>, content_type = "application/x-protobuf",
                 description = "A snappy-compressed (block format) prometheus.WriteRequest, with \
                                Content-Encoding: snappy. At most 4 MiB, also once inflated, and 50,000 samples."),
    responses(
        (status = 204, description = "Stored: every sample, or those not already stored (a retry)"),
        (status = 400, description = "Undecodable, or some series or samples break the rules (the \
                                      others were stored): retrying cannot help", body = ErrorBody),
        (status = 408, description = "The body did not arrive within BODY_READ_TIMEOUT_SECONDS", body = ErrorBody),
        (status = 413, description = "Over 4 MiB (also once inflated) or 50,000 samples", body = ErrorBody),
        (status = 415, description = "Not application/x-protobuf with Content-Encoding: snappy, or remote write 2.0", body = ErrorBody),
        (status = 503, description = "PostgreSQL unavailable, or the server at its memory budget: nothing \
                                      was stored, retry", body = ErrorBody, headers(("Retry-After" = u64))),
    )
)]
pub(super) async fn remote_write(
    State(state): State<AppState>,
    Caller { tenant, .. }: Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode> {
    let full_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    // Remote write 2.0 names its message; 1.0 names none, or prometheus.WriteRequest.
    let other_message = full_type
        .split(';')
        .skip(1)
        .filter_map(|parameter| parameter.trim().strip_prefix("proto="))
        .any(|message| message != "prometheus.WriteRequest");
    if content_type(&headers).as_deref() != Some(PROTOBUF) || other_message {
        return Err(ApiError::UnsupportedMediaType(
            "application/x-protobuf (remote write 1.0)",
        ));
    }
    let snappy = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|encoding| encoding.trim().eq_ignore_ascii_case("snappy"));
    if !snappy {
        return Err(ApiError::UnsupportedEncoding(
            "with Content-Encoding: snappy",
        ));
    }
    let (message, _meter) = read_message(
        &state.body_budget,
        &headers,
        body,
        MAX_MESSAGE_BYTES,
        |sent, limit| Ok(remote_write::decompress(&sent, limit)?.into()),
    )
    .await?;
    let mut samples = decode_off_runtime(move || remote_write::samples(&message)).await?;
    let points = std::mem::take(&mut samples.points);
    let stored = state
        .writes
        .write_samples(tenant, points, Source::Prometheus)
        .await?;
    count_left_out("remote_write", &samples, &stored);
    if samples.rejected > 0 {
        return Err(ApiError::SamplesRefused(samples.rejection_message()));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Store metrics exported by an OpenTelemetry SDK or Collector (OTLP/HTTP).
#[utoipa::path(
    post, path = "/v1/metrics", tag = "receivers",
    request_body(content = Vec<u8>, content_type = "application/x-protobuf",
                 description = "An opentelemetry ExportMetricsServiceRequest, as protobuf or as OTLP \
                                JSON (application/json), optionally with Content-Encoding: gzip. At most \
                                4 MiB, also once inflated, and 50,000 points."),
    responses(
        (status = 200, description = "Stored; with partialSuccess when some data points were refused \
                                      (do not retry). In the request's content type.",
         content_type = "application/x-protobuf"),
        (status = 400, description = "Undecodable: retrying cannot help", body = ErrorBody),
        (status = 408, description = "The body did not arrive within BODY_READ_TIMEOUT_SECONDS", body = ErrorBody),
        (status = 413, description = "Over 4 MiB (also once inflated) or 50,000 points", body = ErrorBody),
        (status = 415, description = "Neither protobuf nor JSON, or an encoding other than gzip", body = ErrorBody),
        (status = 503, description = "PostgreSQL unavailable, or the server at its memory budget: nothing \
                                      was stored, retry", body = ErrorBody, headers(("Retry-After" = u64))),
    )
)]
pub(super) async fn otlp_metrics(
    State(state): State<AppState>,
    Caller { tenant, .. }: Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let json = match content_type(&headers).as_deref() {
        Some(PROTOBUF) => false,
        Some(JSON) => true,
        _ => {
            return Err(ApiError::UnsupportedMediaType(
                "application/x-protobuf or application/json",
            ));
        }
    };
    let gzipped = is_gzipped(&headers)?;
    let (message, _meter) = read_message(
        &state.body_budget,
        &headers,
        body,
        MAX_MESSAGE_BYTES,
        |sent, limit| {
            if gzipped {
                gunzip(sent, limit)
            } else {
                Ok(sent)
            }
        },
    )
    .await?;
    let mut samples = decode_off_runtime(move || {
        let request = if json {
            otlp::decode_json(&message)?
        } else {
            otlp::decode_protobuf(&message)?
        };
        otlp::samples(&request)
    })
    .await?;
    let points = std::mem::take(&mut samples.points);
    let stored = state
        .writes
        .write_samples(tenant, points, Source::Otlp)
        .await?;
    count_left_out("otlp", &samples, &stored);
    let response = otlp::ExportMetricsServiceResponse::of(&samples);
    let (content_type, body) = if json {
        (JSON, Bytes::from(response.to_json().to_string()))
    } else {
        (PROTOBUF, Bytes::from(response.encode_to_vec()))
    };
    Ok((
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        body,
    )
        .into_response())
}
