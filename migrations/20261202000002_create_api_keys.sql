-- API keys (AUTH_MODE=required). A key is "ra_<id>_<secret>": the id is stored as is, the
-- secret only as its SHA-256, so this table never holds what a client sends.
create table api_keys (
    id                   text        primary key,
    tenant               text        not null,
    scopes               text[]      not null,
    secret_sha256        bytea       not null,
    quota_requests       integer,
    quota_window_seconds integer,
    created_at           timestamptz not null default now(),
    expires_at           timestamptz,
    revoked_at           timestamptz,
    last_used_at         timestamptz,
    constraint api_keys_id_format check (id ~ '^[0-9a-f]{16}$'),
    constraint api_keys_tenant_format check (tenant ~ '^[a-z0-9][a-z0-9_-]{0,63}$'),
    constraint api_keys_scopes_known check (
        cardinality(scopes) between 1 and 3 and scopes <@ array['read', 'write', 'admin']
    ),
    constraint api_keys_secret_sha256_length check (length(secret_sha256) = 32),
    constraint api_keys_quota_whole check (
        (quota_requests is null) = (quota_window_seconds is null)
        and coalesce(quota_requests, 1) > 0 and coalesce(quota_window_seconds, 1) > 0
    )
);

comment on table api_keys is
    'API keys of AUTH_MODE=required: who may write, read or administer, for which tenant. Rows are revoked, never deleted.';
comment on column api_keys.id is 'The <id> part of the key ra_<id>_<secret>: 16 hex digits, not secret.';
comment on column api_keys.tenant is 'The tenant whose points the key writes and reads.';
comment on column api_keys.scopes is 'Any of read (summary, list, series), write (ingestion), admin (operations and key management).';
comment on column api_keys.secret_sha256 is 'SHA-256 of the <secret> part; the secret itself is shown once, at creation.';
comment on column api_keys.quota_requests is 'The key''s own rate limit: requests per quota_window_seconds (null: the global limit).';
comment on column api_keys.quota_window_seconds is 'See quota_requests.';
comment on column api_keys.expires_at is 'After this the key is refused (null: never expires).';
comment on column api_keys.revoked_at is 'When the key was revoked; refused on every instance within seconds of it.';
comment on column api_keys.last_used_at is 'Last successful authentication, written at most once a minute.';

comment on column idempotency_keys.scope is
    'Who the key belongs to: with AUTH_MODE=required the caller''s tenant ("tenant:<name>"), any of whose keys may retry; otherwise the sending client (its address, an IPv6 client by its network prefix).';
