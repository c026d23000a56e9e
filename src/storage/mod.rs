//! PostgreSQL: the pool, migrations, and every SQL statement the service runs.

mod idempotency;
mod metrics;
mod rollups;

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};

pub use idempotency::{Claim, KeyedTransaction, StoredResponse};
pub use metrics::Stored;

/// A request waits at most this long for a connection, so an outage is a prompt 503.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);
/// Upper bound for one statement including the wait for a connection.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);
const MIGRATION_RETRY_DELAY: Duration = Duration::from_secs(1);

/// Cloneable, so that every writer of a group commit can be told the group's outcome.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    /// PostgreSQL cannot be reached, or the schema is not in place yet.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// PostgreSQL refused the data itself (a data exception or a constraint): retrying the
    /// same data cannot help. Carries the constraint's name when there is one.
    #[error("the database refused the data: {0}")]
    Rejected(String),
    #[error("database error: {0}")]
    Query(#[source] Arc<sqlx::Error>),
    /// Stored data that cannot be read back (a bug, or a hand-edited row).
    #[error("corrupt data: {0}")]
    Corrupt(String),
}

impl StorageError {
    /// Whether the write that failed so may have committed all the same.
    pub fn may_have_committed(&self) -> bool {
        false
    }
}

impl From<sqlx::Error> for StorageError {
    fn from(error: sqlx::Error) -> Self {
        use sqlx::Error::*;
        let unavailable = match &error {
            PoolTimedOut | PoolClosed | Io(_) | Tls(_) | Protocol(_) | WorkerCrashed => true,
            // Class 08: connection exception; 57P0x: shutdown or not yet accepting connections;
            // 53: insufficient resources.
            Database(db) => db.code().is_some_and(|code| {
                code.starts_with("08") || code.starts_with("57P") || code.starts_with("53")
            }),
            _ => false,
        };
        // Class 22: data exception; 23: integrity constraint violation.
        let rejected = match &error {
            Database(db)
                if db
                    .code()
                    .is_some_and(|c| c.starts_with("22") || c.starts_with("23")) =>
            {
                Some(db.constraint().unwrap_or("no constraint named").to_owned())
            }
            _ => None,
        };
        if unavailable {
            Self::Unavailable(error.to_string())
        } else if let Some(constraint) = rejected {
            Self::Rejected(constraint)
        } else {
            Self::Query(Arc::new(error))
        }
    }
}

#[derive(Clone)]
pub struct Storage {
    pool: PgPool,
    migrated: Arc<AtomicBool>,
}

impl Storage {
    /// Creates the pool without connecting: the service starts even while PostgreSQL is down.
    pub fn connect_lazy(url: &str) -> Result<Self, sqlx::Error> {
        let options: PgConnectOptions = url.parse()?;
        let pool = PgPoolOptions::new()
            .max_connections(20)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(options);
        Ok(Self {
            pool,
            migrated: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Applies migrations in the background, retrying until PostgreSQL answers. Until then
    /// every query is refused as unavailable.
    pub fn spawn_migrations(&self) -> tokio::task::JoinHandle<()> {
        let storage = self.clone();
        tokio::spawn(async move {
            loop {
                match sqlx::migrate!().run(&storage.pool).await {
                    Ok(()) => {
                        storage.migrated.store(true, Ordering::Release);
                        tracing::info!("database migrations applied");
                        return;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "migrations not applied yet; retrying");
                        tokio::time::sleep(MIGRATION_RETRY_DELAY).await;
                    }
                }
            }
        })
    }

    /// Closes the pool's connections, waiting for the ones in use to be returned.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    pub fn is_migrated(&self) -> bool {
        self.migrated.load(Ordering::Acquire)
    }

    /// Whether PostgreSQL answers a trivial query within a second.
    pub async fn ping(&self) -> bool {
        let ping = sqlx::query_scalar!(r#"select 1 as "one!""#).fetch_one(&self.pool);
        matches!(
            tokio::time::timeout(Duration::from_secs(1), ping).await,
            Ok(Ok(1))
        )
    }

    /// Publishes the pool's size and idle connections as gauges.
    pub fn record_pool_gauges(&self) {
        ::metrics::gauge!("db_pool_connections").set(f64::from(self.pool.size()));
        ::metrics::gauge!("db_pool_idle_connections").set(self.pool.num_idle() as f64);
    }

    /// Runs `job` every `period` once the schema is in place, for as long as the process
    /// runs; a job that reports more work left is run again at once. Failures (PostgreSQL
    /// down) are retried at the next tick.
    fn spawn_maintenance<F, Fut>(
        &self,
        name: &'static str,
        period: Duration,
        job: F,
    ) -> tokio::task::JoinHandle<()>
    where
        F: Fn(Self) -> Fut + Send + 'static,
        Fut: Future<Output = Result<bool, StorageError>> + Send,
    {
        let storage = self.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                if !storage.is_migrated() {
                    continue;
                }
                loop {
                    match job(storage.clone()).await {
                        Ok(true) => continue,
                        Ok(false) => break,
                        Err(error) => {
                            tracing::debug!(%error, job = name, "maintenance failed; retrying later");
                            break;
                        }
                    }
                }
            }
        })
    }

    /// Runs one statement with the schema in place, bounded in time.
    async fn run<T>(
        &self,
        statement: impl Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, StorageError> {
        if !self.is_migrated() {
            return Err(StorageError::Unavailable(
                "migrations have not been applied yet".into(),
            ));
        }
        tokio::time::timeout(STATEMENT_TIMEOUT, statement)
            .await
            .map_err(|_| StorageError::Unavailable("statement timed out".into()))?
            .map_err(StorageError::from)
    }
}
