//! PostgreSQL plumbing shared by the write and read paths: error mapping and a bb8 pool of tokio-postgres clients
//! (diesel-async has no COPY, so the write path uses tokio-postgres directly).

use std::time::Duration;

use audit_core::{AuditError, ErrorClass};
use tokio_postgres::NoTls;

/// Converts a driver error into the workspace's classified error, keeping the SQLSTATE.
pub fn pg_error(e: tokio_postgres::Error, what: &str) -> AuditError {
    if let Some(db) = e.as_db_error() {
        let code = db.code().code().to_string();
        let mut msg = format!("{what}: {} (SQLSTATE {code})", db.message());
        if let Some(d) = db.detail() {
            msg.push_str(&format!("; {d}"));
        }
        return AuditError::from_sqlstate(&code, msg).with_component("primary");
    }
    // No server error: the connection failed or was closed.
    AuditError::new(ErrorClass::Unavailable, format!("{what}: {e}")).with_component("primary")
}

/// Converts a diesel error into the classified error.
pub fn diesel_error(e: diesel::result::Error, what: &str) -> AuditError {
    use diesel::result::{DatabaseErrorKind, Error};
    match e {
        Error::DatabaseError(kind, info) => {
            let class = match kind {
                DatabaseErrorKind::UniqueViolation
                | DatabaseErrorKind::ForeignKeyViolation
                | DatabaseErrorKind::NotNullViolation
                | DatabaseErrorKind::CheckViolation => ErrorClass::InvalidInput,
                DatabaseErrorKind::SerializationFailure => ErrorClass::Transient,
                DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand => ErrorClass::Unavailable,
                DatabaseErrorKind::ReadOnlyTransaction => ErrorClass::Unavailable,
                // diesel-async reports most SQLSTATEs as `Unknown` without the code: recover the class of the ones
                // that mean the server is unhealthy or did not answer in time from PostgreSQL's fixed messages.
                _ => unavailable_by_message(info.message()).unwrap_or(ErrorClass::Permanent),
            };
            AuditError::new(class, format!("{what}: {}", info.message())).with_component("primary")
        }
        Error::NotFound => AuditError::new(ErrorClass::InvalidInput, format!("{what}: not found")),
        Error::BrokenTransactionManager => {
            AuditError::new(ErrorClass::Unavailable, format!("{what}: connection left in a broken transaction"))
        }
        other => AuditError::new(ErrorClass::Permanent, format!("{what}: {other}")).with_component("primary"),
    }
}

/// Classes of server messages whose SQLSTATE diesel-async drops (57014 statement timeout or cancel, 57P01–57P03
/// shutdown or startup, 53xxx resources, closed connections).
fn unavailable_by_message(message: &str) -> Option<ErrorClass> {
    const UNAVAILABLE: [&str; 9] = [
        "canceling statement due to statement timeout",
        "canceling statement due to user request",
        "terminating connection due to administrator command",
        "the database system is shutting down",
        "the database system is starting up",
        "the database system is in recovery mode",
        "sorry, too many clients already",
        "connection closed",
        "server closed the connection",
    ];
    let m = message.to_ascii_lowercase();
    UNAVAILABLE.iter().any(|u| m.contains(u)).then_some(ErrorClass::Unavailable)
}

/// Connects a tokio-postgres client and drives its connection on a background task. `statement_timeout` makes the
/// server cancel any statement that runs longer (a client-side timeout alone would leave the query running).
pub async fn connect(
    url: &str,
    connect_timeout: Duration,
    statement_timeout: Option<Duration>,
) -> Result<tokio_postgres::Client, AuditError> {
    let mut cfg: tokio_postgres::Config =
        url.parse().map_err(|e| AuditError::permanent(format!("database URL is not valid: {e}")))?;
    cfg.connect_timeout(connect_timeout);
    if let Some(t) = statement_timeout {
        let mut opts = cfg.get_options().unwrap_or("").to_string();
        opts.push_str(&format!(" -c statement_timeout={}", t.as_millis()));
        cfg.options(opts.trim());
    }
    if cfg.get_application_name().is_none() {
        cfg.application_name("audit-db");
    }
    let (client, conn) = match tokio::time::timeout(connect_timeout, cfg.connect(NoTls)).await {
        Ok(r) => r.map_err(|e| pg_error(e, &format!("connecting to {}", describe_target(&cfg))))?,
        Err(_) => {
            return Err(AuditError::unavailable(format!(
                "connecting to {}: no answer within {} ms",
                describe_target(&cfg),
                connect_timeout.as_millis()
            ))
            .with_component("primary"));
        }
    };
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "database connection closed");
        }
    });
    Ok(client)
}

/// `host:port` of a connection config, for error messages that must name where we tried to go.
pub fn describe_target(cfg: &tokio_postgres::Config) -> String {
    use tokio_postgres::config::Host;
    let host = match cfg.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    format!("PostgreSQL at {host}:{port}")
}

/// `host:port` of a URL (best effort), for messages.
pub fn describe_url(url: &str) -> String {
    url.parse::<tokio_postgres::Config>().map(|c| describe_target(&c)).unwrap_or_else(|_| "PostgreSQL".into())
}

/// bb8 manager for plain tokio-postgres clients (the COPY write path).
#[derive(Debug, Clone)]
pub struct PgClientManager {
    url: String,
    connect_timeout: Duration,
    statement_timeout: Option<Duration>,
}

impl PgClientManager {
    /// A manager that connects to `url`.
    pub fn new(url: impl Into<String>, connect_timeout: Duration, statement_timeout: Option<Duration>) -> Self {
        Self { url: url.into(), connect_timeout, statement_timeout }
    }
}

impl bb8::ManageConnection for PgClientManager {
    type Connection = tokio_postgres::Client;
    type Error = AuditError;

    async fn connect(&self) -> Result<Self::Connection, Self::Error> {
        connect(&self.url, self.connect_timeout, self.statement_timeout).await
    }

    async fn is_valid(&self, conn: &mut Self::Connection) -> Result<(), Self::Error> {
        conn.simple_query("").await.map(|_| ()).map_err(|e| pg_error(e, "checking a pooled connection"))
    }

    fn has_broken(&self, conn: &mut Self::Connection) -> bool {
        conn.is_closed()
    }
}

/// Maps a pool checkout failure to the classified error.
pub fn pool_error(e: bb8::RunError<AuditError>, waited: Duration) -> AuditError {
    match e {
        bb8::RunError::User(e) => e,
        bb8::RunError::TimedOut => AuditError::unavailable(format!(
            "no database connection became available within {} ms (pool exhausted or database unreachable)",
            waited.as_millis()
        ))
        .with_component("primary"),
    }
}

/// Maps a diesel-async pool checkout failure to the classified error.
pub fn read_pool_error(e: bb8::RunError<diesel_async::pooled_connection::PoolError>, waited: Duration) -> AuditError {
    use diesel_async::pooled_connection::PoolError;
    match e {
        bb8::RunError::User(PoolError::ConnectionError(c)) => {
            AuditError::unavailable(format!("connecting to the database: {c}")).with_component("primary")
        }
        bb8::RunError::User(PoolError::QueryError(q)) => diesel_error(q, "checking a pooled connection"),
        bb8::RunError::TimedOut => AuditError::unavailable(format!(
            "no database connection became available within {} ms (pool exhausted or database unreachable)",
            waited.as_millis()
        ))
        .with_component("primary"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_trouble_reported_without_a_sqlstate_is_unavailable() {
        assert_eq!(
            unavailable_by_message("canceling statement due to statement timeout"),
            Some(ErrorClass::Unavailable)
        );
        assert_eq!(
            unavailable_by_message("FATAL: the database system is shutting down"),
            Some(ErrorClass::Unavailable)
        );
        assert_eq!(unavailable_by_message("syntax error at or near \"x\""), None);
    }
}
