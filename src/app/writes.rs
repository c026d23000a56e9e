//! The write path, the one home of what happens to points the HTTP layer has decoded and
//! validated, each in its tenant: the `Idempotency-Key` (replayed, refused, or committed with
//! the points), the insert, and the cache invalidation after every write that may have
//! committed.
//!
//! Concurrent unkeyed single writes are group-committed: coalesced into one multi-row insert,
//! so one transaction (and one fsync) carries many points, while every writer still hears
//! back only after its own row is committed. A group the database refuses is split until the
//! refused points are alone, so a bad point fails only its own request. A group mixes tenants:
//! each point carries its own. Batches and keyed writes are inserted on their own, in one
//! statement (and transaction) each.

use std::{collections::BTreeSet, future::Future, pin::Pin, sync::Arc};

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use crate::{
    cache::SummaryCache,
    coalesce::Coalescer,
    idempotency::{IN_FLIGHT_WAIT, KEY_TTL, KeyedRequest},
    metric::{FieldError, MetricPoint, MetricType, RejectedPoint, Source, TenantPoint},
    storage::{Claim, Storage, StorageError, Stored, StoredResponse},
    tenant::Tenant,
};

/// What a receiver's write stored.
pub use crate::storage::SamplesStored;

/// Points in one group-committed insert, at most.
const MAX_GROUP_POINTS: usize = 1_000;
/// Inserts in flight at once. One: writes that arrive meanwhile make the next group larger,
/// which costs PostgreSQL less per point; on this CPU-bound machine that beat two or four in
/// flight (9.7k writes/s against 9.0k and 7.2k under wrk -c64).
const MAX_CONCURRENT_INSERTS: usize = 1;

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("no valid point")]
    Invalid(Vec<FieldError>),
    #[error("the key was used for another request")]
    KeyReused,
    #[error("a request with the key is still in flight")]
    KeyInFlight,
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// What a write is answered with.
pub trait Receipt: Serialize {
    /// The HTTP status of the answer; recorded with the key, for replays.
    fn status(&self) -> u16;
}

/// A write's answer: a receipt for what was written, or the first answer to its key.
pub enum Written<R> {
    Fresh(R),
    Replayed(StoredResponse),
}

/// The answer to a stored point.
#[derive(Debug, Serialize, ToSchema)]
pub struct PointReceipt {
    id: i64,
    message: &'static str,
    #[serde(rename = "type")]
    metric_type: MetricType,
    /// When the service received (and committed) the point.
    timestamp: DateTime<Utc>,
}

impl Receipt for PointReceipt {
    fn status(&self) -> u16 {
        201
    }
}

/// The answer to a stored batch.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchReceipt {
    /// Points stored.
    accepted: usize,
    /// The invalid points, by index; absent when every point was stored.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    rejected: Vec<RejectedPoint>,
}

impl Receipt for BatchReceipt {
    fn status(&self) -> u16 {
        if self.rejected.is_empty() { 201 } else { 200 }
    }
}

type GroupCommit = Coalescer<TenantPoint, Result<Stored, StorageError>>;

#[derive(Clone)]
pub struct Writes {
    group: Arc<GroupCommit>,
    storage: Storage,
    cache: Arc<SummaryCache>,
}

impl Writes {
    /// Starts the group-commit task; it ends when the last clone is dropped.
    pub fn start(storage: Storage, cache: Arc<SummaryCache>) -> Self {
        let (group_storage, group_cache) = (storage.clone(), cache.clone());
        let group = Coalescer::start(
            MAX_GROUP_POINTS,
            MAX_CONCURRENT_INSERTS,
            move |points: Vec<TenantPoint>, slot| {
                let (storage, cache) = (group_storage.clone(), group_cache.clone());
                async move {
                    let outcomes = insert_isolating(&storage, &points).await;
                    // The next group may insert while this one makes the cache stale.
                    drop(slot);
                    let written = points
                        .iter()
                        .zip(&outcomes)
                        .filter(|(_, outcome)| may_have_committed(outcome))
                        .map(|(point, _)| point);
                    invalidate(&cache, written).await;
                    outcomes
                }
            },
        );
        Self {
            group: Arc::new(group),
            storage,
            cache,
        }
    }

    /// Stores one point of the tenant; returns once it is committed and the tenant's
    /// summaries reflect it.
    pub async fn write_point(
        &self,
        tenant: Tenant,
        point: MetricPoint,
        key: Option<&KeyedRequest>,
    ) -> Result<Written<PointReceipt>, WriteError> {
        let receipt = |metric_type: MetricType, stored: &Stored| PointReceipt {
            id: stored.id,
            message: "Metric received",
            metric_type,
            timestamp: stored.received_at,
        };
        let metric_type = point.metric_type.clone();
        let point = TenantPoint { tenant, point };
        let Some(key) = key else {
            let stored = self.group.submit(point).await.unwrap_or_else(|| {
                Err(StorageError::Unavailable(
                    "the ingestion task has stopped".into(),
                ))
            })?;
            return Ok(Written::Fresh(receipt(metric_type, &stored)));
        };
        self.write_keyed(key, std::slice::from_ref(&point), |stored| {
            receipt(metric_type, &stored[0])
        })
        .await
    }

    /// Stores a batch's valid points, all of the tenant, in one statement; the invalid ones
    /// are listed in the receipt. A batch without a valid point is refused whole.
    pub async fn write_batch(
        &self,
        tenant: Tenant,
        points: Vec<MetricPoint>,
        rejected: Vec<RejectedPoint>,
        key: Option<&KeyedRequest>,
    ) -> Result<Written<BatchReceipt>, WriteError> {
        if points.is_empty() {
            return Err(WriteError::Invalid(no_valid_point(rejected)));
        }
        let receipt = |stored: &[Stored]| BatchReceipt {
            accepted: stored.len(),
            rejected,
        };
        let points = in_tenant(&tenant, points);
        let Some(key) = key else {
            let inserted = self.storage.insert_metrics(&points).await;
            let stored = self.after_write(&points, inserted).await?;
            return Ok(Written::Fresh(receipt(&stored)));
        };
        self.write_keyed(key, &points, receipt).await
    }

    /// Stores samples of the tenant that came in through a receiver, in one transaction, each
    /// series' timestamp at most once ever: a sender's retry of samples stored before stores
    /// nothing twice. An empty request stores nothing and succeeds.
    pub async fn write_samples(
        &self,
        tenant: Tenant,
        points: Vec<MetricPoint>,
        source: Source,
    ) -> Result<SamplesStored, WriteError> {
        if points.is_empty() {
            return Ok(SamplesStored {
                stored: 0,
                duplicates: 0,
            });
        }
        let points = in_tenant(&tenant, points);
        let inserted = self.storage.insert_samples(&points, source).await;
        Ok(self.after_write(&points, inserted).await?)
    }

    /// Stores points under a key, in their own transaction with the key and the receipt,
    /// unless the key was used before.
    async fn write_keyed<R: Receipt>(
        &self,
        key: &KeyedRequest,
        points: &[TenantPoint],
        receipt: impl FnOnce(&[Stored]) -> R,
    ) -> Result<Written<R>, WriteError> {
        // Boxed: the transaction's futures are large, and inline they would make every write
        // handler's future (keyed or not) as large, to be moved around on every request.
        let claim = Box::pin(self.storage.claim_key(key, points, KEY_TTL, IN_FLIGHT_WAIT)).await?;
        let mut transaction = match claim {
            Claim::Claimed(transaction) => transaction,
            Claim::Replay(response) => return Ok(Written::Replayed(response)),
            Claim::Reused => return Err(WriteError::KeyReused),
            Claim::InFlight => return Err(WriteError::KeyInFlight),
        };
        let stored = Box::pin(transaction.insert(points)).await?;
        let receipt = receipt(&stored);
        let response = StoredResponse {
            status: receipt.status(),
            body: serde_json::to_value(&receipt).expect("receipts serialise"),
        };
        let committed = Box::pin(transaction.commit(&response)).await;
        self.after_write(points, committed).await?;
        Ok(Written::Fresh(receipt))
    }

    /// Makes summaries of the written tenants' types stale once a write may have committed: a
    /// summary must not be served from before it.
    async fn after_write<T>(
        &self,
        points: &[TenantPoint],
        outcome: Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        if may_have_committed(&outcome) {
            invalidate(&self.cache, points).await;
        }
        outcome
    }
}

/// The points, each with the tenant.
fn in_tenant(tenant: &Tenant, points: Vec<MetricPoint>) -> Vec<TenantPoint> {
    points
        .into_iter()
        .map(|point| TenantPoint {
            tenant: tenant.clone(),
            point,
        })
        .collect()
}

/// A failed write may still have committed when its outcome could not be learnt.
fn may_have_committed<T>(outcome: &Result<T, StorageError>) -> bool {
    outcome
        .as_ref()
        .map_or_else(StorageError::may_have_committed, |_| true)
}

async fn invalidate<'a>(cache: &SummaryCache, points: impl IntoIterator<Item = &'a TenantPoint>) {
    let types: BTreeSet<(&Tenant, &str)> = points
        .into_iter()
        .map(|p| (&p.tenant, p.point.metric_type.as_str()))
        .collect();
    if !types.is_empty() {
        cache.invalidate(types).await;
    }
}

type Outcomes<'a> = Pin<Box<dyn Future<Output = Vec<Result<Stored, StorageError>>> + Send + 'a>>;

/// Inserts a group in one statement; when the database refuses it, halves it until each
/// refused point is alone, so only the culprits fail (a few statements per culprit).
fn insert_isolating<'a>(storage: &'a Storage, points: &'a [TenantPoint]) -> Outcomes<'a> {
    Box::pin(async move {
        match storage.insert_metrics(points).await {
            Ok(stored) => stored.into_iter().map(Ok).collect(),
            Err(StorageError::Rejected(_)) if points.len() > 1 => {
                let (left, right) = points.split_at(points.len() / 2);
                let mut outcomes = insert_isolating(storage, left).await;
                outcomes.extend(insert_isolating(storage, right).await);
                outcomes
            }
            // Every writer of the group gets the group's outcome.
            Err(error) => vec![Err(error); points.len()],
        }
    })
}

/// The errors of a batch without a valid point, named `metrics[i].field`.
fn no_valid_point(rejected: Vec<RejectedPoint>) -> Vec<FieldError> {
    if rejected.is_empty() {
        return vec![FieldError::new("metrics", "must hold at least one point")];
    }
    rejected
        .into_iter()
        .flat_map(|r| {
            r.errors.into_iter().map(move |e| {
                FieldError::new(format!("metrics[{}].{}", r.index, e.field), e.message)
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_whose_outcome_is_unknown_counts_as_possibly_committed() {
        let outcome = |result: Result<(), StorageError>| may_have_committed(&result);
        assert!(outcome(Ok(())));
        assert!(outcome(Err(StorageError::OutcomeUnknown("lost".into()))));
        assert!(!outcome(Err(StorageError::Unavailable("down".into()))));
        assert!(!outcome(Err(StorageError::Rejected("check".into()))));
    }

    #[test]
    fn a_batch_without_a_valid_point_names_each_points_fields() {
        let rejected = vec![
            RejectedPoint {
                index: 0,
                errors: vec![FieldError::new("timestamp", "is required")],
            },
            RejectedPoint {
                index: 3,
                errors: vec![
                    FieldError::new("value", "must be a JSON number"),
                    FieldError::new("type", "is required"),
                ],
            },
        ];
        let fields: Vec<String> = no_valid_point(rejected)
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(
            fields,
            [
                "metrics[0].timestamp",
                "metrics[3].value",
                "metrics[3].type"
            ]
        );
        assert_eq!(no_valid_point(Vec::new())[0].field, "metrics");
    }
}
