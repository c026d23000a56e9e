-- Pre-aggregates of the metrics table, so that summaries and series over millions of points
-- are answered from a few rows. Every insert adds its aggregates to metric_rollup_deltas in
-- the same statement; the service folds those into metric_rollups. The raw metrics table
-- stays the source of truth; these rows can be rebuilt from it at any time.

-- The bucket of a value in the quantile sketch: logarithmic buckets with 0.5% relative
-- accuracy (gamma = 1.005 / 0.995), "p<i>" for positive values, "n<i>" for negative ones,
-- "z" for magnitudes below 1e-100. Must match src/sketch.rs.
create function metric_sketch_key(value double precision) returns text
    language sql immutable strict parallel safe
return case
    when value >= 1e-100 then 'p' || ceil(ln(value) / ln(1.005::float8 / 0.995::float8))::int
    when value <= -1e-100 then 'n' || ceil(ln(-value) / ln(1.005::float8 / 0.995::float8))::int
    else 'z'
end;

comment on function metric_sketch_key(double precision) is
    'Bucket key of a value in the quantile sketches of metric_rollups.';

-- The sketch of a set of values.
create function metric_sketch_of(vals double precision[]) returns jsonb
    language sql immutable strict parallel safe
return (
    select coalesce(jsonb_object_agg(key, n), '{}'::jsonb)
    from (select metric_sketch_key(v) as key, count(*) as n from unnest(vals) as v group by 1) as keys
);

comment on function metric_sketch_of(double precision[]) is
    'Quantile sketch of the values, as stored in metric_rollups.sketch.';

-- Merging sketches adds the counts of equal buckets.
create function metric_sketch_merge_all(sketches jsonb[]) returns jsonb
    language sql immutable strict parallel safe
return (
    select coalesce(jsonb_object_agg(key, total), '{}'::jsonb)
    from (
        select key, sum(value::bigint) as total
        from unnest(sketches) as sketch, jsonb_each_text(sketch)
        group by key
    ) as merged
);

comment on function metric_sketch_merge_all(jsonb[]) is
    'Merges any number of quantile sketches of metric_rollups.';

create table metric_rollups (
    metric_type  text             not null,
    resolution   text             not null,
    bucket_start timestamptz      not null,
    count        bigint           not null,
    sum          double precision not null,
    min          double precision not null,
    max          double precision not null,
    latest_at    timestamptz      not null,
    latest_id    bigint           not null,
    latest_value double precision not null,
    sketch       jsonb            not null,
    primary key (metric_type, resolution, bucket_start),
    constraint metric_rollups_resolution check (resolution in ('minute', 'hour', 'day'))
);

comment on table metric_rollups is
    'Per type, per UTC minute, hour and day: aggregates of metrics rows by recorded_at. '
    'Recent inserts may still be in metric_rollup_deltas. Derived data: metrics is the source of truth.';
comment on column metric_rollups.metric_type is 'metrics.metric_type';
comment on column metric_rollups.resolution is 'minute, hour or day';
comment on column metric_rollups.bucket_start is 'Start of the UTC minute, hour or day (date_trunc in UTC of recorded_at).';
comment on column metric_rollups.count is 'Points in the bucket.';
comment on column metric_rollups.sum is 'Sum of their values (average = sum / count).';
comment on column metric_rollups.min is 'Smallest value.';
comment on column metric_rollups.max is 'Largest value.';
comment on column metric_rollups.latest_at is 'recorded_at of the latest point (greatest recorded_at, then id).';
comment on column metric_rollups.latest_id is 'id of that point.';
comment on column metric_rollups.latest_value is 'value of that point.';
comment on column metric_rollups.sketch is
    'Quantile sketch: JSON object of bucket key (metric_sketch_key) to count; percentiles within 0.5% relative error.';

-- Inserts append here, one row per type and minute they touch, without locking anything;
-- a background task of the service folds these rows into metric_rollups every second.
-- Until then, queries read them beside the rollups.
create table metric_rollup_deltas (
    id           bigint generated always as identity primary key,
    metric_type  text             not null,
    minute       timestamptz      not null,
    count        bigint           not null,
    sum          double precision not null,
    min          double precision not null,
    max          double precision not null,
    latest_at    timestamptz      not null,
    latest_id    bigint           not null,
    latest_value double precision not null,
    sketch       jsonb            not null
);

create index metric_rollup_deltas_type_minute_idx on metric_rollup_deltas (metric_type, minute);

comment on table metric_rollup_deltas is
    'Aggregates of recent inserts per type and UTC minute, not yet folded into metric_rollups '
    '(the service does so every second). A point is counted in exactly one of the two tables.';
comment on column metric_rollup_deltas.minute is 'Start of the UTC minute the points were recorded in.';

-- Rollups for the points stored before this migration.
insert into metric_rollups
select metric_type, resolution, bucket_start,
       count(*), sum(value), min(value), max(value),
       (array_agg(recorded_at order by recorded_at desc, id desc))[1],
       (array_agg(id order by recorded_at desc, id desc))[1],
       (array_agg(value order by recorded_at desc, id desc))[1],
       metric_sketch_of(array_agg(value))
from metrics
cross join (values ('minute'), ('hour'), ('day')) as resolutions (resolution)
cross join lateral (select date_trunc(resolution, recorded_at, 'UTC') as bucket_start) as bucket
group by metric_type, resolution, bucket_start;
