//! Access control, the one home of its policy: who a request is served as (its key's tenant
//! and scopes), what a failed authentication costs the client ([`Access`]), and how keys
//! are made, listed and revoked ([`Keys`]).

use std::time::Duration;

use chrono::{SubsecRound, TimeDelta, Utc};
use serde::{Deserialize, Deserializer, Serialize, de};
use utoipa::ToSchema;

use crate::{
    auth::{ApiKey, AuthMode, Blocklist, Caller, KeyId, KeyRecord, RecentKeys, Scope, Scopes},
    client::ClientId,
    clock::MonotonicClock,
    config::AuthSettings,
    rate_limiter::{Quota, RateLimiter},
    redis_connection::RedisConnection,
    storage::{NewKeyRow, Storage, StorageError},
    tenant::Tenant,
};

/// How long a key read from the database is trusted without reading it again: a revocation
/// takes effect on every instance within this (plus one request's time), well inside the
/// promised 5 seconds.
pub const KEY_REFRESH: Duration = Duration::from_secs(2);
/// `last_used_at` is written at most this often per key.
const TOUCH_EVERY: Duration = Duration::from_secs(60);
/// Keys remembered, and clients blocked, at most (each about 200 bytes).
const RECENT_KEYS_CAPACITY: usize = 10_000;
const BLOCKLIST_CAPACITY: usize = 10_000;
/// The longest expiry a key can be given, about ten years.
pub const MAX_EXPIRY_DAYS: u32 = 3650;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("this endpoint needs an API key")]
    Missing,
    /// Malformed, unknown, or a wrong secret: which of them is not told.
    #[error("the API key is not valid")]
    Invalid,
    #[error("the API key has expired")]
    Expired,
    #[error("the API key has been revoked")]
    Revoked,
    #[error("too many failed authentications from this client")]
    TooManyFailures { retry_after: Duration },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// A key to make.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    pub tenant: Tenant,
    pub scopes: Scopes,
    /// The key's own rate limit, `requests/seconds` (e.g. `1000/60`); absent: the global one.
    #[serde(default)]
    pub quota: Option<Quota>,
    /// Days until the key expires (1 to 3650); absent: never.
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(minimum = 1, maximum = 3650)]
    pub expires_in_days: Option<u32>,
}

/// Any JSON number with a whole value (`285`, `285.0`, `2.85e2`), as JSON Schema's
/// `integer` has it; the range is checked with the rest of the key.
fn whole_number<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u32>, D::Error> {
    let Some(number) = Option::<f64>::deserialize(deserializer)? else {
        return Ok(None);
    };
    if number.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(&number) {
        Ok(Some(number as u32))
    } else {
        Err(de::Error::custom(format!(
            "must be a whole number of days from 1 to {MAX_EXPIRY_DAYS}"
        )))
    }
}

/// A key just made: the only time its secret is shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedKey {
    /// The whole key, `ra_<id>_<secret>`. It is not stored: keep it now.
    pub key: String,
    #[serde(flatten)]
    pub record: KeyRecord,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("expires_in_days must be from 1 to {MAX_EXPIRY_DAYS}")]
    InvalidExpiry,
    #[error(transparent)]
    Storage(#[from] StorageError),
}

pub struct Access {
    mode: AuthMode,
    storage: Storage,
    recent: RecentKeys<MonotonicClock>,
    failures: RateLimiter,
    blocklist: Blocklist<MonotonicClock>,
}

impl Access {
    pub fn new(settings: &AuthSettings, storage: Storage, redis: RedisConnection) -> Self {
        Self {
            mode: settings.mode,
            storage,
            recent: RecentKeys::new(MonotonicClock::new(), KEY_REFRESH, RECENT_KEYS_CAPACITY),
            failures: RateLimiter::new("auth_failures", settings.failure_limit, redis),
            blocklist: Blocklist::new(MonotonicClock::new(), BLOCKLIST_CAPACITY),
        }
    }

    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// Who a request from `client` presenting `credential` is served as. A client whose
    /// failed attempts passed the limit is refused without looking at its credential, so
    /// that keys cannot be guessed at speed.
    pub async fn authenticate(
        &self,
        client: ClientId,
        credential: Option<&str>,
    ) -> Result<Caller, AuthError> {
        if self.mode == AuthMode::Off {
            return Ok(Caller::open());
        }
        let client = client.to_string();
        if let Some(retry_after) = self.blocklist.blocked_for(&client) {
            return Err(AuthError::TooManyFailures { retry_after });
        }
        let credential = credential.ok_or(AuthError::Missing)?;
        match self.verify(credential).await {
            Err(failure @ (AuthError::Invalid | AuthError::Expired | AuthError::Revoked)) => {
                let decision = self.failures.check(&client, None).await;
                if decision.allowed {
                    Err(failure)
                } else {
                    self.blocklist.block(&client, decision.retry_after);
                    Err(AuthError::TooManyFailures {
                        retry_after: decision.retry_after,
                    })
                }
            }
            outcome => outcome,
        }
    }

    async fn verify(&self, credential: &str) -> Result<Caller, AuthError> {
        let key: ApiKey = credential.parse().map_err(|_| AuthError::Invalid)?;
        let record = match self.recent.get(key.id()) {
            Some(record) => record,
            None => match self.storage.find_key(key.id()).await? {
                Some(record) => self.recent.put(record),
                None => return Err(AuthError::Invalid),
            },
        };
        if !record.secret_hash.matches(&key) {
            return Err(AuthError::Invalid);
        }
        if record.revoked_at.is_some() {
            return Err(AuthError::Revoked);
        }
        if !record.is_live(Utc::now()) {
            return Err(AuthError::Expired);
        }
        if self.recent.claim_touch(&record.id, TOUCH_EVERY) {
            let (storage, id) = (self.storage.clone(), record.id.clone());
            tokio::spawn(async move {
                if let Err(error) = storage.touch_key(&id).await {
                    tracing::debug!(%error, key = %id, "could not record the key's use");
                }
            });
        }
        Ok(Caller::from(&*record))
    }
}

/// Key management, for the admin endpoints and the command line alike.
#[derive(Clone)]
pub struct Keys {
    storage: Storage,
}

impl Keys {
    pub fn new(storage: Storage) -> Self {
        Self { storage }
    }

    /// Makes a key; its secret is in the answer and nowhere else.
    pub async fn create_key(&self, new: NewKey) -> Result<CreatedKey, KeyError> {
        let expires_at = match new.expires_in_days {
            None => None,
            // Microseconds, as PostgreSQL keeps it, so the answer shows what is stored.
            Some(days @ 1..=MAX_EXPIRY_DAYS) => {
                Some((Utc::now() + TimeDelta::days(days.into())).trunc_subsecs(6))
            }
            Some(_) => return Err(KeyError::InvalidExpiry),
        };
        loop {
            let key = ApiKey::generate();
            let row = NewKeyRow {
                id: key.id(),
                tenant: &new.tenant,
                scopes: new.scopes,
                secret_hash: key.secret_hash(),
                quota: new.quota,
                expires_at,
            };
            // A taken id (one chance in 2^64 per key) just means drawing another.
            let Some(created_at) = self.storage.insert_key(row).await? else {
                continue;
            };
            let record = KeyRecord {
                id: key.id().clone(),
                tenant: new.tenant,
                scopes: new.scopes,
                quota: new.quota,
                created_at,
                expires_at,
                revoked_at: None,
                last_used_at: None,
                secret_hash: key.secret_hash(),
            };
            tracing::info!(key = %record.id, tenant = %record.tenant, scopes = ?record.scopes, "API key created");
            return Ok(CreatedKey {
                key: key.reveal(),
                record,
            });
        }
    }

    pub async fn list_keys(&self) -> Result<Vec<KeyRecord>, StorageError> {
        self.storage.list_keys().await
    }

    /// Revokes a key everywhere within [`KEY_REFRESH`]; `None` when there is no such key.
    pub async fn revoke_key(&self, id: &KeyId) -> Result<Option<KeyRecord>, StorageError> {
        let revoked = self.storage.revoke_key(id).await?;
        if revoked.is_some() {
            tracing::info!(key = %id, "API key revoked");
        }
        Ok(revoked)
    }

    /// Stores `BOOTSTRAP_ADMIN_KEY` as an admin key (admin scope only) of tenant `default`, unless its id is
    /// stored already (then it is left as it is: revoked, if it was revoked).
    pub async fn ensure_bootstrap_key(&self, key: &ApiKey) -> Result<(), StorageError> {
        let row = NewKeyRow {
            id: key.id(),
            tenant: &Tenant::default_tenant(),
            scopes: Scopes::of([Scope::Admin]).expect("one scope"),
            secret_hash: key.secret_hash(),
            quota: None,
            expires_at: None,
        };
        if self.storage.insert_key(row).await?.is_some() {
            tracing::info!(key = %key.id(), "bootstrap admin key stored");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_expiry_is_any_json_number_with_a_whole_value() {
        let expiry = |json: &str| {
            serde_json::from_str::<NewKey>(&format!(
                r#"{{"tenant": "t", "scopes": ["read"], "expires_in_days": {json}}}"#
            ))
            .map(|key| key.expires_in_days)
        };
        assert_eq!(expiry("285").unwrap(), Some(285));
        assert_eq!(expiry("285.0").unwrap(), Some(285));
        assert_eq!(expiry("2.85e2").unwrap(), Some(285));
        assert_eq!(expiry("null").unwrap(), None);
        for bad in ["1.5", "-1", "1e20", "\"7\""] {
            assert!(expiry(bad).is_err(), "{bad} was accepted");
        }
    }
}
