use std::time::Duration;

use axum::{
    Json,
    extract::State,
    http::{HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{
    AppState,
    error::{ApiError, ErrorBody, Result},
    extract::{ApiJson, ApiQuery},
};
use crate::{
    cache::Lookup,
    enrichment::Enrichment,
    metric::{EnrichmentStatus, MetricPoint, Period, Summary, collect, validate_type},
    storage::StoredMetric,
};

/// A summary whose enrichment failed is cached this long at most, so a recovered external
/// service shows up well before the normal TTL ends.
const DEGRADED_SUMMARY_TTL: Duration = Duration::from_secs(5);
const DEFAULT_LIST_LIMIT: i64 = 100;
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

/// Store one metric point. A 201 means the row is committed in PostgreSQL.
#[utoipa::path(
    post, path = "/api/metrics", tag = "metrics",
    request_body = MetricPoint,
    responses(
        (status = 201, description = "Stored", body = MetricCreated,
         headers(("RateLimit-Limit" = u32), ("RateLimit-Remaining" = u32), ("RateLimit-Reset" = u64))),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 413, description = "Body over 1 MiB", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "Validation failed", body = ErrorBody),
        (status = 429, description = "Rate limited", body = ErrorBody, headers(("Retry-After" = u64))),
        (status = 503, description = "PostgreSQL unavailable", body = ErrorBody, headers(("Retry-After" = u64))),
    )
)]
pub(super) async fn create_metric(
    State(state): State<AppState>,
    ApiJson(body): ApiJson,
) -> Result<impl IntoResponse> {
    let point = MetricPoint::from_json(&body).map_err(ApiError::Validation)?;
    let (id, received_at) = state.storage.insert_metric(&point).await?;
    state.cache.invalidate(&point.metric_type).await;
    tracing::info!(id, metric_type = %point.metric_type, "metric stored");
    Ok((
        StatusCode::CREATED,
        Json(MetricCreated {
            id,
            message: "Metric received",
            metric_type: point.metric_type,
            timestamp: received_at,
        }),
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
pub(super) struct SummaryParams {
    /// The metric type (required).
    #[serde(rename = "type")]
    #[param(rename = "type")]
    metric_type: Option<String>,
    /// all (default), daily (last 24 hours) or hourly (last 60 minutes).
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

#[derive(Debug, Deserialize, IntoParams)]
pub(super) struct ListParams {
    /// Only points of this type; all types when absent.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    metric_type: Option<String>,
    /// 1–1000, default 100.
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
