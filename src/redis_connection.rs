//! The shared Redis connection: one multiplexed connection that reconnects by itself (to one
//! server, or to every master of a Redis Cluster), a short timeout on every operation, and a
//! brief back-off after a failure so that an outage costs callers nothing (they degrade at once
//! instead of each waiting for a timeout).
//!
//! On a cluster, a command, script or pipeline goes to the master of its keys' slot, so every
//! caller that touches several keys at once puts them under one hash tag (`{...}`).

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use redis::{
    Cmd, Pipeline, RedisError, RedisFuture, Value,
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
    cluster::{ClusterClient, ClusterConfig},
    cluster_async::ClusterConnection,
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
    connection: Connection,
    state: Arc<OutageState>,
}

/// What an operation is run on: a connection to one server, or to a cluster.
#[derive(Clone)]
pub enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(connection) => connection.req_packed_command(cmd),
            Self::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(connection) => connection.req_packed_commands(pipeline, offset, count),
            Self::Cluster(connection) => connection.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(connection) => connection.get_db(),
            Self::Cluster(connection) => connection.get_db(),
        }
    }
}

struct OutageState {
    clock: MonotonicClock,
    /// Monotonic microseconds before which no operation is attempted.
    retry_at_micros: AtomicU64,
    down: AtomicBool,
}

impl RedisConnection {
    /// A connection to the server at `url`, or to the cluster that `cluster_nodes` (`host:port`
    /// or `redis://` URLs) belong to when there are any. Never blocks and never fails for an
    /// unreachable server: the connection is made on first use.
    pub fn new(url: &str, cluster_nodes: &[String]) -> Result<Self, RedisError> {
        let connection = if cluster_nodes.is_empty() {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(OPERATION_TIMEOUT))
                .set_response_timeout(Some(OPERATION_TIMEOUT))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(100));
            Connection::Single(ConnectionManager::new_lazy_with_config(
                redis::Client::open(url)?,
                config,
            )?)
        } else {
            let nodes = cluster_nodes.iter().map(|node| {
                if node.contains("://") {
                    node.clone()
                } else {
                    format!("redis://{node}")
                }
            });
            // Few retries, quickly: a master being replaced is waited out by the back-off
            // below, with local decisions meanwhile, not by holding requests.
            let client = ClusterClient::builder(nodes)
                .retries(2)
                .min_retry_wait(10)
                .max_retry_wait(100)
                .build()?;
            let config = ClusterConfig::new()
                .set_connection_timeout(OPERATION_TIMEOUT)
                .set_response_timeout(OPERATION_TIMEOUT);
            Connection::Cluster(client.get_pending_async_connection_with_config(config))
        };
        Ok(Self {
            connection,
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
        F: FnOnce(Connection) -> Fut,
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
        F: FnOnce(Connection) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let result =
            match tokio::time::timeout(OPERATION_TIMEOUT, operation(self.connection.clone())).await
            {
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
