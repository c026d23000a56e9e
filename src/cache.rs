//! The read-through summary cache in Redis, kept fresh after writes.
//!
//! Each type has a generation counter (`summary_gen:{type}`), bumped after every committed
//! write of that type. Summaries are cached under `summary:{type}:{period}:g{generation}`,
//! with the generation read *before* the summary was computed. A read after a write therefore
//! never sees a summary computed before it, even one that a slow reader stores late.
//! A bump that fails while Redis is unavailable is remembered and retried before the cache is
//! used again; until it succeeds that type is served uncached.

use std::{collections::HashSet, sync::Mutex, time::Duration};

use redis::{AsyncCommands, Script};

use crate::{
    metric::{Period, Summary},
    redis_connection::RedisConnection,
};

/// Generation counters outlive any cached summary by far; expiring them only bounds memory.
const GENERATION_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Reads a type's generation and the summary cached under it, in one round trip.
const LOOKUP_SCRIPT: &str = r"
local generation = redis.call('GET', KEYS[1]) or '0'
return {generation, redis.call('GET', ARGV[1] .. generation)}
";

/// A cache read: either the cached summary, or what is needed to store a fresh one.
pub enum Lookup {
    Hit(Box<Summary>),
    Miss(Option<CacheSlot>),
}

/// Where a freshly computed summary may be stored (the generation it was computed under).
pub struct CacheSlot {
    key: String,
}

pub struct SummaryCache {
    redis: RedisConnection,
    ttl: Duration,
    lookup: Script,
    /// Types whose generation bump failed while Redis was unavailable.
    pending_bumps: Mutex<HashSet<String>>,
}

impl SummaryCache {
    pub fn new(redis: RedisConnection, ttl: Duration) -> Self {
        Self {
            redis,
            ttl,
            lookup: Script::new(LOOKUP_SCRIPT),
            pending_bumps: Mutex::new(HashSet::new()),
        }
    }

    fn generation_key(metric_type: &str) -> String {
        format!("summary_gen:{metric_type}")
    }

    /// Looks a summary up. `Miss(None)` means the cache cannot be used for this type now.
    pub async fn lookup(&self, metric_type: &str, period: Period) -> Lookup {
        if !self.retry_pending_bumps().await && self.is_pending(metric_type) {
            metrics::counter!("summary_cache_requests_total", "result" => "miss").increment(1);
            return Lookup::Miss(None);
        }
        let key_prefix = format!("summary:{metric_type}:{}:g", period.as_str());
        let script = &self.lookup;
        let generation_key = Self::generation_key(metric_type);
        let prefix = key_prefix.clone();
        let found = self
            .redis
            .run(|mut conn| async move {
                script
                    .key(generation_key)
                    .arg(prefix)
                    .invoke_async::<(String, Option<String>)>(&mut conn)
                    .await
            })
            .await;
        let lookup = match found {
            Ok((_, Some(json))) => match serde_json::from_str(&json) {
                Ok(summary) => Lookup::Hit(Box::new(summary)),
                Err(error) => {
                    tracing::warn!(%error, "discarding unreadable cached summary");
                    Lookup::Miss(None)
                }
            },
            Ok((generation, None)) => Lookup::Miss(Some(CacheSlot {
                key: format!("{key_prefix}{generation}"),
            })),
            Err(_) => Lookup::Miss(None),
        };
        let result = if matches!(lookup, Lookup::Hit(_)) {
            "hit"
        } else {
            "miss"
        };
        metrics::counter!("summary_cache_requests_total", "result" => result).increment(1);
        lookup
    }

    /// Stores a summary for at most `ttl` (shorter than the configured TTL when asked).
    pub async fn store(&self, slot: CacheSlot, summary: &Summary, max_ttl: Option<Duration>) {
        let ttl = max_ttl.map_or(self.ttl, |max| max.min(self.ttl));
        let Ok(json) = serde_json::to_string(summary) else {
            return;
        };
        let _ = self
            .redis
            .run(|mut conn| async move {
                conn.set_ex::<_, _, ()>(slot.key, json, ttl.as_secs().max(1))
                    .await
            })
            .await;
    }

    /// Makes every cached summary of these types stale, in one round trip. Call after the
    /// write has committed.
    pub async fn invalidate<'a>(&self, metric_types: impl IntoIterator<Item = &'a str>) {
        let metric_types: Vec<&str> = metric_types.into_iter().collect();
        if !self.bump(&metric_types).await {
            let mut pending = self.pending_bumps.lock().expect("cache lock poisoned");
            pending.extend(metric_types.iter().map(|t| (*t).to_owned()));
        }
    }

    async fn bump(&self, metric_types: &[&str]) -> bool {
        let mut pipe = redis::pipe();
        for metric_type in metric_types {
            let key = Self::generation_key(metric_type);
            pipe.incr(&key, 1)
                .ignore()
                .expire(&key, GENERATION_TTL.as_secs() as i64)
                .ignore();
        }
        self.redis
            .run(|mut conn| async move { pipe.query_async::<()>(&mut conn).await })
            .await
            .is_ok()
    }

    fn is_pending(&self, metric_type: &str) -> bool {
        self.pending_bumps
            .lock()
            .expect("cache lock poisoned")
            .contains(metric_type)
    }

    /// Retries remembered bumps; true when none is left.
    async fn retry_pending_bumps(&self) -> bool {
        let pending: Vec<String> = {
            let pending = self.pending_bumps.lock().expect("cache lock poisoned");
            if pending.is_empty() {
                return true;
            }
            pending.iter().cloned().collect()
        };
        let types: Vec<&str> = pending.iter().map(String::as_str).collect();
        if !self.bump(&types).await {
            return false;
        }
        let mut still_pending = self.pending_bumps.lock().expect("cache lock poisoned");
        for metric_type in &pending {
            still_pending.remove(metric_type);
        }
        true
    }
}
