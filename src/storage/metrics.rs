//! The `metrics` table: inserts (with their rollup deltas) and reads of stored points.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor, types::Json};

use super::{Storage, StorageError};
use crate::{
    metric::{MetricType, Source, StoredMetric, TagFilter, TenantPoint},
    sketch::QuantileSketch,
    tenant::Tenant,
};

/// What the database assigned to a stored point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub id: i64,
    pub received_at: DateTime<Utc>,
}

/// A batch's aggregates per tenant, type and UTC minute, as columns for
/// `metric_rollup_deltas`.
#[derive(Debug, Default)]
struct MinuteDeltas<'a> {
    tenants: Vec<&'a str>,
    types: Vec<&'a str>,
    minutes: Vec<DateTime<Utc>>,
    counts: Vec<i64>,
    sums: Vec<f64>,
    mins: Vec<f64>,
    maxes: Vec<f64>,
    latest_at: Vec<DateTime<Utc>>,
    /// Position in the batch of the latest point (greatest timestamp, then position).
    latest_positions: Vec<i64>,
    latest_values: Vec<f64>,
    sketches: Vec<serde_json::Value>,
}

impl<'a> MinuteDeltas<'a> {
    fn of(points: &'a [TenantPoint]) -> Self {
        let mut groups: BTreeMap<(&str, &str, i64), Vec<usize>> = BTreeMap::new();
        for (position, TenantPoint { tenant, point }) in points.iter().enumerate() {
            let minute = point.timestamp.timestamp().div_euclid(60) * 60;
            groups
                .entry((tenant.as_str(), point.metric_type.as_str(), minute))
                .or_default()
                .push(position);
        }
        let point_at = |i: usize| &points[i].point;
        let mut deltas = Self::default();
        for ((tenant, metric_type, minute), positions) in groups {
            let values = positions.iter().map(|&i| point_at(i).value);
            let mut sketch = QuantileSketch::new();
            values.clone().for_each(|v| sketch.insert(v));
            let latest = *positions
                .iter()
                .max_by_key(|&&i| (point_at(i).timestamp, i))
                .expect("a group holds at least one point");
            deltas.tenants.push(tenant);
            deltas.types.push(metric_type);
            deltas
                .minutes
                .push(DateTime::from_timestamp(minute, 0).expect("timestamps are in range"));
            deltas.counts.push(positions.len() as i64);
            deltas.sums.push(values.clone().sum());
            deltas
                .mins
                .push(values.clone().fold(f64::INFINITY, f64::min));
            deltas.maxes.push(values.fold(f64::NEG_INFINITY, f64::max));
            deltas.latest_at.push(point_at(latest).timestamp);
            deltas.latest_positions.push(latest as i64);
            deltas.latest_values.push(point_at(latest).value);
            deltas.sketches.push(sketch.to_json());
        }
        deltas
    }
}

impl Storage {
    /// Stores the points, each in its tenant, in one transaction; the result is in their
    /// order.
    #[tracing::instrument(skip_all, fields(points = points.len()))]
    pub async fn insert_metrics(
        &self,
        points: &[TenantPoint],
    ) -> Result<Vec<Stored>, StorageError> {
        let series = self.series_ids(points).await?;
        let stored = if statements(points).nth(1).is_none() {
            self.run(insert_statement(&self.pool, points, &series))
                .await?
        } else {
            // Several statements: one transaction, so the points commit together.
            let mut transaction = self.run(self.pool.begin()).await?;
            let stored = self
                .run(insert_points(&mut transaction, points, &series))
                .await?;
            self.run(transaction.commit()).await?;
            stored
        };
        count_ingested(&stored);
        Ok(stored)
    }

    /// The tenant's newest points first, of one type or of all, of those whose tags include
    /// the filter's.
    #[tracing::instrument(skip(self))]
    pub async fn list_metrics(
        &self,
        tenant: &Tenant,
        metric_type: Option<&MetricType>,
        limit: i64,
        filter: &TagFilter,
    ) -> Result<Vec<StoredMetric>, StorageError> {
        if !filter.is_empty() {
            return self.list_tagged(tenant, metric_type, limit, filter).await;
        }
        let rows = sqlx::query_as!(
            StoredRow,
            // language=PostgreSQL
            r#"
            select id, metric_type, value, recorded_at, tags as "tags: Json<BTreeMap<String, String>>"
            from metrics
            where tenant = $1 and ($2::text is null or metric_type = $2)
            order by recorded_at desc, id desc
            limit $3
            "#,
            tenant.as_str(),
            metric_type.map(MetricType::as_str),
            limit,
        )
        .fetch_all(&self.pool);
        let rows = self.run(rows).await?;
        Ok(rows.into_iter().map(StoredMetric::from).collect())
    }
}

/// A `metrics` row as it is read back.
pub(super) struct StoredRow {
    pub(super) id: i64,
    pub(super) metric_type: String,
    pub(super) value: f64,
    pub(super) recorded_at: DateTime<Utc>,
    pub(super) tags: Json<BTreeMap<String, String>>,
}

impl From<StoredRow> for StoredMetric {
    fn from(row: StoredRow) -> Self {
        Self {
            id: row.id,
            timestamp: row.recorded_at,
            value: row.value,
            metric_type: row.metric_type,
            tags: row.tags.0,
        }
    }
}

/// What an insert of receivers' samples did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SamplesStored {
    /// Samples stored now.
    pub stored: usize,
    /// Samples of a series and timestamp already stored (a retry), or twice in the request.
    pub duplicates: usize,
}

impl Storage {
    /// Stores samples that came through a receiver, in one transaction, at most one per series
    /// and timestamp (`metrics_received_sample_idx`): a sample stored before, by this request's
    /// first attempt for instance, is dropped and counted.
    #[tracing::instrument(skip_all, fields(samples = points.len(), source = source.as_str()))]
    pub async fn insert_samples(
        &self,
        points: &[TenantPoint],
        source: Source,
    ) -> Result<SamplesStored, StorageError> {
        let series = self.series_ids(points).await?;
        // A series' timestamp twice in the request: the first sample is the one.
        let mut seen = HashSet::with_capacity(points.len());
        let (unique, series): (Vec<TenantPoint>, Vec<i64>) = points
            .iter()
            .zip(series)
            .filter(|(point, series)| {
                seen.insert((*series, point.point.timestamp.timestamp_micros()))
            })
            .map(|(point, series)| (point.clone(), series))
            .unzip();
        let mut transaction = self.run(self.pool.begin()).await?;
        let (mut stored, mut offset) = (0, 0);
        for run in statements(&unique) {
            let run_series = &series[offset..offset + run.len()];
            offset += run.len();
            stored += self
                .run(insert_samples_statement(
                    &mut transaction,
                    run,
                    run_series,
                    source,
                ))
                .await?;
        }
        self.run(transaction.commit()).await?;
        ::metrics::counter!("metric_points_ingested_total").increment(stored as u64);
        Ok(SamplesStored {
            stored,
            duplicates: points.len() - stored,
        })
    }
}

/// Inserts the samples that are new, then the rollup deltas of those; returns how many were.
async fn insert_samples_statement(
    connection: &mut PgConnection,
    points: &[TenantPoint],
    series: &[i64],
    source: Source,
) -> Result<usize, sqlx::Error> {
    let Columns {
        tenants,
        types,
        values,
        recorded,
        tags,
    } = Columns::of(points);
    let rows = sqlx::query!(
        // language=PostgreSQL
        r#"
        insert into metrics (tenant, metric_type, value, recorded_at, tags, series_id, source)
        select n, t, v, r, g::jsonb, s, $7
        from unnest($1::text[], $2::text[], $3::float8[], $4::timestamptz[], $5::text[], $6::int8[])
             as u (n, t, v, r, g, s)
        on conflict (series_id, recorded_at) where source <> 'api' do nothing
        returning id, series_id, recorded_at
        "#,
        &tenants as &[&str],
        &types as &[&str],
        &values,
        &recorded,
        &tags as &[&str],
        series,
        source.as_str(),
    )
    .fetch_all(&mut *connection)
    .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    // The inserted rows, by position: a series and timestamp is at one position (the caller
    // dropped repeats), and PostgreSQL keeps microseconds, as timestamp_micros does.
    let positions: HashMap<(i64, i64), usize> = series
        .iter()
        .zip(points)
        .enumerate()
        .map(|(i, (series, point))| ((*series, point.point.timestamp.timestamp_micros()), i))
        .collect();
    let mut inserted = rows
        .iter()
        .map(|row| {
            positions
                .get(&(row.series_id, row.recorded_at.timestamp_micros()))
                .map(|&position| (position, row.id))
                .ok_or(sqlx::Error::RowNotFound)
        })
        .collect::<Result<Vec<(usize, i64)>, _>>()?;
    inserted.sort_unstable();
    let new: Vec<TenantPoint> = inserted.iter().map(|&(i, _)| points[i].clone()).collect();
    let deltas = MinuteDeltas::of(&new);
    let latest_ids: Vec<i64> = deltas
        .latest_positions
        .iter()
        .map(|&position| inserted[position as usize].1)
        .collect();
    sqlx::query!(
        // language=PostgreSQL
        r#"
        insert into metric_rollup_deltas
            (tenant, metric_type, minute, count, sum, min, max, latest_at, latest_id, latest_value, sketch)
        select * from unnest($1::text[], $2::text[], $3::timestamptz[], $4::int8[], $5::float8[], $6::float8[],
                             $7::float8[], $8::timestamptz[], $9::int8[], $10::float8[], $11::jsonb[])
        "#,
        &deltas.tenants as &[&str],
        &deltas.types as &[&str],
        &deltas.minutes,
        &deltas.counts,
        &deltas.sums,
        &deltas.mins,
        &deltas.maxes,
        &deltas.latest_at,
        &latest_ids,
        &deltas.latest_values,
        &deltas.sketches,
    )
    .execute(&mut *connection)
    .await?;
    Ok(rows.len())
}

/// Counts committed points.
pub(super) fn count_ingested(stored: &[Stored]) {
    ::metrics::counter!("metric_points_ingested_total").increment(stored.len() as u64);
}

/// Bytes of points per insert statement, about, at most: a statement's arguments and the
/// connection's write buffer hold them once each, so this bounds what an insert holds beyond
/// the points themselves, whatever the batch's size.
pub const MAX_STATEMENT_BYTES: usize = 512 * 1024;

/// The points, split into runs of at most [`MAX_STATEMENT_BYTES`] (and at least one point).
fn statements(points: &[TenantPoint]) -> impl Iterator<Item = &[TenantPoint]> {
    let mut rest = points;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut bytes = 0;
        let end = rest
            .iter()
            .position(|TenantPoint { tenant, point }| {
                // Tenant, type and tags as text, and the fixed-size columns.
                bytes += tenant.as_str().len()
                    + point.metric_type.as_str().len()
                    + point.tags.as_json().len()
                    + 32;
                bytes > MAX_STATEMENT_BYTES
            })
            .unwrap_or(rest.len())
            .max(1);
        let (run, remaining) = rest.split_at(end);
        rest = remaining;
        Some(run)
    })
}

/// Inserts the points (of the series `series`, position by position) on `connection`, in as
/// many statements as their size needs (the caller's transaction makes them one); the result
/// is in their order.
pub(super) async fn insert_points(
    connection: &mut PgConnection,
    points: &[TenantPoint],
    series: &[i64],
) -> Result<Vec<Stored>, sqlx::Error> {
    let mut stored = Vec::with_capacity(points.len());
    let mut offset = 0;
    for run in statements(points) {
        let run_series = &series[offset..offset + run.len()];
        stored.extend(insert_statement(&mut *connection, run, run_series).await?);
        offset += run.len();
    }
    Ok(stored)
}

/// The `metrics` columns of a run of points, as arrays.
struct Columns<'a> {
    tenants: Vec<&'a str>,
    types: Vec<&'a str>,
    values: Vec<f64>,
    recorded: Vec<DateTime<Utc>>,
    tags: Vec<&'a str>,
}

impl<'a> Columns<'a> {
    fn of(points: &'a [TenantPoint]) -> Self {
        let mut columns = Self {
            tenants: Vec::with_capacity(points.len()),
            types: Vec::with_capacity(points.len()),
            values: Vec::with_capacity(points.len()),
            recorded: Vec::with_capacity(points.len()),
            tags: Vec::with_capacity(points.len()),
        };
        for TenantPoint { tenant, point } in points {
            columns.tenants.push(tenant.as_str());
            columns.types.push(point.metric_type.as_str());
            columns.values.push(point.value);
            columns.recorded.push(point.timestamp);
            columns.tags.push(point.tags.as_json());
        }
        columns
    }
}

/// Inserts the points and their rollup deltas in one statement; the result is in their order.
async fn insert_statement<'e>(
    executor: impl PgExecutor<'e>,
    points: &[TenantPoint],
    series: &[i64],
) -> Result<Vec<Stored>, sqlx::Error> {
    let Columns {
        tenants,
        types,
        values,
        recorded,
        tags,
    } = Columns::of(points);
    let deltas = MinuteDeltas::of(points);
    // The same statement appends the batch's per-minute aggregates (computed here, where
    // the values already are) to the rollup deltas: an insert locks nothing but its own
    // rows, and the rollups always agree with it. Ids are drawn in the arrays' order, so
    // the n-th smallest id is the n-th point's: that gives each delta its latest point's id.
    let mut rows = sqlx::query!(
        // language=PostgreSQL
        r#"
        with inserted as (
            insert into metrics (tenant, metric_type, value, recorded_at, tags, series_id)
            select n, t, v, r, g::jsonb, s
            from unnest($1::text[], $2::text[], $3::float8[], $4::timestamptz[], $5::text[], $17::int8[])
                 as u (n, t, v, r, g, s)
            returning id, ingested_at
        ),
        positions as (
            select id, row_number() over (order by id) - 1 as position from inserted
        ),
        deltas as (
            insert into metric_rollup_deltas
                (tenant, metric_type, minute, count, sum, min, max, latest_at, latest_id, latest_value, sketch)
            select d.tenant, d.metric_type, d.minute, d.count, d.sum, d.min, d.max, d.latest_at, p.id,
                   d.latest_value, d.sketch
            from unnest($6::text[], $7::text[], $8::timestamptz[], $9::int8[], $10::float8[], $11::float8[],
                        $12::float8[], $13::timestamptz[], $14::int8[], $15::float8[], $16::jsonb[])
                 as d (tenant, metric_type, minute, count, sum, min, max, latest_at, latest_position,
                       latest_value, sketch)
            join positions p on p.position = d.latest_position
        )
        select id as "id!", ingested_at as "ingested_at!" from inserted
        "#,
        &tenants as &[&str],
        &types as &[&str],
        &values,
        &recorded,
        &tags as &[&str],
        &deltas.tenants as &[&str],
        &deltas.types as &[&str],
        &deltas.minutes,
        &deltas.counts,
        &deltas.sums,
        &deltas.mins,
        &deltas.maxes,
        &deltas.latest_at,
        &deltas.latest_positions,
        &deltas.latest_values,
        &deltas.sketches,
        series,
    )
    .fetch_all(executor)
    .await?;
    // Rows are inserted in the arrays' order and ids are drawn in insertion order, so the
    // ascending ids map back onto the points whatever order RETURNING uses.
    rows.sort_unstable_by_key(|row| row.id);
    Ok(rows
        .into_iter()
        .map(|row| Stored {
            id: row.id,
            received_at: row.ingested_at,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metric::{MetricPoint, Tags};

    fn point(tag_bytes: usize) -> TenantPoint {
        let tags = BTreeMap::from([("k".to_owned(), "v".repeat(tag_bytes))]);
        TenantPoint {
            tenant: Tenant::default_tenant(),
            point: MetricPoint {
                timestamp: DateTime::UNIX_EPOCH,
                value: 1.0,
                metric_type: "t".parse().unwrap(),
                tags: Tags::from_checked(&tags),
            },
        }
    }

    fn at(tenant: &str, metric_type: &str, seconds: i64, value: f64) -> TenantPoint {
        TenantPoint {
            tenant: tenant.parse().unwrap(),
            point: MetricPoint {
                timestamp: DateTime::from_timestamp(seconds, 0).unwrap(),
                value,
                metric_type: metric_type.parse().unwrap(),
                tags: Tags::default(),
            },
        }
    }

    #[test]
    fn statements_are_bounded_in_bytes_and_cover_every_point_in_order() {
        let points: Vec<TenantPoint> = (0..10).map(|_| point(200 * 1024)).collect();
        let runs: Vec<&[TenantPoint]> = statements(&points).collect();
        assert_eq!(
            runs.iter().map(|run| run.len()).collect::<Vec<_>>(),
            [2, 2, 2, 2, 2]
        );
        // A point larger than a statement still goes, alone.
        let huge = [point(MAX_STATEMENT_BYTES * 2), point(10)];
        assert_eq!(
            statements(&huge).map(<[_]>::len).collect::<Vec<_>>(),
            [1, 1]
        );
        let small: Vec<TenantPoint> = (0..1000).map(|_| point(10)).collect();
        assert_eq!(statements(&small).count(), 1);
        assert_eq!(statements(&[]).count(), 0);
    }

    #[test]
    fn deltas_are_per_tenant_type_and_minute() {
        let points = [
            at("acme", "cpu", 60, 1.0),
            at("default", "cpu", 61, 2.0),
            at("acme", "cpu", 119, 3.0),
            at("acme", "cpu", 120, 4.0),
            at("acme", "mem", 60, 5.0),
            at("default", "cpu", 62, 6.0),
        ];
        let deltas = MinuteDeltas::of(&points);
        let groups: Vec<(&str, &str, i64, i64, f64, i64)> = (0..deltas.tenants.len())
            .map(|i| {
                (
                    deltas.tenants[i],
                    deltas.types[i],
                    deltas.minutes[i].timestamp(),
                    deltas.counts[i],
                    deltas.sums[i],
                    deltas.latest_positions[i],
                )
            })
            .collect();
        assert_eq!(
            groups,
            [
                ("acme", "cpu", 60, 2, 4.0, 2),
                ("acme", "cpu", 120, 1, 4.0, 3),
                ("acme", "mem", 60, 1, 5.0, 4),
                ("default", "cpu", 60, 2, 8.0, 5),
            ]
        );
    }
}
