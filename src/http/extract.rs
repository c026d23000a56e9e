//! Extractors whose rejections use the project's error body instead of axum's plain text.

use std::{
    io::Read,
    net::{IpAddr, SocketAddr},
};

use axum::{
    body::Bytes,
    extract::{ConnectInfo, FromRef, FromRequest, FromRequestParts, Query, Request},
    http::{StatusCode, header, request::Parts},
};
use flate2::read::GzDecoder;
use ipnet::IpNet;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tower_http::timeout::TimeoutError;

use super::{AppState, MAX_BODY_BYTES, error::ApiError};
use crate::{
    idempotency::{IdempotentRequest, validate_key},
    metric::FieldError,
};

/// The request header that makes a write idempotent.
pub(super) const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// A JSON body of at most `LIMIT` bytes, parsed into `T` (by default a `Value`, validated by
/// the handler): 415 without a JSON content type or with an encoding other than gzip, 413
/// over the limit (also after decompression), 400 when it is not JSON, 422 when it is JSON of
/// another shape than `T`. The route's `DefaultBodyLimit` must be `LIMIT`.
pub(super) struct ApiJson<const LIMIT: usize = MAX_BODY_BYTES, T = Value>(pub(super) T);

impl<S: Send + Sync, const LIMIT: usize, T: DeserializeOwned> FromRequest<S> for ApiJson<LIMIT, T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json = json_body::<LIMIT, S>(request, state).await?;
        parse_json(&json).map(Self)
    }
}

/// A write's JSON body as [`ApiJson`] reads it, and its `Idempotency-Key` if it has one
/// (400 when the key breaks the rules).
pub(super) struct IdempotentJson<const LIMIT: usize = MAX_BODY_BYTES, T = Value> {
    pub(super) body: T,
    pub(super) idempotency: Option<IdempotentRequest>,
}

impl<S: Send + Sync, const LIMIT: usize, T: DeserializeOwned> FromRequest<S>
    for IdempotentJson<LIMIT, T>
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let key = match request.headers().get(IDEMPOTENCY_KEY) {
            None => None,
            Some(value) => {
                let key = value
                    .to_str()
                    .map_err(|_| "must hold only visible ASCII characters".to_owned())
                    .and_then(validate_key)
                    .map_err(|message| {
                        ApiError::InvalidHeader(FieldError::new("Idempotency-Key", message))
                    })?;
                Some(key.to_owned())
            }
        };
        let path = request.uri().path().to_owned();
        let json = json_body::<LIMIT, S>(request, state).await?;
        let body = parse_json(&json)?;
        let idempotency = key.map(|key| IdempotentRequest::new(key, &path, &json));
        Ok(Self { body, idempotency })
    }
}

/// A JSON request's body, decompressed: 415 without a JSON content type or with an encoding
/// other than gzip, 413 over `LIMIT` bytes (also after decompression).
async fn json_body<const LIMIT: usize, S: Send + Sync>(
    request: Request,
    state: &S,
) -> Result<Bytes, ApiError> {
    if !has_json_content_type(request.headers()) {
        return Err(ApiError::UnsupportedMediaType);
    }
    let gzipped = match request
        .headers()
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str())
    {
        None => false,
        Some(Ok(encoding)) if encoding.trim().eq_ignore_ascii_case("identity") => false,
        Some(Ok(encoding)) if encoding.trim().eq_ignore_ascii_case("gzip") => true,
        Some(_) => return Err(ApiError::UnsupportedEncoding),
    };
    let too_large = ApiError::PayloadTooLarge { limit: LIMIT };
    let bytes = Bytes::from_request(request, state)
        .await
        .map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge { limit: LIMIT }
            } else if caused_by::<TimeoutError>(&rejection) {
                ApiError::BodyReadTimeout
            } else {
                ApiError::MalformedJson(rejection.body_text())
            }
        })?;
    if !gzipped {
        return Ok(bytes);
    }
    // Bounded, so a small compressed body cannot expand without limit.
    let mut inflated = Vec::new();
    GzDecoder::new(&bytes[..])
        .take(LIMIT as u64 + 1)
        .read_to_end(&mut inflated)
        .map_err(|error| ApiError::MalformedJson(format!("invalid gzip body: {error}")))?;
    if inflated.len() > LIMIT {
        return Err(too_large);
    }
    Ok(Bytes::from(inflated))
}

/// 400 when it is not JSON, 422 when it is JSON of another shape than `T`.
fn parse_json<T: DeserializeOwned>(json: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(json).map_err(|error| {
        if error.is_data() {
            ApiError::Validation(vec![FieldError::new("body", error.to_string())])
        } else {
            ApiError::MalformedJson(error.to_string())
        }
    })
}

/// Whether `E` is anywhere in the error's chain of sources.
fn caused_by<E: std::error::Error + 'static>(error: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(error), |e| e.source()).any(|e| e.is::<E>())
}

fn has_json_content_type(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .map(|essence| essence.trim().to_ascii_lowercase())
        .is_some_and(|essence| essence == "application/json" || essence.ends_with("+json"))
}

/// Query parameters; a malformed query string is a 400 with the project's body.
pub(super) struct ApiQuery<T>(pub(super) T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(value)| Self(value))
            .map_err(|rejection| {
                ApiError::InvalidQuery(vec![FieldError::new("query", rejection.body_text())])
            })
    }
}

/// The client's address: the socket's peer, or, when the peer is a trusted proxy, the
/// right-most address of `X-Forwarded-For` that is not a trusted proxy. Without a trusted
/// peer the header is ignored, so inventing it changes nothing.
#[derive(Debug, Clone, Copy)]
pub(super) struct ClientIp(pub(super) IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp
where
    AppState: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip().to_canonical())
            .ok_or_else(|| ApiError::Internal("server started without connect info".into()))?;
        let trusted = &AppState::from_ref(state).trusted_proxies;
        let forwarded = parts
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok());
        Ok(Self(client_ip(peer, forwarded, trusted)))
    }
}

fn client_ip<'a>(
    peer: IpAddr,
    forwarded_for: impl Iterator<Item = &'a str>,
    trusted: &[IpNet],
) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(&ip.to_canonical()));
    if !is_trusted(&peer) {
        return peer;
    }
    let hops: Vec<&str> = forwarded_for
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        // An unparsable hop cannot be trusted to say who came before it.
        let Ok(ip) = hop.parse::<IpAddr>() else { break };
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn the_header_is_ignored_unless_the_peer_is_trusted() {
        let forwarded = ["203.0.113.9"];
        assert_eq!(
            client_ip(ip("198.51.100.1"), forwarded.into_iter(), &[]),
            ip("198.51.100.1")
        );
        let trusted = nets(&["10.0.0.0/8"]);
        assert_eq!(
            client_ip(ip("198.51.100.1"), forwarded.into_iter(), &trusted),
            ip("198.51.100.1")
        );
    }

    #[test]
    fn the_right_most_untrusted_hop_is_the_client() {
        let trusted = nets(&["10.0.0.0/8", "127.0.0.1/32"]);
        let headers = ["1.1.1.1, 203.0.113.9", "10.0.0.2"];
        assert_eq!(
            client_ip(ip("127.0.0.1"), headers.into_iter(), &trusted),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn a_forged_left_part_of_the_header_does_not_matter() {
        let trusted = nets(&["127.0.0.1/32"]);
        let headers = ["6.6.6.6, 203.0.113.9"];
        assert_eq!(
            client_ip(ip("127.0.0.1"), headers.into_iter(), &trusted),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn garbage_stops_the_walk_at_the_last_known_hop() {
        let trusted = nets(&["127.0.0.1/32", "10.0.0.0/8"]);
        let headers = ["203.0.113.9, nonsense, 10.0.0.5"];
        assert_eq!(
            client_ip(ip("127.0.0.1"), headers.into_iter(), &trusted),
            ip("10.0.0.5")
        );
        assert_eq!(
            client_ip(ip("127.0.0.1"), std::iter::empty(), &trusted),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn content_types() {
        let with = |value: &str| {
            let mut headers = axum::http::HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, value.parse().unwrap());
            has_json_content_type(&headers)
        };
        assert!(with("application/json"));
        assert!(with("Application/JSON; charset=utf-8"));
        assert!(with("application/merge-patch+json"));
        assert!(!with("text/plain"));
        assert!(!has_json_content_type(&axum::http::HeaderMap::new()));
    }
}
