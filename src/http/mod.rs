//! The HTTP layer: routes, extractors and body decoding, the rate-limit middleware and the
//! error body. Handlers decode the request, call the application services, and answer.

mod admin;
mod auth;
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
mod receivers;

use std::sync::Arc;

use axum::{Router, middleware};
use ipnet::IpNet;
use metrics_exporter_prometheus::PrometheusHandle;
use utoipa::{
    Modify, OpenApi,
    openapi::{
        Content, Ref, ResponseBuilder,
        security::{
            ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
        },
    },
};
use utoipa_axum::{router::OpenApiRouter, routes};
use utoipa_swagger_ui::SwaggerUi;

pub use body::BodyBudget;
pub use error::{ApiError, ErrorBody};

use crate::{
    app::{
        access::{Access, Keys},
        summaries::Summaries,
        writes::Writes,
    },
    auth::{AuthMode, Scope},
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
    pub access: Arc<Access>,
    pub keys: Keys,
    /// Whether `/metrics` needs no key when `AUTH_MODE=required`.
    pub metrics_public: bool,
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

/// The security schemes of `AUTH_MODE=required`: the same key as a bearer token or in
/// `X-API-Key` (`Authorization: Token <key>` works too, but OpenAPI has no word for it).
struct KeySchemes;

impl Modify for KeySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("ra_<id>_<secret>")
                    .build(),
            ),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
        );
    }
}

/// Routes that need `scope`, behind [`auth::authorize`]; with keys required, documented so.
fn needing(
    scope: Scope,
    state: &AppState,
    mut routes: OpenApiRouter<AppState>,
) -> OpenApiRouter<AppState> {
    if state.access.mode() == AuthMode::Required {
        let error = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    Content::new(Some(Ref::from_schema_name("ErrorBody"))),
                )
                .build()
        };
        let paths = &mut routes.get_openapi_mut().paths.paths;
        for item in paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
            ];
            for operation in operations.into_iter().flatten() {
                operation.security = Some(vec![
                    SecurityRequirement::new("bearer", [scope.as_str()]),
                    SecurityRequirement::new("api_key", [scope.as_str()]),
                ]);
                let responses = &mut operation.responses.responses;
                for (status, description) in [
                    (
                        "401",
                        "No key, or one that is not valid, expired or revoked",
                    ),
                    ("403", "The key lacks the scope this operation needs"),
                    (
                        "429",
                        "Rate limited, or too many failed authentications from this client",
                    ),
                ] {
                    responses
                        .entry(status.to_owned())
                        .or_insert_with(|| error(description).into());
                }
            }
        }
    }
    routes.route_layer(middleware::from_fn_with_state(
        (state.clone(), scope),
        auth::authorize,
    ))
}

/// The whole application: API routes, `/metrics`, `/openapi.json` and `/docs`, wrapped in
/// the per-request middleware.
pub fn router(state: AppState, timeouts: Timeouts) -> Router {
    let write = OpenApiRouter::new()
        .routes(routes!(metrics::create_metric))
        .routes(routes!(metrics::create_batch))
        .routes(routes!(receivers::remote_write))
        .routes(routes!(receivers::otlp_metrics))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            rate_limit::limit_by_caller,
        ));
    let read = OpenApiRouter::new()
        .routes(routes!(metrics::summary))
        .routes(routes!(metrics::list))
        .routes(routes!(metrics::series));
    let mut admin = OpenApiRouter::new()
        .routes(routes!(external::call_external))
        .routes(routes!(external::set_failure_rate))
        .routes(routes!(external::breaker_status))
        .routes(routes!(admin::create_key, admin::list_keys))
        .routes(routes!(admin::revoke_key));
    let mut public = OpenApiRouter::new()
        .routes(routes!(health::root))
        .routes(routes!(health::health))
        .routes(routes!(health::live));
    let metrics_endpoint = OpenApiRouter::new().routes(routes!(prometheus::metrics));
    if state.metrics_public {
        public = public.merge(metrics_endpoint);
    } else {
        admin = admin.merge(metrics_endpoint);
    }
    let mut openapi = ApiDoc::openapi();
    if state.access.mode() == AuthMode::Required {
        KeySchemes.modify(&mut openapi);
    }
    let (api, openapi) = OpenApiRouter::with_openapi(openapi)
        .merge(public)
        .merge(needing(Scope::Write, &state, write))
        .merge(needing(Scope::Read, &state, read))
        .merge(needing(Scope::Admin, &state, admin))
        .split_for_parts();
    let app = api
        .merge(SwaggerUi::new("/docs").url("/openapi.json", openapi))
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(state);
    layers::wrap(app, timeouts)
}
