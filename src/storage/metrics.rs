use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::types::Json;
use utoipa::ToSchema;

use super::{Storage, StorageError};
use crate::metric::{Aggregates, MetricPoint};

/// What the database assigned to a stored point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub id: i64,
    pub received_at: DateTime<Utc>,
}

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
    /// Stores the points in one statement (one transaction); the result is in their order.
    #[tracing::instrument(skip_all, fields(points = points.len()))]
    pub async fn insert_metrics(
        &self,
        points: &[MetricPoint],
    ) -> Result<Vec<Stored>, StorageError> {
        let mut types = Vec::with_capacity(points.len());
        let mut values = Vec::with_capacity(points.len());
        let mut recorded = Vec::with_capacity(points.len());
        let mut tags = Vec::with_capacity(points.len());
        for point in points {
            types.push(point.metric_type.as_str());
            values.push(point.value);
            recorded.push(point.timestamp);
            tags.push(serde_json::to_value(&point.tags).expect("string maps serialise"));
        }
        let rows = sqlx::query!(
            // language=PostgreSQL
            r#"
            insert into metrics (metric_type, value, recorded_at, tags)
            select * from unnest($1::text[], $2::float8[], $3::timestamptz[], $4::jsonb[])
            returning id, ingested_at
            "#,
            &types as &[&str],
            &values,
            &recorded,
            &tags,
        )
        .fetch_all(&self.pool);
        let mut rows = self.run(rows).await?;
        // Rows are inserted in the arrays' order and ids are drawn in insertion order, so the
        // ascending ids map back onto the points whatever order RETURNING uses.
        rows.sort_unstable_by_key(|row| row.id);
        ::metrics::counter!("metric_points_ingested_total").increment(rows.len() as u64);
        Ok(rows
            .into_iter()
            .map(|row| Stored {
                id: row.id,
                received_at: row.ingested_at,
            })
            .collect())
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
