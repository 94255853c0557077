//! Opening connections: one [`Connector`] per server, parsed once, used by pools and by every dedicated connection
//! (partition DDL, advisory locks, integrity reads), so that every connection the product makes has the same
//! connect timeout, session settings and TLS.

use std::time::Duration;

use audit_core::{AuditError, AuditResult, RetrySchedule};
use backon::Retryable as _;

use crate::tls::{self, ConnectError, PgConnector, describe_target};

/// How connections are opened.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Deadline of TCP connect + TLS handshake + startup + authentication.
    pub connect_timeout: Duration,
    /// Server-side `statement_timeout`: the server cancels a statement that runs longer (a client-side timeout
    /// alone would leave the query running). `None` keeps the server's default (used for DDL and long reads that
    /// set their own).
    pub statement_timeout: Option<Duration>,
    /// `application_name`, visible in `pg_stat_activity`.
    pub application_name: String,
    /// The dependency's name in errors and health reports (`primary`, `replica:r1`).
    pub component: String,
    /// `AUDIT_DB_SSL` (the seed's `ssl: true`): ask for TLS when the URL names no `sslmode` (see [`crate::tls`]).
    pub ssl: bool,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            statement_timeout: None,
            application_name: "audit-db".into(),
            component: "primary".into(),
            ssl: false,
        }
    }
}

/// A parsed server address plus how to connect to it (session settings, TLS built once). Cheap to clone.
#[derive(Clone)]
pub struct Connector {
    /// What the URL said (minus the TLS parameters), before our session settings.
    base: tokio_postgres::Config,
    /// `base` with the options applied, and the TLS configuration.
    pg: PgConnector,
    options: ConnectOptions,
    target: String,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("target", &self.target)
            .field("sslmode", &self.pg.tls().mode())
            .field("options", &self.options)
            .finish()
    }
}

impl Connector {
    /// Parses `url` (a `postgres://` URL or a `key=value` string, with libpq's `sslmode`/`sslrootcert`) and
    /// builds its TLS configuration. A URL or TLS setting that cannot work is invalid input naming what is wrong
    /// (without echoing a password).
    pub fn new(url: &str, options: ConnectOptions) -> AuditResult<Self> {
        let (base, tls) = tls::parse_url(url, options.ssl).map_err(|e| to_audit_error(e, &options.component))?;
        let target = describe_target(&base);
        let pg = PgConnector::new(Self::apply(&base, &options), tls, options.connect_timeout)
            .map_err(|e| to_audit_error(e, &options.component))?;
        Ok(Self { base, pg, options, target })
    }

    /// The same server with other options (e.g. no statement timeout for DDL); the TLS configuration is shared.
    pub fn with_options(&self, options: ConnectOptions) -> Self {
        let pg = self.pg.with_config(Self::apply(&self.base, &options)).unwrap_or_else(|_| self.pg.clone());
        Self { pg, options, ..self.clone() }
    }

    fn apply(base: &tokio_postgres::Config, options: &ConnectOptions) -> tokio_postgres::Config {
        let mut config = base.clone();
        config.connect_timeout(options.connect_timeout);
        // Every session in UTC: catalog bound texts, `now()` and timestamps read the same everywhere. Notices
        // (`… already exists, skipping`) are not worth a log line each.
        let mut server_options = base.get_options().unwrap_or("").to_string();
        server_options.push_str(" -c TimeZone=UTC -c client_min_messages=warning");
        if let Some(t) = options.statement_timeout {
            server_options.push_str(&format!(" -c statement_timeout={}", t.as_millis()));
        }
        config.options(server_options.trim());
        if base.get_application_name().is_none() {
            config.application_name(&options.application_name);
        }
        config
    }

    /// `PostgreSQL at host:port`, for messages that must say where we tried to go.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The options in force.
    pub fn options(&self) -> &ConnectOptions {
        &self.options
    }

    /// The TLS settings in force.
    pub fn tls(&self) -> &tls::TlsSettings {
        self.pg.tls()
    }

    /// Opens one connection within the connect timeout (TLS as configured) and drives it on a background task.
    pub async fn connect(&self) -> AuditResult<tokio_postgres::Client> {
        self.pg.connect().await.map(|(client, _driver)| client).map_err(|e| to_audit_error(e, &self.options.component))
    }

    /// Opens one connection and hands back its driver future undriven (for diesel-async's migration harness).
    pub async fn connect_unspawned(&self) -> AuditResult<(tokio_postgres::Client, tls::PgConnection)> {
        self.pg.connect_unspawned().await.map_err(|e| to_audit_error(e, &self.options.component))
    }
}

/// A connection failure as the workspace's error, naming the dependency unless the settings themselves are wrong.
fn to_audit_error(e: ConnectError, component: &str) -> AuditError {
    let configuration = e.is_configuration();
    let e = AuditError::from(e);
    if configuration { e } else { e.with_component(component.to_string()) }
}

impl Connector {
    /// Waits until the server answers: one connection within `attempts` attempts of the connect timeout each, so
    /// that a down database fails fast with a message naming where we tried, how often, and what ended the last
    /// attempt.
    pub async fn await_reachable(&self, attempts: u32) -> AuditResult<()> {
        let attempts = attempts.max(1);
        let schedule = RetrySchedule::new(attempts, Duration::from_millis(200), Duration::from_secs(1));
        (|| async { self.connect().await.map(drop) })
            .retry(schedule.delays(rand::random()))
            .when(|e: &AuditError| e.class().is_retryable())
            .await
            .map_err(|e| {
                e.context(format!(
                    "cannot reach {} after {attempts} attempt{}",
                    self.target,
                    if attempts == 1 { "" } else { "s" }
                ))
            })
    }
}

/// A URL with its password hidden, for logs and messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => redact_conninfo(url),
    }
}

/// `password=…` hidden in a `key=value` connection string.
fn redact_conninfo(s: &str) -> String {
    s.split_whitespace()
        .map(|kv| if kv.starts_with("password=") { "password=***" } else { kv })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(redact("postgres://u:secret@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("host=h user=u password=secret"), "host=h user=u password=***");
        let e = Connector::new("postgres://u:secret@h:notaport/db", ConnectOptions::default()).unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
        assert_eq!(e.kind(), audit_core::ErrorKind::InvalidInput);
    }

    #[test]
    fn targets_name_host_and_port() {
        let c = Connector::new("postgres://u@db.example:6543/x", ConnectOptions::default()).unwrap();
        assert_eq!(c.target(), "PostgreSQL at db.example:6543");
    }
}
