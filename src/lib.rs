//! Resilient Analytics: metric points stored in PostgreSQL, summarised from SQL rollups,
//! behind a Redis rate limiter and read-through cache, with a circuit breaker around the
//! external enrichment service.
//!
//! Read top-down: `http` (routes, decoding, answers) → `app` (the write path and the summary
//! read path) → the mechanisms (`rate_limiter`, `cache`, `circuit_breaker`, `enrichment`,
//! `coalesce`, `idempotency`, `sketch`) → `storage` (all SQL), over the domain in `metric`.

/// Implements `Deserialize` through `FromStr`, so a query parameter, a body field or a cached
/// value is checked by the same rule as everything else of its kind. Defined before the
/// modules, so that every one of them can use it.
macro_rules! deserialize_from_str {
    ($type:ty) => {
        impl<'de> serde::Deserialize<'de> for $type {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text =
                    <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

pub mod app;
pub mod auth;
pub mod cache;
pub mod circuit_breaker;
pub mod cli;
pub mod client;
pub mod clock;
pub mod coalesce;
pub mod config;
pub mod enrichment;
pub mod healthcheck;
pub mod http;
pub mod idempotency;
pub mod metric;
pub mod rate_limiter;
pub mod receivers;
pub mod redis_connection;
pub mod sketch;
pub mod startup;
pub mod storage;
pub mod telemetry;
pub mod tenant;
