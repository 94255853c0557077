//! Wiring: configuration from file and environment, the database (given or embedded), and the client with the
//! concrete partition manager, cache, resilience policy and read-replica router.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use audit_cache::TieredCache;
use audit_client::{AuditClient, ClientConfig};
use audit_embedded::{ClusterOptions, PrivateCluster};
use audit_integrity::store::IntegrityStore;
use audit_partition::PartitionManager;
use audit_pg::{Connector, build_pool, redact};
use audit_replica::{ReplicaEndpoint, ReplicaRouter};
use audit_resilience::{BreakerRegistry, Policy, RetrySchedule, names};

use crate::config::AuditConfig;

/// The client type the binary uses.
pub type Client = AuditClient<PartitionManager<Policy>, TieredCache<Policy>, Policy, Router>;

/// The personal-data policy the binary uses (crypto-shredding under the file master key).
pub type Privacy = audit_privacy::Shredder<Policy>;

/// The read-replica router the binary uses (with no replicas configured, every read goes to the primary).
pub type Router = ReplicaRouter<Policy>;

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
    connector: Connector,
    registry: BreakerRegistry,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").field("url", &redact(&self.url)).finish_non_exhaustive()
    }
}

impl App {
    /// Resolves the database. With the embedded default, migrations run first (a fresh machine needs no setup).
    pub async fn open(config: AuditConfig) -> anyhow::Result<Self> {
        let (url, embedded) = resolve_database(&config).await?;
        let connector = Connector::new(&url, config.database.connect_options("primary"))?;
        let registry = BreakerRegistry::from_config(&config.circuit_breaker);
        connector.await_reachable(config.database.max_connection_attempts).await?;
        let app = Self { config, url, embedded, connector, registry };
        if app.embedded.is_some() {
            app.migrate().await?;
        }
        Ok(app)
    }

    /// How connections to the primary are opened.
    pub fn connector(&self) -> &Connector {
        &self.connector
    }

    /// The named circuit breakers of this process (`primary`, `redis`, …).
    pub fn breakers(&self) -> &BreakerRegistry {
        &self.registry
    }

    /// The resilience policy of every primary-database call: the `primary` breaker, bounded retry, per-attempt
    /// timeout of `connectionTimeout + queryTimeout`, overall deadline.
    pub fn database_policy(&self) -> Policy {
        let db = &self.config.database;
        Policy::for_database(
            &self.config.circuit_breaker,
            &self.registry,
            "primary",
            Duration::from_millis(db.connection_timeout),
            Duration::from_millis(db.query_timeout),
        )
    }

    /// The policy of partition work: the `primary` breaker and bounded retry like every database call, but no
    /// per-attempt timeout and a deadline of at least an hour, because dropping a partition of millions of rows
    /// (archive, keep the leaf hashes, drop) is one long step. Short statements stay bounded server-side: DDL by
    /// `partition.lockTimeout`, pooled statements by `queryTimeout`.
    pub fn partition_policy(&self) -> Policy {
        let deadline = Duration::from_millis(self.config.circuit_breaker.timeout_ms).max(Duration::from_secs(3600));
        Policy::from_config(&self.config.circuit_breaker, &self.registry, "primary").with_deadline(deadline)
    }

    /// The partition manager for this database.
    pub async fn partitions(&self) -> anyhow::Result<PartitionManager<Policy>> {
        PartitionManager::connect_with_policy(&self.connector, self.config.partition.clone(), self.partition_policy())
            .await
            .context("opening the partition manager (has `audit-db migrate` run?)")
    }

    /// The index manager of `[indexes]` for this database.
    pub fn indexes(&self) -> audit_index::IndexManager {
        audit_index::IndexManager::new(&self.connector, self.config.indexes.clone())
    }

    /// Applies migrations, premakes partitions and seals the partitions whose period is over (idempotent; on a
    /// database upgraded from the layout with a GIN index on every partition this builds it back, concurrently, on
    /// the partitions no longer written). Returns the migrations applied now.
    pub async fn migrate(&self) -> anyhow::Result<Vec<String>> {
        let applied = audit_pg::run_migrations(&self.connector).await?;
        let partitions = self.partitions().await?;
        partitions.premake().await.context("creating the current and upcoming partitions")?;
        partitions.seal_due(chrono::Utc::now()).await.context("sealing the partitions no longer written")?;
        Ok(applied)
    }

    /// The database side of tamper evidence, on its own small pool, under the primary's policy.
    pub fn integrity(&self) -> anyhow::Result<IntegrityStore<Policy>> {
        let mut options = self.config.database.pool_options();
        options.max_connections = options.max_connections.min(4);
        let wait = options.acquire_timeout;
        let pool = build_pool(self.connector.clone(), &options)?;
        Ok(IntegrityStore::new(pool, self.database_policy(), wait))
    }

    /// The API keys of the HTTP service, on their own small pool; lookups cached for `api.keyCacheTtlMs`.
    pub fn api_keys(&self) -> anyhow::Result<crate::api_keys::ApiKeyStore> {
        let mut options = self.config.database.pool_options();
        options.max_connections = options.max_connections.min(4);
        let wait = options.acquire_timeout;
        let pool = build_pool(self.connector.clone(), &options)?;
        Ok(crate::api_keys::ApiKeyStore::new(pool, wait, Duration::from_millis(self.config.api.key_cache_ttl_ms)))
    }

    /// The checkpoint public key of `integrity.signingKeyFile` (or `signing.pub` beside it); `None` without one.
    pub fn verifier(&self) -> anyhow::Result<Option<audit_integrity::NoteVerifier>> {
        let Some(path) = &self.config.integrity.signing_key_file else { return Ok(None) };
        if let Ok(text) = std::fs::read_to_string(path)
            && let Ok(s) = audit_integrity::NoteSigner::parse(text.trim())
        {
            return Ok(Some(s.verifier()));
        }
        let public = path.with_file_name("signing.pub");
        let text = std::fs::read_to_string(&public)
            .with_context(|| format!("reading {} (or a private key at {})", public.display(), path.display()))?;
        Ok(Some(audit_integrity::NoteVerifier::parse(text.trim())?))
    }

    /// The policy of one read replica: its own breaker (`replica:<id>`) and per-attempt timeout, and no retry —
    /// the router tries another replica or the primary instead of waiting for this one.
    pub fn replica_policy(&self, replica: &ReplicaEndpoint) -> Policy {
        let db = &self.config.database;
        Policy::for_database(
            &self.config.circuit_breaker,
            &self.registry,
            &names::replica(&replica.id),
            Duration::from_millis(db.connection_timeout),
            Duration::from_millis(db.query_timeout),
        )
        .with_retry(RetrySchedule::none())
    }

    /// The read-replica router of `[replicaRouter]` and `[[replicas]]` (probes every replica once before
    /// returning; a replica that does not answer starts excluded).
    pub async fn router(&self) -> anyhow::Result<Router> {
        if self.config.replicas.is_empty() {
            return Ok(ReplicaRouter::without_replicas(self.connector.clone()));
        }
        let replicas = self.config.replicas.iter().map(|r| (r.clone(), self.replica_policy(r))).collect();
        let router = ReplicaRouter::start(
            self.config.replica_router.clone(),
            &self.config.database,
            self.connector.clone(),
            replicas,
        )
        .await
        .context("starting read-replica routing")?;
        Ok(router)
    }

    /// The client's share of the configuration.
    pub fn client_config(&self) -> ClientConfig {
        ClientConfig {
            database: self.config.database.clone(),
            ingest: self.config.ingest.clone(),
            slow_operation_ms: self.config.monitoring.slow_query_threshold,
        }
    }

    /// The personal-data policy of `[privacy]` (`None` without a master key): the master key is read from its file
    /// now, subject keys on demand, on a small pool of the primary under the primary's policy. The HTTP service
    /// shares one between its client and the admin erase route (`crate::privacy::erase_subject`).
    pub fn privacy(&self) -> anyhow::Result<Option<std::sync::Arc<Privacy>>> {
        let p = &self.config.privacy;
        // With a master key but no personal field, nothing new is sealed, but values sealed while the policy was on
        // still read (and subjects can still be erased).
        let Some(path) = p.master_key_file.as_ref() else {
            anyhow::ensure!(
                !p.is_on(),
                "personal fields are configured but no master key: set AUDIT_DB_MASTER_KEY_FILE (`audit-db keygen --master --out DIR`)"
            );
            return Ok(None);
        };
        let text = std::fs::read_to_string(path).with_context(|| format!("reading master key {}", path.display()))?;
        let master =
            audit_privacy::FileMasterKey::parse(&text).with_context(|| format!("parsing {}", path.display()))?;
        let mut options = self.config.database.pool_options();
        options.max_connections = options.max_connections.min(4);
        let wait = options.acquire_timeout;
        let pool = build_pool(self.connector.clone(), &options)?;
        Ok(Some(std::sync::Arc::new(audit_privacy::Shredder::new(
            p.personal_fields.clone(),
            std::sync::Arc::new(master),
            pool,
            self.database_policy(),
            wait,
            Duration::from_secs(p.key_cache_ttl_secs),
        ))))
    }

    /// Which database this is, across processes and hosts: `<system identifier>.<database oid>`.
    async fn database_identity(&self) -> anyhow::Result<String> {
        let c = self.connector.connect().await?;
        let row = c
            .query_one(
                "SELECT (SELECT system_identifier FROM pg_control_system())::text || '.' || \
                 (SELECT oid FROM pg_database WHERE datname = current_database())::text",
                &[],
            )
            .await
            .context("reading the database identity (cache key namespace)")?;
        Ok(row.get(0))
    }

    /// A connected client with the configured personal-data policy installed (fails fast, naming host and port,
    /// when the database is down).
    pub async fn client(&self) -> anyhow::Result<Client> {
        self.client_with_privacy(self.privacy()?).await
    }

    /// A connected client with this personal-data policy (share one [`Privacy`] between the client and an erasure,
    /// so the erasing process forgets the key at once).
    pub async fn client_with_privacy(&self, privacy: Option<std::sync::Arc<Privacy>>) -> anyhow::Result<Client> {
        // Redis: a breaker and no retry — a slow cache must cost little; the database answers instead.
        let redis_policy = Policy::from_config(&self.config.circuit_breaker, &self.registry, "redis")
            .with_retry(RetrySchedule::none());
        // Two deployments on different databases may share one Redis: their answers must never meet, so the
        // Redis keys carry the database's identity (cluster system identifier + database oid; a streaming replica
        // has its primary's, so primary and replicas share entries and generations).
        let mut cache_config = self.config.cache.clone();
        if cache_config.redis_url.is_some() {
            cache_config.key_prefix = format!("{}{}:", cache_config.key_prefix, self.database_identity().await?);
        }
        let cache = TieredCache::with_policy(&cache_config, audit_cache::CacheOptions::default(), redis_policy)?;
        let client = AuditClient::connect_with_router(
            self.client_config(),
            &self.url,
            self.partitions().await?,
            cache,
            self.database_policy(),
            self.router().await?,
        )
        .await?;
        if let Some(p) = privacy {
            client.set_personal_data(p)?;
        }
        Ok(client)
    }
}

/// Compile-time check that the client's futures can cross threads (axum handlers and `tokio::spawn` need it).
#[cfg(test)]
#[allow(dead_code)]
fn client_futures_are_send(c: &Client, f: &audit_core::EventFilter) {
    fn is_send<T: Send>(_: T) {}
    is_send(c.query(f));
    is_send(c.query_with(f, audit_core::Consistency::Eventual));
    is_send(c.count(f));
    is_send(c.get(uuid::Uuid::nil()));
    is_send(c.insert(serde_json::Value::Null));
    is_send(c.insert_batch(vec![]));
    is_send(c.health());
    let owned = f.clone();
    is_send(c.transaction(move |tx| Box::pin(async move { tx.count(&owned).await })));
    is_send(c.begin().commit());
}
