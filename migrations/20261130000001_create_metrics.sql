-- The metrics table is the source of truth and an interface in its own right:
-- analysts query it directly, so its names and comments are part of the product.
create table metrics (
    id          bigint generated always as identity primary key,
    metric_type text             not null,
    value       double precision not null,
    recorded_at timestamptz      not null,
    ingested_at timestamptz      not null default now(),
    tags        jsonb            not null default '{}'::jsonb,
    constraint metrics_metric_type_length check (char_length(metric_type) between 1 and 100),
    constraint metrics_tags_is_object check (jsonb_typeof(tags) = 'object')
);

-- Serves summaries (type + time range, latest point) and the per-type list, newest first.
create index metrics_type_recorded_at_idx on metrics (metric_type, recorded_at desc, id desc);
-- Serves the unfiltered list, newest first.
create index metrics_recorded_at_idx on metrics (recorded_at desc, id desc);

comment on table metrics is
    'Every metric point accepted by the API (one row per acknowledged point). Rows are never updated.';
comment on column metrics.id is
    'Server-assigned identifier, returned to the client as "id"; increases with insertion order.';
comment on column metrics.metric_type is
    'The point''s "type" as sent by the client (1-100 characters), e.g. cpu_usage.';
comment on column metrics.value is
    'The measured value; finite, with absolute value at most 1e100.';
comment on column metrics.recorded_at is
    'When the point was measured: the client''s "timestamp", normalised to UTC.';
comment on column metrics.ingested_at is
    'When the service committed the point (time of receipt).';
comment on column metrics.tags is
    'Optional labels as a JSON object of string to string (at most 32 pairs), e.g. {"host": "web-1"}.';
