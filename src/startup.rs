//! Wires the mechanisms together and runs the server.

use std::{
    future::Future,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Router, extract::ConnectInfo};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
};
use tower::ServiceExt;

use crate::{
    app::{
        access::{Access, Keys},
        summaries::Summaries,
        writes::Writes,
    },
    auth::{ApiKey, AuthMode},
    cache::SummaryCache,
    circuit_breaker::CircuitBreaker,
    clock::{Clock, MonotonicClock},
    config::{Settings, Timeouts},
    enrichment::{EnrichmentClient, SimulatedService},
    http::{self, AppState, BodyBudget},
    idempotency,
    rate_limiter::RateLimiter,
    redis_connection::RedisConnection,
    storage::Storage,
    telemetry,
};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("invalid value for DATABASE_URL: {0}")]
    DatabaseUrl(#[source] sqlx::Error),
    #[error("invalid value for REDIS_URL or REDIS_CLUSTER_NODES: {0}")]
    RedisUrl(#[source] redis::RedisError),
    #[error("cannot listen on APP_HOST:APP_PORT {address:?}: {source}")]
    Bind {
        address: String,
        #[source]
        source: std::io::Error,
    },
}

/// How often pending rollup deltas are folded into the rollups.
const ROLLUP_COMPACTION_PERIOD: Duration = Duration::from_secs(1);

/// After the listener closes, connections keep being served this long before they are asked
/// to close (each then finishes the request it is serving).
const SHUTDOWN_DRAIN: Duration = Duration::from_millis(500);

pub struct Application {
    listener: TcpListener,
    router: Router,
    timeouts: Timeouts,
    storage: Storage,
    /// Migrations and maintenance: stopped once the requests are done.
    background: Vec<tokio::task::JoinHandle<()>>,
}

impl Application {
    /// Binds the listener and prepares every dependency without waiting for any: PostgreSQL
    /// and Redis may still be down, and the service recovers once they answer.
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        // First: the mechanisms record their initial values (the breaker's state gauge) as they
        // are built, and the `metrics` facade drops whatever it gets before a recorder exists.
        let prometheus = telemetry::prometheus();
        let storage =
            Storage::connect_lazy_with(&settings.database_url, settings.database_statement_timeout)
                .map_err(StartupError::DatabaseUrl)?;
        let mut background = vec![
            storage.spawn_migrations(),
            storage.spawn_rollup_compaction(ROLLUP_COMPACTION_PERIOD),
            storage
                .spawn_idempotency_key_cleanup(idempotency::CLEANUP_PERIOD, idempotency::KEY_TTL),
        ];
        let redis = RedisConnection::new(&settings.redis_url, &settings.redis_cluster_nodes)
            .map_err(StartupError::RedisUrl)?;
        let enrichment = EnrichmentClient::new(
            SimulatedService::new(settings.external_service.failure_rate),
            CircuitBreaker::new(settings.circuit_breaker),
            settings.external_service,
            settings.cache_ttl,
        );
        let cache = Arc::new(SummaryCache::new(
            redis.clone(),
            storage.clone(),
            settings.cache_ttl,
        ));
        let access = Arc::new(Access::new(&settings.auth, storage.clone(), redis.clone()));
        match settings.auth.mode {
            AuthMode::Off => tracing::warn!(
                "AUTH_MODE=off: every client may write, read and administer, as tenant default"
            ),
            AuthMode::Required => tracing::info!("AUTH_MODE=required: requests need an API key"),
        }
        let keys = Keys::new(storage.clone());
        if let Some(key) = settings.auth.bootstrap_admin_key.clone() {
            background.push(spawn_bootstrap_key(keys.clone(), key));
        }
        let enrichment = Arc::new(enrichment);
        let state = AppState {
            writes: Writes::start(storage.clone(), cache.clone()),
            summaries: Summaries::new(storage.clone(), cache, enrichment.clone()),
            body_budget: Arc::new(BodyBudget::new()),
            rate_limiter: Arc::new(RateLimiter::new(
                "rate_limit",
                settings.rate_limit,
                redis.clone(),
            )),
            access,
            keys,
            metrics_public: settings.auth.metrics_public,
            enrichment,
            trusted_proxies: settings.trusted_proxies.into(),
            client_ipv6_prefix: settings.client_ipv6_prefix,
            prometheus,
            storage: storage.clone(),
            redis,
        };
        let address = format!("{}:{}", settings.host, settings.port);
        let listener = TcpListener::bind((settings.host.as_str(), settings.port))
            .await
            .map_err(|source| StartupError::Bind { address, source })?;
        Ok(Self {
            listener,
            router: http::router(state, settings.timeouts),
            timeouts: settings.timeouts,
            storage,
            background,
        })
    }

    pub fn port(&self) -> u16 {
        self.listener
            .local_addr()
            .map(|a| a.port())
            .unwrap_or_default()
    }

    /// Serves until SIGINT or SIGTERM, letting in-flight requests finish.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.run_until(shutdown_signal()).await
    }

    /// Serves until `shutdown` completes; then stops accepting and lets in-flight requests
    /// finish within the grace period.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        tracing::info!(address = ?self.listener.local_addr()?, "listening");
        let idle_timeout = self.timeouts.header_read;
        let mut connections = auto::Builder::new(TokioExecutor::new());
        // A client that trickles its headers is cut off (idleness is `serve_connection`'s).
        connections
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(idle_timeout);
        // A dead HTTP/2 peer is dropped: after this long without a frame from it the server
        // pings, and closes the connection when the ping is not answered within as long
        // again. This also ends one whose peer never acknowledges a graceful close's ping.
        connections
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(idle_timeout)
            .keep_alive_timeout(idle_timeout);
        let connections = Arc::new(connections);
        // Every connection holds a receiver: a send asks them all to close, and once every
        // receiver is dropped, every connection has ended.
        let (stop, _) = watch::channel(());
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok(connection) => connection,
                    Err(error) => {
                        // Usually out of file descriptors: back off instead of spinning.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            tokio::spawn(serve_connection(
                connections.clone(),
                (stream, peer),
                self.router.clone(),
                idle_timeout,
                stop.subscribe(),
            ));
        }
        drop(self.listener);
        finish_connections(stop, self.timeouts.shutdown_grace).await;
        // Maintenance is transactional: stopping it mid-way rolls its work back, to be
        // redone by the next start.
        for task in &self.background {
            task.abort();
        }
        for task in self.background {
            let _ = task.await;
        }
        // Bounded: connections of requests cut off by the grace period may never come back.
        let _ = tokio::time::timeout(SHUTDOWN_DRAIN, self.storage.close()).await;
        Ok(())
    }
}

/// Serves one connection until it ends. It is asked to close once it has had no request in
/// flight for `idle_timeout` (from its start, too: one that never sends a byte is closed) or
/// when `stopping` changes; either way gracefully: requests in flight are answered, HTTP/1
/// closes after its current response, HTTP/2 sends GOAWAY and then admits no new stream.
async fn serve_connection(
    connections: Arc<auto::Builder<TokioExecutor>>,
    (stream, peer): (TcpStream, SocketAddr),
    router: Router,
    idle_timeout: Duration,
    mut stopping: watch::Receiver<()>,
) {
    let activity = Arc::new(ConnectionActivity::new(MonotonicClock::new()));
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            let in_flight = activity.request_started();
            request.extensions_mut().insert(ConnectInfo(peer));
            let response = router.clone().oneshot(request);
            async move {
                let response = response.await;
                drop(in_flight);
                response
            }
        })
    };
    let connection = connections.serve_connection_with_upgrades(TokioIo::new(stream), service);
    let mut connection = std::pin::pin!(connection);
    let mut closing = false;
    let outcome = loop {
        tokio::select! {
            outcome = connection.as_mut() => break outcome,
            _ = stopping.changed(), if !closing => {}
            () = activity.idle_for_at_least(idle_timeout), if !closing => {
                tracing::debug!(%peer, "closing an idle connection");
            }
        }
        connection.as_mut().graceful_shutdown();
        closing = true;
    };
    if let Err(error) = outcome {
        tracing::debug!(%error, %peer, "connection ended with an error");
    }
}

/// Whether a connection is handling a request, and since when it has not been. HTTP/2
/// handles several at once.
struct ConnectionActivity<C: Clock> {
    clock: C,
    state: Mutex<Activity>,
}

struct Activity {
    in_flight: usize,
    idle_since: Duration,
}

impl<C: Clock> ConnectionActivity<C> {
    fn new(clock: C) -> Self {
        let idle_since = clock.now();
        Self {
            clock,
            state: Mutex::new(Activity {
                in_flight: 0,
                idle_since,
            }),
        }
    }

    /// Counts a request as in flight until the returned guard is dropped.
    fn request_started(self: &Arc<Self>) -> RequestInFlight<C> {
        self.lock().in_flight += 1;
        RequestInFlight(self.clone())
    }

    /// How long the connection has had no request in flight; `None` while it has one.
    fn idle_for(&self) -> Option<Duration> {
        let state = self.lock();
        (state.in_flight == 0).then(|| self.clock.now().saturating_sub(state.idle_since))
    }

    /// Completes once the connection has had no request in flight for `timeout`.
    async fn idle_for_at_least(&self, timeout: Duration) {
        loop {
            // While a request is in flight, look again a whole timeout later.
            let idle = self.idle_for().unwrap_or_default();
            if idle >= timeout {
                return;
            }
            tokio::time::sleep(timeout - idle).await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Activity> {
        self.state
            .lock()
            .expect("connection activity lock poisoned")
    }
}

struct RequestInFlight<C: Clock>(Arc<ConnectionActivity<C>>);

impl<C: Clock> Drop for RequestInFlight<C> {
    fn drop(&mut self) {
        let now = self.0.clock.now();
        let mut state = self.0.lock();
        state.in_flight -= 1;
        if state.in_flight == 0 {
            state.idle_since = now;
        }
    }
}

/// Lets in-flight requests finish within `grace`, then asks every connection to close.
async fn finish_connections(stop: watch::Sender<()>, grace: Duration) {
    tracing::info!("no longer accepting connections; finishing in-flight requests");
    let drained = async {
        // A request already sent on an accepted connection may not have been read yet;
        // telling connections to close at once would drop it unanswered.
        tokio::time::sleep(SHUTDOWN_DRAIN).await;
        // Fails only when no connection is left to tell.
        let _ = stop.send(());
        stop.closed().await;
    };
    match tokio::time::timeout(grace, drained).await {
        Ok(()) => tracing::info!("all connections closed"),
        Err(_) => tracing::warn!("grace period over; closing the remaining connections"),
    }
}

/// Stores `BOOTSTRAP_ADMIN_KEY` once PostgreSQL and the schema are there.
fn spawn_bootstrap_key(keys: Keys, key: ApiKey) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Err(error) = keys.ensure_bootstrap_key(&key).await {
            tracing::debug!(%error, "bootstrap admin key not stored yet; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown signal received");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn activity() -> (Arc<ConnectionActivity<Arc<ManualClock>>>, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::default());
        (Arc::new(ConnectionActivity::new(clock.clone())), clock)
    }

    #[test]
    fn a_connection_is_idle_from_its_start_until_its_first_request() {
        let (activity, clock) = activity();
        clock.advance(Duration::from_secs(3));
        assert_eq!(activity.idle_for(), Some(Duration::from_secs(3)));
        let _request = activity.request_started();
        assert_eq!(activity.idle_for(), None);
    }

    #[test]
    fn a_request_in_flight_keeps_the_connection_busy_however_long_it_takes() {
        let (activity, clock) = activity();
        let request = activity.request_started();
        clock.advance(Duration::from_secs(3600));
        assert_eq!(activity.idle_for(), None);
        drop(request);
        assert_eq!(activity.idle_for(), Some(Duration::ZERO));
    }

    #[test]
    fn idleness_counts_from_the_end_of_the_last_of_concurrent_requests() {
        let (activity, clock) = activity();
        let first = activity.request_started();
        let second = activity.request_started();
        clock.advance(Duration::from_secs(1));
        drop(first);
        clock.advance(Duration::from_secs(5));
        assert_eq!(activity.idle_for(), None, "the second is still in flight");
        drop(second);
        clock.advance(Duration::from_secs(2));
        assert_eq!(activity.idle_for(), Some(Duration::from_secs(2)));
    }
}
