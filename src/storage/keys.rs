//! The `api_keys` table: keys by id, with only the hash of their secret.

use chrono::{DateTime, Utc};

use super::{Storage, StorageError};
use crate::{
    auth::{KeyId, KeyRecord, Scopes, SecretHash},
    rate_limiter::Quota,
    tenant::Tenant,
};

/// A key to store.
pub struct NewKeyRow<'a> {
    pub id: &'a KeyId,
    pub tenant: &'a Tenant,
    pub scopes: Scopes,
    pub secret_hash: SecretHash,
    pub quota: Option<Quota>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// A row as read, before its columns are checked.
struct KeyRow {
    id: String,
    tenant: String,
    scopes: Vec<String>,
    secret_sha256: Vec<u8>,
    quota_requests: Option<i32>,
    quota_window_seconds: Option<i32>,
    created_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
    last_used_at: Option<DateTime<Utc>>,
}

impl TryFrom<KeyRow> for KeyRecord {
    type Error = StorageError;

    fn try_from(row: KeyRow) -> Result<Self, StorageError> {
        let corrupt = |what: &str| StorageError::Corrupt(format!("api key {}: {what}", row.id));
        let quota = match (row.quota_requests, row.quota_window_seconds) {
            (Some(requests), Some(seconds)) => Some(
                Quota::new(requests as u32, seconds as u64)
                    .ok_or_else(|| corrupt("quota out of range"))?,
            ),
            _ => None,
        };
        Ok(Self {
            id: row.id.parse().map_err(|_| corrupt("id"))?,
            tenant: row.tenant.parse().map_err(|_| corrupt("tenant"))?,
            scopes: row
                .scopes
                .join(",")
                .parse()
                .map_err(|_| corrupt("scopes"))?,
            secret_hash: SecretHash::from_bytes(&row.secret_sha256)
                .ok_or_else(|| corrupt("secret hash"))?,
            quota,
            created_at: row.created_at,
            expires_at: row.expires_at,
            revoked_at: row.revoked_at,
            last_used_at: row.last_used_at,
        })
    }
}

impl Storage {
    /// Stores a new key and returns its creation time; `None` when a key with its id exists
    /// already (which is left as it is: a bootstrap key revoked once stays revoked).
    pub async fn insert_key(
        &self,
        key: NewKeyRow<'_>,
    ) -> Result<Option<DateTime<Utc>>, StorageError> {
        let inserted = sqlx::query_scalar!(
            // language=PostgreSQL
            r#"
            insert into api_keys
                (id, tenant, scopes, secret_sha256, quota_requests, quota_window_seconds, expires_at)
            values ($1, $2, $3, $4, $5, $6, $7)
            on conflict (id) do nothing
            returning created_at
            "#,
            key.id.as_str(),
            key.tenant.as_str(),
            &key.scopes.names() as &[&str],
            key.secret_hash.as_bytes(),
            key.quota.map(|q| q.requests as i32),
            key.quota.map(|q| q.window.as_secs() as i32),
            key.expires_at,
        )
        .fetch_optional(&self.pool);
        self.run(inserted).await
    }

    pub async fn find_key(&self, id: &KeyId) -> Result<Option<KeyRecord>, StorageError> {
        let row = sqlx::query_as!(
            KeyRow,
            // language=PostgreSQL
            r#"
            select id, tenant, scopes, secret_sha256, quota_requests, quota_window_seconds,
                   created_at, expires_at, revoked_at, last_used_at
            from api_keys where id = $1
            "#,
            id.as_str(),
        )
        .fetch_optional(&self.pool);
        self.run(row).await?.map(KeyRecord::try_from).transpose()
    }

    /// Every key, newest first.
    pub async fn list_keys(&self) -> Result<Vec<KeyRecord>, StorageError> {
        let rows = sqlx::query_as!(
            KeyRow,
            // language=PostgreSQL
            r#"
            select id, tenant, scopes, secret_sha256, quota_requests, quota_window_seconds,
                   created_at, expires_at, revoked_at, last_used_at
            from api_keys order by created_at desc, id
            "#,
        )
        .fetch_all(&self.pool);
        self.run(rows)
            .await?
            .into_iter()
            .map(KeyRecord::try_from)
            .collect()
    }

    /// Revokes a key (a revoked key keeps its first revocation time); `None` when there is
    /// no such key.
    pub async fn revoke_key(&self, id: &KeyId) -> Result<Option<KeyRecord>, StorageError> {
        let row = sqlx::query_as!(
            KeyRow,
            // language=PostgreSQL
            r#"
            update api_keys set revoked_at = coalesce(revoked_at, now())
            where id = $1
            returning id, tenant, scopes, secret_sha256, quota_requests, quota_window_seconds,
                      created_at, expires_at, revoked_at, last_used_at
            "#,
            id.as_str(),
        )
        .fetch_optional(&self.pool);
        self.run(row).await?.map(KeyRecord::try_from).transpose()
    }

    /// Records a use of the key, unless one was recorded within the last minute (by any
    /// instance).
    pub async fn touch_key(&self, id: &KeyId) -> Result<(), StorageError> {
        let touched = sqlx::query!(
            // language=PostgreSQL
            r#"
            update api_keys set last_used_at = now()
            where id = $1 and (last_used_at is null or last_used_at < now() - interval '1 minute')
            "#,
            id.as_str(),
        )
        .execute(&self.pool);
        self.run(touched).await.map(drop)
    }
}
