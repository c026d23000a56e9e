//! Writes under an `Idempotency-Key`: the key (within its client's scope), the request's
//! fingerprint and the first response are stored in the same transaction as the points.

use std::time::Duration;

use serde_json::Value;
use sqlx::{Postgres, Transaction};

use super::{
    Storage, StorageError,
    metrics::{Stored, count_ingested, insert_points},
};
use crate::{idempotency::KeyedRequest, metric::TenantPoint};

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

/// What claiming a key found.
pub enum Claim {
    /// The key was new (or expired): write the points in this transaction, then commit it
    /// with the response.
    Claimed(KeyedTransaction),
    /// The key was used before for this very request: write nothing, answer this.
    Replay(StoredResponse),
    /// The key was used before for another request: write nothing.
    Reused,
    /// A request with this key is still in flight and did not finish within the wait.
    InFlight,
}

/// A claimed key's transaction: nothing of it is visible until `commit`, and dropping it
/// rolls the claim and the points back.
pub struct KeyedTransaction {
    storage: Storage,
    transaction: Transaction<'static, Postgres>,
    request: KeyedRequest,
    /// The series of the points to be inserted, resolved before the claim.
    series: Vec<i64>,
    stored: Vec<Stored>,
}

impl Storage {
    /// Claims `request`'s key unless it was used within `ttl`. A concurrent request with the
    /// same key waits for that one's outcome (at most `wait`): it is then replayed, or, if the
    /// other one failed, claims the key itself. `points` are those to be inserted under the
    /// key: their series are resolved first, on a connection of their own, since many
    /// requests waiting for one key hold a connection each, and the one holding the key must
    /// not need a second one.
    pub async fn claim_key(
        &self,
        request: &KeyedRequest,
        points: &[TenantPoint],
        ttl: Duration,
        wait: Duration,
    ) -> Result<Claim, StorageError> {
        let series = self.series_ids(points).await?;
        let claim = async {
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
                    (scope, key, request_fingerprint, response_status, response_body)
                values ($1, $2, $3, 0, 'null')
                on conflict (scope, key) do update set
                    request_fingerprint = excluded.request_fingerprint,
                    created_at = now()
                where k.created_at < now() - make_interval(secs => $4)
                returning true as "claimed!"
                "#,
                request.scope,
                request.key.as_str(),
                request.fingerprint,
                ttl.as_secs_f64(),
            )
            .fetch_optional(&mut *transaction)
            .await;
            match claimed {
                Err(sqlx::Error::Database(error))
                    if error.code().as_deref() == Some(LOCK_NOT_AVAILABLE) =>
                {
                    Ok(Claim::InFlight)
                }
                Err(error) => Err(error),
                Ok(Some(_)) => Ok(Claim::Claimed(KeyedTransaction {
                    storage: self.clone(),
                    transaction,
                    request: request.clone(),
                    series,
                    stored: Vec::new(),
                })),
                Ok(None) => first_response(&mut transaction, request).await,
            }
        };
        self.run(claim).await
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
            where (scope, key) in (
                select scope, key from idempotency_keys
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

/// What a key used before answers a repeat of its request: the first response, or a refusal
/// when the repeat is another request.
async fn first_response(
    transaction: &mut Transaction<'static, Postgres>,
    request: &KeyedRequest,
) -> Result<Claim, sqlx::Error> {
    let first = sqlx::query!(
        // language=PostgreSQL
        r#"
        select request_fingerprint, response_status, response_body
        from idempotency_keys where scope = $1 and key = $2
        "#,
        request.scope,
        request.key.as_str(),
    )
    .fetch_one(&mut **transaction)
    .await?;
    Ok(if first.request_fingerprint == request.fingerprint {
        Claim::Replay(StoredResponse {
            status: first.response_status as u16,
            body: first.response_body,
        })
    } else {
        Claim::Reused
    })
}

impl KeyedTransaction {
    /// Inserts the points given to `claim_key` (with their rollup deltas) in this
    /// transaction; the result is in their order.
    pub async fn insert(&mut self, points: &[TenantPoint]) -> Result<Vec<Stored>, StorageError> {
        assert_eq!(points.len(), self.series.len(), "the points of the claim");
        let stored = self
            .storage
            .run(insert_points(&mut self.transaction, points, &self.series))
            .await?;
        self.stored.extend_from_slice(&stored);
        Ok(stored)
    }

    /// Records the response under the key and commits it with the points.
    pub async fn commit(mut self, response: &StoredResponse) -> Result<(), StorageError> {
        let recorded = sqlx::query!(
            // language=PostgreSQL
            r#"
            update idempotency_keys set response_status = $3, response_body = $4
            where scope = $1 and key = $2
            "#,
            self.request.scope,
            self.request.key.as_str(),
            response.status as i16,
            response.body,
        )
        .execute(&mut *self.transaction);
        self.storage.run(recorded).await?;
        let Self {
            storage,
            transaction,
            stored,
            ..
        } = self;
        storage.run(transaction.commit()).await?;
        count_ingested(&stored);
        Ok(())
    }
}
