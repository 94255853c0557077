//! `[database]`: where the primary is and how connections to it are opened and pooled (the seed's
//! `EnhancedDatabaseConfig.database` plus its pool options).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::connect::ConnectOptions;
use crate::pool::PoolOptions;

/// `[database]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct DatabaseConfig {
    /// Primary's URL; `None` → the embedded private cluster.
    pub url: Option<String>,
    /// Most connections per pool (the seed's `poolSize`, also accepted as `maxConnections`).
    #[serde(alias = "maxConnections")]
    pub pool_size: u32,
    /// Connections kept open while idle, per pool.
    pub min_connections: u32,
    /// An idle connection above `minConnections` is closed after this long, ms.
    pub idle_timeout: u64,
    /// How long a caller waits for a pooled connection, ms (`None`: `connectionTimeout`).
    pub acquire_timeout: Option<u64>,
    /// Check each pooled connection with an empty query when it is handed out.
    pub validate_connections: bool,
    /// Connect timeout, ms.
    pub connection_timeout: u64,
    /// Per-query deadline, ms (enforced server-side too).
    pub query_timeout: u64,
    /// Ask for TLS when the URL names no `sslmode` (the seed's `ssl`; see docs/tls.md).
    pub ssl: bool,
    /// Attempts to reach the database at start before giving up.
    pub max_connection_attempts: u32,
    /// Data directory of the embedded cluster.
    pub data_dir: PathBuf,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: None,
            pool_size: 10,
            min_connections: 0,
            idle_timeout: 600_000,
            acquire_timeout: None,
            validate_connections: false,
            connection_timeout: 5_000,
            query_timeout: 30_000,
            ssl: false,
            max_connection_attempts: 3,
            data_dir: PathBuf::from(".audit-db"),
        }
    }
}

impl DatabaseConfig {
    /// How connections to this database are opened (server-side `statement_timeout` = `queryTimeout`).
    pub fn connect_options(&self, component: &str) -> ConnectOptions {
        ConnectOptions {
            connect_timeout: Duration::from_millis(self.connection_timeout),
            statement_timeout: Some(Duration::from_millis(self.query_timeout)),
            component: component.to_string(),
            ssl: self.ssl,
            ..ConnectOptions::default()
        }
    }

    /// The pool options every pool of this database uses.
    pub fn pool_options(&self) -> PoolOptions {
        PoolOptions {
            min_connections: self.min_connections,
            max_connections: self.pool_size,
            idle_timeout: Duration::from_millis(self.idle_timeout),
            acquire_timeout: Duration::from_millis(self.acquire_timeout.unwrap_or(self.connection_timeout)),
            validate_connections: self.validate_connections,
        }
    }

    /// Checks what types cannot; the error names the key.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.pool_size == 0 {
            return Err(("database.poolSize", "must be at least 1".into()));
        }
        if self.min_connections > self.pool_size {
            return Err((
                "database.minConnections",
                format!("{} is more than poolSize ({})", self.min_connections, self.pool_size),
            ));
        }
        if self.max_connection_attempts == 0 {
            return Err(("database.maxConnectionAttempts", "must be at least 1".into()));
        }
        if self.connection_timeout == 0 {
            return Err(("database.connectionTimeout", "must be at least 1 ms".into()));
        }
        Ok(())
    }
}
