//! Writes under an `Idempotency-Key`: the key, the request's fingerprint and the first
//! response are stored in the same transaction as the points.

use std::time::Duration;

use serde_json::Value;

use super::{
    Storage, StorageError,
    metrics::{Stored, count_ingested, insert_points},
};
use crate::metric::MetricPoint;

/// PostgreSQL's lock_not_available: the wait for a concurrent request's key ran out.
const LOCK_NOT_AVAILABLE: &str = "55P03";
/// Expired keys deleted per statement, at most.
const CLEANUP_BATCH: i64 = 10_000;

/// The first response to a keyed request, as it is replayed.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredResponse {
    pub status: u16,
    pub body: Value,
}

/// What became of a write under a key.
#[derive(Debug)]
pub enum KeyedWrite {
    /// The key was new (or expired): the points are committed with it.
    Written(StoredResponse),
    /// The key was used before for this very request: nothing was written.
    Replayed(StoredResponse),
    /// The key was used before for another request: nothing was written.
    KeyReused,
    /// A request with this key is still in flight and did not finish within `wait`.
    InFlight,
}

impl Storage {
    /// Stores `points` under `key`, unless the key was used within `ttl`. A concurrent request
    /// with the same key waits for this one's outcome (at most `wait`): it is then replayed,
    /// or, if this one failed, takes the key itself.
    #[tracing::instrument(skip_all, fields(points = points.len()))]
    pub async fn insert_metrics_idempotently(
        &self,
        key: &str,
        fingerprint: &[u8],
        ttl: Duration,
        wait: Duration,
        points: &[MetricPoint],
        respond: impl FnOnce(&[Stored]) -> StoredResponse,
    ) -> Result<KeyedWrite, StorageError> {
        let write = async {
            let mut transaction = self.pool.begin().await?;
            // For this transaction only (in milliseconds).
            sqlx::query!(
                "select set_config('lock_timeout', $1, true)",
                wait.as_millis().to_string(),
            )
            .fetch_one(&mut *transaction)
            .await?;
            // Claims the key, or an expired one; a key another transaction is inserting is
            // waited for (up to lock_timeout) until that transaction ends.
            let claimed = sqlx::query_scalar!(
                // language=PostgreSQL
                r#"
                insert into idempotency_keys as k
                    (key, request_fingerprint, response_status, response_body)
                values ($1, $2, 0, 'null')
                on conflict (key) do update set
                    request_fingerprint = excluded.request_fingerprint,
                    created_at = now()
                where k.created_at < now() - make_interval(secs => $3)
                returning true as "claimed!"
                "#,
                key,
                fingerprint,
                ttl.as_secs_f64(),
            )
            .fetch_optional(&mut *transaction)
            .await;
            match claimed {
                Err(sqlx::Error::Database(error))
                    if error.code().as_deref() == Some(LOCK_NOT_AVAILABLE) =>
                {
                    return Ok(KeyedWrite::InFlight);
                }
                Err(error) => return Err(error),
                Ok(Some(_)) => {}
                Ok(None) => {
                    let first = sqlx::query!(
                        // language=PostgreSQL
                        r#"
                        select request_fingerprint, response_status, response_body
                        from idempotency_keys where key = $1
                        "#,
                        key,
                    )
                    .fetch_one(&mut *transaction)
                    .await?;
                    let outcome = if first.request_fingerprint == fingerprint {
                        KeyedWrite::Replayed(StoredResponse {
                            status: first.response_status as u16,
                            body: first.response_body,
                        })
                    } else {
                        KeyedWrite::KeyReused
                    };
                    return Ok(outcome);
                }
            }
            let stored = insert_points(&mut *transaction, points).await?;
            let response = respond(&stored);
            sqlx::query!(
                // language=PostgreSQL
                r#"
                update idempotency_keys set response_status = $2, response_body = $3
                where key = $1
                "#,
                key,
                response.status as i16,
                response.body,
            )
            .execute(&mut *transaction)
            .await?;
            transaction.commit().await?;
            count_ingested(&stored);
            Ok(KeyedWrite::Written(response))
        };
        self.run(write).await
    }

    /// Deletes expired keys every `period`, for as long as the process runs.
    pub fn spawn_idempotency_key_cleanup(
        &self,
        period: Duration,
        ttl: Duration,
    ) -> tokio::task::JoinHandle<()> {
        self.spawn_maintenance(
            "idempotency key clean-up",
            period,
            move |storage| async move {
                Ok(storage.delete_expired_idempotency_keys(ttl).await? as i64 == CLEANUP_BATCH)
            },
        )
    }

    /// Deletes keys older than `ttl`; returns how many it deleted (at most a batch).
    pub async fn delete_expired_idempotency_keys(
        &self,
        ttl: Duration,
    ) -> Result<u64, StorageError> {
        let deleted = sqlx::query!(
            // language=PostgreSQL
            r#"
            delete from idempotency_keys
            where key in (
                select key from idempotency_keys
                where created_at < now() - make_interval(secs => $1)
                limit $2
            )
            "#,
            ttl.as_secs_f64(),
            CLEANUP_BATCH,
        )
        .execute(&self.pool);
        Ok(self.run(deleted).await?.rows_affected())
    }
}
