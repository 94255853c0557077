//! Connections, error mapping and the bounded lock-timeout retry shared by every partition operation.

use std::time::Duration;

use audit_core::{AuditError, AuditResult};
use rand::Rng;
use tokio_postgres::{Client, NoTls};

/// SQLSTATE of `lock_not_available` (our `lock_timeout` fired).
pub(crate) const LOCK_NOT_AVAILABLE: &str = "55P03";
/// SQLSTATE of `duplicate_table`.
pub(crate) const DUPLICATE_TABLE: &str = "42P07";
/// SQLSTATE of `invalid_object_definition`, raised when a new partition would overlap an existing one.
pub(crate) const WOULD_OVERLAP: &str = "42P17";
/// SQLSTATE of `unique_violation`: two concurrent `CREATE TABLE x` can collide on a catalog index
/// (`pg_type_typname_nsp_index`) instead of reporting 42P07.
pub(crate) const UNIQUE_VIOLATION: &str = "23505";
/// Attempts of one DDL step before giving up on lock timeouts.
pub(crate) const DDL_ATTEMPTS: u32 = 6;

/// The SQLSTATE of a PostgreSQL error, if the server sent one.
pub(crate) fn sqlstate(e: &tokio_postgres::Error) -> Option<&str> {
    e.code().map(|c| c.code())
}

/// Whether a failed `CREATE TABLE`/`ATTACH` may be another process having created the same partition first.
pub(crate) fn is_creation_race(e: &tokio_postgres::Error) -> bool {
    match e.as_db_error() {
        Some(db) => match db.code().code() {
            DUPLICATE_TABLE | WOULD_OVERLAP => true,
            UNIQUE_VIOLATION => db.constraint().is_some_and(|c| c.starts_with("pg_")),
            _ => false,
        },
        None => false,
    }
}

/// Maps a driver error to the workspace error, keeping the SQLSTATE and naming what we were doing.
pub(crate) fn pg_err(e: tokio_postgres::Error, context: &str) -> AuditError {
    let err = match e.as_db_error() {
        Some(db) => AuditError::from_sqlstate(db.code().code(), format!("{context}: {}", db.message())),
        None if e.is_closed() => AuditError::unavailable(format!("{context}: connection closed")),
        None => AuditError::unavailable(format!("{context}: {e}")),
    };
    err.with_component("primary")
}

/// Quotes an identifier for SQL text (our names are generated, but quoting keeps that safe by construction).
pub(crate) fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Opens one connection, in UTC so that catalog bound texts and `now()` read the same everywhere.
pub(crate) async fn connect(url: &str, application_name: &str) -> AuditResult<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.map_err(|e| pg_err(e, "connecting"))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "partition-manager connection ended");
        }
    });
    client
        .batch_execute(&format!(
            "SET TimeZone = 'UTC'; SET application_name = '{}'",
            application_name.replace('\'', "")
        ))
        .await
        .map_err(|e| pg_err(e, "configuring session"))?;
    Ok(client)
}

/// Sleeps after the `attempt`-th lock timeout of `what`: growing, jittered pauses.
pub(crate) async fn pause_after_lock_timeout(what: &str, attempt: u32) {
    let base = 50u64 << attempt.min(6);
    let pause = base + rand::thread_rng().gen_range(0..=base);
    tracing::info!(what, attempt, pause_ms = pause, "lock timeout; retrying");
    metrics::counter!("audit_partition_lock_timeouts_total").increment(1);
    tokio::time::sleep(Duration::from_millis(pause)).await;
}

/// Evaluates `$body` (an expression yielding `Result<_, tokio_postgres::Error>`, usually `async {..}.await`)
/// again while it fails with `lock_not_available`, up to `DDL_ATTEMPTS` times, pausing in between. Used around
/// every DDL step, which always runs under `lock_timeout`. A macro rather than a closure so the body may
/// borrow the connection mutably.
macro_rules! retry_lock {
    ($what:expr, $body:expr) => {{
        let mut attempt: u32 = 0;
        loop {
            match $body {
                Err(e)
                    if $crate::db::sqlstate(&e) == Some($crate::db::LOCK_NOT_AVAILABLE)
                        && attempt + 1 < $crate::db::DDL_ATTEMPTS =>
                {
                    attempt += 1;
                    $crate::db::pause_after_lock_timeout($what, attempt).await;
                }
                other => break other,
            }
        }
    }};
}
pub(crate) use retry_lock;
