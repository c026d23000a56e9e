use axum::{
    extract::{Request, State},
    http::{HeaderName, HeaderValue},
    middleware::Next,
    response::{IntoResponse, Response},
};

use super::{ApiError, AppState, error::retry_after_secs};
use crate::{auth::Caller, client::ClientId};

/// Admits or refuses the request under its key's quota (`rate_limit:key:{id}`), or, without
/// a key, its client's (`rate_limit:{client}`); reports the quota on every response.
pub(super) async fn limit_by_caller(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientId,
    request: Request,
    next: Next,
) -> Response {
    let (subject, quota) = match &caller.key {
        Some(key) => (format!("key:{}", key.id), key.quota),
        None => (client.to_string(), None),
    };
    let decision = state.rate_limiter.check(&subject, quota).await;
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
