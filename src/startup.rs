//! Wires the mechanisms together and runs the server.

use std::{future::Future, net::SocketAddr, sync::Arc};

use axum::Router;
use tokio::net::TcpListener;

use crate::{
    cache::SummaryCache,
    circuit_breaker::CircuitBreaker,
    config::Settings,
    enrichment::{EnrichmentClient, SimulatedService},
    http::{self, AppState},
    rate_limiter::RateLimiter,
    redis_connection::RedisConnection,
    storage::Storage,
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

pub struct Application {
    listener: TcpListener,
    router: Router,
}

impl Application {
    /// Binds the listener and prepares every dependency without waiting for any: PostgreSQL
    /// and Redis may still be down, and the service recovers once they answer.
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        let storage =
            Storage::connect_lazy(&settings.database_url).map_err(StartupError::DatabaseUrl)?;
        storage.spawn_migrations();
        let redis = RedisConnection::new(&settings.redis_url).map_err(StartupError::RedisUrl)?;
        let enrichment = EnrichmentClient::new(
            SimulatedService::new(settings.external_service.failure_rate),
            CircuitBreaker::new(settings.circuit_breaker),
            settings.external_service,
        );
        let state = AppState {
            cache: Arc::new(SummaryCache::new(redis.clone(), settings.cache_ttl)),
            rate_limiter: Arc::new(RateLimiter::new(settings.rate_limit, redis.clone())),
            enrichment: Arc::new(enrichment),
            trusted_proxies: settings.trusted_proxies.into(),
            storage,
            redis,
        };
        let address = format!("{}:{}", settings.host, settings.port);
        let listener = TcpListener::bind((settings.host.as_str(), settings.port))
            .await
            .map_err(|source| StartupError::Bind { address, source })?;
        Ok(Self {
            listener,
            router: http::router(state),
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

    /// Serves until `shutdown` completes, letting in-flight requests finish.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        tracing::info!(address = ?self.listener.local_addr()?, "listening");
        axum::serve(
            self.listener,
            self.router
                .into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await
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
    tracing::info!("shutdown signal received; finishing in-flight requests");
}
