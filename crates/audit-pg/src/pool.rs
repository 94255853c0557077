//! The connection pool: bb8 over tokio-postgres clients that remember their prepared statements.
//!
//! One pool type serves reads (diesel-built queries, see [`crate::build_query`]), the COPY write path and every
//! other statement, so that pooling, deadlines and TLS are decided once.

use std::collections::HashMap;
use std::time::Duration;

use audit_core::{AuditError, AuditResult};
use postgres_types::Type;
use tokio_postgres::Statement;

use crate::connect::Connector;
use crate::error::{pg_error, pool_error};

/// Prepared statements kept per connection before the cache is cleared (dynamic filters produce a bounded number
/// of shapes; this guards against an unbounded one).
const STATEMENT_CACHE_LIMIT: usize = 512;

/// A pooled connection: the client plus its prepared statements, so that a repeated query costs one round trip
/// (bind + execute), as a raw prepared statement does.
pub struct PgConn {
    client: tokio_postgres::Client,
    statements: HashMap<String, Statement>,
    /// A caller's transaction is open on this connection: if the connection comes back to the pool like this (the
    /// caller's future was dropped), it is discarded rather than handed to someone else mid-transaction.
    in_caller_transaction: bool,
}

impl std::fmt::Debug for PgConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConn").field("prepared", &self.statements.len()).finish_non_exhaustive()
    }
}

impl PgConn {
    /// Wraps a connected client.
    pub fn new(client: tokio_postgres::Client) -> Self {
        Self { client, statements: HashMap::new(), in_caller_transaction: false }
    }

    /// Marks (or clears) a caller's open transaction on this connection (see the field's doc).
    pub fn set_in_caller_transaction(&mut self, open: bool) {
        self.in_caller_transaction = open;
    }

    /// The client, for statements that are not worth caching (DDL, COPY, transactions).
    pub fn client(&mut self) -> &mut tokio_postgres::Client {
        &mut self.client
    }

    /// The statement for `sql` with parameter types `types`, prepared on first use and kept.
    pub async fn prepare_cached(&mut self, sql: &str, types: &[Type]) -> AuditResult<Statement> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let stmt = self.client.prepare_typed(sql, types).await.map_err(|e| pg_error(e, "preparing a statement"))?;
        if self.statements.len() >= STATEMENT_CACHE_LIMIT {
            self.statements.clear();
        }
        self.statements.insert(sql.to_string(), stmt.clone());
        Ok(stmt)
    }
}

impl std::ops::Deref for PgConn {
    type Target = tokio_postgres::Client;
    fn deref(&self) -> &tokio_postgres::Client {
        &self.client
    }
}

impl std::ops::DerefMut for PgConn {
    fn deref_mut(&mut self) -> &mut tokio_postgres::Client {
        &mut self.client
    }
}

/// bb8 manager that opens connections through a [`Connector`].
#[derive(Debug, Clone)]
pub struct PgManager {
    connector: Connector,
}

impl PgManager {
    /// A manager for the connector's server.
    pub fn new(connector: Connector) -> Self {
        Self { connector }
    }
}

impl bb8::ManageConnection for PgManager {
    type Connection = PgConn;
    type Error = AuditError;

    async fn connect(&self) -> Result<PgConn, AuditError> {
        self.connector.connect().await.map(PgConn::new)
    }

    async fn is_valid(&self, conn: &mut PgConn) -> Result<(), AuditError> {
        conn.client.simple_query("").await.map(|_| ()).map_err(|e| pg_error(e, "checking a pooled connection"))
    }

    fn has_broken(&self, conn: &mut PgConn) -> bool {
        conn.client.is_closed() || conn.in_caller_transaction
    }
}

/// A pool of [`PgConn`].
pub type PgPool = bb8::Pool<PgManager>;

/// A connection checked out of a [`PgPool`], owning its place in the pool (so it can move into a task or a
/// repeatable operation).
pub type PooledConn = bb8::PooledConnection<'static, PgManager>;

/// How a pool behaves (from `[database]`, see [`crate::DatabaseConfig::pool_options`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolOptions {
    /// Connections kept open while idle.
    pub min_connections: u32,
    /// Most connections.
    pub max_connections: u32,
    /// An idle connection above `min_connections` is closed after this long.
    pub idle_timeout: Duration,
    /// How long a caller waits for a connection (pool exhausted or server unreachable).
    pub acquire_timeout: Duration,
    /// Check each connection with an empty query when it is handed out (one extra round trip per checkout; off by
    /// default because a broken connection is detected and replaced on its first failure anyway).
    pub validate_connections: bool,
}

impl Default for PoolOptions {
    fn default() -> Self {
        crate::DatabaseConfig::default().pool_options()
    }
}

/// Builds a pool. Connections are opened lazily (a database that is down fails the first checkout, within
/// `acquireTimeout`, instead of failing construction), except the `minConnections` bb8 keeps warm.
pub fn build_pool(connector: Connector, options: &PoolOptions) -> AuditResult<PgPool> {
    if options.max_connections == 0 {
        return Err(AuditError::invalid("database.poolSize: must be at least 1"));
    }
    if options.min_connections > options.max_connections {
        return Err(AuditError::invalid(format!(
            "database.minConnections: {} is more than poolSize ({})",
            options.min_connections, options.max_connections
        )));
    }
    // `retry_connection(false)`: a refused connection is reported at once (the resilience policy decides about
    // retrying) instead of bb8 silently retrying until the checkout times out.
    Ok(bb8::Pool::builder()
        .max_size(options.max_connections)
        .min_idle(Some(options.min_connections).filter(|n| *n > 0))
        .idle_timeout(Some(options.idle_timeout.max(Duration::from_millis(1))))
        .connection_timeout(options.acquire_timeout)
        .test_on_check_out(options.validate_connections)
        .retry_connection(false)
        .build_unchecked(PgManager::new(connector)))
}

/// Checks a connection out of `pool`, as an [`AuditError`] naming the wait when none comes.
pub async fn checkout(pool: &PgPool, waited: Duration) -> AuditResult<PooledConn> {
    pool.get_owned().await.map_err(|e| pool_error(e, waited))
}
