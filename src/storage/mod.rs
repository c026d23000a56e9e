//! PostgreSQL: the pool, migrations, and every SQL statement the service runs.

mod idempotency;
mod keys;
mod metrics;
mod rollups;
mod series;
mod summary_epochs;
mod tagged;

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
    migrate::MigrateError,
    postgres::{PgConnectOptions, PgPoolOptions},
};

pub use idempotency::{Claim, KeyedTransaction, StoredResponse};
pub use keys::NewKeyRow;
pub use metrics::{MAX_STATEMENT_BYTES, SamplesStored, Stored};
pub use summary_epochs::ALL_TENANTS_EPOCH;

/// A request waits at most this long for a connection, so an outage is a prompt 503.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);
/// The default of DATABASE_STATEMENT_TIMEOUT_SECONDS.
const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);
const MIGRATION_RETRY_DELAY: Duration = Duration::from_secs(1);
/// PostgreSQL's query_canceled: the statement timeout (or a cancel request) stopped the
/// statement, and its transaction was rolled back.
const QUERY_CANCELED: &str = "57014";
/// PostgreSQL's idle_in_transaction_session_timeout: the session was ended and its
/// transaction rolled back.
const IDLE_IN_TRANSACTION_TIMEOUT: &str = "25P03";

/// Cloneable, so that every writer of a group commit can be told the group's outcome.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    /// Nothing was committed, and a retry may succeed: PostgreSQL cannot be reached, the
    /// schema is not in place yet, or the server cancelled the statement (its timeout).
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// PostgreSQL refused the data itself (a data exception or a constraint): retrying the
    /// same data cannot help. Carries the constraint's name when there is one.
    #[error("the database refused the data: {0}")]
    Rejected(String),
    /// The write may or may not have committed: the connection was lost, or no answer came
    /// in time, while a statement or a commit was in flight. For a read, just unavailable.
    #[error("database outcome unknown: {0}")]
    OutcomeUnknown(String),
    #[error("database error: {0}")]
    Query(#[source] Arc<sqlx::Error>),
    /// Stored data that cannot be read back (a bug, or a hand-edited row).
    #[error("corrupt data: {0}")]
    Corrupt(String),
}

impl StorageError {
    /// Whether the write that failed so may have committed all the same.
    pub fn may_have_committed(&self) -> bool {
        matches!(self, Self::OutcomeUnknown(_))
    }
}

impl From<sqlx::Error> for StorageError {
    fn from(error: sqlx::Error) -> Self {
        use sqlx::Error::*;
        let failure = match &error {
            // No connection could be had: nothing was sent.
            PoolTimedOut | PoolClosed | Tls(_) => Failure::NotCommitted,
            // The connection broke: perhaps while connecting, perhaps after the statement was
            // sent or even after its commit; sqlx cannot tell which.
            Io(_) | Protocol(_) | WorkerCrashed => Failure::Unknown,
            Database(db) => db
                .code()
                .map_or(Failure::Error, |code| Failure::of_sqlstate(&code)),
            _ => Failure::Error,
        };
        match failure {
            Failure::NotCommitted => Self::Unavailable(error.to_string()),
            Failure::Unknown => Self::OutcomeUnknown(error.to_string()),
            Failure::Refused => {
                let constraint = match &error {
                    Database(db) => db.constraint().unwrap_or("no constraint named"),
                    _ => "no constraint named",
                };
                Self::Rejected(constraint.to_owned())
            }
            Failure::Error => Self::Query(Arc::new(error)),
        }
    }
}

/// What a failed statement says about the database and about its own effect.
#[derive(Debug, PartialEq, Eq)]
enum Failure {
    /// The database is unavailable, and the statement had no effect.
    NotCommitted,
    /// The database is unavailable, and the statement may have taken effect.
    Unknown,
    /// The database refused the data (class 22, data exception; 23, integrity constraint
    /// violation): retrying the same data would not help.
    Refused,
    /// The statement itself failed (a bug): retrying it would not help.
    Error,
}

impl Failure {
    fn of_sqlstate(code: &str) -> Self {
        match code {
            QUERY_CANCELED | IDLE_IN_TRANSACTION_TIMEOUT => Self::NotCommitted,
            // admin_shutdown, crash_shutdown: the server ended the session under a statement,
            // which may have committed just before.
            "57P01" | "57P02" => Self::Unknown,
            // Class 08: connection exception; other 57P0x: not yet accepting connections, or
            // the database dropped; 53: insufficient resources. Each fails the statement
            // before it commits.
            _ if code.starts_with("08") || code.starts_with("57P") || code.starts_with("53") => {
                Self::NotCommitted
            }
            _ if code.starts_with("22") || code.starts_with("23") => Self::Refused,
            _ => Self::Error,
        }
    }
}

#[derive(Clone)]
pub struct Storage {
    pool: PgPool,
    migrated: Arc<AtomicBool>,
    /// How long `run` waits for a statement before giving up on its outcome.
    backstop: Duration,
    /// Series known to be in `metric_series`.
    series: Arc<series::SeriesIds>,
}

impl Storage {
    /// `connect_lazy_with` the default statement timeout.
    pub fn connect_lazy(url: &str) -> Result<Self, sqlx::Error> {
        Self::connect_lazy_with(url, DEFAULT_STATEMENT_TIMEOUT)
    }

    /// Creates the pool without connecting: the service starts even while PostgreSQL is down.
    /// On every connection the server itself cancels a statement after `statement_timeout`
    /// and ends a session left idle in a transaction as long, so a statement the client gave
    /// up on is rolled back instead of committing later.
    pub fn connect_lazy_with(url: &str, statement_timeout: Duration) -> Result<Self, sqlx::Error> {
        // Whole milliseconds, the settings' unit; 0 would mean no timeout at all.
        let millis = statement_timeout.as_millis().max(1);
        let options = url.parse::<PgConnectOptions>()?.options([
            ("statement_timeout", millis),
            ("idle_in_transaction_session_timeout", millis),
        ]);
        let pool = PgPoolOptions::new()
            .max_connections(20)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            // A connection's buffers grow to the largest message it sent or read (a 16 MiB
            // batch) and keep that size: 20 of them would hold hundreds of MB for nothing.
            .after_release(|connection, _| {
                Box::pin(async move {
                    sqlx::Connection::shrink_buffers(connection);
                    Ok(true)
                })
            })
            .connect_lazy_with(options);
        Ok(Self {
            pool,
            migrated: Arc::new(AtomicBool::new(false)),
            backstop: backstop(statement_timeout),
            series: Arc::default(),
        })
    }

    /// Applies migrations in the background, retrying until PostgreSQL answers. Until then
    /// every query is refused as unavailable.
    pub fn spawn_migrations(&self) -> tokio::task::JoinHandle<()> {
        let storage = self.clone();
        tokio::spawn(async move {
            loop {
                match storage.migrate().await {
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

    /// Applies the migrations now, once (for the command line, which needs the schema at once
    /// or an error).
    pub async fn apply_migrations(&self) -> Result<(), MigrateError> {
        self.migrate().await?;
        self.migrated.store(true, Ordering::Release);
        Ok(())
    }

    /// Closes the pool's connections, waiting for the ones in use to be returned.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Applies the migrations on a connection of their own, without the statement timeout:
    /// a migration may rightly take long (an index over millions of rows).
    async fn migrate(&self) -> Result<(), MigrateError> {
        // A later setting overrides the pool's.
        let options = (*self.pool.connect_options())
            .clone()
            .options([("statement_timeout", 0)]);
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(options);
        let migrated = sqlx::migrate!().run(&pool).await;
        pool.close().await;
        migrated
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

    /// Runs one statement (or transaction) with the schema in place. The server's statement
    /// timeout bounds it; the client's backstop only catches a server that does not answer.
    async fn run<T>(
        &self,
        statement: impl Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, StorageError> {
        if !self.is_migrated() {
            return Err(StorageError::Unavailable(
                "migrations have not been applied yet".into(),
            ));
        }
        tokio::time::timeout(self.backstop, statement)
            .await
            .map_err(|_| {
                StorageError::OutcomeUnknown(format!(
                    "no answer from the database within {:?}",
                    self.backstop
                ))
            })?
            .map_err(StorageError::from)
    }
}

/// How long the client waits before it gives up on a statement's outcome: longer than the
/// wait for a connection plus the server's statement timeout, so that a timeout normally
/// comes back as the server's cancellation (nothing committed). The second statement timeout
/// leaves room for a transaction's other statements and its commit.
fn backstop(statement_timeout: Duration) -> Duration {
    ACQUIRE_TIMEOUT + statement_timeout * 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancelled_statement_or_transaction_is_known_not_to_have_committed() {
        for code in [
            QUERY_CANCELED,
            IDLE_IN_TRANSACTION_TIMEOUT,
            "57P03",
            "53300",
            "08P01",
        ] {
            assert_eq!(Failure::of_sqlstate(code), Failure::NotCommitted, "{code}");
        }
    }

    #[test]
    fn a_session_ended_under_a_statement_leaves_its_outcome_unknown() {
        for code in ["57P01", "57P02"] {
            assert_eq!(Failure::of_sqlstate(code), Failure::Unknown, "{code}");
        }
        let lost = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(matches!(
            StorageError::from(sqlx::Error::Io(lost)),
            StorageError::OutcomeUnknown(_)
        ));
        assert!(matches!(
            StorageError::from(sqlx::Error::PoolTimedOut),
            StorageError::Unavailable(_)
        ));
    }

    #[test]
    fn data_the_database_refuses_is_told_from_other_errors_of_the_statement() {
        for code in ["23505", "23514", "22003", "22008"] {
            assert_eq!(Failure::of_sqlstate(code), Failure::Refused, "{code}");
        }
        for code in ["42P01", "42883", "XX000"] {
            assert_eq!(Failure::of_sqlstate(code), Failure::Error, "{code}");
        }
    }

    #[test]
    fn the_backstop_outlasts_the_wait_for_a_connection_and_the_servers_timeout() {
        let statement_timeout = Duration::from_secs(1);
        assert!(backstop(statement_timeout) > ACQUIRE_TIMEOUT + statement_timeout);
    }
}
