//! Wiring: configuration from file and environment, the database (given or embedded), and the client with the
//! concrete partition manager, cache and resilience policy.

use std::path::Path;

use anyhow::Context as _;
use audit_cache::TieredCache;
use audit_client::AuditClient;
use audit_client::embedded::{ClusterOptions, PrivateCluster};
use audit_core::config::AuditConfig;
use audit_partition::PartitionManager;
use audit_resilience::{BreakerRegistry, Policy, RetryPolicy};

/// The client type the binary uses.
pub type Client = AuditClient<PartitionManager, TieredCache<Policy>, Policy>;

/// Reads the optional TOML file and the process environment into a checked configuration.
pub fn load_config(path: Option<&Path>) -> anyhow::Result<AuditConfig> {
    let text = match path {
        Some(p) => Some(std::fs::read_to_string(p).with_context(|| format!("reading config file {}", p.display()))?),
        None => None,
    };
    Ok(AuditConfig::load(text.as_deref(), |k| std::env::var(k).ok())?)
}

/// Where the database is: `database.url`/`DATABASE_URL`, or the embedded private cluster (started or reused).
pub async fn resolve_database(config: &AuditConfig) -> anyhow::Result<(String, Option<PrivateCluster>)> {
    if let Some(url) = &config.database.url {
        return Ok((url.clone(), None));
    }
    let cluster = PrivateCluster::open(&config.database.data_dir, ClusterOptions::default())
        .await
        .with_context(|| format!("starting the embedded PostgreSQL in {}", config.database.data_dir.display()))?;
    Ok((cluster.url(), Some(cluster)))
}

/// Everything a command needs.
pub struct App {
    /// The configuration in force.
    pub config: AuditConfig,
    /// The primary's URL.
    pub url: String,
    /// The embedded cluster, when one is used (kept running after exit, reused next time).
    pub embedded: Option<PrivateCluster>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").field("url", &audit_client::redact(&self.url)).finish_non_exhaustive()
    }
}

impl App {
    /// Resolves the database. With the embedded default, migrations run first (a fresh machine needs no setup).
    pub async fn open(config: AuditConfig) -> anyhow::Result<Self> {
        let (url, embedded) = resolve_database(&config).await?;
        let app = Self { config, url, embedded };
        if app.embedded.is_some() {
            app.migrate().await?;
        }
        Ok(app)
    }

    /// The partition manager for this database.
    pub async fn partitions(&self) -> anyhow::Result<PartitionManager> {
        PartitionManager::connect(&self.url, self.config.partition.clone())
            .await
            .context("opening the partition manager (has `audit-db migrate` run?)")
    }

    /// Applies migrations and premakes partitions (idempotent). Returns the migrations applied now.
    pub async fn migrate(&self) -> anyhow::Result<Vec<String>> {
        let applied = audit_client::run_migrations(&self.url).await?;
        self.partitions().await?.premake().await.context("creating the current and upcoming partitions")?;
        Ok(applied)
    }

    /// A connected client (fails fast, naming host and port, when the database is down).
    pub async fn client(&self) -> anyhow::Result<Client> {
        audit_client::check_reachable(&self.url, &self.config).await?;
        let registry = BreakerRegistry::from_config(&self.config.circuit_breaker);
        // Redis: a breaker and no retry — a slow cache must cost little; the database answers instead.
        let redis_policy =
            Policy::from_config(&self.config.circuit_breaker, &registry, "redis").with_retry(RetryPolicy::none());
        let cache = TieredCache::with_policy(&self.config.cache, audit_cache::CacheOptions::default(), redis_policy)?;
        let policy = Policy::for_database(&self.config.circuit_breaker, &self.config.database, &registry, "primary");
        Ok(AuditClient::connect(self.config.clone(), &self.url, self.partitions().await?, cache, policy).await?)
    }
}

/// Compile-time check that the client's futures can cross threads (axum handlers and `tokio::spawn` need it).
#[cfg(test)]
#[allow(dead_code)]
fn client_futures_are_send(c: &Client, f: &audit_core::EventFilter) {
    fn is_send<T: Send>(_: T) {}
    is_send(c.query(f));
    is_send(c.insert(serde_json::Value::Null));
    is_send(c.insert_batch(vec![]));
    is_send(c.health());
}
