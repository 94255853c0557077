//! Shared helpers for the end-to-end tests.
//!
//! Every end-to-end test talks to real servers: the base PostgreSQL (`DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`) on which each test gets its own database ([`TestDb`]), private
//! clusters for tests that stop, crash or replicate PostgreSQL ([`cluster`]), and Redis ([`redis_url`]).

#![warn(missing_docs)]

pub mod accounting;
pub mod cluster;
pub mod proxy;
pub mod redis;
pub mod replication;

use std::time::Duration;

use anyhow::Context as _;

/// Base server used when `DATABASE_URL` is unset (the CI and development default).
pub const DEFAULT_BASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Redis used when `REDIS_URL` is unset.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

/// URL of the base PostgreSQL server on which tests create their databases (`DATABASE_URL` or the local default).
/// Async so that a later version may discover or start a server without changing callers.
pub async fn base_url() -> String {
    base_url_sync()
}

fn base_url_sync() -> String {
    std::env::var("DATABASE_URL").ok().filter(|u| !u.trim().is_empty()).unwrap_or_else(|| DEFAULT_BASE_URL.to_string())
}

/// URL of the Redis server the cache tests use (`REDIS_URL` or `redis://127.0.0.1:6379`).
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").ok().filter(|u| !u.trim().is_empty()).unwrap_or_else(|| DEFAULT_REDIS_URL.to_string())
}

/// Returns `url` with its database replaced by `database`; handles `postgres://` URLs and `key=value` strings.
pub fn with_database(url: &str, database: &str) -> String {
    for scheme in ["postgres://", "postgresql://"] {
        if let Some(rest) = url.strip_prefix(scheme) {
            let (before_query, query) = match rest.find('?') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, ""),
            };
            let authority = before_query.split('/').next().unwrap_or_default();
            return format!("{scheme}{authority}/{database}{query}");
        }
    }
    // key=value form: a later `dbname` wins.
    format!("{url} dbname={database}")
}

/// A plain SQL connection to `url` for a test's own checks (row counts, catalog queries, tampering as a superuser).
pub async fn sql(url: &str) -> tokio_postgres::Client {
    connect(url).await.unwrap_or_else(|e| panic!("connecting to {url}: {e:#}"))
}

/// Polls `cond` every 50 ms until it holds; panics naming `what` after `within`.
pub async fn wait_for<F, Fut>(what: &str, within: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + within;
    while !cond().await {
        assert!(std::time::Instant::now() < deadline, "timed out after {within:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every row once, and every organisation's `seq` exactly `0..n`.
pub async fn assert_exactly_once_and_gap_free(pg: &tokio_postgres::Client, expected: i64) {
    let row = pg.query_one("SELECT count(*), count(DISTINCT event_id) FROM audit_log", &[]).await.unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (expected, expected), "rows, distinct event ids");
    let bad: i64 = pg
        .query_one(
            "SELECT count(*) FROM (SELECT organization_id, count(*) n, count(DISTINCT seq) d, min(seq) lo, \
             max(seq) hi FROM audit_log GROUP BY organization_id) s WHERE n <> d OR lo <> 0 OR hi <> n - 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(bad, 0, "an organisation's seq has a gap or a repeat");
}

async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let mut config: tokio_postgres::Config = url.parse().with_context(|| format!("parsing {url}"))?;
    config.connect_timeout(Duration::from_secs(10));
    let (client, conn) = config.connect(tokio_postgres::NoTls).await.with_context(|| format!("connecting to {url}"))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "test connection closed");
        }
    });
    Ok(client)
}

/// A fresh, uniquely named database on the base server, dropped (`WITH (FORCE)`) when the value is dropped — also
/// when the test panics — so tests never see each other's rows and leave nothing behind.
#[derive(Debug)]
pub struct TestDb {
    /// URL of the new database; hand it to the code under test.
    pub url: String,
    name: String,
    admin_url: String,
    dropped: bool,
}

impl TestDb {
    /// Creates database `<prefix>_<random>` on the base server. Panics with the cause if the server is unreachable:
    /// the end-to-end tests cannot run without it.
    pub async fn create(prefix: &str) -> TestDb {
        match Self::try_create(prefix).await {
            Ok(db) => db,
            Err(e) => panic!("cannot create a test database on {}: {e:#}", base_url_sync()),
        }
    }

    /// Like [`TestDb::create`] but returns the error.
    pub async fn try_create(prefix: &str) -> anyhow::Result<TestDb> {
        let admin_url = base_url().await;
        let name = unique_name(prefix);
        let client = connect(&admin_url).await?;
        // template0 never has connections, so concurrent creations cannot fail with "source database is being
        // accessed by other users".
        client
            .batch_execute(&format!("CREATE DATABASE \"{name}\" TEMPLATE template0 ENCODING 'UTF8'"))
            .await
            .with_context(|| format!("CREATE DATABASE {name}"))?;
        Ok(TestDb { url: with_database(&admin_url, &name), name, admin_url, dropped: false })
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Drops the database now and reports a failure (the `Drop` impl can only log it).
    pub async fn drop(mut self) -> anyhow::Result<()> {
        self.dropped = true;
        drop_database(&self.admin_url, &self.name).await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        self.dropped = true;
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // Its own thread and runtime: works inside or outside a runtime, and while panicking.
        let joined = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(drop_database(&admin_url, &name))
        })
        .join();
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("warning: could not drop test database {}: {e:#}", self.name),
            Err(_) => eprintln!("warning: the thread dropping test database {} panicked", self.name),
        }
    }
}

async fn drop_database(admin_url: &str, name: &str) -> anyhow::Result<()> {
    let client = connect(admin_url).await?;
    client
        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .await
        .with_context(|| format!("DROP DATABASE {name}"))
}

/// `<prefix>_<12 hex>`: lowercase, `[a-z0-9_]`, at most 63 bytes (PostgreSQL's identifier limit).
fn unique_name(prefix: &str) -> String {
    let mut clean: String =
        prefix.to_ascii_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).take(40).collect();
    if clean.is_empty() || clean.starts_with(|c: char| c.is_ascii_digit()) {
        clean.insert_str(0, "t_");
    }
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{clean}_{}", &random[..12])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_is_replaced_in_urls() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/test", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(with_database("postgresql://u:p@h/db?sslmode=disable", "x"), "postgresql://u:p@h/x?sslmode=disable");
        assert_eq!(with_database("postgres://u@h:1", "x"), "postgres://u@h:1/x");
        assert_eq!(with_database("host=h user=u dbname=test", "x"), "host=h user=u dbname=test dbname=x");
        let cfg: tokio_postgres::Config = with_database("host=h user=u dbname=test", "x").parse().unwrap();
        assert_eq!(cfg.get_dbname(), Some("x"));
    }

    #[test]
    fn unique_names_are_valid_identifiers() {
        let a = unique_name("Client-Tests");
        let b = unique_name("Client-Tests");
        assert_ne!(a, b);
        assert!(a.starts_with("client_tests_"), "{a}");
        assert!(unique_name("9x").starts_with("t_9x_"));
        let long = unique_name(&"a".repeat(100));
        assert!(long.len() <= 63, "{long}");
    }

    async fn exists(name: &str) -> bool {
        let client = connect(&base_url().await).await.unwrap();
        let row = client.query_one("SELECT count(*) FROM pg_database WHERE datname = $1", &[&name]).await.unwrap();
        row.get::<_, i64>(0) == 1
    }

    #[tokio::test]
    async fn test_db_is_created_and_dropped_explicitly() {
        let db = TestDb::create("kit_explicit").await;
        let name = db.name().to_string();
        let client = connect(&db.url).await.unwrap();
        let row = client.query_one("SELECT current_database()", &[]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), name);
        // An open connection must not prevent the drop (WITH (FORCE)).
        db.drop().await.unwrap();
        assert!(!exists(&name).await);
        assert!(client.query_one("SELECT 1", &[]).await.is_err(), "the forced drop must end open sessions");
    }

    #[tokio::test]
    async fn test_db_is_dropped_by_drop_impl() {
        let db = TestDb::create("kit_implicit").await;
        let name = db.name().to_string();
        assert!(exists(&name).await);
        drop(db);
        assert!(!exists(&name).await);
    }

    #[test]
    fn test_db_drop_impl_works_outside_a_runtime() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let db = rt.block_on(TestDb::create("kit_noruntime"));
        let name = db.name().to_string();
        drop(db);
        assert!(!rt.block_on(exists(&name)));
    }
}
