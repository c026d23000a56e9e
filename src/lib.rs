//! Resilient Analytics: metric points stored in PostgreSQL, summarised by SQL aggregation,
//! behind a Redis rate limiter and read-through cache, with a circuit breaker around the
//! external enrichment service.

pub mod cache;
pub mod circuit_breaker;
pub mod client;
pub mod clock;
pub mod coalesce;
pub mod config;
pub mod enrichment;
pub mod healthcheck;
pub mod http;
pub mod idempotency;
pub mod ingest;
pub mod metric;
pub mod rate_limiter;
pub mod redis_connection;
pub mod sketch;
pub mod startup;
pub mod storage;
pub mod telemetry;
