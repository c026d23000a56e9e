use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::types::Json;
use utoipa::ToSchema;

use super::{Storage, StorageError};
use crate::metric::MetricPoint;

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
        // The same statement appends the batch's per-minute aggregates to the rollup deltas:
        // an insert locks nothing but its own rows, and the rollups always agree with it.
        let rows = sqlx::query!(
            // language=PostgreSQL
            r#"
            with inserted as (
                insert into metrics (metric_type, value, recorded_at, tags)
                select * from unnest($1::text[], $2::float8[], $3::timestamptz[], $4::jsonb[])
                returning id, metric_type, value, recorded_at, ingested_at
            ),
            deltas as (
                insert into metric_rollup_deltas
                    (metric_type, minute, count, sum, min, max, latest_at, latest_id, latest_value, sketch)
                select metric_type, date_trunc('minute', recorded_at, 'UTC'),
                       count(*), sum(value), min(value), max(value),
                       (array_agg(recorded_at order by recorded_at desc, id desc))[1],
                       (array_agg(id order by recorded_at desc, id desc))[1],
                       (array_agg(value order by recorded_at desc, id desc))[1],
                       metric_sketch_of(array_agg(value))
                from inserted
                group by 1, 2
            )
            select id as "id!", ingested_at as "ingested_at!" from inserted
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
