//! Access control's domain: API keys, their scopes, and the caller a request is served as;
//! and the two small mechanisms of authentication (recently verified keys, clients blocked
//! after failed attempts).

mod key;
mod recent;

use std::{fmt, str::FromStr};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};
use utoipa::{
    PartialSchema, ToSchema,
    openapi::{ArrayBuilder, ObjectBuilder, RefOr, Schema, Type},
};

pub use key::{ApiKey, KeyId, SecretHash};
pub use recent::{Blocklist, RecentKeys};

use crate::{rate_limiter::Quota, tenant::Tenant};

/// `AUTH_MODE`: whether requests need a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// Everyone is served as tenant `default` with every scope, as the seed served them.
    Off,
    /// Every request but the public ones needs a valid key with the endpoint's scope.
    Required,
}

impl FromStr for AuthMode {
    type Err = &'static str;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.to_ascii_lowercase().as_str() {
            "off" => Ok(Self::Off),
            "required" => Ok(Self::Required),
            _ => Err("must be off or required"),
        }
    }
}

/// What a key allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// Summaries, the list and series.
    Read,
    /// Every ingestion endpoint.
    Write,
    /// The simulated service, the breaker's status, key management and `/metrics`.
    Admin,
}

impl Scope {
    const ALL: [Self; 3] = [Self::Read, Self::Write, Self::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Admin => "admin",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

impl FromStr for Scope {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|scope| scope.as_str() == text)
            .ok_or_else(|| format!("{text:?} is not a scope (read, write or admin)"))
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A non-empty set of scopes; as JSON an array (`["read", "write"]`), as text `read,write`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Scopes(u8);

impl PartialSchema for Scopes {
    fn schema() -> RefOr<Schema> {
        let scope = ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(Scope::ALL.map(Scope::as_str)));
        ArrayBuilder::new()
            .items(scope)
            .min_items(Some(1))
            .description(Some("read, write and/or admin (repeats count once)."))
            .examples([serde_json::json!(["read", "write"])])
            .into()
    }
}

impl ToSchema for Scopes {}

impl Scopes {
    pub fn all() -> Self {
        Self(Scope::ALL.iter().map(|s| s.bit()).sum())
    }

    /// `None` for an empty set.
    pub fn of(scopes: impl IntoIterator<Item = Scope>) -> Option<Self> {
        let bits = scopes.into_iter().fold(0, |bits, scope| bits | scope.bit());
        (bits != 0).then_some(Self(bits))
    }

    pub fn contains(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    pub fn iter(self) -> impl Iterator<Item = Scope> {
        Scope::ALL.into_iter().filter(move |s| self.contains(*s))
    }

    pub fn names(self) -> Vec<&'static str> {
        self.iter().map(Scope::as_str).collect()
    }
}

impl FromStr for Scopes {
    type Err = String;

    /// Comma-separated, e.g. `write,read`.
    fn from_str(text: &str) -> Result<Self, String> {
        let scopes = text
            .split(',')
            .map(|s| s.trim().parse())
            .collect::<Result<Vec<Scope>, _>>()?;
        Self::of(scopes).ok_or_else(|| "must name at least one scope".to_owned())
    }
}

impl fmt::Debug for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.names().join(","))
    }
}

impl Serialize for Scopes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.names().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Scopes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let names = Vec::<String>::deserialize(deserializer)?;
        let scopes = names
            .iter()
            .map(|name| name.parse())
            .collect::<Result<Vec<Scope>, _>>()
            .map_err(de::Error::custom)?;
        Self::of(scopes).ok_or_else(|| de::Error::custom("must name at least one scope"))
    }
}

/// A stored key, without its secret.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct KeyRecord {
    #[schema(value_type = String, example = "3f9c2a71d04be85a")]
    pub id: KeyId,
    #[schema(value_type = String)]
    pub tenant: Tenant,
    pub scopes: Scopes,
    /// The key's own rate limit, `requests/seconds`; absent: the global limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota: Option<Quota>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    #[serde(skip)]
    pub secret_hash: SecretHash,
}

impl KeyRecord {
    /// Whether the key may be used at `now`.
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|expiry| now < expiry)
    }
}

/// Who a request is served as.
#[derive(Debug, Clone)]
pub struct Caller {
    pub tenant: Tenant,
    pub scopes: Scopes,
    /// The key it authenticated with (none when `AUTH_MODE=off`).
    pub key: Option<CallerKey>,
}

#[derive(Debug, Clone)]
pub struct CallerKey {
    pub id: KeyId,
    pub quota: Option<Quota>,
}

impl Caller {
    /// The caller of every request when `AUTH_MODE=off`.
    pub fn open() -> Self {
        Self {
            tenant: Tenant::default_tenant(),
            scopes: Scopes::all(),
            key: None,
        }
    }
}

impl From<&KeyRecord> for Caller {
    fn from(record: &KeyRecord) -> Self {
        Self {
            tenant: record.tenant.clone(),
            scopes: record.scopes,
            key: Some(CallerKey {
                id: record.id.clone(),
                quota: record.quota,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_read_as_a_comma_separated_set_and_serialise_as_an_array() {
        let scopes: Scopes = "write, read".parse().unwrap();
        assert!(scopes.contains(Scope::Read) && scopes.contains(Scope::Write));
        assert!(!scopes.contains(Scope::Admin));
        assert_eq!(
            serde_json::to_string(&scopes).unwrap(),
            r#"["read","write"]"#
        );
        let back: Scopes = serde_json::from_str(r#"["write","read","read"]"#).unwrap();
        assert_eq!(back, scopes);
        for bad in ["", "read,", "root", "READ"] {
            assert!(bad.parse::<Scopes>().is_err(), "{bad:?} was accepted");
        }
        assert!(serde_json::from_str::<Scopes>("[]").is_err());
        assert_eq!(Scopes::all().names(), ["read", "write", "admin"]);
    }

    #[test]
    fn the_auth_mode_is_off_or_required() {
        assert_eq!("off".parse(), Ok(AuthMode::Off));
        assert_eq!("Required".parse(), Ok(AuthMode::Required));
        assert!("on".parse::<AuthMode>().is_err());
    }
}
