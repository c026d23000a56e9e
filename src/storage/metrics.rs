use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::types::Json;
use utoipa::ToSchema;

use super::{Storage, StorageError};
use crate::metric::{Aggregates, MetricPoint};

/// A stored point as `GET /api/metrics/list` returns it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct StoredMetric {
    pub id: i64,
    pub timestamp: DateTime<Utc>,
    pub value: f64,
    #[serde(rename = "type")]
    pub metric_type: String,
    pub tags: BTreeMap<String, String>,
}

impl Storage {
    /// Stores one point; returns its id and the time the database received it.
    #[tracing::instrument(skip_all, fields(metric_type = %point.metric_type))]
    pub async fn insert_metric(
        &self,
        point: &MetricPoint,
    ) -> Result<(i64, DateTime<Utc>), StorageError> {
        let row = sqlx::query!(
            // language=PostgreSQL
            r#"
            insert into metrics (metric_type, value, recorded_at, tags)
            values ($1, $2, $3, $4)
            returning id, ingested_at
            "#,
            point.metric_type,
            point.value,
            point.timestamp,
            Json(&point.tags) as _,
        )
        .fetch_one(&self.pool);
        let row = self.run(row).await?;
        metrics::counter!("metric_points_ingested_total").increment(1);
        Ok((row.id, row.ingested_at))
    }

    /// Aggregates one type's points recorded at or after `since` (all of them for `None`),
    /// entirely in PostgreSQL.
    #[tracing::instrument(skip(self))]
    pub async fn aggregate(
        &self,
        metric_type: &str,
        since: Option<DateTime<Utc>>,
    ) -> Result<Aggregates, StorageError> {
        let row = sqlx::query!(
            // language=PostgreSQL
            r#"
            select
                count(*) as "count!",
                coalesce(avg(value), 0) as "average!",
                coalesce(min(value), 0) as "min!",
                coalesce(max(value), 0) as "max!",
                percentile_cont(array[0.5, 0.95, 0.99]) within group (order by value) as percentiles,
                (
                    select latest.value from metrics latest
                    where latest.metric_type = $1
                      and latest.recorded_at >= coalesce($2, '-infinity'::timestamptz)
                    order by latest.recorded_at desc, latest.id desc
                    limit 1
                ) as latest
            from metrics
            where metric_type = $1
              and recorded_at >= coalesce($2, '-infinity'::timestamptz)
            "#,
            metric_type,
            since,
        )
        .fetch_one(&self.pool);
        let row = self.run(row).await?;
        let percentile = |i: usize| {
            row.percentiles
                .as_ref()
                .and_then(|p| p.get(i).copied())
                .unwrap_or(0.0)
        };
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

    /// The newest points first, of one type or of all.
    #[tracing::instrument(skip(self))]
    pub async fn list_metrics(
        &self,
        metric_type: Option<&str>,
        limit: i64,
    ) -> Result<Vec<StoredMetric>, StorageError> {
        let rows = sqlx::query!(
            // language=PostgreSQL
            r#"
            select id, metric_type, value, recorded_at, tags as "tags: Json<BTreeMap<String, String>>"
            from metrics
            where $1::text is null or metric_type = $1
            order by recorded_at desc, id desc
            limit $2
            "#,
            metric_type,
            limit,
        )
        .fetch_all(&self.pool);
        let rows = self.run(rows).await?;
        Ok(rows
            .into_iter()
            .map(|row| StoredMetric {
                id: row.id,
                timestamp: row.recorded_at,
                value: row.value,
                metric_type: row.metric_type,
                tags: row.tags.0,
            })
            .collect())
    }
}
