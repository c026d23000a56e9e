use std::time::Duration;

use axum::{
    Json,
    extract::State,
    http::{HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, value::RawValue};
use utoipa::{IntoParams, ToSchema};

use super::{
    AppState,
    error::{ApiError, ErrorBody, Result},
    extract::{ApiQuery, IdempotentJson},
};
use crate::{
    cache::Lookup,
    enrichment::Enrichment,
    metric::{
        EnrichmentStatus, FieldError, MetricPoint, Period, Summary, collect, parse_timestamp,
        validate_type,
    },
    storage::{KeyedWrite, SeriesBucket, SeriesPoint, Stored, StoredMetric, StoredResponse},
};

/// A summary whose enrichment failed is cached this long at most, so a recovered external
/// service shows up well before the normal TTL ends.
const DEGRADED_SUMMARY_TTL: Duration = Duration::from_secs(5);
const DEFAULT_LIST_LIMIT: i64 = 100;
/// Points in one batch, at most.
pub(super) const MAX_BATCH_POINTS: usize = 10_000;
/// A batch body's size, at most (after decompression).
pub(super) const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;
const MAX_LIST_LIMIT: i64 = 1000;

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct MetricCreated {
    id: i64,
    message: &'static str,
    #[serde(rename = "type")]
    metric_type: String,
    /// When the service received (and committed) the point.
    timestamp: DateTime<Utc>,
}

const IDEMPOTENCY_KEY_DESCRIPTION: &str = "1 to 255 visible ASCII characters, e.g. a UUID. \
    Repeating the request with the same key within 24 hours returns the first response and \
    writes nothing; the same key with another body gets a 422.";

/// Store one metric point. A 201 means the row is committed in PostgreSQL.
#[utoipa::path(
    post, path = "/api/metrics", tag = "metrics",
    request_body = MetricPoint,
    params(("Idempotency-Key" = Option<String>, Header, description = IDEMPOTENCY_KEY_DESCRIPTION,
            min_length = 1, max_length = 255, pattern = "^[!-~]*$")),
    responses(
        (status = 201, description = "Stored (or, with Idempotent-Replayed: true, the first response to this Idempotency-Key)",
         body = MetricCreated,
         headers(("RateLimit-Limit" = u32), ("RateLimit-Remaining" = u32), ("RateLimit-Reset" = u64),
                 ("Idempotent-Replayed" = String))),
        (status = 400, description = "Malformed JSON, or an invalid Idempotency-Key", body = ErrorBody),
        (status = 409, description = "A request with this Idempotency-Key is still in flight",
         body = ErrorBody, headers(("Retry-After" = u64))),
        (status = 408, description = "The body did not arrive within BODY_READ_TIMEOUT_SECONDS", body = ErrorBody),
        (status = 413, description = "Body over 1 MiB", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "Validation failed, or the Idempotency-Key was used for another request",
         body = ErrorBody),
        (status = 429, description = "Rate limited", body = ErrorBody, headers(("Retry-After" = u64))),
        (status = 503, description = "PostgreSQL unavailable", body = ErrorBody, headers(("Retry-After" = u64))),
    )
)]
pub(super) async fn create_metric(
    State(state): State<AppState>,
    IdempotentJson { body, idempotency }: IdempotentJson,
) -> Result<Response> {
    let point = MetricPoint::from_json(&body).map_err(ApiError::Validation)?;
    let created = |metric_type: String, stored: &Stored| MetricCreated {
        id: stored.id,
        message: "Metric received",
        metric_type,
        timestamp: stored.received_at,
    };
    let Some(request) = idempotency else {
        let metric_type = point.metric_type.clone();
        let stored = state.ingestor.write(point).await?;
        tracing::info!(id = stored.id, %metric_type, "metric stored");
        return Ok((StatusCode::CREATED, Json(created(metric_type, &stored))).into_response());
    };
    let outcome = state
        .ingestor
        .write_idempotently(&request, std::slice::from_ref(&point), |stored| {
            stored_response(
                StatusCode::CREATED,
                &created(point.metric_type.clone(), &stored[0]),
            )
        })
        .await?;
    keyed_response(outcome)
}

/// A response as it is kept for replays.
fn stored_response(status: StatusCode, body: &impl Serialize) -> StoredResponse {
    StoredResponse {
        status: status.as_u16(),
        body: serde_json::to_value(body).expect("response bodies serialise"),
    }
}

/// The response to a keyed write; a replay says so in `Idempotent-Replayed: true`.
fn keyed_response(outcome: KeyedWrite) -> Result<Response> {
    let (response, replayed) = match outcome {
        KeyedWrite::Written(response) => (response, false),
        KeyedWrite::Replayed(response) => (response, true),
        KeyedWrite::KeyReused => return Err(ApiError::IdempotencyKeyReused),
        KeyedWrite::InFlight => return Err(ApiError::IdempotencyKeyInFlight),
    };
    tracing::info!(status = response.status, replayed, "keyed write answered");
    let status = StatusCode::from_u16(response.status)
        .map_err(|error| ApiError::Internal(Box::new(error)))?;
    let mut response = (status, Json(response.body)).into_response();
    if replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// A batch's body: `{"metrics": [point, ...]}`.
#[derive(Debug, Deserialize, ToSchema)]
pub(super) struct MetricBatch {
    /// 1 to 10,000 points of the single-point shape (each validated on its own). Kept as
    /// raw text until then, so a large batch is never held as a whole tree of values.
    #[schema(value_type = Vec<MetricPoint>, min_items = 1, max_items = 10_000)]
    metrics: Vec<Box<RawValue>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct BatchAccepted {
    /// Points stored.
    accepted: usize,
    /// The invalid points, by index; absent when every point was stored.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    rejected: Vec<RejectedPoint>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct RejectedPoint {
    index: usize,
    errors: Vec<FieldError>,
}

/// Store many points at once, in one statement. Each point is validated on its own: the valid
/// ones are stored even when others are not. The body may be gzip-compressed.
#[utoipa::path(
    post, path = "/api/metrics/batch", tag = "metrics",
    request_body = MetricBatch,
    params(("Idempotency-Key" = Option<String>, Header, description = IDEMPOTENCY_KEY_DESCRIPTION,
            min_length = 1, max_length = 255, pattern = "^[!-~]*$")),
    responses(
        (status = 201, description = "Every point stored (Idempotent-Replayed: true on a replay)",
         body = BatchAccepted, headers(("Idempotent-Replayed" = String))),
        (status = 200, description = "The valid points stored, the others listed (Idempotent-Replayed: true on a replay)",
         body = BatchAccepted, headers(("Idempotent-Replayed" = String))),
        (status = 400, description = "Malformed JSON or gzip, or an invalid Idempotency-Key", body = ErrorBody),
        (status = 409, description = "A request with this Idempotency-Key is still in flight",
         body = ErrorBody, headers(("Retry-After" = u64))),
        (status = 408, description = "The body did not arrive within BODY_READ_TIMEOUT_SECONDS", body = ErrorBody),
        (status = 413, description = "Over 16 MiB (uncompressed) or over 10,000 points", body = ErrorBody),
        (status = 415, description = "Not JSON, or an encoding other than gzip", body = ErrorBody),
        (status = 422, description = "No valid point, or the Idempotency-Key was used for another request",
         body = ErrorBody),
        (status = 429, description = "Rate limited (a batch counts as one request)", body = ErrorBody),
        (status = 503, description = "PostgreSQL unavailable", body = ErrorBody),
    )
)]
pub(super) async fn create_batch(
    State(state): State<AppState>,
    IdempotentJson {
        body: MetricBatch { metrics: items },
        idempotency,
    }: IdempotentJson<MAX_BATCH_BYTES, MetricBatch>,
) -> Result<Response> {
    if items.len() > MAX_BATCH_POINTS {
        return Err(ApiError::TooManyPoints {
            limit: MAX_BATCH_POINTS,
        });
    }
    let mut points = Vec::with_capacity(items.len());
    let mut rejected = Vec::new();
    for (index, item) in items.iter().enumerate() {
        // Valid JSON, but a number can still be out of range once parsed.
        let point = serde_json::from_str::<Value>(item.get())
            .map_err(|error| vec![FieldError::new("body", error.to_string())])
            .and_then(|item| MetricPoint::from_json(&item));
        match point {
            Ok(point) => points.push(point),
            Err(errors) => rejected.push(RejectedPoint { index, errors }),
        }
    }
    if points.is_empty() {
        let errors = if rejected.is_empty() {
            vec![FieldError::new("metrics", "must hold at least one point")]
        } else {
            rejected
                .into_iter()
                .flat_map(|r| {
                    r.errors.into_iter().map(move |e| {
                        FieldError::new(format!("metrics[{}].{}", r.index, e.field), e.message)
                    })
                })
                .collect()
        };
        return Err(ApiError::Validation(errors));
    }
    let answer = |accepted: usize, rejected: Vec<RejectedPoint>| {
        let status = if rejected.is_empty() {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        (status, BatchAccepted { accepted, rejected })
    };
    let Some(request) = idempotency else {
        let accepted = state.ingestor.write_all(&points).await?.len();
        tracing::info!(accepted, rejected = rejected.len(), "metric batch stored");
        let (status, body) = answer(accepted, rejected);
        return Ok((status, Json(body)).into_response());
    };
    let outcome = state
        .ingestor
        .write_idempotently(&request, &points, |stored| {
            let (status, body) = answer(stored.len(), rejected);
            stored_response(status, &body)
        })
        .await?;
    keyed_response(outcome)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct SummaryParams {
    /// The metric type.
    #[serde(rename = "type")]
    #[param(rename = "type", required = true, value_type = String, min_length = 1, max_length = 100,
            pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    metric_type: Option<String>,
    /// all (default), daily (last 24 hours) or hourly (last 60 minutes).
    #[param(value_type = Option<Period>)]
    period: Option<String>,
}

/// Summarise one type over a period, computed by SQL aggregation, read through the cache.
#[utoipa::path(
    get, path = "/api/metrics/summary", tag = "metrics",
    params(SummaryParams),
    responses(
        (status = 200, description = "The summary; X-Cache says HIT or MISS", body = Summary,
         headers(("X-Cache" = String))),
        (status = 400, description = "Missing or invalid type or period", body = ErrorBody),
        (status = 503, description = "PostgreSQL unavailable", body = ErrorBody),
    )
)]
pub(super) async fn summary(
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<SummaryParams>,
) -> Result<Response> {
    let mut errors = Vec::new();
    let metric_type = params
        .metric_type
        .as_deref()
        .map_or_else(|| Err("is required".to_owned()), validate_type);
    let metric_type = collect(&mut errors, "type", metric_type);
    let period = collect(
        &mut errors,
        "period",
        Period::parse(params.period.as_deref().unwrap_or("all")),
    );
    let (Some(metric_type), Some(period)) = (metric_type, period) else {
        return Err(ApiError::InvalidQuery(errors));
    };

    let slot = match state.cache.lookup(metric_type, period).await {
        Lookup::Hit(summary) => return Ok(with_cache_header(Json(*summary), "HIT")),
        Lookup::Miss(slot) => slot,
    };
    let (aggregates, enrichment) = tokio::join!(
        state
            .storage
            .aggregate(metric_type, period.since(Utc::now())),
        state.enrichment.enrich(metric_type),
    );
    let (enrichment, enrichment_status) = match enrichment {
        Enrichment::Ok(data) => (Some(data), EnrichmentStatus::Ok),
        Enrichment::Failed(_) => (None, EnrichmentStatus::Failed),
        Enrichment::CircuitOpen => (None, EnrichmentStatus::CircuitOpen),
    };
    let summary = Summary {
        metric_type: metric_type.to_owned(),
        period,
        aggregates: aggregates?,
        enrichment,
        enrichment_status,
    };
    if let Some(slot) = slot {
        let max_ttl = (enrichment_status != EnrichmentStatus::Ok).then_some(DEGRADED_SUMMARY_TTL);
        state.cache.store(slot, &summary, max_ttl).await;
    }
    Ok(with_cache_header(Json(summary), "MISS"))
}

fn with_cache_header(body: impl IntoResponse, status: &'static str) -> Response {
    let mut response = body.into_response();
    response
        .headers_mut()
        .insert("x-cache", HeaderValue::from_static(status));
    response
}

/// A series may have at most this many buckets.
const MAX_SERIES_BUCKETS: i64 = 10_000;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct SeriesParams {
    /// The metric type.
    #[serde(rename = "type")]
    #[param(rename = "type", required = true, value_type = String, min_length = 1, max_length = 100,
            pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    metric_type: Option<String>,
    /// Start of the range, RFC 3339; the bucket holding it is the first.
    #[param(required = true, value_type = String, format = DateTime)]
    from: Option<String>,
    /// End of the range, RFC 3339, exclusive; after `from`, at most 10,000 buckets later.
    #[param(required = true, value_type = String, format = DateTime)]
    to: Option<String>,
    /// Bucket width: 1m, 5m, 1h (default) or 1d. Buckets are aligned to UTC.
    #[param(pattern = "^(1m|5m|1h|1d)$")]
    bucket: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Series {
    #[serde(rename = "type")]
    metric_type: String,
    bucket: &'static str,
    buckets: Vec<SeriesPoint>,
}

/// Count, average, min and max per time bucket, from the rollups; empty buckets included.
#[utoipa::path(
    get, path = "/api/metrics/series", tag = "metrics",
    params(SeriesParams),
    responses(
        (status = 200, description = "One entry per bucket in the range", body = Series),
        (status = 400, description = "Missing or invalid parameters, or more than 10,000 buckets", body = ErrorBody),
        (status = 503, description = "PostgreSQL unavailable", body = ErrorBody),
    )
)]
pub(super) async fn series(
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<SeriesParams>,
) -> Result<Json<Series>> {
    let mut errors = Vec::new();
    let required_time = |raw: Option<&str>| {
        raw.map_or_else(
            || Err("is required".to_owned()),
            |raw| parse_timestamp(&Value::from(raw)),
        )
    };
    let metric_type = params
        .metric_type
        .as_deref()
        .map_or_else(|| Err("is required".to_owned()), validate_type);
    let metric_type = collect(&mut errors, "type", metric_type);
    let from = collect(&mut errors, "from", required_time(params.from.as_deref()));
    let to = collect(&mut errors, "to", required_time(params.to.as_deref()));
    let bucket = collect(
        &mut errors,
        "bucket",
        SeriesBucket::parse(params.bucket.as_deref().unwrap_or("1h")),
    );
    let (Some(metric_type), Some(from), Some(to), Some(bucket)) = (metric_type, from, to, bucket)
    else {
        return Err(ApiError::InvalidQuery(errors));
    };
    if from >= to {
        return Err(ApiError::InvalidQuery(vec![FieldError::new(
            "to",
            "must be later than from",
        )]));
    }
    let first = bucket.start_of(from);
    let last = bucket.start_of(to - TimeDelta::microseconds(1));
    let buckets = (last - first).num_seconds() / bucket.width().num_seconds() + 1;
    if buckets > MAX_SERIES_BUCKETS {
        return Err(ApiError::InvalidQuery(vec![FieldError::new(
            "to",
            format!(
                "the range holds {buckets} buckets of {}; at most {MAX_SERIES_BUCKETS}",
                bucket.as_str()
            ),
        )]));
    }
    let buckets = state
        .storage
        .series(metric_type, bucket, first, last)
        .await?;
    Ok(Json(Series {
        metric_type: metric_type.to_owned(),
        bucket: bucket.as_str(),
        buckets,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ListParams {
    /// Only points of this type; all types when absent.
    #[serde(rename = "type")]
    #[param(
        rename = "type",
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$"
    )]
    metric_type: Option<String>,
    /// 1–1000, default 100.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
}

/// The most recent points, newest first.
#[utoipa::path(
    get, path = "/api/metrics/list", tag = "metrics",
    params(ListParams),
    responses(
        (status = 200, description = "Points, newest first", body = [StoredMetric]),
        (status = 400, description = "Invalid type or limit", body = ErrorBody),
        (status = 503, description = "PostgreSQL unavailable", body = ErrorBody),
    )
)]
pub(super) async fn list(
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<Vec<StoredMetric>>> {
    let mut errors = Vec::new();
    let metric_type = collect(
        &mut errors,
        "type",
        params.metric_type.as_deref().map(validate_type).transpose(),
    );
    let limit = params
        .limit
        .as_deref()
        .map_or(Ok(DEFAULT_LIST_LIMIT), |raw| {
            raw.parse::<i64>()
                .ok()
                .filter(|limit| (1..=MAX_LIST_LIMIT).contains(limit))
                .ok_or_else(|| format!("must be an integer from 1 to {MAX_LIST_LIMIT}"))
        });
    let limit = collect(&mut errors, "limit", limit);
    match limit {
        Some(limit) if errors.is_empty() => Ok(Json(
            state
                .storage
                .list_metrics(metric_type.flatten(), limit)
                .await?,
        )),
        _ => Err(ApiError::InvalidQuery(errors)),
    }
}
