//! The command line: `serve` (the default), `healthcheck`, and key management, which works
//! on the database directly so that a fresh deployment can get its first admin key.

use std::io::Write;

use clap::{Parser, Subcommand};
use serde::Serialize;

use crate::{
    app::access::{KeyError, Keys, NewKey},
    auth::{KeyId, Scopes},
    config::Settings,
    rate_limiter::Quota,
    storage::{Storage, StorageError},
    tenant::Tenant,
};

#[derive(Debug, Parser)]
#[command(
    name = "resilient-analytics",
    version,
    about = "Metrics analytics backend"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP service (the default).
    Serve,
    /// Exit 0 when the service on APP_PORT answers /health/live (for container health checks).
    Healthcheck,
    /// Manage API keys in the database at DATABASE_URL.
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Make a key and print it, with its secret, as one JSON line: the secret is shown only now.
    Create {
        /// The tenant whose points the key writes and reads.
        #[arg(long)]
        tenant: Tenant,
        /// Comma-separated: read, write, admin.
        #[arg(long)]
        scopes: Scopes,
        /// The key's own rate limit, requests/seconds (e.g. 1000/60); default: the global one.
        #[arg(long)]
        quota: Option<Quota>,
        /// Days until the key expires (1 to 3650); default: never.
        #[arg(long)]
        expires_in_days: Option<u32>,
    },
    /// Print every key (never a secret), one JSON line each, newest first.
    List,
    /// Revoke a key by its id: every instance refuses it within seconds.
    Revoke { id: KeyId },
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("invalid DATABASE_URL: {0}")]
    DatabaseUrl(#[source] sqlx::Error),
    #[error("cannot apply the database migrations: {0}")]
    Migrations(#[source] sqlx::migrate::MigrateError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("no key with id {0}")]
    NoSuchKey(KeyId),
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

/// Runs a `keys` command against the database, writing its JSON lines to `out`.
pub async fn keys(
    settings: &Settings,
    command: KeysCommand,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let storage =
        Storage::connect_lazy_with(&settings.database_url, settings.database_statement_timeout)
            .map_err(CliError::DatabaseUrl)?;
    storage
        .apply_migrations()
        .await
        .map_err(CliError::Migrations)?;
    let outcome = run(&Keys::new(storage.clone()), command, out).await;
    storage.close().await;
    outcome
}

async fn run(keys: &Keys, command: KeysCommand, out: &mut impl Write) -> Result<(), CliError> {
    match command {
        KeysCommand::Create {
            tenant,
            scopes,
            quota,
            expires_in_days,
        } => {
            let new = NewKey {
                tenant,
                scopes,
                quota,
                expires_in_days,
            };
            json_line(out, &keys.create_key(new).await?)
        }
        KeysCommand::List => {
            for key in keys.list_keys().await? {
                json_line(out, &key)?;
            }
            Ok(())
        }
        KeysCommand::Revoke { id } => match keys.revoke_key(&id).await? {
            Some(key) => json_line(out, &key),
            None => Err(CliError::NoSuchKey(id)),
        },
    }
}

fn json_line(out: &mut impl Write, value: &impl Serialize) -> Result<(), CliError> {
    serde_json::to_writer(&mut *out, value).map_err(std::io::Error::from)?;
    writeln!(out)?;
    Ok(())
}
