-- Idempotency keys belong to the client that sent them: the same key text from another
-- client is another key, so one client can never be answered with another's first response
-- (nor have its own points dropped as a "repeat"). Keys recorded before this migration get
-- an empty scope that no client has: they simply expire.
alter table idempotency_keys add column scope text not null default '';
alter table idempotency_keys alter column scope drop default;
alter table idempotency_keys drop constraint idempotency_keys_pkey;
alter table idempotency_keys add primary key (scope, key);

comment on column idempotency_keys.scope is
    'Who the key belongs to: the sending client (its address, an IPv6 client by its network prefix).';
comment on column idempotency_keys.key is
    'The Idempotency-Key header as sent (1-255 visible ASCII characters), unique within its scope.';
