use axum::{
    extract::{FromRef, FromRequestParts, Request, State},
    http::{HeaderName, HeaderValue, request::Parts},
    middleware::Next,
    response::{IntoResponse, Response},
};

use super::{ApiError, AppState, error::retry_after_secs, extract::ClientIp};
use crate::client::ClientId;

/// The client a request counts against: its address (see [`ClientIp`]), with IPv6 addresses
/// grouped by `CLIENT_IPV6_PREFIX`.
impl<S: Send + Sync> FromRequestParts<S> for ClientId
where
    AppState: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let ClientIp(ip) = ClientIp::from_request_parts(parts, state).await?;
        Ok(Self::new(ip, AppState::from_ref(state).client_ipv6_prefix))
    }
}

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
        tracing::info!(%client, "rate limited");
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
