//! Extractors whose rejections use the project's error body instead of axum's plain text.

use std::{
    io::Read,
    net::{IpAddr, SocketAddr},
};

use axum::{
    extract::{ConnectInfo, FromRef, FromRequest, FromRequestParts, Request},
    http::request::Parts,
};
use ipnet::IpNet;
use serde::de::DeserializeOwned;

use super::{
    AppState, MAX_BODY_BYTES,
    body::{DecodedBody, Limits, MAX_POINT_BYTES, Meter, read_json},
    decode::{self, DecodeError, DecodedBatch},
    error::ApiError,
};
use crate::{
    auth::Caller,
    client::ClientId,
    idempotency::{Fingerprinter, IdempotencyKey, KeyedRequest},
    metric::{FieldError, MAX_TAGS, MetricPoint, TagFilter},
};

/// The request header that makes a write idempotent.
const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// A batch body's size, at most (after decompression).
pub(super) const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;

/// How a write endpoint's body is decoded, within which limits.
pub(super) trait BodyDecoder: 'static {
    type Output: Send + 'static;
    const LIMITS: Limits;
    fn decode(reader: &mut dyn Read, meter: &mut Meter) -> Result<Self::Output, DecodeError>;
}

/// `POST /api/metrics`: one point, at most 1 MiB (which the body's working memory covers).
pub(super) struct OnePoint;

impl BodyDecoder for OnePoint {
    type Output = MetricPoint;
    const LIMITS: Limits = Limits {
        body: MAX_BODY_BYTES,
        point: None,
    };

    fn decode(reader: &mut dyn Read, _meter: &mut Meter) -> Result<MetricPoint, DecodeError> {
        decode::single(&read_to_end(reader)?)
    }
}

/// `POST /api/metrics/batch`: up to 10,000 points, decoded as they stream in.
pub(super) struct Batch;

impl BodyDecoder for Batch {
    type Output = DecodedBatch;
    const LIMITS: Limits = Limits {
        body: MAX_BATCH_BYTES,
        point: Some(MAX_POINT_BYTES),
    };

    fn decode(reader: &mut dyn Read, meter: &mut Meter) -> Result<DecodedBatch, DecodeError> {
        decode::batch(reader, meter)
    }
}

fn read_to_end(reader: &mut dyn Read) -> Result<Vec<u8>, DecodeError> {
    let mut bytes = Vec::new();
    reader.read_to_end(&mut bytes).map_err(DecodeError::Read)?;
    Ok(bytes)
}

/// A write: its body decoded by `D`, and its `Idempotency-Key` (400 when the key breaks the
/// rules) in its scope, with the request's fingerprint.
pub(super) struct WriteBody<D: BodyDecoder> {
    pub(super) body: DecodedBody<D::Output>,
    pub(super) key: Option<KeyedRequest>,
}

impl<D: BodyDecoder> FromRequest<AppState> for WriteBody<D> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = request.into_parts();
        let key = match parts.headers.get(IDEMPOTENCY_KEY) {
            None => None,
            Some(value) => Some(
                value
                    .to_str()
                    .map_err(|_| "must hold only visible ASCII characters".to_owned())
                    .and_then(str::parse::<IdempotencyKey>)
                    .map_err(|message| {
                        ApiError::InvalidHeader(FieldError::new("Idempotency-Key", message))
                    })?,
            ),
        };
        // Only a keyed write needs its scope: with API keys, the caller's tenant (any key of
        // it may retry); without, the sending client (everyone is tenant default).
        let scope = match key {
            None => None,
            Some(_) => {
                let caller = Caller::from_request_parts(&mut parts, state).await?;
                Some(match caller.key {
                    Some(_) => format!("tenant:{}", caller.tenant),
                    None => ClientId::from_request_parts(&mut parts, state)
                        .await?
                        .to_string(),
                })
            }
        };
        let fingerprint = key.is_some().then(|| Fingerprinter::new(parts.uri.path()));
        let body = read_json(
            &state.body_budget,
            &parts.headers,
            body,
            D::LIMITS,
            fingerprint,
            D::decode,
        )
        .await?;
        let key = key.zip(scope).map(|(key, scope)| KeyedRequest {
            scope,
            key,
            fingerprint: body.fingerprint.clone().unwrap_or_default(),
        });
        Ok(Self { body, key })
    }
}

/// A small JSON body of another endpoint, parsed into `T`: the rules of the write bodies
/// (415, 413 over 1 MiB, 400 when not JSON or too deep), and 422 for JSON of another shape.
pub(super) struct ApiJson<T>(pub(super) T);

impl<T: DeserializeOwned + Send + 'static> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (parts, body) = request.into_parts();
        let decoded = read_json(
            &state.body_budget,
            &parts.headers,
            body,
            OnePoint::LIMITS,
            None,
            |reader, _meter| {
                serde_json::from_slice(&read_to_end(reader)?).map_err(|error| {
                    if error.is_data() {
                        DecodeError::Invalid(vec![FieldError::new("body", error.to_string())])
                    } else {
                        DecodeError::Malformed(error.to_string())
                    }
                })
            },
        )
        .await?;
        Ok(Self(decoded.value))
    }
}

/// Query parameters, each deserialised by its type's own rule; the first offending
/// parameter is a 400 naming it.
pub(super) struct ApiQuery<T>(pub(super) T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        let deserializer =
            serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(deserializer)
            .map(Self)
            .map_err(|error| {
                let field = match error.path().to_string() {
                    path if path == "." => "query".to_owned(),
                    path => path,
                };
                ApiError::InvalidQuery(vec![FieldError::new(field, error.inner().to_string())])
            })
    }
}

/// The `tag=key:value` query parameters (any number of them) of a read, as one filter; an
/// invalid one is a 400 naming `tag`. The other parameters are [`ApiQuery`]'s.
pub(super) struct TagQuery(pub(super) TagFilter);

impl<S: Send + Sync> FromRequestParts<S> for TagQuery {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        let pairs: Vec<_> = form_urlencoded::parse(query.as_bytes())
            .filter(|(name, _)| name == "tag")
            .map(|(_, value)| value)
            .collect();
        TagFilter::parse(pairs.iter().map(|pair| pair.as_ref()))
            .map(Self)
            .map_err(|message| ApiError::InvalidQuery(vec![FieldError::new("tag", message)]))
    }
}

impl utoipa::IntoParams for TagQuery {
    fn into_params(
        _: impl Fn() -> Option<utoipa::openapi::path::ParameterIn>,
    ) -> Vec<utoipa::openapi::path::Parameter> {
        use utoipa::openapi::{
            ArrayBuilder, ObjectBuilder, Type,
            path::{ParameterBuilder, ParameterIn, ParameterStyle},
        };
        // A key as a point's (1-100 characters, no control characters, and here no colon),
        // a value as a point's (at most 500 characters, no NUL).
        let pair = ObjectBuilder::new().schema_type(Type::String).pattern(Some(
            r"^[^:\u0000-\u001F\u007F-\u009F]{1,100}:[^\u0000]{0,500}$",
        ));
        vec![
            ParameterBuilder::new()
                .name("tag")
                .parameter_in(ParameterIn::Query)
                .description(Some(
                    "Only points whose tags include this pair, as key:value (split at the first \
                     colon); repeat it for several pairs, all of which must match. A Prometheus \
                     label is a tag.",
                ))
                .style(Some(ParameterStyle::Form))
                .explode(Some(true))
                .schema(Some(
                    ArrayBuilder::new().items(pair).max_items(Some(MAX_TAGS)),
                ))
                .example(Some(serde_json::json!(["job:node"])))
                .build(),
        ]
    }
}

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
}
