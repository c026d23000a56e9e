use axum::{
    extract::{Request, State},
    http::{HeaderName, HeaderValue},
    middleware::Next,
    response::{IntoResponse, Response},
};

use super::{ApiError, AppState, error::retry_after_secs};
use crate::client::ClientId;

/// Admits or refuses the request for its client, and reports the quota on every response.
pub(super) async fn limit_by_client(
    State(state): State<AppState>,
    client: ClientId,
    request: Request,
    next: Next,
) -> Response {
    let decision = state.rate_limiter.check(client).await;
    let mut response = if decision.allowed {
        next.run(request).await
    } else {
        tracing::Span::current().record("rate_limited", true);
        ApiError::RateLimited {
            retry_after: decision.retry_after,
        }
        .into_response()
    };
    let headers = response.headers_mut();
    for (name, value) in [
        ("ratelimit-limit", u64::from(decision.limit)),
        ("ratelimit-remaining", u64::from(decision.remaining)),
        ("ratelimit-reset", retry_after_secs(decision.reset_after)),
    ] {
        headers.insert(HeaderName::from_static(name), HeaderValue::from(value));
    }
    response
}
