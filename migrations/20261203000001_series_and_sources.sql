-- Series: every distinct (tenant, metric_type, tags) the service has stored a point of, so
-- that a point's tag set has an identity (metrics.series_id) that is the same across requests.
-- Summaries, lists and series filtered by tags find the matching series here, then their
-- points by metrics_series_recorded_at_idx. Prometheus' notion of a series (a metric name and
-- its labels) is exactly this: __name__ is the type, the other labels the tags.
create table metric_series (
    id          bigint generated always as identity primary key,
    tenant      text        not null,
    metric_type text        not null,
    tags        jsonb       not null,
    created_at  timestamptz not null default now(),
    constraint metric_series_tags_is_object check (jsonb_typeof(tags) = 'object')
);

-- One row per identity. By the tags' hash: a tag set can be far larger than a b-tree entry.
create unique index metric_series_identity_idx on metric_series (tenant, metric_type, md5(tags::text));
-- Serves "the tenant's series with these tags" for reads not limited to one type.
create index metric_series_tags_idx on metric_series using gin (tags jsonb_path_ops);

comment on table metric_series is
    'Every distinct tag set of a type the service has stored points of, per tenant: the series '
    'that metrics.series_id names. Rows are never updated or deleted.';
comment on column metric_series.id is 'Identifier of the series, referenced by metrics.series_id.';
comment on column metric_series.tenant is 'metrics.tenant';
comment on column metric_series.metric_type is 'metrics.metric_type';
comment on column metric_series.tags is 'metrics.tags: the series'' tag set (for Prometheus, its labels but __name__).';
comment on column metric_series.created_at is 'When the service first stored a point of the series.';

insert into metric_series (tenant, metric_type, tags)
select distinct tenant, metric_type, tags from metrics;

alter table metrics add column series_id bigint;
update metrics m set series_id = s.id
from metric_series s
where s.tenant = m.tenant and s.metric_type = m.metric_type and s.tags = m.tags;
-- No foreign key: checking one on every insert would cost ingestion a lookup per point, and
-- the service writes a point only after its series.
alter table metrics alter column series_id set not null;

-- Where a point came from. Points from a receiver are samples of a series at an instant:
-- their senders retry the same samples after a failure or a lost response, so the service
-- stores at most one point per series and timestamp of them (metrics_received_sample_idx),
-- and a retried sample is dropped. Points posted to the JSON API are stored as sent, however
-- many share a timestamp (the Idempotency-Key header makes their retries safe).
alter table metrics add column source text not null default 'api';
alter table metrics add constraint metrics_source_known check (source in ('api', 'prometheus', 'otlp'));

create index metrics_series_recorded_at_idx on metrics (series_id, recorded_at desc, id desc);
create unique index metrics_received_sample_idx on metrics (series_id, recorded_at) where source <> 'api';

comment on column metrics.series_id is
    'The point''s series (metric_series.id): the same for every point of the tenant with this type and these tags.';
comment on column metrics.source is
    'api (POST /api/metrics, /api/metrics/batch), prometheus (remote write) or otlp (OpenTelemetry). '
    'Of prometheus and otlp points there is at most one per series_id and recorded_at: a resent sample is not stored twice.';

grant select on metric_series to metrics_reader;
alter table metric_series enable row level security;
create policy metric_series_analyst_tenant on metric_series
    for select to metrics_reader using (tenant = analyst_tenant());
