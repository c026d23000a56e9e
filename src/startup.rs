//! Wires the mechanisms together and runs the server.

use std::{future::Future, sync::Arc, time::Duration};

use axum::{Router, extract::ConnectInfo};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
};
use tokio::net::TcpListener;
use tower::ServiceExt;

use crate::{
    cache::SummaryCache,
    circuit_breaker::CircuitBreaker,
    config::{Settings, Timeouts},
    enrichment::{EnrichmentClient, SimulatedService},
    http::{self, AppState},
    idempotency,
    ingest::Ingestor,
    rate_limiter::RateLimiter,
    redis_connection::RedisConnection,
    storage::Storage,
    telemetry,
};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("invalid value for DATABASE_URL: {0}")]
    DatabaseUrl(#[source] sqlx::Error),
    #[error("invalid value for REDIS_URL: {0}")]
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
}

impl Application {
    /// Binds the listener and prepares every dependency without waiting for any: PostgreSQL
    /// and Redis may still be down, and the service recovers once they answer.
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        let storage =
            Storage::connect_lazy_with(&settings.database_url, settings.database_statement_timeout)
                .map_err(StartupError::DatabaseUrl)?;
        storage.spawn_migrations();
        storage.spawn_rollup_compaction(ROLLUP_COMPACTION_PERIOD);
        storage.spawn_idempotency_key_cleanup(idempotency::CLEANUP_PERIOD, idempotency::KEY_TTL);
        let redis = RedisConnection::new(&settings.redis_url).map_err(StartupError::RedisUrl)?;
        let enrichment = EnrichmentClient::new(
            SimulatedService::new(settings.external_service.failure_rate),
            CircuitBreaker::new(settings.circuit_breaker),
            settings.external_service,
            settings.cache_ttl,
        );
        let cache = Arc::new(SummaryCache::new(redis.clone(), settings.cache_ttl));
        let state = AppState {
            ingestor: Ingestor::start(storage.clone(), cache.clone()),
            cache,
            rate_limiter: Arc::new(RateLimiter::new(settings.rate_limit, redis.clone())),
            enrichment: Arc::new(enrichment),
            trusted_proxies: settings.trusted_proxies.into(),
            prometheus: telemetry::prometheus(),
            storage,
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
        let mut connections = auto::Builder::new(TokioExecutor::new());
        // A client that trickles its headers (or idles on a kept-alive connection) is cut off.
        connections
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.timeouts.header_read);
        let graceful = GracefulShutdown::new();
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
            let router = self.router.clone();
            let service =
                hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
                    request.extensions_mut().insert(ConnectInfo(peer));
                    router.clone().oneshot(request)
                });
            let (connections, watcher) = (connections.clone(), graceful.watcher());
            let first_byte_timeout = self.timeouts.header_read;
            tokio::spawn(async move {
                // hyper's header timeout starts once it knows the protocol, i.e. after the
                // first bytes: a connection that sends nothing would be kept forever.
                let mut first = [0; 1];
                match tokio::time::timeout(first_byte_timeout, stream.peek(&mut first)).await {
                    Ok(Ok(1..)) => {}
                    _ => return,
                }
                let connection =
                    connections.serve_connection_with_upgrades(TokioIo::new(stream), service);
                if let Err(error) = watcher.watch(connection.into_owned()).await {
                    tracing::debug!(%error, %peer, "connection ended with an error");
                }
            });
        }
        drop(self.listener);
        tracing::info!("no longer accepting connections; finishing in-flight requests");
        let grace = async {
            // A request already sent on an accepted connection may not have been read yet;
            // telling connections to close at once would drop it unanswered.
            tokio::time::sleep(SHUTDOWN_DRAIN).await;
            graceful.shutdown().await;
        };
        match tokio::time::timeout(self.timeouts.shutdown_grace, grace).await {
            Ok(()) => tracing::info!("all connections closed"),
            Err(_) => tracing::warn!("grace period over; closing the remaining connections"),
        }
        Ok(())
    }
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
