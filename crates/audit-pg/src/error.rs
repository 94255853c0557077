//! Driver errors → [`AuditError`]: the kind comes from the SQLSTATE and the server's typed error fields, the
//! underlying error is kept as the source.

use std::time::Duration;

use audit_core::{AuditError, ErrorKind, SqlState};

/// The C routine PostgreSQL names when no partition of a partitioned table accepts a row (SQLSTATE 23514 without
/// a constraint). A typed field of the error report, not message text.
const NO_PARTITION_ROUTINE: &str = "ExecFindPartition";

/// Converts a driver error into the workspace's error, naming what we were doing (`what`) and keeping the
/// SQLSTATE, the server's message and detail, and the driver error as the source.
pub fn pg_error(e: tokio_postgres::Error, what: &str) -> AuditError {
    let err = match e.as_db_error() {
        Some(db) => {
            let code: Option<SqlState> = db.code().code().parse().ok();
            let mut msg = format!("{what}: {} (SQLSTATE {})", db.message(), db.code().code());
            if let Some(d) = db.detail() {
                msg.push_str("; ");
                msg.push_str(d);
            }
            let no_partition = code == Some(SqlState::CHECK_VIOLATION)
                && db.constraint().is_none()
                && db.routine() == Some(NO_PARTITION_ROUTINE);
            match code {
                Some(code) if no_partition => AuditError::from_sqlstate(code, msg).with_kind(ErrorKind::NoPartition),
                Some(code) => AuditError::from_sqlstate(code, msg),
                None => AuditError::permanent(msg),
            }
        }
        // No server error: the connection failed, was closed, or the client could not encode/decode a value.
        None if e.is_closed() => AuditError::unavailable(format!("{what}: the connection is closed")),
        None => AuditError::unavailable(format!("{what}: {e}")),
    };
    err.with_source(e)
}

/// Whether a failed `CREATE TABLE`/`ATTACH`/`CREATE INDEX` may be another process having created the same object
/// first: "exists", "would overlap", or a collision on a catalog unique index.
pub fn is_creation_race(e: &AuditError) -> bool {
    match e.sqlstate() {
        Some(s) if s == SqlState::DUPLICATE_TABLE || s == SqlState::INVALID_OBJECT_DEFINITION => true,
        Some(s) if s == SqlState::DUPLICATE_OBJECT => true,
        // Two concurrent `CREATE TABLE x` can collide on `pg_type_typname_nsp_index` instead of reporting 42P07.
        Some(s) if s == SqlState::UNIQUE_VIOLATION => std::error::Error::source(e)
            .and_then(|s| s.downcast_ref::<tokio_postgres::Error>())
            .and_then(|pg| pg.as_db_error())
            .and_then(|db| db.constraint())
            .is_some_and(|c| c.starts_with("pg_")),
        _ => false,
    }
}

/// Maps a pool checkout failure to the workspace's error.
pub fn pool_error(e: bb8::RunError<AuditError>, waited: Duration) -> AuditError {
    match e {
        bb8::RunError::User(e) => e,
        bb8::RunError::TimedOut => AuditError::unavailable(format!(
            "no database connection became available within {} ms (pool exhausted or database unreachable)",
            waited.as_millis()
        )),
    }
}
