-- Tenants: every point, rollup and delta belongs to one tenant (crate::tenant::Tenant), and
-- every read of the service names it. Rows stored before this migration are tenant 'default'.
--
-- Analysts read the tables directly: a login role in metrics_reader, mapped to one tenant in
-- analyst_tenants, sees that tenant's rows only (row-level security). The service connects
-- as the tables' owner, which row-level security does not restrict (no FORCE).

alter table metrics add column tenant text not null default 'default';
alter table metrics add constraint metrics_tenant_format
    check (tenant ~ '^[a-z0-9][a-z0-9_-]{0,63}$');

-- Every read of the service filters by tenant first.
drop index metrics_type_recorded_at_idx;
create index metrics_tenant_type_recorded_at_idx on metrics (tenant, metric_type, recorded_at desc, id desc);
drop index metrics_recorded_at_idx;
create index metrics_tenant_recorded_at_idx on metrics (tenant, recorded_at desc, id desc);

comment on table metrics is
    'Every metric point accepted by the API (one row per acknowledged point), of its tenant. '
    'Rows are never updated. An analyst (metrics_reader) sees the rows of their own tenant only.';
comment on column metrics.tenant is
    'The tenant the point belongs to (1-64 lower-case letters, digits, _ or -); ''default'' for '
    'points stored before tenants existed.';

-- The existing rollups and deltas are of the existing points: tenant 'default'. From here on
-- the service names the tenant of every row it writes.
alter table metric_rollups add column tenant text not null default 'default';
alter table metric_rollups alter column tenant drop default;
alter table metric_rollups drop constraint metric_rollups_pkey;
alter table metric_rollups add primary key (tenant, metric_type, resolution, bucket_start);

alter table metric_rollup_deltas add column tenant text not null default 'default';
alter table metric_rollup_deltas alter column tenant drop default;
drop index metric_rollup_deltas_type_minute_idx;
create index metric_rollup_deltas_tenant_type_minute_idx on metric_rollup_deltas (tenant, metric_type, minute);

comment on table metric_rollups is
    'Per tenant and type, per UTC minute, hour and day: aggregates of metrics rows by recorded_at. '
    'Recent inserts may still be in metric_rollup_deltas. Derived data: metrics is the source of truth.';
comment on column metric_rollups.tenant is 'metrics.tenant';
comment on table metric_rollup_deltas is
    'Aggregates of recent inserts per tenant, type and UTC minute, not yet folded into metric_rollups '
    '(the service does so every second). A point is counted in exactly one of the two tables.';
comment on column metric_rollup_deltas.tenant is 'metrics.tenant';

-- Roles are cluster-wide: another database of the cluster may have created it already, or
-- be creating it right now (then the catalog's unique index refuses the second). Creating
-- (and commenting on) a role needs CREATEROLE; a service without it needs the role created
-- beforehand by an administrator.
do $$
begin
    if not exists (select from pg_roles where rolname = 'metrics_reader') then
        create role metrics_reader nologin;
        comment on role metrics_reader is
            'Read-only access to the metrics tables, limited to one tenant: grant it to an '
            'analyst''s login role and map that role to the tenant in analyst_tenants.';
    end if;
exception
    when duplicate_object or unique_violation then null;
end
$$;

-- Readable by the owner only: an analyst neither sees nor changes the mapping.
create table analyst_tenants (
    role_name name primary key,
    tenant    text not null,
    constraint analyst_tenants_tenant_format check (tenant ~ '^[a-z0-9][a-z0-9_-]{0,63}$')
);

comment on table analyst_tenants is
    'Which tenant each analyst login role (a member of metrics_reader) may read.';
comment on column analyst_tenants.role_name is 'The analyst''s login role.';
comment on column analyst_tenants.tenant is 'The one tenant whose rows it sees.';

-- The tenant of the logged-in analyst, or null (no rows) for an unmapped role. Security
-- definer, so that it reads the mapping the analyst cannot; inside it current_user is the
-- owner, so the caller is session_user (the login role, whatever SET ROLE it did since).
-- The SQL-standard body binds analyst_tenants when created, so search_path cannot swap it.
create function analyst_tenant() returns text
    language sql stable security definer parallel safe
return (select tenant from analyst_tenants where role_name = session_user);

comment on function analyst_tenant() is
    'The tenant the current analyst (session_user) may read, from analyst_tenants.';

revoke all on function analyst_tenant() from public;
grant execute on function analyst_tenant() to metrics_reader;
grant select on metrics, metric_rollups, metric_rollup_deltas to metrics_reader;

alter table metrics enable row level security;
alter table metric_rollups enable row level security;
alter table metric_rollup_deltas enable row level security;

create policy metrics_analyst_tenant on metrics
    for select to metrics_reader using (tenant = analyst_tenant());
create policy metric_rollups_analyst_tenant on metric_rollups
    for select to metrics_reader using (tenant = analyst_tenant());
create policy metric_rollup_deltas_analyst_tenant on metric_rollup_deltas
    for select to metrics_reader using (tenant = analyst_tenant());
