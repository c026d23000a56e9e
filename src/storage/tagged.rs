//! Reads filtered by tags: the matching series from `metric_series`, then their points from
//! `metrics` by `metrics_series_recorded_at_idx`. The rollups are per type, not per series, so
//! these aggregate the raw points (exactly, percentiles included).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::types::Json;

use super::{Storage, StorageError, metrics::StoredRow};
use crate::{
    metric::{Aggregates, MetricType, SeriesPoint, SeriesRange, StoredMetric, TagFilter},
    tenant::Tenant,
};

impl Storage {
    /// [`Storage::aggregate`] of the points whose tags include the filter's.
    #[tracing::instrument(skip(self))]
    pub(super) async fn aggregate_tagged(
        &self,
        tenant: &Tenant,
        metric_type: &MetricType,
        since: Option<DateTime<Utc>>,
        filter: &TagFilter,
    ) -> Result<Aggregates, StorageError> {
        let series = self
            .matching_series(tenant, Some(metric_type.as_str()), filter)
            .await?;
        let row = sqlx::query!(
            // language=PostgreSQL
            r#"
            select count(*) as "count!",
                   coalesce(avg(value), 0) as "average!",
                   coalesce(min(value), 0) as "min!",
                   coalesce(max(value), 0) as "max!",
                   (array_agg(value order by recorded_at desc, id desc))[1] as latest,
                   percentile_cont(array[0.5, 0.95, 0.99]) within group (order by value) as percentiles
            from metrics
            where series_id = any($1) and ($2::timestamptz is null or recorded_at >= $2)
            "#,
            &series,
            since,
        )
        .fetch_one(&self.pool);
        let row = self.run(row).await?;
        let percentiles = row.percentiles.unwrap_or_default();
        let percentile = |i: usize| percentiles.get(i).copied().unwrap_or(0.0);
        Ok(Aggregates {
            count: row.count,
            average_value: row.average,
            min_value: row.min,
            max_value: row.max,
            latest_value: row.latest.unwrap_or(0.0),
            p50: percentile(0),
            p95: percentile(1),
            p99: percentile(2),
        })
    }

    /// [`Storage::series`] of the points whose tags include the filter's.
    #[tracing::instrument(skip(self))]
    pub(super) async fn series_tagged(
        &self,
        tenant: &Tenant,
        metric_type: &MetricType,
        range: SeriesRange,
        filter: &TagFilter,
    ) -> Result<Vec<SeriesPoint>, StorageError> {
        let series = self
            .matching_series(tenant, Some(metric_type.as_str()), filter)
            .await?;
        let width = range.bucket.width().num_seconds();
        let rows = sqlx::query_as!(
            SeriesPoint,
            // language=PostgreSQL
            r#"
            with points as (
                select date_bin($4::bigint * interval '1 second', recorded_at, timestamptz 'epoch') as start, value
                from metrics
                where series_id = any($1)
                  and recorded_at >= $2 and recorded_at < $3::timestamptz + $4::bigint * interval '1 second'
            )
            select b.start as "start!",
                   count(p.value) as "count!",
                   avg(p.value) as avg,
                   min(p.value) as min,
                   max(p.value) as max
            from generate_series($2::timestamptz, $3::timestamptz, $4::bigint * interval '1 second') as b (start)
            left join points p on p.start = b.start
            group by b.start
            order by b.start
            "#,
            &series,
            range.first,
            range.last,
            width,
        )
        .fetch_all(&self.pool);
        self.run(rows).await
    }

    /// [`Storage::list_metrics`] of the points whose tags include the filter's.
    #[tracing::instrument(skip(self))]
    pub(super) async fn list_tagged(
        &self,
        tenant: &Tenant,
        metric_type: Option<&MetricType>,
        limit: i64,
        filter: &TagFilter,
    ) -> Result<Vec<StoredMetric>, StorageError> {
        let series = self
            .matching_series(tenant, metric_type.map(MetricType::as_str), filter)
            .await?;
        let rows = sqlx::query_as!(
            StoredRow,
            // language=PostgreSQL
            r#"
            select id, metric_type, value, recorded_at, tags as "tags: Json<BTreeMap<String, String>>"
            from metrics
            where series_id = any($1)
            order by recorded_at desc, id desc
            limit $2
            "#,
            &series,
            limit,
        )
        .fetch_all(&self.pool);
        let rows = self.run(rows).await?;
        Ok(rows.into_iter().map(StoredMetric::from).collect())
    }
}
