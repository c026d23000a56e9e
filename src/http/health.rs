use axum::{Json, extract::State, http::StatusCode};
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct ServiceInfo {
    name: &'static str,
    version: &'static str,
    docs: &'static str,
}

/// Name and version of the service.
#[utoipa::path(get, path = "/", tag = "health", responses((status = 200, body = ServiceInfo)))]
pub(super) async fn root() -> Json<ServiceInfo> {
    Json(ServiceInfo {
        name: "Resilient Analytics API",
        version: env!("CARGO_PKG_VERSION"),
        docs: "/docs",
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(super) enum HealthStatus {
    /// PostgreSQL and Redis answer.
    Healthy,
    /// Redis is down: no cache, local rate limits, but the API serves.
    Degraded,
    /// PostgreSQL is down (or its schema not yet applied): writes and summaries fail.
    Unhealthy,
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Health {
    status: HealthStatus,
    database_connected: bool,
    redis_connected: bool,
    timestamp: DateTime<Utc>,
}

/// Readiness: checks PostgreSQL and Redis.
#[utoipa::path(
    get, path = "/health", tag = "health",
    responses(
        (status = 200, description = "healthy, or degraded without Redis", body = Health),
        (status = 503, description = "unhealthy: PostgreSQL is unavailable", body = Health),
    )
)]
pub(super) async fn health(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    let (database_answers, redis_connected) =
        tokio::join!(state.storage.ping(), state.redis.ping());
    let database_connected = database_answers && state.storage.is_migrated();
    let status = match (database_connected, redis_connected) {
        (false, _) => HealthStatus::Unhealthy,
        (true, false) => HealthStatus::Degraded,
        (true, true) => HealthStatus::Healthy,
    };
    let code = if status == HealthStatus::Unhealthy {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (
        code,
        Json(Health {
            status,
            database_connected,
            redis_connected,
            timestamp: Utc::now(),
        }),
    )
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Liveness {
    status: &'static str,
}

/// Liveness: answers while the process serves, touching no dependency.
#[utoipa::path(get, path = "/health/live", tag = "health", responses((status = 200, body = Liveness)))]
pub(super) async fn live() -> Json<Liveness> {
    Json(Liveness { status: "alive" })
}
