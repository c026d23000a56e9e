//! The summary read path, read through the cache: a cached summary when there is a fresh
//! one; otherwise the aggregates from PostgreSQL and the type's enrichment through the
//! circuit breaker, computed together, then cached (briefly when the enrichment failed).

use std::{sync::Arc, time::Duration};

use chrono::Utc;

use crate::{
    cache::{Lookup, SummaryCache},
    enrichment::{Enrichment, EnrichmentClient},
    metric::{EnrichmentStatus, MetricType, Period, Summary, TagFilter},
    storage::{Storage, StorageError},
    tenant::Tenant,
};

/// A summary whose enrichment failed is cached this long at most, so a recovered external
/// service shows up well before the normal TTL ends.
const DEGRADED_SUMMARY_TTL: Duration = Duration::from_secs(5);

/// Whether a summary came from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    Hit,
    Miss,
}

#[derive(Clone)]
pub struct Summaries {
    storage: Storage,
    cache: Arc<SummaryCache>,
    enrichment: Arc<EnrichmentClient>,
}

impl Summaries {
    pub fn new(
        storage: Storage,
        cache: Arc<SummaryCache>,
        enrichment: Arc<EnrichmentClient>,
    ) -> Self {
        Self {
            storage,
            cache,
            enrichment,
        }
    }

    /// One type's summary of the tenant's points over `period` (those whose tags include the
    /// filter's); a dependency outage degrades it (no cache, no enrichment) rather than
    /// failing it, except PostgreSQL's. The enrichment is of the type, the same for every
    /// tenant.
    pub async fn summary(
        &self,
        tenant: &Tenant,
        metric_type: &MetricType,
        period: Period,
        filter: &TagFilter,
    ) -> Result<(Summary, CacheStatus), StorageError> {
        let slot = match self
            .cache
            .lookup(tenant, metric_type.as_str(), period, filter)
            .await
        {
            Lookup::Hit(summary) => return Ok((*summary, CacheStatus::Hit)),
            Lookup::Miss(slot) => slot,
        };
        let (aggregates, enrichment) = tokio::join!(
            self.storage
                .aggregate(tenant, metric_type, period.since(Utc::now()), filter),
            self.enrichment.enrich(metric_type.as_str()),
        );
        let (enrichment, enrichment_status) = match enrichment {
            Enrichment::Ok(data) => (Some(data), EnrichmentStatus::Ok),
            Enrichment::Failed(_) => (None, EnrichmentStatus::Failed),
            Enrichment::CircuitOpen => (None, EnrichmentStatus::CircuitOpen),
        };
        let summary = Summary {
            metric_type: metric_type.clone(),
            period,
            aggregates: aggregates?,
            enrichment,
            enrichment_status,
        };
        if let Some(slot) = slot {
            let max_ttl =
                (enrichment_status != EnrichmentStatus::Ok).then_some(DEGRADED_SUMMARY_TTL);
            self.cache.store(slot, &summary, max_ttl).await;
        }
        Ok((summary, CacheStatus::Miss))
    }
}
