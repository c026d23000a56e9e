-- Each tenant's summary epoch: bumped when a write could not make its cached summaries stale
-- in Redis (the writer lost Redis, or the write covers too many types). Every instance reads
-- its tenant's epoch beside the cache, so no instance serves a summary from before the write.
-- The row '*' counts for every tenant (no tenant can be named so). Service-internal: no
-- grant to metrics_reader.
create table summary_epochs (
    tenant text primary key,
    epoch bigint not null
);
