//! The HTTP layer: routes, extractors and body decoding, the rate-limit middleware and the
//! error body. Handlers decode the request, call the application services, and answer.

mod body;
mod decode;
mod error;
mod external;
mod extract;
mod health;
mod layers;
mod metrics;
mod prometheus;
mod rate_limit;

use std::sync::Arc;

use axum::{Router, middleware};
use ipnet::IpNet;
use metrics_exporter_prometheus::PrometheusHandle;
use utoipa::OpenApi;
use utoipa_axum::{router::OpenApiRouter, routes};
use utoipa_swagger_ui::SwaggerUi;

pub use body::BodyBudget;
pub use error::{ApiError, ErrorBody};

use crate::{
    app::{summaries::Summaries, writes::Writes},
    config::Timeouts,
    enrichment::EnrichmentClient,
    rate_limiter::RateLimiter,
    redis_connection::RedisConnection,
    storage::Storage,
};

/// Request bodies larger than this are refused with 413.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Everything the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub storage: Storage,
    pub writes: Writes,
    pub summaries: Summaries,
    pub redis: RedisConnection,
    pub body_budget: Arc<BodyBudget>,
    pub rate_limiter: Arc<RateLimiter>,
    pub enrichment: Arc<EnrichmentClient>,
    pub trusted_proxies: Arc<[IpNet]>,
    /// Groups IPv6 addresses into clients (see [`crate::client::ClientId`]).
    pub client_ipv6_prefix: crate::client::Ipv6Prefix,
    pub prometheus: PrometheusHandle,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Resilient Analytics API",
        description = "Takes in metric points, stores them in PostgreSQL and answers summaries \
                       from SQL rollups, behind a Redis rate limiter and cache and a circuit \
                       breaker around the external enrichment service."
    ),
    components(schemas(ErrorBody))
)]
struct ApiDoc;

/// The whole application: API routes, `/metrics`, `/openapi.json` and `/docs`, wrapped in
/// the per-request middleware.
pub fn router(state: AppState, timeouts: Timeouts) -> Router {
    let rate_limited = OpenApiRouter::new()
        .routes(routes!(metrics::create_metric))
        .routes(routes!(metrics::create_batch))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            rate_limit::limit_by_client,
        ));
    let (api, openapi) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health::root))
        .routes(routes!(health::health))
        .routes(routes!(health::live))
        .routes(routes!(prometheus::metrics))
        .merge(rate_limited)
        .routes(routes!(metrics::summary))
        .routes(routes!(metrics::list))
        .routes(routes!(metrics::series))
        .routes(routes!(external::call_external))
        .routes(routes!(external::set_failure_rate))
        .routes(routes!(external::breaker_status))
        .split_for_parts();
    let app = api
        .merge(SwaggerUi::new("/docs").url("/openapi.json", openapi))
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(state);
    layers::wrap(app, timeouts)
}
