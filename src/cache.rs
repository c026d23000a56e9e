//! The read-through summary cache in Redis, kept fresh after writes on every instance.
//!
//! Summaries are per tenant and type: "a type" below is always one tenant's type. Every key
//! of a tenant carries the tenant as its hash tag (`{acme}`), so a lookup script that reads
//! several of them stays on one Redis Cluster slot.
//!
//! Each type has a generation counter in Redis (`summary_gen:{tenant}:{type}`), bumped after
//! every committed write of that type. Each tenant also has an epoch in PostgreSQL
//! (`summary_epochs`), bumped instead when a write cannot bump its generations in Redis: it
//! covers more than `MAX_TYPE_BUMPS` types, or Redis did not answer. Summaries are cached
//! under `summary:{tenant}:{type}:{period}:g{generation}` with the epoch they were computed
//! under inside, both read *before* the summary was computed: a read after a write, on any
//! instance, never sees a summary computed before it, even one that a slow reader stores
//! late, and even when the writer had lost Redis (the epoch is where every instance looks).
//!
//! The epoch is read on every lookup, beside the Redis lookup (in parallel): one primary-key
//! read. While PostgreSQL does not answer within `EPOCH_READ_TIMEOUT`, cached summaries are
//! served as they are (no write can be acknowledged then) and fresh ones are not stored.
//!
//! An epoch bump that fails as well (PostgreSQL lost right after the commit) is owed, and
//! paid before the cache is used again; until then the tenants it covers are served
//! uncached by this instance. At most `MAX_TYPE_BUMPS` tenants are remembered: past that, a
//! bump of every tenant's epoch is owed instead.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use redis::{AsyncCommands, Script};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{
    metric::{Period, Summary, TagFilter},
    redis_connection::RedisConnection,
    storage::Storage,
    tenant::Tenant,
};

/// Generation counters outlive any cached summary by far; expiring them only bounds memory.
const GENERATION_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Types bumped in Redis by one write, or tenants remembered while PostgreSQL is away, at
/// most; past it the tenants' epochs are bumped instead (or every tenant's).
const MAX_TYPE_BUMPS: usize = 256;
/// As long as a Redis operation may take: a cached summary is not held up longer by the
/// epoch's read.
const EPOCH_READ_TIMEOUT: Duration = Duration::from_millis(250);

/// Reads a type's generation and the summary cached under it, in one round trip. The key it
/// reads is the one `summary_key` makes, in the same slot as the generation's.
const LOOKUP_SCRIPT: &str = r"
local generation = redis.call('GET', KEYS[1]) or '0'
return {generation, redis.call('GET', ARGV[1] .. generation)}
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
    epoch: i64,
}

/// What is stored under a summary's key.
#[derive(Serialize, Deserialize)]
struct Cached<S> {
    epoch: i64,
    summary: S,
}

pub struct SummaryCache {
    redis: RedisConnection,
    storage: Storage,
    ttl: Duration,
    lookup: Script,
    /// Epoch bumps that failed while PostgreSQL was unavailable.
    pending: Mutex<PendingBumps>,
}

impl SummaryCache {
    pub fn new(redis: RedisConnection, storage: Storage, ttl: Duration) -> Self {
        Self {
            redis,
            storage,
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
        if self.pending().covers(tenant.as_str()) {
            metrics::counter!("summary_cache_requests_total", "result" => "miss").increment(1);
            return Lookup::Miss(None);
        }
        let key_prefix = summary_key_prefix(tenant, metric_type, period, filter);
        let script = &self.lookup;
        let generation_key = generation_key(tenant, metric_type);
        let prefix = key_prefix.clone();
        let (epoch, found) = tokio::join!(
            tokio::time::timeout(EPOCH_READ_TIMEOUT, self.storage.summary_epoch(tenant)),
            self.redis.run(|mut conn| async move {
                script
                    .key(generation_key)
                    .arg(prefix)
                    .invoke_async::<(String, Option<String>)>(&mut conn)
                    .await
            })
        );
        let epoch = epoch.ok().and_then(Result::ok);
        let lookup = match found {
            Ok((generation, cached)) => {
                let cached = cached.and_then(|json| {
                    serde_json::from_str::<Cached<Summary>>(&json)
                        .inspect_err(|error| {
                            tracing::warn!(%error, "discarding unreadable cached summary");
                        })
                        .ok()
                });
                match (cached, epoch) {
                    (Some(cached), epoch) if epoch.is_none_or(|epoch| epoch == cached.epoch) => {
                        Lookup::Hit(Box::new(cached.summary))
                    }
                    (_, Some(epoch)) => Lookup::Miss(Some(CacheSlot {
                        key: summary_key(&key_prefix, &generation),
                        epoch,
                    })),
                    (_, None) => Lookup::Miss(None),
                }
            }
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
        let cached = Cached {
            epoch: slot.epoch,
            summary,
        };
        let Ok(json) = serde_json::to_string(&cached) else {
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

    /// Makes every cached summary of these (tenant, type) pairs stale on every instance: by
    /// their generations in Redis, else by their tenants' epochs. Call after the write has
    /// committed, before it is acknowledged.
    pub async fn invalidate<'a>(
        &self,
        metric_types: impl IntoIterator<Item = (&'a Tenant, &'a str)>,
    ) {
        let mut by_tenant: BTreeMap<&Tenant, Vec<&str>> = BTreeMap::new();
        for (tenant, metric_type) in metric_types {
            by_tenant.entry(tenant).or_default().push(metric_type);
        }
        let types: usize = by_tenant.values().map(Vec::len).sum();
        let bumped = types <= MAX_TYPE_BUMPS && self.bump_generations(&by_tenant).await;
        if !bumped {
            let tenants: Vec<&str> = by_tenant.keys().map(|tenant| tenant.as_str()).collect();
            if self.storage.bump_summary_epochs(&tenants).await.is_err() {
                self.pending().owe(&tenants);
            }
        }
    }

    /// Bumps the generations of these types: one pipeline per tenant (a pipeline stays in
    /// one slot), sent together.
    async fn bump_generations(&self, by_tenant: &BTreeMap<&Tenant, Vec<&str>>) -> bool {
        let pipelines: Vec<redis::Pipeline> = by_tenant
            .iter()
            .map(|(tenant, metric_types)| {
                let mut pipe = redis::pipe();
                for metric_type in metric_types {
                    let key = generation_key(tenant, metric_type);
                    pipe.incr(&key, 1)
                        .ignore()
                        .expire(&key, GENERATION_TTL.as_secs() as i64)
                        .ignore();
                }
                pipe
            })
            .collect();
        self.redis
            .run(|conn| async move {
                let sent = pipelines.iter().map(|pipe| {
                    let mut conn = conn.clone();
                    async move { pipe.query_async::<()>(&mut conn).await }
                });
                futures_util::future::try_join_all(sent).await.map(drop)
            })
            .await
            .is_ok()
    }

    /// Pays the owed epoch bumps, if any, in one statement.
    async fn flush_pending_bumps(&self) {
        let Some(flush) = self.pending().flush() else {
            return;
        };
        let bumped = match &flush {
            Flush::AllTenants(_) => self.storage.bump_summary_epochs(&[ALL_TENANTS]).await,
            Flush::Tenants(tenants) => {
                let tenants: Vec<&str> = tenants.iter().map(|(t, _)| t.as_str()).collect();
                self.storage.bump_summary_epochs(&tenants).await
            }
        };
        if bumped.is_ok() {
            self.pending().flushed(flush);
        }
    }

    fn pending(&self) -> MutexGuard<'_, PendingBumps> {
        self.pending.lock().expect("cache lock poisoned")
    }
}

/// The epoch row that counts for every tenant (no tenant's name can be `*`).
const ALL_TENANTS: &str = crate::storage::ALL_TENANTS_EPOCH;

/// `summary_gen:{tenant}:{type}`: the tenant is the hash tag; a type may hold ':' and
/// braces, which only the first `{...}` of a key would matter for.
fn generation_key(tenant: &Tenant, metric_type: &str) -> String {
    format!("summary_gen:{{{tenant}}}:{metric_type}")
}

/// A summary's key up to its generation; the lookup script appends the same as
/// `summary_key`. A summary filtered by tags is a summary of its own, under the hash of its
/// filter; all of a type's are made stale by its generation.
fn summary_key_prefix(
    tenant: &Tenant,
    metric_type: &str,
    period: Period,
    filter: &TagFilter,
) -> String {
    let period = period.as_str();
    if filter.is_empty() {
        return format!("summary:{{{tenant}}}:{metric_type}:{period}:g");
    }
    let hash = Sha256::digest(filter.identity());
    let hex: String = hash[..16]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!("summary:{{{tenant}}}:{metric_type}:{period}:t{hex}:g")
}

fn summary_key(prefix: &str, generation: &str) -> String {
    format!("{prefix}{generation}")
}

/// Epoch bumps owed to PostgreSQL: the tenants whose bump failed, at most `bound` of them,
/// or past that one bump that covers every tenant. Each owed bump carries a stamp, so that a
/// flush clears only what it sent: a bump owed again while the flush was in flight (for a
/// write that committed after the flush's bump) stays owed.
#[derive(Debug)]
struct PendingBumps {
    bound: usize,
    tenants: HashMap<String, u64>,
    /// The owed bump of every tenant's epoch, by its stamp. While one is owed, `tenants` is
    /// empty.
    all: Option<u64>,
    last_stamp: u64,
}

/// One statement's worth of owed bumps, with their stamps.
#[derive(Debug, PartialEq)]
enum Flush {
    AllTenants(u64),
    /// At most the bound of tenants.
    Tenants(Vec<(String, u64)>),
}

impl PendingBumps {
    fn new(bound: usize) -> Self {
        Self {
            bound,
            tenants: HashMap::new(),
            all: None,
            last_stamp: 0,
        }
    }

    /// Remembers that bumping these tenants' epochs failed.
    fn owe(&mut self, tenants: &[&str]) {
        self.last_stamp += 1;
        let stamp = self.last_stamp;
        if self.all.is_none() && tenants.len() <= self.bound {
            for tenant in tenants {
                self.tenants.insert((*tenant).to_owned(), stamp);
            }
            if self.tenants.len() <= self.bound {
                return;
            }
        }
        // Too many to remember, or a bump of all is owed already (perhaps in flight, sent
        // before these writes committed): owe a new one, which covers these tenants too.
        self.tenants.clear();
        self.all = Some(stamp);
    }

    /// Whether a bump covering this tenant is owed: its summaries must not come from the
    /// cache.
    fn covers(&self, tenant: &str) -> bool {
        self.all.is_some() || self.tenants.contains_key(tenant)
    }

    /// Everything owed, or `None` when nothing is.
    fn flush(&self) -> Option<Flush> {
        if let Some(stamp) = self.all {
            return Some(Flush::AllTenants(stamp));
        }
        if self.tenants.is_empty() {
            return None;
        }
        let tenants = self.tenants.iter().map(|(t, stamp)| (t.clone(), *stamp));
        Some(Flush::Tenants(tenants.collect()))
    }

    /// Forgets the bumps a successful flush sent, unless they were owed again since.
    fn flushed(&mut self, flush: Flush) {
        match flush {
            Flush::AllTenants(stamp) => {
                if self.all == Some(stamp) {
                    self.all = None;
                }
            }
            Flush::Tenants(tenants) => {
                for (tenant, stamp) in tenants {
                    if self.tenants.get(&tenant) == Some(&stamp) {
                        self.tenants.remove(&tenant);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flushed_tenants(pending: &PendingBumps) -> Vec<String> {
        match pending.flush() {
            Some(Flush::Tenants(types)) => {
                let mut types: Vec<String> = types.into_iter().map(|(t, _)| t).collect();
                types.sort();
                types
            }
            other => panic!("expected a flush of tenants, got {other:?}"),
        }
    }

    fn tenant(name: &str) -> Tenant {
        name.parse().unwrap()
    }

    #[test]
    fn summary_keys_name_the_tenant_as_hash_tag_the_type_period_and_generation() {
        let acme = tenant("acme");
        let unfiltered = TagFilter::default();
        assert_eq!(generation_key(&acme, "cpu"), "summary_gen:{acme}:cpu");
        let prefix = summary_key_prefix(&acme, "cpu", Period::Daily, &unfiltered);
        assert_eq!(summary_key(&prefix, "17"), "summary:{acme}:cpu:daily:g17");
        assert_eq!(
            summary_key(
                &summary_key_prefix(&acme, "cpu", Period::All, &unfiltered),
                "0"
            ),
            "summary:{acme}:cpu:all:g0"
        );
        // A type's own braces come after the tenant's: the tenant stays the hash tag.
        assert!(generation_key(&acme, "{x}").starts_with("summary_gen:{acme}:"));
    }

    #[test]
    fn each_tag_filter_has_its_own_key() {
        let acme = tenant("acme");
        let filter = |pairs: &[&str]| TagFilter::parse(pairs.iter().copied()).unwrap();
        let key = |filter: &TagFilter| summary_key_prefix(&acme, "cpu", Period::All, filter);
        let job = key(&filter(&["job:node"]));
        assert!(job.starts_with("summary:{acme}:cpu:all:t"), "{job}");
        assert_ne!(job, key(&filter(&["job:other"])));
        assert_ne!(job, key(&TagFilter::default()));
        // The order of the parameters does not matter.
        assert_eq!(key(&filter(&["a:1", "b:2"])), key(&filter(&["b:2", "a:1"])));
    }

    #[test]
    fn two_tenants_keys_for_the_same_type_differ() {
        let (acme, default) = (tenant("acme"), Tenant::default_tenant());
        assert_ne!(
            generation_key(&acme, "cpu"),
            generation_key(&default, "cpu")
        );
        assert_ne!(
            summary_key_prefix(&acme, "cpu", Period::All, &TagFilter::default()),
            summary_key_prefix(&default, "cpu", Period::All, &TagFilter::default())
        );
        assert!(
            "*".parse::<Tenant>().is_err(),
            "no tenant shares the epoch of all"
        );
        let mut pending = PendingBumps::new(3);
        pending.owe(&["acme"]);
        assert!(pending.covers("acme"));
        assert!(!pending.covers("default"));
    }

    #[test]
    fn nothing_is_owed_until_a_bump_fails() {
        let mut pending = PendingBumps::new(3);
        assert_eq!(pending.flush(), None);
        assert!(!pending.covers("cpu"));
        pending.owe(&["cpu", "mem"]);
        assert!(pending.covers("cpu") && pending.covers("mem"));
        assert!(!pending.covers("disk"));
        assert_eq!(flushed_tenants(&pending), ["cpu", "mem"]);
    }

    #[test]
    fn tenants_beyond_the_bound_are_forgotten_and_a_bump_covering_all_is_owed() {
        let mut pending = PendingBumps::new(3);
        pending.owe(&["a", "b"]);
        // Owed again: still two types.
        pending.owe(&["a", "c"]);
        assert_eq!(flushed_tenants(&pending), ["a", "b", "c"]);
        pending.owe(&["d"]);
        assert!(matches!(pending.flush(), Some(Flush::AllTenants(_))));
        assert!(pending.tenants.is_empty());
        assert!(pending.covers("never-written"));
    }

    #[test]
    fn one_failed_bump_of_more_tenants_than_the_bound_owes_a_bump_of_all() {
        let mut pending = PendingBumps::new(3);
        pending.owe(&["a", "b", "c", "d"]);
        assert!(matches!(pending.flush(), Some(Flush::AllTenants(_))));
        assert!(pending.tenants.is_empty());
    }

    #[test]
    fn a_flush_never_carries_more_than_the_bound() {
        let mut pending = PendingBumps::new(4);
        for round in 0..30 {
            let types: Vec<String> = (0..round % 6).map(|i| format!("t{round}-{i}")).collect();
            pending.owe(&types.iter().map(String::as_str).collect::<Vec<_>>());
            let flush = pending.flush();
            if let Some(Flush::Tenants(types)) = &flush {
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
        assert_eq!(flushed_tenants(&pending), ["c"]);
        pending.flushed(pending.flush().unwrap());
        assert_eq!(pending.flush(), None);
    }

    #[test]
    fn a_tenant_owed_again_while_its_flush_was_in_flight_stays_owed() {
        let mut pending = PendingBumps::new(3);
        pending.owe(&["a", "b"]);
        let flush = pending.flush().unwrap();
        // A write of `a` committed after the flush's bump reached Redis, and its own failed.
        pending.owe(&["a"]);
        pending.flushed(flush);
        assert!(pending.covers("a"));
        assert!(!pending.covers("b"));
        assert_eq!(flushed_tenants(&pending), ["a"]);
    }

    #[test]
    fn a_bump_of_all_owed_again_while_in_flight_stays_owed() {
        let mut pending = PendingBumps::new(1);
        pending.owe(&["a", "b"]);
        let flush = pending.flush().unwrap();
        pending.owe(&["c"]);
        pending.flushed(flush);
        assert!(pending.covers("c"));
        let again = pending.flush().unwrap();
        assert!(matches!(again, Flush::AllTenants(_)));
        pending.flushed(again);
        assert_eq!(pending.flush(), None);
    }

    #[test]
    fn tenants_flushed_after_an_overflow_leave_the_bump_of_all_owed() {
        let mut pending = PendingBumps::new(2);
        pending.owe(&["a"]);
        let flush = pending.flush().unwrap();
        pending.owe(&["b", "c"]);
        pending.flushed(flush);
        assert!(matches!(pending.flush(), Some(Flush::AllTenants(_))));
        assert!(pending.covers("a"));
    }
}
