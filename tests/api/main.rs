//! Integration tests: the real server over HTTP against real PostgreSQL and Redis.

mod helpers;

mod auth;
mod bad_input;
mod batch;
mod chaos;
mod circuit_breaker;
mod containment;
mod docs;
mod health;
mod idempotency;
mod ingest;
mod list;
mod operations;
mod outages;
mod rate_limit;
mod real_senders;
mod receivers;
mod rollups;
mod series;
mod summary;
mod tenants;
