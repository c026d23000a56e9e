//! Summaries and series from `metric_rollups`: a window is covered by as few rollup rows as
//! possible (days, then hours, then minutes), plus the raw rows of its first partial minute.

use std::time::Duration;

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};

use super::{Storage, StorageError};
use crate::{
    metric::{Aggregates, MetricType, SeriesBucket, SeriesPoint, SeriesRange, TagFilter, floor},
    sketch::QuantileSketch,
    tenant::Tenant,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resolution {
    Minute,
    Hour,
    Day,
}

impl Resolution {
    fn as_str(self) -> &'static str {
        match self {
            Self::Minute => "minute",
            Self::Hour => "hour",
            Self::Day => "day",
        }
    }
}

/// Earlier and later than any accepted timestamp (`metric::earliest_timestamp` and
/// `latest_timestamp`), and within PostgreSQL's range: the ends of "all time".
fn beginning_of_time() -> DateTime<Utc> {
    NaiveDate::from_ymd_opt(-4000, 1, 1)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
}

fn end_of_time() -> DateTime<Utc> {
    NaiveDate::from_ymd_opt(100_000, 1, 1)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
}

fn ceil(t: DateTime<Utc>, unit: TimeDelta) -> DateTime<Utc> {
    let floored = floor(t, unit);
    if floored == t { t } else { floored + unit }
}

/// Which rows cover "recorded at or after `since`" (all time for `None`) as seen at `now`.
#[derive(Debug, PartialEq)]
struct Plan {
    /// Rollup rows with `bucket_start` in `[from, to)`.
    rollups: Vec<(Resolution, DateTime<Utc>, DateTime<Utc>)>,
    /// Raw rows recorded in `[from, to)`: the partial minute the window starts in.
    raw: Option<(DateTime<Utc>, DateTime<Utc>)>,
    /// Deltas not yet folded into the rollups, of minutes from this one on.
    deltas_from: DateTime<Utc>,
}

fn plan(since: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Plan {
    let (minute, hour, day) = (
        TimeDelta::minutes(1),
        TimeDelta::hours(1),
        TimeDelta::days(1),
    );
    let mut rollups = Vec::new();
    let mut push = |resolution, from: DateTime<Utc>, to: DateTime<Utc>| {
        if from < to {
            rollups.push((resolution, from, to));
        }
    };
    let (start, raw) = match since {
        None => (beginning_of_time(), None),
        Some(since) => {
            let start = ceil(since, minute);
            (start, (since < start).then_some((since, start)))
        }
    };
    // Minutes from the current hour on cover the present and any future-dated points.
    let recent = floor(now, hour).max(start);
    let hours_from = if since.is_none() {
        start
    } else {
        ceil(start, hour).min(recent)
    };
    push(Resolution::Minute, start, hours_from);
    let days_from = if since.is_none() {
        start
    } else {
        ceil(hours_from, day)
    };
    let days_to = floor(recent, day);
    if days_from < days_to {
        push(Resolution::Hour, hours_from, days_from);
        push(Resolution::Day, days_from, days_to);
        push(Resolution::Hour, days_to, recent);
    } else {
        push(Resolution::Hour, hours_from, recent);
    }
    push(Resolution::Minute, recent, end_of_time());
    Plan {
        rollups,
        raw,
        deltas_from: start,
    }
}

impl Storage {
    /// Aggregates one type's points of the tenant recorded at or after `since` (all of them
    /// for `None`) from the rollups, in one query. Count, sum, min, max and latest are exact; the
    /// percentiles come from the merged sketches (within 0.5% relative error). With a tag
    /// filter, of the matching points only, from the points themselves (exact percentiles).
    #[tracing::instrument(skip(self))]
    pub async fn aggregate(
        &self,
        tenant: &Tenant,
        metric_type: &MetricType,
        since: Option<DateTime<Utc>>,
        filter: &TagFilter,
    ) -> Result<Aggregates, StorageError> {
        if !filter.is_empty() {
            return self
                .aggregate_tagged(tenant, metric_type, since, filter)
                .await;
        }
        let plan = plan(since, Utc::now());
        let resolutions: Vec<&str> = plan.rollups.iter().map(|(r, _, _)| r.as_str()).collect();
        let starts: Vec<DateTime<Utc>> = plan.rollups.iter().map(|(_, from, _)| *from).collect();
        let ends: Vec<DateTime<Utc>> = plan.rollups.iter().map(|(_, _, to)| *to).collect();
        // An empty raw range when the window starts on a minute boundary.
        let (raw_from, raw_to) = plan.raw.unwrap_or((end_of_time(), end_of_time()));
        // The rollups are read with one index range scan per segment of the plan, so the cost
        // follows the rows in the window. Joined plainly, the planner cannot see the segments'
        // bounds and scanned and hashed all of the type's rollups (every minute of every day:
        // 45 ms at a month of data); OFFSET 0 keeps the lateral subquery from being flattened
        // back into that join.
        let row = sqlx::query!(
            // language=PostgreSQL
            r#"
            with parts as (
                select r.count, r.sum, r.min, r.max, r.latest_at, r.latest_id, r.latest_value, r.sketch
                from unnest($3::text[], $4::timestamptz[], $5::timestamptz[]) as s (resolution, from_ts, to_ts)
                cross join lateral (
                    select * from metric_rollups r
                    where r.tenant = $1 and r.metric_type = $2 and r.resolution = s.resolution
                      and r.bucket_start >= s.from_ts and r.bucket_start < s.to_ts
                    offset 0
                ) as r
                union all
                select d.count, d.sum, d.min, d.max, d.latest_at, d.latest_id, d.latest_value, d.sketch
                from metric_rollup_deltas d
                where d.tenant = $1 and d.metric_type = $2 and d.minute >= $8
                union all
                select count(*), sum(value), min(value), max(value),
                       (array_agg(recorded_at order by recorded_at desc, id desc))[1],
                       (array_agg(id order by recorded_at desc, id desc))[1],
                       (array_agg(value order by recorded_at desc, id desc))[1],
                       metric_sketch_of(array_agg(value))
                from metrics
                where tenant = $1 and metric_type = $2 and recorded_at >= $6 and recorded_at < $7
                having count(*) > 0
            )
            select
                coalesce(sum(count), 0)::bigint as "count!",
                coalesce(sum(sum), 0) as "sum!",
                coalesce(min(min), 0) as "min!",
                coalesce(max(max), 0) as "max!",
                (select latest_value from parts order by latest_at desc, latest_id desc limit 1) as latest,
                json_agg(sketch)::text as sketches
            from parts
            "#,
            tenant.as_str(),
            metric_type.as_str(),
            &resolutions as &[&str],
            &starts,
            &ends,
            raw_from,
            raw_to,
            plan.deltas_from,
        )
        .fetch_one(&self.pool);
        let row = self.run(row).await?;
        if row.count == 0 {
            return Ok(Aggregates::default());
        }
        // Merged here rather than by metric_sketch_merge_all: unnesting and regrouping some
        // 25,000 JSON entries (a day of hour sketches) took PostgreSQL 5-6 ms of the query.
        let sketch = QuantileSketch::merge_json_array(row.sketches.as_deref().unwrap_or("[]"))
            .map_err(|error| StorageError::Corrupt(error.to_string()))?;
        // A sketch answers with a bucket's midpoint, which can lie outside the values seen
        // (one point of 75.5 gave 75.567): never report a value beyond the extremes.
        let percentile = |q| sketch.quantile(q).unwrap_or(0.0).clamp(row.min, row.max);
        Ok(Aggregates {
            count: row.count,
            average_value: row.sum / row.count as f64,
            min_value: row.min,
            max_value: row.max,
            latest_value: row.latest.unwrap_or(0.0),
            p50: percentile(0.5),
            p95: percentile(0.95),
            p99: percentile(0.99),
        })
    }
}

/// The rollups a series bucket is served from.
fn resolution_of(bucket: SeriesBucket) -> Resolution {
    match bucket {
        SeriesBucket::OneMinute | SeriesBucket::FiveMinutes => Resolution::Minute,
        SeriesBucket::OneHour => Resolution::Hour,
        SeriesBucket::OneDay => Resolution::Day,
    }
}

impl Storage {
    /// The range's buckets of one type of the tenant (of its points whose tags include the
    /// filter's), empty ones included.
    #[tracing::instrument(skip(self))]
    pub async fn series(
        &self,
        tenant: &Tenant,
        metric_type: &MetricType,
        range: SeriesRange,
        filter: &TagFilter,
    ) -> Result<Vec<SeriesPoint>, StorageError> {
        if !filter.is_empty() {
            return self.series_tagged(tenant, metric_type, range, filter).await;
        }
        let rows = sqlx::query_as!(
            SeriesPoint,
            // language=PostgreSQL
            r#"
            with parts as (
                select bucket_start as start, count, sum, min, max
                from metric_rollups
                where tenant = $1 and metric_type = $2 and resolution = $3
                  and bucket_start >= $4 and bucket_start <= $5
                union all
                select minute, count, sum, min, max
                from metric_rollup_deltas
                where tenant = $1 and metric_type = $2
                  and minute >= $4 and minute < $5::timestamptz + $6::bigint * interval '1 second'
            )
            select b.start as "start!",
                   coalesce(sum(p.count), 0)::bigint as "count!",
                   sum(p.sum) / nullif(sum(p.count), 0) as avg,
                   min(p.min) as min,
                   max(p.max) as max
            from generate_series($4::timestamptz, $5::timestamptz, $6::bigint * interval '1 second') as b (start)
            left join parts p
              on p.start >= b.start and p.start < b.start + $6::bigint * interval '1 second'
            group by b.start
            order by b.start
            "#,
            tenant.as_str(),
            metric_type.as_str(),
            resolution_of(range.bucket).as_str(),
            range.first,
            range.last,
            range.bucket.width().num_seconds(),
        )
        .fetch_all(&self.pool);
        self.run(rows).await
    }
}

/// Deltas folded into the rollups per statement, at most.
const COMPACTION_BATCH: i64 = 5_000;

impl Storage {
    /// Folds pending deltas into the minute, hour and day rollups; returns how many it folded.
    /// Deltas are taken with SKIP LOCKED and deleted in the same transaction, so instances
    /// can run this concurrently and each delta is counted exactly once.
    pub async fn compact_rollups(&self) -> Result<u64, StorageError> {
        let moved = sqlx::query_scalar!(
            // language=PostgreSQL
            r#"
            with moved as (
                delete from metric_rollup_deltas d
                using (select id from metric_rollup_deltas order by id limit $1 for update skip locked) picked
                where d.id = picked.id
                returning d.tenant, d.metric_type, d.minute, d.count, d.sum, d.min, d.max,
                          d.latest_at, d.latest_id, d.latest_value, d.sketch
            ),
            rolled as (
                select tenant, metric_type, resolution, date_trunc(resolution, minute, 'UTC') as bucket_start,
                       sum(count)::bigint, sum(sum), min(min), max(max),
                       (array_agg(latest_at order by latest_at desc, latest_id desc))[1],
                       (array_agg(latest_id order by latest_at desc, latest_id desc))[1],
                       (array_agg(latest_value order by latest_at desc, latest_id desc))[1],
                       metric_sketch_merge_all(array_agg(sketch))
                from moved
                cross join (values ('minute'), ('hour'), ('day')) as resolutions (resolution)
                group by 1, 2, 3, 4
            ),
            upserted as (
                -- In key order, so concurrent compactions lock rows in the same order.
                insert into metric_rollups as r
                    (tenant, metric_type, resolution, bucket_start, count, sum, min, max,
                     latest_at, latest_id, latest_value, sketch)
                select * from rolled order by tenant, metric_type, resolution, bucket_start
                on conflict (tenant, metric_type, resolution, bucket_start) do update set
                    count = r.count + excluded.count,
                    sum = r.sum + excluded.sum,
                    min = least(r.min, excluded.min),
                    max = greatest(r.max, excluded.max),
                    latest_at = case when (excluded.latest_at, excluded.latest_id) > (r.latest_at, r.latest_id)
                                     then excluded.latest_at else r.latest_at end,
                    latest_id = case when (excluded.latest_at, excluded.latest_id) > (r.latest_at, r.latest_id)
                                     then excluded.latest_id else r.latest_id end,
                    latest_value = case when (excluded.latest_at, excluded.latest_id) > (r.latest_at, r.latest_id)
                                        then excluded.latest_value else r.latest_value end,
                    sketch = metric_sketch_merge_all(array[r.sketch, excluded.sketch])
            )
            select count(*) as "moved!" from moved
            "#,
            COMPACTION_BATCH,
        )
        .fetch_one(&self.pool);
        Ok(self.run(moved).await? as u64)
    }

    /// Folds deltas every `period`, for as long as the process runs.
    pub fn spawn_rollup_compaction(&self, period: Duration) -> tokio::task::JoinHandle<()> {
        self.spawn_maintenance("rollup compaction", period, |storage| async move {
            Ok(storage.compact_rollups().await? as i64 == COMPACTION_BATCH)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    fn segments(plan: &Plan) -> Vec<(Resolution, String, String)> {
        let show = |t: DateTime<Utc>| {
            if t == beginning_of_time() {
                "-inf".to_owned()
            } else if t == end_of_time() {
                "+inf".to_owned()
            } else {
                t.format("%d %H:%M").to_string()
            }
        };
        plan.rollups
            .iter()
            .map(|(r, from, to)| (*r, show(*from), show(*to)))
            .collect()
    }

    use Resolution::{Day, Hour, Minute};

    fn seg(r: Resolution, from: &str, to: &str) -> (Resolution, String, String) {
        (r, from.into(), to.into())
    }

    #[test]
    fn all_time_is_days_then_todays_hours_then_this_hours_minutes() {
        let plan = plan(None, at("2026-11-30T10:30:15Z"));
        assert_eq!(
            segments(&plan),
            [
                seg(Day, "-inf", "30 00:00"),
                seg(Hour, "30 00:00", "30 10:00"),
                seg(Minute, "30 10:00", "+inf"),
            ]
        );
        assert_eq!(plan.raw, None);
    }

    #[test]
    fn the_last_day_starts_with_raw_rows_then_minutes_to_the_hour() {
        let now = at("2026-11-30T10:30:15Z");
        let plan = plan(Some(now - TimeDelta::hours(24)), now);
        assert_eq!(
            segments(&plan),
            [
                seg(Minute, "29 10:31", "29 11:00"),
                seg(Hour, "29 11:00", "30 10:00"),
                seg(Minute, "30 10:00", "+inf"),
            ]
        );
        assert_eq!(
            plan.raw,
            Some((at("2026-11-29T10:30:15Z"), at("2026-11-29T10:31:00Z")))
        );
        assert_eq!(
            plan.deltas_from,
            at("2026-11-29T10:31:00Z"),
            "the raw minute is not counted twice"
        );
    }

    #[test]
    fn a_long_window_uses_whole_days() {
        let now = at("2026-11-30T10:30:00Z");
        let plan = plan(Some(at("2026-11-20T22:15:00Z")), now);
        assert_eq!(
            segments(&plan),
            [
                seg(Minute, "20 22:15", "20 23:00"),
                seg(Hour, "20 23:00", "21 00:00"),
                seg(Day, "21 00:00", "30 00:00"),
                seg(Hour, "30 00:00", "30 10:00"),
                seg(Minute, "30 10:00", "+inf"),
            ]
        );
        assert_eq!(plan.raw, None, "the window starts on a minute boundary");
    }

    #[test]
    fn the_last_hour_is_minutes_only() {
        let now = at("2026-11-30T10:30:15Z");
        let plan = plan(Some(now - TimeDelta::hours(1)), now);
        assert_eq!(
            segments(&plan),
            [
                seg(Minute, "30 09:31", "30 10:00"),
                seg(Minute, "30 10:00", "+inf")
            ]
        );
    }

    #[test]
    fn every_instant_after_since_is_covered_exactly_once() {
        let now = at("2026-11-30T10:30:15Z");
        for since in [
            None,
            Some(now - TimeDelta::hours(24)),
            Some(now - TimeDelta::hours(1)),
            Some(at("2026-10-01T00:00:00Z")),
        ] {
            let plan = plan(since, now);
            // Walk the covered ranges in order: each starts where the previous ended.
            let mut ranges: Vec<(DateTime<Utc>, DateTime<Utc>)> = plan
                .rollups
                .iter()
                .map(|(_, from, to)| (*from, *to))
                .collect();
            ranges.extend(plan.raw);
            ranges.sort();
            assert_eq!(ranges[0].0, since.unwrap_or(beginning_of_time()));
            for pair in ranges.windows(2) {
                assert_eq!(pair[0].1, pair[1].0, "{since:?}: gap or overlap");
            }
            assert_eq!(ranges.last().unwrap().1, end_of_time());
            // Each rollup range is aligned to its resolution.
            for (resolution, from, to) in &plan.rollups {
                let unit = match resolution {
                    Minute => TimeDelta::minutes(1),
                    Hour => TimeDelta::hours(1),
                    Day => TimeDelta::days(1),
                };
                for t in [from, to] {
                    assert!(
                        *t == beginning_of_time() || *t == end_of_time() || floor(*t, unit) == *t
                    );
                }
            }
        }
    }
}
