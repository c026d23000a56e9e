//! The shared Redis connection: one multiplexed connection that reconnects by itself, a short
//! timeout on every operation, and a brief back-off after a failure so that an outage costs
//! callers nothing (they degrade at once instead of each waiting for a timeout).

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use redis::{
    RedisError,
    aio::{ConnectionManager, ConnectionManagerConfig},
};

use crate::clock::{Clock, MonotonicClock};

/// How long one Redis operation may take before it counts as an outage.
const OPERATION_TIMEOUT: Duration = Duration::from_millis(250);
/// After a failure, Redis is not tried again for this long.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum RedisUnavailable {
    #[error("redis is backing off after a recent failure")]
    BackingOff,
    #[error("redis operation timed out")]
    Timeout,
    #[error("redis error: {0}")]
    Redis(#[from] RedisError),
}

#[derive(Clone)]
pub struct RedisConnection {
    manager: ConnectionManager,
    state: Arc<OutageState>,
}

struct OutageState {
    clock: MonotonicClock,
    /// Monotonic microseconds before which no operation is attempted.
    retry_at_micros: AtomicU64,
    down: AtomicBool,
}

impl RedisConnection {
    /// Never blocks and never fails for an unreachable server: the connection is made on first use.
    pub fn new(url: &str) -> Result<Self, RedisError> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(OPERATION_TIMEOUT))
            .set_response_timeout(Some(OPERATION_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(100));
        Ok(Self {
            manager: ConnectionManager::new_lazy_with_config(client, config)?,
            state: Arc::new(OutageState {
                clock: MonotonicClock::new(),
                retry_at_micros: AtomicU64::new(0),
                down: AtomicBool::new(false),
            }),
        })
    }

    /// Runs one operation (a command, pipeline or script: one round trip) unless Redis failed
    /// within the last second.
    pub async fn run<T, F, Fut>(&self, operation: F) -> Result<T, RedisUnavailable>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        if self.state.now_micros() < self.state.retry_at_micros.load(Ordering::Relaxed) {
            return Err(RedisUnavailable::BackingOff);
        }
        self.attempt(operation).await
    }

    /// Whether Redis answers a PING now, ignoring any back-off (for health checks).
    pub async fn ping(&self) -> bool {
        self.attempt(
            |mut conn| async move { redis::cmd("PING").query_async::<String>(&mut conn).await },
        )
        .await
        .is_ok()
    }

    async fn attempt<T, F, Fut>(&self, operation: F) -> Result<T, RedisUnavailable>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let result =
            match tokio::time::timeout(OPERATION_TIMEOUT, operation(self.manager.clone())).await {
                Ok(Ok(value)) => Ok(value),
                Ok(Err(error)) => Err(RedisUnavailable::Redis(error)),
                Err(_) => Err(RedisUnavailable::Timeout),
            };
        match &result {
            Ok(_) => self.state.mark_up(),
            Err(error) => self.state.mark_down(error),
        }
        result
    }
}

impl OutageState {
    fn now_micros(&self) -> u64 {
        self.clock.now().as_micros() as u64
    }

    fn mark_up(&self) {
        if self.down.swap(false, Ordering::Relaxed) {
            tracing::info!("redis is reachable again");
        }
    }

    fn mark_down(&self, error: &RedisUnavailable) {
        let retry_at = self.now_micros() + RETRY_AFTER_FAILURE.as_micros() as u64;
        self.retry_at_micros.store(retry_at, Ordering::Relaxed);
        if !self.down.swap(true, Ordering::Relaxed) {
            tracing::warn!(%error, "redis is unavailable; degrading (no cache, local rate limits)");
        }
    }
}
