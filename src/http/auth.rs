//! Who may call what: every route outside the public ones sits behind [`authorize`] with
//! the scope it needs, which serves the request as its key's [`Caller`] (its tenant, its
//! quota) or answers 401, 403 or 429 itself.

use axum::{
    extract::{FromRequestParts, Request, State},
    http::{HeaderMap, header, request::Parts},
    middleware::Next,
    response::{IntoResponse, Response},
};

use super::{AppState, error::ApiError};
use crate::{auth::Caller, auth::Scope, client::ClientId};

/// The credential a request presents: `Authorization: Bearer <key>` (Prometheus,
/// OpenTelemetry exporters), `Authorization: Token <key>` (InfluxDB clients) or
/// `X-API-Key: <key>`. An unreadable header counts as a wrong credential, not as none.
fn credential(headers: &HeaderMap) -> Option<&str> {
    const UNREADABLE: &str = "";
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let Ok(value) = value.to_str() else {
            return Some(UNREADABLE);
        };
        let (scheme, key) = value.trim().split_once(' ').unwrap_or((value, ""));
        return Some(
            if scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token") {
                key.trim()
            } else {
                UNREADABLE
            },
        );
    }
    headers
        .get("x-api-key")
        .map(|value| value.to_str().map_or(UNREADABLE, str::trim))
}

/// Lets the request through as its caller when the caller has `scope`.
pub(super) async fn authorize(
    State((state, scope)): State<(AppState, Scope)>,
    request: Request,
    next: Next,
) -> Response {
    let (mut parts, body) = request.into_parts();
    let client = match ClientId::from_request_parts(&mut parts, &state).await {
        Ok(client) => client,
        Err(error) => return error.into_response(),
    };
    let caller = state
        .access
        .authenticate(client, credential(&parts.headers))
        .await;
    match caller {
        Ok(caller) if caller.scopes.contains(scope) => {
            if let Some(key) = &caller.key {
                tracing::Span::current().record("key", key.id.as_str());
            }
            parts.extensions.insert(caller);
            next.run(Request::from_parts(parts, body)).await
        }
        Ok(_) => ApiError::Forbidden(scope).into_response(),
        Err(error) => ApiError::from(error).into_response(),
    }
}

/// The caller that [`authorize`] let through.
impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| ApiError::Internal("a route without authorization".into()))
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &[u8])]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_bytes(value).unwrap());
        }
        map
    }

    #[test]
    fn a_key_is_read_from_bearer_token_or_x_api_key() {
        assert_eq!(
            credential(&headers(&[("authorization", b"Bearer ra_x_y")])),
            Some("ra_x_y")
        );
        assert_eq!(
            credential(&headers(&[("authorization", b"bearer  ra_x_y ")])),
            Some("ra_x_y")
        );
        assert_eq!(
            credential(&headers(&[("authorization", b"Token ra_x_y")])),
            Some("ra_x_y")
        );
        assert_eq!(
            credential(&headers(&[("x-api-key", b"ra_x_y")])),
            Some("ra_x_y")
        );
        assert_eq!(credential(&HeaderMap::new()), None);
    }

    #[test]
    fn another_scheme_or_an_unreadable_header_is_a_wrong_credential_not_none() {
        assert_eq!(
            credential(&headers(&[("authorization", b"Basic dXNlcjpwYXNz")])),
            Some("")
        );
        assert_eq!(
            credential(&headers(&[("authorization", b"Bearer \xff")])),
            Some("")
        );
        assert_eq!(credential(&headers(&[("x-api-key", b"\xfe")])), Some(""));
    }
}
