//! What wraps every request: its id, one log event, metrics, time limits, and panics caught.

use std::{any::Any, time::Duration};

use axum::{
    Router,
    body::Body,
    extract::{MatchedPath, Request, State},
    http::{HeaderName, Method, Response},
    middleware::{self, Next},
    response::IntoResponse,
};
use tokio::time::Instant;
use tower::ServiceBuilder;
use tower_http::{
    catch_panic::CatchPanicLayer,
    map_request_body::MapRequestBodyLayer,
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer},
    timeout::RequestBodyTimeoutLayer,
    trace::TraceLayer,
};
use tracing::Span;

use super::ApiError;
use crate::config::Timeouts;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Wraps the routes, outermost first: the request id is set (or taken from the client) before
/// the request's span opens, so every line logged while serving it carries the id.
pub(super) fn wrap(router: Router, timeouts: Timeouts) -> Router {
    router.layer(
        ServiceBuilder::new()
            .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
            .layer(PropagateRequestIdLayer::new(REQUEST_ID))
            .layer(
                TraceLayer::new_for_http()
                    .make_span_with(request_span)
                    .on_request(())
                    .on_response(log_response)
                    .on_failure(()),
            )
            .layer(CatchPanicLayer::custom(panic_response))
            .layer(middleware::from_fn(record_metrics))
            .layer(RequestBodyTimeoutLayer::new(timeouts.body_read))
            .layer(MapRequestBodyLayer::new(Body::new))
            .layer(middleware::from_fn_with_state(
                timeouts.request,
                limit_duration,
            )),
    )
}

/// The matched route's template (not the path), so there is one value per route.
fn route(request: &Request) -> &str {
    request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
}

/// The standard methods by name, any other as `other`: a method is any token a client
/// invents, and each new label value would be a new series kept for the process's lifetime.
fn method(request: &Request) -> &'static str {
    match *request.method() {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

fn request_span(request: &Request) -> Span {
    let request_id = request
        .extensions()
        .get::<RequestId>()
        .and_then(|id| id.header_value().to_str().ok())
        .unwrap_or_default();
    tracing::info_span!(
        "request",
        request_id,
        method = method(request),
        route = route(request),
        // Filled in by handlers, so the one `request completed` event says what was done.
        points = tracing::field::Empty,
        rejected = tracing::field::Empty,
        replayed = tracing::field::Empty,
        rate_limited = tracing::field::Empty,
        key = tracing::field::Empty,
        failure_rate = tracing::field::Empty,
    )
}

/// The one event per request (method, route and id come from the span).
fn log_response<B>(response: &Response<B>, latency: Duration, _span: &Span) {
    tracing::info!(
        status = response.status().as_u16(),
        latency_ms = latency.as_secs_f64() * 1000.0,
        "request completed"
    );
}

fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response<Body> {
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    ApiError::Internal(format!("handler panicked: {message}").into()).into_response()
}

async fn record_metrics(request: Request, next: Next) -> axum::response::Response {
    let started = Instant::now();
    let (method, route) = (method(&request), route(&request).to_owned());
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!(
        "http_requests_total",
        "method" => method,
        "route" => route.clone(),
        "status" => status,
    )
    .increment(1);
    metrics::histogram!("http_request_duration_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// Answers with a clear error, instead of hanging, when handling takes too long.
async fn limit_duration(
    State(limit): State<Duration>,
    request: Request,
    next: Next,
) -> axum::response::Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::RequestTimeout.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use axum::{http::StatusCode, routing::get};
    use tower::ServiceExt;

    use super::*;

    fn timeouts(request: Duration) -> Timeouts {
        Timeouts {
            request,
            header_read: Duration::from_secs(1),
            body_read: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(1),
        }
    }

    async fn call(
        router: Router,
        request: Request,
    ) -> (StatusCode, axum::http::HeaderMap, serde_json::Value) {
        let response = router.oneshot(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
        (
            parts.status,
            parts.headers,
            serde_json::from_slice(&bytes).unwrap_or_default(),
        )
    }

    async fn boom() -> &'static str {
        panic!("kaboom")
    }

    #[tokio::test]
    async fn a_panic_becomes_a_500_error_body_that_keeps_the_request_id() {
        let router = wrap(
            Router::new().route("/boom", get(boom)),
            timeouts(Duration::from_secs(5)),
        );
        let request = Request::get("/boom")
            .header("x-request-id", "req-123")
            .body(Body::empty())
            .unwrap();
        let (status, headers, body) = call(router, request).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body["code"], "INTERNAL_ERROR");
        assert!(
            !body["message"].as_str().unwrap().contains("kaboom"),
            "details stay in the log"
        );
        assert_eq!(headers["x-request-id"], "req-123");
    }

    #[tokio::test]
    async fn a_slow_handler_is_answered_with_a_timeout_error() {
        let router = wrap(
            Router::new().route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    "late"
                }),
            ),
            timeouts(Duration::from_millis(50)),
        );
        let (status, headers, body) =
            call(router, Request::get("/slow").body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["code"], "REQUEST_TIMEOUT");
        assert!(
            headers.contains_key("x-request-id"),
            "an id is generated when none was sent"
        );
    }
}
