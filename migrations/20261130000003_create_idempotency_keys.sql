-- Idempotency-Key of POST /api/metrics and POST /api/metrics/batch. A key is written in the
-- same transaction as its points, so a key is recorded exactly when its points are.
create table idempotency_keys (
    key                 text        primary key,
    request_fingerprint bytea       not null,
    response_status     smallint    not null,
    response_body       jsonb       not null,
    created_at          timestamptz not null default now(),
    constraint idempotency_keys_key_length check (char_length(key) between 1 and 255)
);

-- Serves the clean-up of expired keys.
create index idempotency_keys_created_at_idx on idempotency_keys (created_at);

comment on table idempotency_keys is
    'Idempotency-Key headers of writes from the last 24 hours, with the first response; a repeat gets that response and writes nothing. Expired keys are deleted by the service.';
comment on column idempotency_keys.request_fingerprint is
    'SHA-256 of the request''s path and (decompressed) body: the same key with another request is refused.';
comment on column idempotency_keys.response_status is
    'HTTP status of the first response (201 or 200).';
comment on column idempotency_keys.response_body is
    'JSON body of the first response.';
comment on column idempotency_keys.created_at is
    'When the first request with this key committed its points.';
