//! Deadlines for one attempt. This is the client-side backstop (a dead network, a blackholed connection); the
//! server-side cancel (`statement_timeout`, which PostgreSQL reports as 57014) is the database client's part.

use std::future::Future;
use std::time::Duration;

use audit_core::{AuditError, AuditResult};

/// Runs `fut` for at most `limit`; when the limit passes, the future is dropped and an Unavailable error says
/// what (`what`) timed out after how long — a dependency that does not answer in time is as good as down.
pub async fn with_timeout<T>(limit: Duration, what: &str, fut: impl Future<Output = AuditResult<T>>) -> AuditResult<T> {
    match tokio::time::timeout(limit, fut).await {
        Ok(result) => result,
        Err(_) => Err(AuditError::unavailable(format!("{what} timed out after {} ms", limit.as_millis()))),
    }
}
