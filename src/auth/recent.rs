//! What authentication remembers between requests, in process and bounded: keys verified
//! recently (so that most requests need no query, while a revocation is still seen within
//! the entries' lifetime), and clients blocked after too many failed attempts.

use std::{
    collections::HashMap,
    hash::Hash,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use super::{KeyId, KeyRecord};
use crate::clock::Clock;

/// Removes the entries `expired` says are spent when the map is full, and everything if
/// that is not enough: memory stays bounded whoever sends what.
fn make_room<K: Eq + Hash, V>(
    map: &mut HashMap<K, V>,
    capacity: usize,
    expired: impl Fn(&V) -> bool,
) {
    if map.len() >= capacity {
        map.retain(|_, value| !expired(value));
        if map.len() >= capacity {
            map.clear();
        }
    }
}

struct Entry {
    record: Arc<KeyRecord>,
    fetched_at: Duration,
    touched_at: Option<Duration>,
}

/// Keys read from the database within the last `ttl`.
pub struct RecentKeys<C: Clock> {
    clock: C,
    ttl: Duration,
    capacity: usize,
    entries: Mutex<HashMap<KeyId, Entry>>,
}

impl<C: Clock> RecentKeys<C> {
    pub fn new(clock: C, ttl: Duration, capacity: usize) -> Self {
        Self {
            clock,
            ttl,
            capacity,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The key as read less than `ttl` ago, if it was.
    pub fn get(&self, id: &KeyId) -> Option<Arc<KeyRecord>> {
        let now = self.clock.now();
        let entries = self.lock();
        let entry = entries.get(id)?;
        (now.saturating_sub(entry.fetched_at) < self.ttl).then(|| entry.record.clone())
    }

    /// Remembers the key as just read.
    pub fn put(&self, record: KeyRecord) -> Arc<KeyRecord> {
        let now = self.clock.now();
        let record = Arc::new(record);
        let mut entries = self.lock();
        let touched_at = entries.get(&record.id).and_then(|entry| entry.touched_at);
        if touched_at.is_none() {
            let ttl = self.ttl;
            make_room(&mut entries, self.capacity, |entry| {
                now.saturating_sub(entry.fetched_at) >= ttl
            });
        }
        entries.insert(
            record.id.clone(),
            Entry {
                record: record.clone(),
                fetched_at: now,
                touched_at,
            },
        );
        record
    }

    /// Whether this process should record a use of the key now: at most once per `every`
    /// for each key it remembers.
    pub fn claim_touch(&self, id: &KeyId, every: Duration) -> bool {
        let now = self.clock.now();
        let mut entries = self.lock();
        let Some(entry) = entries.get_mut(id) else {
            return false;
        };
        let due = entry
            .touched_at
            .is_none_or(|touched| now.saturating_sub(touched) >= every);
        if due {
            entry.touched_at = Some(now);
        }
        due
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<KeyId, Entry>> {
        self.entries.lock().expect("recent keys lock poisoned")
    }
}

/// Clients refused until an instant, after too many failed authentications.
///
/// Past `capacity` blocked clients the expired ones are forgotten, and if that is not
/// enough all of them: a forgotten client is blocked again by its next failure, which the
/// shared failure limiter still refuses.
pub struct Blocklist<C: Clock> {
    clock: C,
    capacity: usize,
    until: Mutex<HashMap<String, Duration>>,
}

impl<C: Clock> Blocklist<C> {
    pub fn new(clock: C, capacity: usize) -> Self {
        Self {
            clock,
            capacity,
            until: Mutex::new(HashMap::new()),
        }
    }

    /// How much longer the client is blocked, if it is.
    pub fn blocked_for(&self, client: &str) -> Option<Duration> {
        let now = self.clock.now();
        let until = *self.lock().get(client)?;
        (until > now).then(|| until - now)
    }

    pub fn block(&self, client: &str, duration: Duration) {
        let now = self.clock.now();
        let mut until = self.lock();
        make_room(&mut until, self.capacity, |&end| end <= now);
        until.insert(client.to_owned(), now + duration);
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Duration>> {
        self.until.lock().expect("blocklist lock poisoned")
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;
    use crate::{
        auth::{ApiKey, Scopes},
        clock::ManualClock,
        tenant::Tenant,
    };

    fn record(key: &ApiKey) -> KeyRecord {
        KeyRecord {
            id: key.id().clone(),
            tenant: Tenant::default_tenant(),
            scopes: Scopes::all(),
            quota: None,
            created_at: Utc::now(),
            expires_at: None,
            revoked_at: None,
            last_used_at: None,
            secret_hash: key.secret_hash(),
        }
    }

    fn recent(capacity: usize) -> (RecentKeys<Arc<ManualClock>>, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::default());
        (
            RecentKeys::new(clock.clone(), Duration::from_secs(2), capacity),
            clock,
        )
    }

    #[test]
    fn a_key_is_remembered_for_less_than_its_ttl_only() {
        let (recent, clock) = recent(10);
        let key = ApiKey::generate();
        assert!(recent.get(key.id()).is_none());
        recent.put(record(&key));
        clock.advance(Duration::from_millis(1999));
        assert!(recent.get(key.id()).is_some());
        clock.advance(Duration::from_millis(1));
        assert!(recent.get(key.id()).is_none(), "a revocation must be seen");
    }

    #[test]
    fn a_use_is_recorded_at_most_once_per_interval_even_across_refreshes() {
        let (recent, clock) = recent(10);
        let key = ApiKey::generate();
        let minute = Duration::from_secs(60);
        assert!(!recent.claim_touch(key.id(), minute), "unknown key");
        recent.put(record(&key));
        assert!(recent.claim_touch(key.id(), minute));
        for _ in 0..29 {
            clock.advance(Duration::from_secs(2));
            recent.put(record(&key));
            assert!(!recent.claim_touch(key.id(), minute));
        }
        clock.advance(Duration::from_secs(2));
        assert!(recent.claim_touch(key.id(), minute));
    }

    #[test]
    fn however_many_keys_come_the_map_stays_bounded() {
        let (recent, _clock) = recent(50);
        for _ in 0..1000 {
            recent.put(record(&ApiKey::generate()));
            assert!(recent.lock().len() <= 50);
        }
    }

    #[test]
    fn a_client_is_blocked_for_the_given_time_and_the_list_stays_bounded() {
        let clock = Arc::new(ManualClock::default());
        let blocklist = Blocklist::new(clock.clone(), 100);
        assert_eq!(blocklist.blocked_for("192.0.2.1"), None);
        blocklist.block("192.0.2.1", Duration::from_secs(6));
        clock.advance(Duration::from_secs(4));
        assert_eq!(
            blocklist.blocked_for("192.0.2.1"),
            Some(Duration::from_secs(2))
        );
        assert_eq!(blocklist.blocked_for("192.0.2.2"), None);
        clock.advance(Duration::from_secs(2));
        assert_eq!(blocklist.blocked_for("192.0.2.1"), None);
        for n in 0..10_000 {
            blocklist.block(
                &format!("10.0.{}.{}", n / 256, n % 256),
                Duration::from_secs(60),
            );
            assert!(blocklist.lock().len() <= 100);
        }
    }
}
