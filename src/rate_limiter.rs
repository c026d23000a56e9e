//! Per-client rate limiting with the generic cell rate algorithm (GCRA).
//!
//! Each client has a "theoretical arrival time" (TAT). A request is allowed when, after adding
//! one emission interval (window / limit) to the TAT, the TAT is at most one window ahead of
//! now. Unlike the seed's fixed window, a client that spent its quota regains it one request per
//! interval, so there is no fresh burst when a window turns over.
//!
//! The state lives in Redis, updated by one atomic script per request so all instances share
//! it. When Redis is unavailable the same algorithm runs in process, and Redis is used again as
//! soon as it answers.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use redis::Script;

use crate::{
    client::ClientId,
    clock::{Clock, MonotonicClock},
    config::RateLimitSettings,
    redis_connection::RedisConnection,
};

/// The outcome of one check, with what the `RateLimit-*` headers report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u32,
    /// Requests that could still be made right now.
    pub remaining: u32,
    /// Until the client's full quota is available again.
    pub reset_after: Duration,
    /// When denied: until the next request would be allowed.
    pub retry_after: Duration,
    /// Whether the in-process fallback decided because Redis was unavailable.
    pub decided_locally: bool,
}

/// GCRA parameters, in microseconds.
#[derive(Debug, Clone, Copy)]
struct Gcra {
    limit: u32,
    interval: i64,
    window: i64,
}

impl Gcra {
    fn new(settings: RateLimitSettings) -> Self {
        let window = settings.window.as_micros() as i64;
        Self {
            limit: settings.requests,
            interval: (window / i64::from(settings.requests)).max(1),
            window,
        }
    }

    /// Decides one request at `now` for a client whose TAT is `tat`; returns the decision and
    /// the TAT to store (unchanged when denied). Mirrored by `REDIS_GCRA_SCRIPT`.
    fn decide(&self, tat: Option<i64>, now: i64) -> (Decision, i64) {
        let tat = tat.map_or(now, |tat| tat.max(now));
        let new_tat = tat + self.interval;
        let allowed_at = new_tat - self.window;
        if now < allowed_at {
            (self.decision(false, 0, tat - now, allowed_at - now), tat)
        } else {
            (
                self.decision(true, now - allowed_at, new_tat - now, 0),
                new_tat,
            )
        }
    }

    /// Builds a decision from the script's figures: `slack` is how far the request was inside
    /// the window, `reset` how far the stored TAT is ahead of now, `wait` how long until allowed.
    fn decision(&self, allowed: bool, slack: i64, reset: i64, wait: i64) -> Decision {
        let micros = |value: i64| Duration::from_micros(value.max(0) as u64);
        Decision {
            allowed,
            limit: self.limit,
            remaining: (slack / self.interval).clamp(0, i64::from(self.limit)) as u32,
            reset_after: micros(reset),
            retry_after: micros(wait),
            decided_locally: false,
        }
    }
}

/// The Redis side of `Gcra::decide`, using Redis' clock so every instance agrees on "now".
/// Returns {allowed, slack, reset, wait} in microseconds.
const REDIS_GCRA_SCRIPT: &str = r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local interval = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local allowed_at = new_tat - window
if now < allowed_at then
  return {0, 0, tat - now, allowed_at - now}
end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
return {1, now - allowed_at, new_tat - now, 0}
";

/// Local fallback: clients per generation, so at most twice as many are remembered (about
/// 1 MB).
const LOCAL_GENERATION_CAPACITY: usize = 10_000;

pub struct RateLimiter<C: Clock = MonotonicClock> {
    gcra: Gcra,
    redis: RedisConnection,
    script: Script,
    local: LocalLimiter<C>,
}

impl RateLimiter {
    pub fn new(settings: RateLimitSettings, redis: RedisConnection) -> Self {
        Self {
            gcra: Gcra::new(settings),
            redis,
            script: Script::new(REDIS_GCRA_SCRIPT),
            local: LocalLimiter::new(
                Gcra::new(settings),
                MonotonicClock::new(),
                LOCAL_GENERATION_CAPACITY,
            ),
        }
    }

    /// Decides one request of `client`, whose state is under `rate_limit:{client}` in Redis.
    pub async fn check(&self, client: ClientId) -> Decision {
        let key = format!("rate_limit:{client}");
        let (interval, window) = (self.gcra.interval, self.gcra.window);
        let script = &self.script;
        let outcome = self
            .redis
            .run(|mut conn| async move {
                script
                    .key(key)
                    .arg(interval)
                    .arg(window)
                    .invoke_async::<(i64, i64, i64, i64)>(&mut conn)
                    .await
            })
            .await;
        let decision = match outcome {
            Ok((allowed, slack, reset, wait)) => {
                self.gcra.decision(allowed == 1, slack, reset, wait)
            }
            Err(_) => self.local.check(client),
        };
        metrics::counter!(
            "rate_limit_decisions_total",
            "decision" => if decision.allowed { "allowed" } else { "limited" },
            "source" => if decision.decided_locally { "local" } else { "redis" },
        )
        .increment(1);
        decision
    }
}

/// The same algorithm in process, used while Redis is unavailable.
struct LocalLimiter<C: Clock> {
    gcra: Gcra,
    clock: C,
    tats: Mutex<Generations>,
}

impl<C: Clock> LocalLimiter<C> {
    fn new(gcra: Gcra, clock: C, capacity: usize) -> Self {
        Self {
            gcra,
            clock,
            tats: Mutex::new(Generations::new(capacity)),
        }
    }

    fn check(&self, client: ClientId) -> Decision {
        let now = self.clock.now().as_micros() as i64;
        let mut tats = self.tats.lock().expect("rate limiter lock poisoned");
        let (decision, tat) = self.gcra.decide(tats.take(client), now);
        tats.put(client, tat);
        Decision {
            decided_locally: true,
            ..decision
        }
    }
}

/// Clients' TATs in two generations of at most `capacity` each: memory stays bounded and no
/// request ever scans the maps. A client seen recently is in `current`; one seen before the
/// last turnover is in `previous` and moves to `current` with its next request. When
/// `current` is full, `previous` is forgotten and `current` takes its place.
///
/// A forgotten client gets a whole quota again, as a new one does. That takes at least
/// `capacity` other clients arriving since its last request, and whoever controls that many
/// addresses already has that many quotas, so forgetting gives nobody much more than they
/// have; a client that keeps sending, as one worth limiting does, is never forgotten. All of
/// this only while Redis is unavailable.
struct Generations {
    current: HashMap<ClientId, i64>,
    previous: HashMap<ClientId, i64>,
    capacity: usize,
}

impl Generations {
    fn new(capacity: usize) -> Self {
        Self {
            current: HashMap::new(),
            previous: HashMap::new(),
            capacity,
        }
    }

    /// Removes and returns the client's TAT, from whichever generation holds it.
    fn take(&mut self, client: ClientId) -> Option<i64> {
        self.current
            .remove(&client)
            .or_else(|| self.previous.remove(&client))
    }

    fn put(&mut self, client: ClientId, tat: i64) {
        if self.current.len() >= self.capacity {
            // Swapping and clearing keeps both maps' allocations: no rehashing from here on.
            std::mem::swap(&mut self.current, &mut self.previous);
            self.current.clear();
        }
        self.current.insert(client, tat);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use std::net::IpAddr;

    use super::*;
    use crate::{client::Ipv6Prefix, clock::ManualClock};

    fn limiter(
        requests: u32,
        window_secs: u64,
    ) -> (LocalLimiter<Arc<ManualClock>>, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::default());
        let settings = RateLimitSettings {
            requests,
            window: Duration::from_secs(window_secs),
        };
        (
            LocalLimiter::new(Gcra::new(settings), clock.clone(), CAPACITY),
            clock,
        )
    }

    fn client(ip: impl Into<IpAddr>) -> ClientId {
        ClientId::new(ip.into(), Ipv6Prefix::new(64).unwrap())
    }

    const CLIENT_IP: [u8; 4] = [192, 0, 2, 1];

    /// Clients per generation in these tests.
    const CAPACITY: usize = 100;

    /// The `n`th of many distinct clients (none of them `CLIENT_IP`).
    fn other_client(n: usize) -> ClientId {
        client([10, (n >> 16) as u8, (n >> 8) as u8, n as u8])
    }

    #[test]
    fn a_new_client_gets_the_whole_quota_and_the_next_request_is_denied() {
        let (limiter, _clock) = limiter(10, 60);
        for expected_remaining in (0..10).rev() {
            let decision = limiter.check(client(CLIENT_IP));
            assert!(decision.allowed);
            assert_eq!(decision.remaining, expected_remaining);
            assert_eq!(decision.limit, 10);
        }
        let denied = limiter.check(client(CLIENT_IP));
        assert!(!denied.allowed);
        assert_eq!(denied.remaining, 0);
        assert_eq!(denied.retry_after, Duration::from_secs(6));
        assert_eq!(denied.reset_after, Duration::from_secs(60));
        assert!(denied.decided_locally);
    }

    #[test]
    fn clients_are_limited_independently() {
        let (limiter, _clock) = limiter(1, 60);
        assert!(limiter.check(client(CLIENT_IP)).allowed);
        assert!(!limiter.check(client(CLIENT_IP)).allowed);
        assert!(limiter.check(client([192, 0, 2, 2])).allowed);
    }

    #[test]
    fn a_spent_quota_comes_back_one_request_per_interval_not_all_at_once() {
        let (limiter, clock) = limiter(10, 60);
        for _ in 0..10 {
            assert!(limiter.check(client(CLIENT_IP)).allowed);
        }
        // A whole window later a fixed window would allow 10 at once; GCRA allows them back
        // gradually, one per 6 s.
        clock.advance(Duration::from_secs(5));
        assert!(!limiter.check(client(CLIENT_IP)).allowed);
        clock.advance(Duration::from_secs(1));
        let decision = limiter.check(client(CLIENT_IP));
        assert!(decision.allowed);
        assert_eq!(decision.remaining, 0);
        assert!(!limiter.check(client(CLIENT_IP)).allowed);
        clock.advance(Duration::from_secs(12));
        assert!(limiter.check(client(CLIENT_IP)).allowed);
        assert!(limiter.check(client(CLIENT_IP)).allowed);
        assert!(!limiter.check(client(CLIENT_IP)).allowed);
    }

    #[test]
    fn denied_requests_do_not_push_the_client_further_back() {
        let (limiter, clock) = limiter(2, 10);
        assert!(limiter.check(client(CLIENT_IP)).allowed);
        assert!(limiter.check(client(CLIENT_IP)).allowed);
        for _ in 0..100 {
            assert!(!limiter.check(client(CLIENT_IP)).allowed);
        }
        clock.advance(Duration::from_secs(5));
        assert!(limiter.check(client(CLIENT_IP)).allowed);
    }

    #[test]
    fn after_a_full_window_of_silence_the_quota_is_whole_again() {
        let (limiter, clock) = limiter(3, 30);
        for _ in 0..3 {
            limiter.check(client(CLIENT_IP));
        }
        clock.advance(Duration::from_secs(30));
        let decision = limiter.check(client(CLIENT_IP));
        assert!(decision.allowed);
        assert_eq!(decision.remaining, 2);
        assert_eq!(decision.reset_after, Duration::from_secs(10));
    }

    #[test]
    fn retry_after_shrinks_as_time_passes() {
        let (limiter, clock) = limiter(1, 60);
        limiter.check(client(CLIENT_IP));
        clock.advance(Duration::from_millis(59_500));
        let denied = limiter.check(client(CLIENT_IP));
        assert!(!denied.allowed);
        assert_eq!(denied.retry_after, Duration::from_millis(500));
    }

    #[test]
    fn memory_stays_bounded_however_many_clients_come() {
        let (limiter, _clock) = limiter(1, 60);
        for n in 0..100 * CAPACITY {
            limiter.check(other_client(n));
            let tats = limiter.tats.lock().unwrap();
            assert!(tats.current.len() + tats.previous.len() <= 2 * CAPACITY);
        }
    }

    #[test]
    fn a_limited_client_that_keeps_sending_stays_limited_while_many_others_come_and_go() {
        let (limiter, _clock) = limiter(1, 60);
        assert!(limiter.check(client(CLIENT_IP)).allowed);
        // Fewer than a generation's worth of others between two of its requests.
        for round in 0..20 {
            for n in 0..CAPACITY - 1 {
                limiter.check(other_client(round * CAPACITY + n));
            }
            assert!(!limiter.check(client(CLIENT_IP)).allowed, "round {round}");
        }
    }

    #[test]
    fn a_client_is_forgotten_only_after_a_generation_of_others_and_then_gets_a_whole_quota() {
        let (limiter, _clock) = limiter(1, 60);
        assert!(limiter.check(client(CLIENT_IP)).allowed);
        for n in 0..CAPACITY {
            limiter.check(other_client(n));
        }
        assert!(
            !limiter.check(client(CLIENT_IP)).allowed,
            "still remembered"
        );
        for n in CAPACITY..3 * CAPACITY {
            limiter.check(other_client(n));
        }
        assert!(limiter.check(client(CLIENT_IP)).allowed, "forgotten");
    }
}
