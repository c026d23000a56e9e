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
    clock::{Clock, MonotonicClock},
    redis_connection::RedisConnection,
};

/// A quota: `requests` per `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub requests: u32,
    pub window: Duration,
}

impl Quota {
    /// Far above any real quota, yet above the 100,000,000 that scripts/fuzz.sh and
    /// bench/run.sh use to keep the limiter in the path without limiting.
    pub const MAX_REQUESTS: u32 = 1_000_000_000;
    /// One day: keeps every figure derived from a window far from overflowing (the limiter
    /// counts in i64 microseconds).
    pub const MAX_WINDOW_SECONDS: u64 = 86_400;

    /// `None` unless 1 ≤ requests ≤ `MAX_REQUESTS` and 1 ≤ seconds ≤ `MAX_WINDOW_SECONDS`.
    pub fn new(requests: u32, window_seconds: u64) -> Option<Self> {
        ((1..=Self::MAX_REQUESTS).contains(&requests)
            && (1..=Self::MAX_WINDOW_SECONDS).contains(&window_seconds))
        .then(|| Self {
            requests,
            window: Duration::from_secs(window_seconds),
        })
    }
}

/// A quota's text, `requests/seconds`, as a regular expression: 1 to 1,000,000,000 requests
/// per 1 to 86,400 seconds, without leading zeros (what `Quota::from_str` accepts, bar spaces).
pub const QUOTA_PATTERN: &str = "^([1-9][0-9]{0,8}|1000000000)/\
    ([1-9][0-9]{0,3}|[1-7][0-9]{4}|8[0-5][0-9]{3}|86[0-3][0-9]{2}|86400)$";

/// `requests/seconds`, e.g. `1000/60`.
impl std::str::FromStr for Quota {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        text.split_once('/')
            .and_then(|(requests, seconds)| {
                Self::new(requests.trim().parse().ok()?, seconds.trim().parse().ok()?)
            })
            .ok_or_else(|| {
                format!(
                    "must be requests/seconds, 1 to {} requests per 1 to {} seconds, e.g. 1000/60",
                    Self::MAX_REQUESTS,
                    Self::MAX_WINDOW_SECONDS
                )
            })
    }
}

impl utoipa::PartialSchema for Quota {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::Type::String)
            .description(Some("requests/seconds, e.g. 1000/60"))
            .pattern(Some(QUOTA_PATTERN))
            .examples(["1000/60"])
            .into()
    }
}

impl utoipa::ToSchema for Quota {}

impl serde::Serialize for Quota {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

deserialize_from_str!(Quota);

impl std::fmt::Display for Quota {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.requests, self.window.as_secs())
    }
}

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
    fn new(quota: Quota) -> Self {
        let window = quota.window.as_micros() as i64;
        Self {
            limit: quota.requests,
            interval: (window / i64::from(quota.requests)).max(1),
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

/// One limiter counts one kind of event (requests, failed authentications) per subject.
pub struct RateLimiter<C: Clock = MonotonicClock> {
    /// Names the kind of event: subjects' state is under `{prefix}:{subject}` in Redis.
    prefix: &'static str,
    default_quota: Quota,
    redis: RedisConnection,
    script: Script,
    local: LocalLimiter<C>,
}

impl RateLimiter {
    pub fn new(prefix: &'static str, default_quota: Quota, redis: RedisConnection) -> Self {
        Self {
            prefix,
            default_quota,
            redis,
            script: Script::new(REDIS_GCRA_SCRIPT),
            local: LocalLimiter::new(MonotonicClock::new(), LOCAL_GENERATION_CAPACITY),
        }
    }

    /// Decides one event of `subject` (a client's address, or `key:{id}`) under its own
    /// quota, or the limiter's default one.
    pub async fn check(&self, subject: &str, quota: Option<Quota>) -> Decision {
        let gcra = Gcra::new(quota.unwrap_or(self.default_quota));
        let key = format!("{}:{subject}", self.prefix);
        let (interval, window) = (gcra.interval, gcra.window);
        let script = &self.script;
        let redis_key = &key;
        let outcome = self
            .redis
            .run(|mut conn| async move {
                script
                    .key(redis_key)
                    .arg(interval)
                    .arg(window)
                    .invoke_async::<(i64, i64, i64, i64)>(&mut conn)
                    .await
            })
            .await;
        let decision = match outcome {
            Ok((allowed, slack, reset, wait)) => gcra.decision(allowed == 1, slack, reset, wait),
            Err(_) => self.local.check(key, gcra),
        };
        metrics::counter!(
            "rate_limit_decisions_total",
            "limiter" => self.prefix,
            "decision" => if decision.allowed { "allowed" } else { "limited" },
            "source" => if decision.decided_locally { "local" } else { "redis" },
        )
        .increment(1);
        decision
    }
}

/// The same algorithm in process, used while Redis is unavailable.
struct LocalLimiter<C: Clock> {
    clock: C,
    tats: Mutex<Generations>,
}

impl<C: Clock> LocalLimiter<C> {
    fn new(clock: C, capacity: usize) -> Self {
        Self {
            clock,
            tats: Mutex::new(Generations::new(capacity)),
        }
    }

    fn check(&self, key: String, gcra: Gcra) -> Decision {
        let now = self.clock.now().as_micros() as i64;
        let mut tats = self.tats.lock().expect("rate limiter lock poisoned");
        let (decision, tat) = gcra.decide(tats.take(&key), now);
        tats.put(key, tat);
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
    current: HashMap<String, i64>,
    previous: HashMap<String, i64>,
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
    fn take(&mut self, key: &str) -> Option<i64> {
        self.current
            .remove(key)
            .or_else(|| self.previous.remove(key))
    }

    fn put(&mut self, key: String, tat: i64) {
        if self.current.len() >= self.capacity {
            // Swapping and clearing keeps both maps' allocations: no rehashing from here on.
            std::mem::swap(&mut self.current, &mut self.previous);
            self.current.clear();
        }
        self.current.insert(key, tat);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use std::net::IpAddr;

    use super::*;
    use crate::{
        client::{ClientId, Ipv6Prefix},
        clock::ManualClock,
    };

    /// The local limiter under one quota, checking clients by address.
    struct Limiter {
        local: LocalLimiter<Arc<ManualClock>>,
        gcra: Gcra,
    }

    impl Limiter {
        fn check(&self, client: String) -> Decision {
            self.local.check(client, self.gcra)
        }
    }

    fn limiter(requests: u32, window_secs: u64) -> (Limiter, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::default());
        let quota = Quota::new(requests, window_secs).unwrap();
        let local = LocalLimiter::new(clock.clone(), CAPACITY);
        let limiter = Limiter {
            local,
            gcra: Gcra::new(quota),
        };
        (limiter, clock)
    }

    fn client(ip: impl Into<IpAddr>) -> String {
        ClientId::new(ip.into(), Ipv6Prefix::new(64).unwrap()).to_string()
    }

    const CLIENT_IP: [u8; 4] = [192, 0, 2, 1];

    /// Clients per generation in these tests.
    const CAPACITY: usize = 100;

    /// The `n`th of many distinct clients (none of them `CLIENT_IP`).
    fn other_client(n: usize) -> String {
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
            let tats = limiter.local.tats.lock().unwrap();
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

    #[test]
    fn the_quota_pattern_matches_exactly_what_parsing_accepts() {
        let pattern = regex::Regex::new(QUOTA_PATTERN).unwrap();
        let requests: [u64; 9] = [
            0,
            1,
            9,
            10,
            99,
            999_999_999,
            1_000_000_000,
            1_000_000_001,
            9_999_999_999,
        ];
        let seconds = [
            0, 1, 9, 10, 999, 1000, 9999, 10_000, 79_999, 80_000, 85_999, 86_000, 86_399, 86_400,
            86_401, 86_999, 90_000, 99_999, 100_000,
        ];
        for r in requests {
            for s in seconds {
                let text = format!("{r}/{s}");
                assert_eq!(
                    pattern.is_match(&text),
                    text.parse::<Quota>().is_ok(),
                    "{text}"
                );
            }
        }
        assert!(!pattern.is_match("01/60") && !pattern.is_match("1/060"));
    }

    #[test]
    fn a_quota_reads_as_requests_per_seconds_within_bounds() {
        assert_eq!("1000/60".parse(), Ok(Quota::new(1000, 60).unwrap()));
        assert_eq!(" 5 / 1 ".parse::<Quota>().unwrap().to_string(), "5/1");
        for bad in [
            "",
            "10",
            "0/60",
            "10/0",
            "-1/60",
            "10/86401",
            "1000000001/1",
            "a/b",
            "1/2/3",
        ] {
            assert!(bad.parse::<Quota>().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn each_subject_is_limited_by_the_quota_it_is_checked_with() {
        let (limiter, _clock) = limiter(1, 60);
        let generous = Gcra::new(Quota::new(3, 60).unwrap());
        for _ in 0..3 {
            assert!(limiter.local.check("key:a".into(), generous).allowed);
        }
        assert!(!limiter.local.check("key:a".into(), generous).allowed);
        assert!(limiter.check("key:b".into()).allowed);
        assert!(!limiter.check("key:b".into()).allowed);
    }
}
