//! The metrics endpoints: they decode the request, call the write path or the read path,
//! and answer.

use axum::{
    Json,
    extract::State,
    http::{HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{
    IntoParams, PartialSchema, ToSchema,
    openapi::{ArrayBuilder, ObjectBuilder, Ref, RefOr, Schema},
};

use super::{
    AppState,
    decode::MAX_BATCH_POINTS,
    error::{ApiError, ErrorBody, Result},
    extract::{ApiQuery, Batch, OnePoint, TagQuery, WriteBody},
};
use crate::{
    app::{
        summaries::CacheStatus,
        writes::{BatchReceipt, PointReceipt, Receipt, Written},
    },
    auth::Caller,
    metric::{
        FieldError, MetricPoint, MetricType, Period, SeriesBucket, SeriesPoint, SeriesRange,
        StoredMetric, Summary, parse_timestamp,
    },
};

const DEFAULT_LIST_LIMIT: i64 = 100;
const MAX_LIST_LIMIT: i64 = 1000;

const IDEMPOTENCY_KEY_DESCRIPTION: &str = "1 to 255 visible ASCII characters, e.g. a UUID. \
    Repeating the request with the same key within 24 hours returns the first response and \
    writes nothing; the same key with another body gets a 422. Keys are the tenant's own (with \
    AUTH_MODE=off, the sending client's): another tenant's key of the same text is another key.";

/// Store one metric point. A 201 means the row is committed in PostgreSQL.
#[utoipa::path(
    post, path = "/api/metrics", tag = "metrics",
    request_body = MetricPoint,
    params(("Idempotency-Key" = Option<String>, Header, description = IDEMPOTENCY_KEY_DESCRIPTION,
            min_length = 1, max_length = 255, pattern = "^[!-~]*$")),
    responses(
        (status = 201, description = "Stored (or, with Idempotent-Replayed: true, the first response to this Idempotency-Key)",
         body = PointReceipt,
         headers(("RateLimit-Limit" = u32), ("RateLimit-Remaining" = u32), ("RateLimit-Reset" = u64),
                 ("Idempotent-Replayed" = String))),
        (status = 400, description = "Malformed JSON (or nested deeper than 32 levels), or an invalid Idempotency-Key", body = ErrorBody),
        (status = 409, description = "A request with this Idempotency-Key is still in flight",
         body = ErrorBody, headers(("Retry-After" = u64))),
        (status = 408, description = "The body did not arrive within BODY_READ_TIMEOUT_SECONDS", body = ErrorBody),
        (status = 413, description = "Body over 1 MiB (also after decompression)", body = ErrorBody),
        (status = 415, description = "Not JSON, or an encoding other than gzip", body = ErrorBody),
        (status = 422, description = "Validation failed, or the Idempotency-Key was used for another request",
         body = ErrorBody),
        (status = 429, description = "Rate limited", body = ErrorBody, headers(("Retry-After" = u64))),
        (status = 503, description = "PostgreSQL unavailable", body = ErrorBody, headers(("Retry-After" = u64))),
    )
)]
pub(super) async fn create_metric(
    State(state): State<AppState>,
    Caller { tenant, .. }: Caller,
    WriteBody { body, key }: WriteBody<OnePoint>,
) -> Result<Response> {
    let written = state
        .writes
        .write_point(tenant, body.value, key.as_ref())
        .await?;
    Ok(answer(written))
}

/// The answer to a write; a replay says so in `Idempotent-Replayed: true`.
fn answer<R: Receipt>(written: Written<R>) -> Response {
    let span = tracing::Span::current();
    match written {
        Written::Fresh(receipt) => {
            let status =
                StatusCode::from_u16(receipt.status()).expect("receipt statuses are valid");
            (status, Json(receipt)).into_response()
        }
        Written::Replayed(first) => {
            span.record("replayed", true);
            // A status read back from the table is one this service once answered with.
            let status = StatusCode::from_u16(first.status).unwrap_or(StatusCode::OK);
            let mut response = (status, Json(first.body)).into_response();
            response
                .headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            response
        }
    }
}

/// The schema of a batch's body, `{"metrics": [point, ...]}`; the body itself is decoded
/// point by point as it streams in (see `decode`), never as a whole.
pub(super) struct MetricBatch;

impl PartialSchema for MetricBatch {
    fn schema() -> RefOr<Schema> {
        let points = ArrayBuilder::new()
            .items(Ref::from_schema_name("MetricPoint"))
            .min_items(Some(1))
            .max_items(Some(MAX_BATCH_POINTS))
            .description(Some(
                "1 to 10,000 points of the single-point shape, each validated on its own.",
            ));
        ObjectBuilder::new()
            .property("metrics", points)
            .required("metrics")
            .into()
    }
}

impl ToSchema for MetricBatch {}

/// Store many points at once, in one statement. Each point is validated on its own: the valid
/// ones are stored even when others are not. The body may be gzip-compressed.
#[utoipa::path(
    post, path = "/api/metrics/batch", tag = "metrics",
    request_body = MetricBatch,
    params(("Idempotency-Key" = Option<String>, Header, description = IDEMPOTENCY_KEY_DESCRIPTION,
            min_length = 1, max_length = 255, pattern = "^[!-~]*$")),
    responses(
        (status = 201, description = "Every point stored (Idempotent-Replayed: true on a replay)",
         body = BatchReceipt, headers(("Idempotent-Replayed" = String))),
        (status = 200, description = "The valid points stored, the others listed (Idempotent-Replayed: true on a replay)",
         body = BatchReceipt, headers(("Idempotent-Replayed" = String))),
        (status = 400, description = "Malformed JSON or gzip (or nested deeper than 32 levels), or an invalid Idempotency-Key", body = ErrorBody),
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
    Caller { tenant, .. }: Caller,
    WriteBody { body, key }: WriteBody<Batch>,
) -> Result<Response> {
    let batch = body.value;
    let span = tracing::Span::current();
    span.record("points", batch.points.len());
    span.record("rejected", batch.rejected.len());
    let written = state
        .writes
        .write_batch(tenant, batch.points, batch.rejected, key.as_ref())
        .await?;
    Ok(answer(written))
}

/// A required query parameter.
fn required<T>(value: Option<T>, field: &str) -> Result<T> {
    value.ok_or_else(|| ApiError::InvalidQuery(vec![FieldError::new(field, "is required")]))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct SummaryParams {
    /// The metric type.
    #[serde(rename = "type")]
    #[param(rename = "type", required = true, inline, value_type = MetricType)]
    metric_type: Option<MetricType>,
    /// all (default), daily (last 24 hours) or hourly (last 60 minutes).
    #[param(inline)]
    #[serde(default)]
    period: Period,
}

/// Summarise one type over a period from the rollups, read through the cache.
#[utoipa::path(
    get, path = "/api/metrics/summary", tag = "metrics",
    params(SummaryParams, TagQuery),
    responses(
        (status = 200, description = "The summary; X-Cache says HIT or MISS", body = Summary,
         headers(("X-Cache" = String))),
        (status = 400, description = "Missing or invalid type or period", body = ErrorBody),
        (status = 503, description = "PostgreSQL unavailable", body = ErrorBody),
    )
)]
pub(super) async fn summary(
    State(state): State<AppState>,
    Caller { tenant, .. }: Caller,
    ApiQuery(params): ApiQuery<SummaryParams>,
    TagQuery(filter): TagQuery,
) -> Result<Response> {
    let metric_type = required(params.metric_type, "type")?;
    let (summary, cache) = state
        .summaries
        .summary(&tenant, &metric_type, params.period, &filter)
        .await?;
    let mut response = Json(summary).into_response();
    let cache = match cache {
        CacheStatus::Hit => "HIT",
        CacheStatus::Miss => "MISS",
    };
    response
        .headers_mut()
        .insert("x-cache", HeaderValue::from_static(cache));
    Ok(response)
}

/// A timestamp query parameter, by the rules of a point's timestamp.
fn timestamp<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<Option<DateTime<Utc>>, D::Error> {
    let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
    parse_timestamp(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct SeriesParams {
    /// The metric type.
    #[serde(rename = "type")]
    #[param(rename = "type", required = true, inline, value_type = MetricType)]
    metric_type: Option<MetricType>,
    /// Start of the range, RFC 3339 (1970 to 9999); the bucket holding it is the first.
    #[serde(default, deserialize_with = "timestamp")]
    #[param(required = true, value_type = String, format = DateTime, pattern = "^(19[7-9][0-9]|[2-9][0-9]{3})-")]
    from: Option<DateTime<Utc>>,
    /// End of the range, RFC 3339 (1970 to 9999), exclusive; after `from`, ≤ 10,000 buckets later.
    #[serde(default, deserialize_with = "timestamp")]
    #[param(required = true, value_type = String, format = DateTime, pattern = "^(19[7-9][0-9]|[2-9][0-9]{3})-")]
    to: Option<DateTime<Utc>>,
    /// Bucket width: 1m, 5m, 1h (default) or 1d. Buckets are aligned to UTC.
    #[serde(default)]
    #[param(inline)]
    bucket: SeriesBucket,
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Series {
    #[serde(rename = "type")]
    metric_type: MetricType,
    bucket: SeriesBucket,
    buckets: Vec<SeriesPoint>,
}

/// Count, average, min and max per time bucket, from the rollups; empty buckets included.
#[utoipa::path(
    get, path = "/api/metrics/series", tag = "metrics",
    params(SeriesParams, TagQuery),
    responses(
        (status = 200, description = "One entry per bucket in the range", body = Series),
        (status = 400, description = "Missing or invalid parameters, or more than 10,000 buckets", body = ErrorBody),
        (status = 503, description = "PostgreSQL unavailable", body = ErrorBody),
    )
)]
pub(super) async fn series(
    State(state): State<AppState>,
    Caller { tenant, .. }: Caller,
    ApiQuery(params): ApiQuery<SeriesParams>,
    TagQuery(filter): TagQuery,
) -> Result<Json<Series>> {
    let metric_type = required(params.metric_type, "type")?;
    let from = required(params.from, "from")?;
    let to = required(params.to, "to")?;
    let range = SeriesRange::new(params.bucket, from, to)
        .map_err(|error| ApiError::InvalidQuery(vec![error]))?;
    let buckets = state
        .storage
        .series(&tenant, &metric_type, range, &filter)
        .await?;
    Ok(Json(Series {
        metric_type,
        bucket: range.bucket,
        buckets,
    }))
}

/// The `limit` parameter: 1 to 1000.
fn list_limit<'de, D: Deserializer<'de>>(deserializer: D) -> std::result::Result<i64, D::Error> {
    let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
    text.parse::<i64>()
        .ok()
        .filter(|limit| (1..=MAX_LIST_LIMIT).contains(limit))
        .ok_or_else(|| {
            serde::de::Error::custom(format!("must be an integer from 1 to {MAX_LIST_LIMIT}"))
        })
}

fn default_list_limit() -> i64 {
    DEFAULT_LIST_LIMIT
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ListParams {
    /// Only points of this type; all types when absent.
    #[serde(rename = "type")]
    #[param(rename = "type", inline, value_type = Option<MetricType>)]
    metric_type: Option<MetricType>,
    /// 1–1000, default 100.
    #[serde(default = "default_list_limit", deserialize_with = "list_limit")]
    #[param(minimum = 1, maximum = 1000)]
    limit: i64,
}

/// The most recent points, newest first.
#[utoipa::path(
    get, path = "/api/metrics/list", tag = "metrics",
    params(ListParams, TagQuery),
    responses(
        (status = 200, description = "Points, newest first", body = [StoredMetric]),
        (status = 400, description = "Invalid type or limit", body = ErrorBody),
        (status = 503, description = "PostgreSQL unavailable", body = ErrorBody),
    )
)]
pub(super) async fn list(
    State(state): State<AppState>,
    Caller { tenant, .. }: Caller,
    ApiQuery(params): ApiQuery<ListParams>,
    TagQuery(filter): TagQuery,
) -> Result<Json<Vec<StoredMetric>>> {
    let points = state
        .storage
        .list_metrics(&tenant, params.metric_type.as_ref(), params.limit, &filter)
        .await?;
    Ok(Json(points))
}
