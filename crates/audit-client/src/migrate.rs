//! Schema migrations (diesel_migrations, embedded from `migrations/` at build time).

use audit_core::{AuditError, AuditResult};
use diesel::Connection;
use diesel::connection::SimpleConnection;
use diesel_async::AsyncPgConnection;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

/// The migrations compiled into this binary.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations");

/// Advisory lock key serialising concurrent migration runs (several instances starting at once).
const MIGRATION_LOCK_KEY: i64 = 0x6175_6469_745f_6d69; // "audit_mi"

/// Applies every pending migration; returns the versions applied now (empty when the schema was current).
/// Idempotent and safe when several processes run it at once.
pub async fn run_migrations(url: &str) -> AuditResult<Vec<String>> {
    let url = url.to_string();
    tokio::task::spawn_blocking(move || -> AuditResult<Vec<String>> {
        let mut conn = AsyncConnectionWrapper::<AsyncPgConnection>::establish(&url).map_err(|e| {
            AuditError::unavailable(format!("connecting to {} to migrate: {e}", crate::pg::describe_url(&url)))
        })?;
        conn.batch_execute(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})"))
            .map_err(|e| AuditError::unavailable(format!("taking the migration lock: {e}")))?;
        let applied = conn
            .run_pending_migrations(MIGRATIONS)
            .map(|v| v.iter().map(|m| m.to_string()).collect::<Vec<_>>())
            .map_err(|e| AuditError::permanent(format!("applying migrations: {e}")));
        let _ = conn.batch_execute(&format!("SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})"));
        applied
    })
    .await
    .map_err(|e| AuditError::permanent(format!("migration task failed: {e}")))?
}

/// Reverts the most recent migration (for `audit-db migrate --down` and the migration round-trip test).
pub async fn revert_last(url: &str) -> AuditResult<Option<String>> {
    let url = url.to_string();
    tokio::task::spawn_blocking(move || -> AuditResult<Option<String>> {
        let mut conn = AsyncConnectionWrapper::<AsyncPgConnection>::establish(&url)
            .map_err(|e| AuditError::unavailable(format!("connecting to migrate: {e}")))?;
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
