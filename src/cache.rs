//! The read-through summary cache in Redis, kept fresh after writes.
//!
//! Summaries are per tenant and type: "a type" below is always one tenant's type, named in
//! keys as `{tenant}:{type}` (unambiguous: a tenant has no ':').
//!
//! Each type has a generation counter (`summary_gen:{tenant}:{type}`), bumped after every
//! committed write of that type, and one epoch counter (`summary_epoch`) is shared by all
//! types. Summaries are cached under `summary:{tenant}:{type}:{period}:e{epoch}:g{generation}`,
//! with the epoch and generation read *before* the summary was computed, in the same script
//! as the lookup. A read after a write therefore never sees a summary computed before it,
//! even one that a slow reader stores late.
//!
//! Bumping the epoch makes every cached summary stale at once. A write of more than
//! `MAX_TYPE_BUMPS` types bumps the epoch instead of its types, so that no round trip to
//! Redis grows with the size of a write.
//!
//! A bump that fails while Redis is unavailable is owed, and paid before the cache is used
//! again; until then the types it covers are served uncached. At most `MAX_TYPE_BUMPS` types
//! are remembered: past that, they are forgotten and an epoch bump is owed instead (covering
//! every type), so an outage costs little memory and the flush after it stays one small
//! round trip that cannot itself time out and mark Redis down.

use std::{
    collections::HashMap,
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use redis::{AsyncCommands, Script};
use sha2::{Digest, Sha256};

use crate::{
    metric::{Period, Summary, TagFilter},
    redis_connection::RedisConnection,
    tenant::Tenant,
};

/// Generation counters outlive any cached summary by far; expiring them only bounds memory.
/// The epoch is one key and never expires.
const GENERATION_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
const EPOCH_KEY: &str = "summary_epoch";
/// Types bumped in one round trip, or remembered while Redis is away, at most; past it the
/// epoch is bumped instead.
const MAX_TYPE_BUMPS: usize = 256;

/// Reads the epoch, a type's generation and the summary cached under both, in one round trip.
/// The key it reads is the one `summary_key` makes.
const LOOKUP_SCRIPT: &str = r"
local epoch = redis.call('GET', KEYS[1]) or '0'
local generation = redis.call('GET', KEYS[2]) or '0'
return {epoch, generation, redis.call('GET', ARGV[1] .. epoch .. ':g' .. generation)}
";

/// A cache read: either the cached summary, or what is needed to store a fresh one.
pub enum Lookup {
    Hit(Box<Summary>),
    Miss(Option<CacheSlot>),
}

/// Where a freshly computed summary may be stored (the epoch and generation it was computed
/// under).
pub struct CacheSlot {
    key: String,
}

pub struct SummaryCache {
    redis: RedisConnection,
    ttl: Duration,
    lookup: Script,
    /// Bumps that failed while Redis was unavailable.
    pending: Mutex<PendingBumps>,
}

impl SummaryCache {
    pub fn new(redis: RedisConnection, ttl: Duration) -> Self {
        Self {
            redis,
            ttl,
            lookup: Script::new(LOOKUP_SCRIPT),
            pending: Mutex::new(PendingBumps::new(MAX_TYPE_BUMPS)),
        }
    }

    /// Looks a summary of the tenant's type up. `Miss(None)` means the cache cannot be used
    /// for this type now.
    pub async fn lookup(
        &self,
        tenant: &Tenant,
        metric_type: &str,
        period: Period,
        filter: &TagFilter,
    ) -> Lookup {
        self.flush_pending_bumps().await;
        let tenant_type = tenant_type(tenant, metric_type);
        if self.pending().covers(&tenant_type) {
            metrics::counter!("summary_cache_requests_total", "result" => "miss").increment(1);
            return Lookup::Miss(None);
        }
        let key_prefix = summary_key_prefix(&tenant_type, period, filter);
        let script = &self.lookup;
        let keys = [EPOCH_KEY.to_owned(), generation_key(&tenant_type)];
        let prefix = key_prefix.clone();
        let found = self
            .redis
            .run(|mut conn| async move {
                script
                    .key(&keys)
                    .arg(prefix)
                    .invoke_async::<(String, String, Option<String>)>(&mut conn)
                    .await
            })
            .await;
        let lookup = match found {
            Ok((_, _, Some(json))) => match serde_json::from_str(&json) {
                Ok(summary) => Lookup::Hit(Box::new(summary)),
                Err(error) => {
                    tracing::warn!(%error, "discarding unreadable cached summary");
                    Lookup::Miss(None)
                }
            },
            Ok((epoch, generation, None)) => Lookup::Miss(Some(CacheSlot {
                key: summary_key(&key_prefix, &epoch, &generation),
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

    /// Makes every cached summary of these (tenant, type) pairs stale, in one round trip (the
    /// epoch's bump, for more than `MAX_TYPE_BUMPS` of them). Call after the write has
    /// committed.
    pub async fn invalidate<'a>(
        &self,
        metric_types: impl IntoIterator<Item = (&'a Tenant, &'a str)>,
    ) {
        let tenant_types: Vec<String> = metric_types
            .into_iter()
            .map(|(tenant, metric_type)| tenant_type(tenant, metric_type))
            .collect();
        let tenant_types: Vec<&str> = tenant_types.iter().map(String::as_str).collect();
        let bumped = if tenant_types.len() > MAX_TYPE_BUMPS {
            self.bump_epoch().await
        } else {
            self.bump_types(tenant_types.iter().copied()).await
        };
        if !bumped {
            self.pending().owe(&tenant_types);
        }
    }

    /// Bumps the generations of these `{tenant}:{type}` pairs.
    async fn bump_types<'a>(&self, tenant_types: impl Iterator<Item = &'a str>) -> bool {
        let mut pipe = redis::pipe();
        for tenant_type in tenant_types {
            let key = generation_key(tenant_type);
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

    async fn bump_epoch(&self) -> bool {
        self.redis
            .run(|mut conn| async move { conn.incr::<_, _, ()>(EPOCH_KEY, 1).await })
            .await
            .is_ok()
    }

    /// Pays the owed bumps, if any, in one round trip.
    async fn flush_pending_bumps(&self) {
        let Some(flush) = self.pending().flush() else {
            return;
        };
        let bumped = match &flush {
            Flush::Epoch(_) => self.bump_epoch().await,
            Flush::Types(types) => {
                self.bump_types(types.iter().map(|(tenant_type, _)| tenant_type.as_str()))
                    .await
            }
        };
        if bumped {
            self.pending().flushed(flush);
        }
    }

    fn pending(&self) -> MutexGuard<'_, PendingBumps> {
        self.pending.lock().expect("cache lock poisoned")
    }
}

/// A tenant's type as one part of a key, `{tenant}:{type}`: unambiguous, since a tenant has
/// no ':' (a type may).
fn tenant_type(tenant: &Tenant, metric_type: &str) -> String {
    format!("{tenant}:{metric_type}")
}

fn generation_key(tenant_type: &str) -> String {
    format!("summary_gen:{tenant_type}")
}

/// A summary's key up to its epoch; the lookup script appends the same as `summary_key`. A
/// summary filtered by tags is a summary of its own, under the hash of its filter; all of a
/// type's are made stale by its generation.
fn summary_key_prefix(tenant_type: &str, period: Period, filter: &TagFilter) -> String {
    let period = period.as_str();
    if filter.is_empty() {
        return format!("summary:{tenant_type}:{period}:e");
    }
    let hash = Sha256::digest(filter.identity());
    let hex: String = hash[..16]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!("summary:{tenant_type}:{period}:t{hex}:e")
}

fn summary_key(prefix: &str, epoch: &str, generation: &str) -> String {
    format!("{prefix}{epoch}:g{generation}")
}

/// Bumps owed to Redis: the types (`{tenant}:{type}`) whose bump failed, at most `bound` of
/// them, or past that one epoch bump that covers every type. Each owed bump carries a stamp, so that a flush
/// clears only what it sent: a bump owed again while the flush was in flight (for a write
/// that committed after the flush's bump) stays owed.
#[derive(Debug)]
struct PendingBumps {
    bound: usize,
    types: HashMap<String, u64>,
    /// The owed epoch bump's stamp. While one is owed, `types` is empty.
    epoch: Option<u64>,
    last_stamp: u64,
}

/// One round trip's worth of owed bumps, with their stamps.
#[derive(Debug, PartialEq)]
enum Flush {
    Epoch(u64),
    /// At most the bound of types.
    Types(Vec<(String, u64)>),
}

impl PendingBumps {
    fn new(bound: usize) -> Self {
        Self {
            bound,
            types: HashMap::new(),
            epoch: None,
            last_stamp: 0,
        }
    }

    /// Remembers that bumping these types failed.
    fn owe(&mut self, metric_types: &[&str]) {
        self.last_stamp += 1;
        let stamp = self.last_stamp;
        if self.epoch.is_none() && metric_types.len() <= self.bound {
            for metric_type in metric_types {
                self.types.insert((*metric_type).to_owned(), stamp);
            }
            if self.types.len() <= self.bound {
                return;
            }
        }
        // Too many to remember, or an epoch bump is owed already (perhaps in flight, sent
        // before these writes committed): owe a new one, which covers these types too.
        self.types.clear();
        self.epoch = Some(stamp);
    }

    /// Whether a bump covering this type is owed: its summaries must not come from the cache.
    fn covers(&self, metric_type: &str) -> bool {
        self.epoch.is_some() || self.types.contains_key(metric_type)
    }

    /// Everything owed, or `None` when nothing is.
    fn flush(&self) -> Option<Flush> {
        if let Some(stamp) = self.epoch {
            return Some(Flush::Epoch(stamp));
        }
        if self.types.is_empty() {
            return None;
        }
        let types = self.types.iter().map(|(t, stamp)| (t.clone(), *stamp));
        Some(Flush::Types(types.collect()))
    }

    /// Forgets the bumps a successful flush sent, unless they were owed again since.
    fn flushed(&mut self, flush: Flush) {
        match flush {
            Flush::Epoch(stamp) => {
                if self.epoch == Some(stamp) {
                    self.epoch = None;
                }
            }
            Flush::Types(types) => {
                for (metric_type, stamp) in types {
                    if self.types.get(&metric_type) == Some(&stamp) {
                        self.types.remove(&metric_type);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flushed_types(pending: &PendingBumps) -> Vec<String> {
        match pending.flush() {
            Some(Flush::Types(types)) => {
                let mut types: Vec<String> = types.into_iter().map(|(t, _)| t).collect();
                types.sort();
                types
            }
            other => panic!("expected a flush of types, got {other:?}"),
        }
    }

    fn tenant(name: &str) -> Tenant {
        name.parse().unwrap()
    }

    #[test]
    fn summary_keys_name_the_tenant_type_period_epoch_and_generation() {
        let cpu = tenant_type(&tenant("acme"), "cpu");
        assert_eq!(generation_key(&cpu), "summary_gen:acme:cpu");
        let unfiltered = TagFilter::default();
        let prefix = summary_key_prefix(&cpu, Period::Daily, &unfiltered);
        assert_eq!(
            summary_key(&prefix, "3", "17"),
            "summary:acme:cpu:daily:e3:g17"
        );
        assert_eq!(
            summary_key(
                &summary_key_prefix(&cpu, Period::All, &unfiltered),
                "0",
                "0"
            ),
            "summary:acme:cpu:all:e0:g0"
        );
    }

    #[test]
    fn each_tag_filter_has_its_own_key() {
        let cpu = tenant_type(&tenant("acme"), "cpu");
        let filter = |pairs: &[&str]| TagFilter::parse(pairs.iter().copied()).unwrap();
        let key = |filter: &TagFilter| summary_key_prefix(&cpu, Period::All, filter);
        let job = key(&filter(&["job:node"]));
        assert!(job.starts_with("summary:acme:cpu:all:t"), "{job}");
        assert_ne!(job, key(&filter(&["job:other"])));
        assert_ne!(job, key(&TagFilter::default()));
        // The order of the parameters does not matter.
        assert_eq!(key(&filter(&["a:1", "b:2"])), key(&filter(&["b:2", "a:1"])));
    }

    #[test]
    fn two_tenants_keys_for_the_same_type_differ() {
        let (acme, default) = (tenant("acme"), Tenant::default_tenant());
        let (of_acme, of_default) = (tenant_type(&acme, "cpu"), tenant_type(&default, "cpu"));
        assert_ne!(generation_key(&of_acme), generation_key(&of_default));
        assert_ne!(
            summary_key_prefix(&of_acme, Period::All, &TagFilter::default()),
            summary_key_prefix(&of_default, Period::All, &TagFilter::default())
        );
        // A type may hold ':', a tenant never does: "a:b:c" is only ever tenant a's "b:c".
        assert!("a:b".parse::<Tenant>().is_err());
        let mut pending = PendingBumps::new(3);
        pending.owe(&[&of_acme]);
        assert!(pending.covers(&of_acme));
        assert!(!pending.covers(&of_default));
    }

    #[test]
    fn nothing_is_owed_until_a_bump_fails() {
        let mut pending = PendingBumps::new(3);
        assert_eq!(pending.flush(), None);
        assert!(!pending.covers("cpu"));
        pending.owe(&["cpu", "mem"]);
        assert!(pending.covers("cpu") && pending.covers("mem"));
        assert!(!pending.covers("disk"));
        assert_eq!(flushed_types(&pending), ["cpu", "mem"]);
    }

    #[test]
    fn types_beyond_the_bound_are_forgotten_and_an_epoch_bump_covering_all_is_owed() {
        let mut pending = PendingBumps::new(3);
        pending.owe(&["a", "b"]);
        // Owed again: still two types.
        pending.owe(&["a", "c"]);
        assert_eq!(flushed_types(&pending), ["a", "b", "c"]);
        pending.owe(&["d"]);
        assert!(matches!(pending.flush(), Some(Flush::Epoch(_))));
        assert!(pending.types.is_empty());
        assert!(pending.covers("never-written"));
    }

    #[test]
    fn one_failed_bump_of_more_types_than_the_bound_owes_an_epoch_bump() {
        let mut pending = PendingBumps::new(3);
        pending.owe(&["a", "b", "c", "d"]);
        assert!(matches!(pending.flush(), Some(Flush::Epoch(_))));
        assert!(pending.types.is_empty());
    }

    #[test]
    fn a_flush_never_carries_more_than_the_bound() {
        let mut pending = PendingBumps::new(4);
        for round in 0..30 {
            let types: Vec<String> = (0..round % 6).map(|i| format!("t{round}-{i}")).collect();
            pending.owe(&types.iter().map(String::as_str).collect::<Vec<_>>());
            let flush = pending.flush();
            if let Some(Flush::Types(types)) = &flush {
                assert!(types.len() <= 4, "{} types in one flush", types.len());
            }
            // Redis answers every third flush.
            if let (Some(flush), 0) = (flush, round % 3) {
                pending.flushed(flush);
            }
        }
    }

    #[test]
    fn a_successful_flush_clears_exactly_what_it_sent() {
        let mut pending = PendingBumps::new(3);
        pending.owe(&["a", "b"]);
        let flush = pending.flush().unwrap();
        pending.owe(&["c"]);
        pending.flushed(flush);
        assert!(!pending.covers("a") && !pending.covers("b"));
        assert_eq!(flushed_types(&pending), ["c"]);
        pending.flushed(pending.flush().unwrap());
        assert_eq!(pending.flush(), None);
    }

    #[test]
    fn a_type_owed_again_while_its_flush_was_in_flight_stays_owed() {
        let mut pending = PendingBumps::new(3);
        pending.owe(&["a", "b"]);
        let flush = pending.flush().unwrap();
        // A write of `a` committed after the flush's bump reached Redis, and its own failed.
        pending.owe(&["a"]);
        pending.flushed(flush);
        assert!(pending.covers("a"));
        assert!(!pending.covers("b"));
        assert_eq!(flushed_types(&pending), ["a"]);
    }

    #[test]
    fn an_epoch_bump_owed_again_while_in_flight_stays_owed() {
        let mut pending = PendingBumps::new(1);
        pending.owe(&["a", "b"]);
        let flush = pending.flush().unwrap();
        pending.owe(&["c"]);
        pending.flushed(flush);
        assert!(pending.covers("c"));
        let again = pending.flush().unwrap();
        assert!(matches!(again, Flush::Epoch(_)));
        pending.flushed(again);
        assert_eq!(pending.flush(), None);
    }

    #[test]
    fn types_flushed_after_an_overflow_leave_the_epoch_bump_owed() {
        let mut pending = PendingBumps::new(2);
        pending.owe(&["a"]);
        let flush = pending.flush().unwrap();
        pending.owe(&["b", "c"]);
        pending.flushed(flush);
        assert!(matches!(pending.flush(), Some(Flush::Epoch(_))));
        assert!(pending.covers("a"));
    }
}
