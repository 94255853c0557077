//! Schema migrations (diesel_migrations, embedded from `migrations/` at build time), run over a connection opened
//! by the product's [`Connector`] (same connect timeout and TLS as every other connection) and handed to
//! diesel-async's migration harness.

use audit_core::{AuditError, AuditResult};
use diesel::connection::SimpleConnection;
use diesel_async::AsyncPgConnection;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use crate::connect::{ConnectOptions, Connector};

/// The migrations compiled into this binary.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations");

/// Advisory lock key serialising concurrent migration runs (several instances starting at once).
const MIGRATION_LOCK_KEY: i64 = 0x6175_6469_745f_6d69; // "audit_mi"

type Harness = AsyncConnectionWrapper<AsyncPgConnection>;

/// A migration connection: no statement timeout (a migration may rewrite a large table).
async fn open(connector: &Connector) -> AuditResult<Harness> {
    let options = ConnectOptions {
        statement_timeout: None,
        application_name: "audit-db migrate".into(),
        ..connector.options().clone()
    };
    let (client, connection) =
        connector.with_options(options).connect_unspawned().await.map_err(|e| e.context("migrating"))?;
    let conn = AsyncPgConnection::try_from_client_and_connection(client, connection).await.map_err(|e| {
        AuditError::unavailable(format!("setting up the migration connection to {}: {e}", connector.target()))
            .with_source(e)
    })?;
    Ok(Harness::from(conn))
}

/// Applies every pending migration; returns the versions applied now (empty when the schema was current).
/// Idempotent and safe when several processes run it at once.
pub async fn run_migrations(connector: &Connector) -> AuditResult<Vec<String>> {
    let mut conn = open(connector).await?;
    tokio::task::spawn_blocking(move || -> AuditResult<Vec<String>> {
        conn.batch_execute(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})"))
            .map_err(|e| AuditError::unavailable(format!("taking the migration lock: {e}")).with_source(e))?;
        let applied = conn
            .run_pending_migrations(MIGRATIONS)
            .map(|v| v.iter().map(|m| m.to_string()).collect::<Vec<_>>())
            .map_err(|e| AuditError::permanent(format!("applying migrations: {e}")));
        // Released with the session anyway; unlocking early lets a waiting instance go on at once.
        let _ = conn.batch_execute(&format!("SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})"));
        applied
    })
    .await
    .map_err(|e| AuditError::permanent(format!("migration task failed: {e}")))?
}

/// Reverts the most recent migration (for `audit-db migrate --down` and the migration round-trip test).
pub async fn revert_last(connector: &Connector) -> AuditResult<Option<String>> {
    let mut conn = open(connector).await?;
    tokio::task::spawn_blocking(move || -> AuditResult<Option<String>> {
        let applied =
            conn.applied_migrations().map_err(|e| AuditError::permanent(format!("reading applied migrations: {e}")))?;
        if applied.is_empty() {
            return Ok(None);
        }
        conn.revert_last_migration(MIGRATIONS)
            .map(|v| Some(v.to_string()))
            .map_err(|e| AuditError::permanent(format!("reverting a migration: {e}")))
    })
    .await
    .map_err(|e| AuditError::permanent(format!("migration task failed: {e}")))?
}

/// The migrations compiled into this binary that the database has not applied (what `/ready` checks: a service
/// must not take traffic on a schema older than its code).
pub async fn pending_migrations(connector: &Connector) -> AuditResult<Vec<String>> {
    let mut conn = open(connector).await?;
    tokio::task::spawn_blocking(move || -> AuditResult<Vec<String>> {
        conn.pending_migrations(MIGRATIONS)
            .map(|v| v.iter().map(|m| m.name().to_string()).collect())
            .map_err(|e| AuditError::unavailable(format!("reading applied migrations: {e}")))
    })
    .await
    .map_err(|e| AuditError::permanent(format!("migration task failed: {e}")))?
}
