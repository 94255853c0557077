//! Configuration: the seed's `EnhancedDatabaseConfig` sections as typed, validated structs, read from an optional
//! TOML text and then from environment variables (which win). Reading the file and the environment is the
//! caller's job (this crate does no I/O): pass the text and a lookup function.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A configuration problem, naming the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration key `{key}`: {reason}")]
pub struct ConfigError {
    /// The TOML path or environment variable at fault.
    pub key: String,
    /// What is wrong with it.
    pub reason: String,
}

fn cfg_err(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError { key: key.into(), reason: reason.into() }
}

/// How time partitions are subdivided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PartitionStrategy {
    /// Time ranges only.
    Range,
    /// Time ranges, each sub-partitioned by hash of `organization_id`.
    Hash,
    /// Time ranges, each sub-partitioned by `data_classification`.
    List,
}

/// Length of one time partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PartitionInterval {
    /// Calendar months (UTC).
    Monthly,
    /// Calendar quarters (UTC).
    Quarterly,
    /// Calendar years (UTC).
    Yearly,
}

impl PartitionInterval {
    /// Parses `monthly|quarterly|yearly`.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "monthly" => Some(Self::Monthly),
            "quarterly" => Some(Self::Quarterly),
            "yearly" => Some(Self::Yearly),
            _ => None,
        }
    }
}

/// `[database]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct DatabaseConfig {
    /// Primary's URL; `None` → the embedded private cluster.
    pub url: Option<String>,
    /// Pool size for queries.
    pub pool_size: u32,
    /// Connect timeout, ms.
    pub connection_timeout: u64,
    /// Per-query deadline, ms (enforced server-side too).
    pub query_timeout: u64,
    /// Require TLS.
    pub ssl: bool,
    /// Connect attempts before giving up.
    pub max_connection_attempts: u32,
    /// Data directory of the embedded cluster.
    pub data_dir: PathBuf,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: None,
            pool_size: 10,
            connection_timeout: 5_000,
            query_timeout: 30_000,
            ssl: false,
            max_connection_attempts: 3,
            data_dir: PathBuf::from(".audit-db"),
        }
    }
}

/// `[partition]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct PartitionConfig {
    /// Sub-partitioning strategy.
    pub strategy: PartitionStrategy,
    /// Partition key column (only `timestamp` is supported).
    pub partition_column: String,
    /// Time partition length.
    pub interval: PartitionInterval,
    /// Default retention, days (per-classification policies may differ).
    pub retention_days: u32,
    /// Run maintenance in the background.
    pub auto_maintenance: bool,
    /// Background maintenance period, ms.
    pub maintenance_interval: u64,
    /// Periods kept ready ahead of now.
    pub premake: u32,
    /// Hash buckets per period for the `hash` strategy.
    pub hash_buckets: u32,
    /// Where retention archives go.
    pub archive_dir: Option<PathBuf>,
    /// `lock_timeout` for partition DDL, ms.
    pub lock_timeout: u64,
}

impl Default for PartitionConfig {
    fn default() -> Self {
        Self {
            strategy: PartitionStrategy::Range,
            partition_column: "timestamp".into(),
            interval: PartitionInterval::Monthly,
            retention_days: 2555,
            auto_maintenance: false,
            maintenance_interval: 3_600_000,
            premake: 3,
            hash_buckets: 4,
            archive_dir: None,
            lock_timeout: 2_000,
        }
    }
}

/// `[cache]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct CacheConfig {
    /// Cache query answers at all.
    pub enabled: bool,
    /// L1 memory budget, MiB.
    #[serde(rename = "maxSizeMB")]
    pub max_size_mb: u64,
    /// Entry time to live, seconds.
    #[serde(rename = "defaultTTL")]
    pub default_ttl: u64,
    /// Most L1 entries.
    pub max_keys: u64,
    /// L2 Redis URL (`None` → L1 only).
    pub redis_url: Option<String>,
    /// Talk Redis Cluster protocol.
    pub redis_cluster_mode: bool,
    /// Prefix of every Redis key.
    pub key_prefix: String,
    /// Without Redis: how long L1 may serve an answer that misses another process's writes, ms.
    pub local_staleness_ms: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_size_mb: 100,
            default_ttl: 300,
            max_keys: 10_000,
            redis_url: None,
            redis_cluster_mode: false,
            key_prefix: "audit-db:".into(),
            local_staleness_ms: 1_000,
        }
    }
}

/// `[circuitBreaker]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct CircuitBreakerConfig {
    /// Use breakers at all.
    pub enabled: bool,
    /// Consecutive unavailable errors that open a breaker.
    pub failure_threshold: u32,
    /// Overall deadline of one protected call including retries, ms.
    pub timeout_ms: u64,
    /// First open period, ms (grows with jitter on repeated failure).
    pub reset_timeout_ms: u64,
    /// Calls admitted while half-open.
    pub half_open_probes: u32,
    /// Attempts per call (1 = no retry).
    pub retry_attempts: u32,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            failure_threshold: 5,
            timeout_ms: 30_000,
            reset_timeout_ms: 1_000,
            half_open_probes: 1,
            retry_attempts: 5,
        }
    }
}

/// `[monitoring]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct MonitoringConfig {
    /// Collect metrics.
    pub enabled: bool,
    /// Queries slower than this are logged at warn, ms.
    pub slow_query_threshold: u64,
    /// How long the seed kept metrics (kept for compatibility; metrics are exported, not stored).
    pub metrics_retention_days: u32,
    /// `tracing` filter (`info`, `debug`, …).
    pub log_level: String,
}

impl Default for MonitoringConfig {
    fn default() -> Self {
        Self { enabled: true, slow_query_threshold: 1_000, metrics_retention_days: 7, log_level: "info".into() }
    }
}

/// `[ingest]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct IngestConfig {
    /// Group commit flushes at this many events…
    pub batch_max_events: usize,
    /// …or when the oldest waiting event has waited this long, µs.
    pub batch_max_wait_us: u64,
    /// Most events waiting for a flush; beyond it `insert` fails fast with an unavailable error.
    pub queue_capacity: usize,
    /// Allowed clock skew into the future, seconds.
    pub max_future_skew_secs: i64,
    /// Largest `details`, bytes.
    pub max_details_bytes: usize,
    /// How long a batch waits for an unavailable database (breaker open, connection refused) before its callers get
    /// the error, ms. Events wait in memory meanwhile (bounded by `queueCapacity`); nothing acknowledged is lost.
    pub outage_patience_ms: u64,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            batch_max_events: 2_000,
            batch_max_wait_us: 2_000,
            queue_capacity: 100_000,
            max_future_skew_secs: 3_600,
            max_details_bytes: 64 * 1024,
            outage_patience_ms: 30_000,
        }
    }
}

/// `[integrity]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct IntegrityConfig {
    /// Ed25519 signing key file (`audit-db keygen`).
    pub signing_key_file: Option<PathBuf>,
    /// Seal every log on this period, seconds (`None`: only on demand).
    pub checkpoint_interval_secs: Option<u64>,
}

/// Everything, as one value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct AuditConfig {
    /// `[database]`
    pub database: DatabaseConfig,
    /// `[partition]`
    pub partition: PartitionConfig,
    /// `[cache]`
    pub cache: CacheConfig,
    /// `[circuitBreaker]`
    pub circuit_breaker: CircuitBreakerConfig,
    /// `[monitoring]`
    pub monitoring: MonitoringConfig,
    /// `[ingest]`
    pub ingest: IngestConfig,
    /// `[integrity]`
    pub integrity: IntegrityConfig,
    /// Read replica URLs, in order (`AUDIT_DB_READ_REPLICA_1..N`).
    pub replicas: Vec<String>,
}

fn parse_env<T: std::str::FromStr>(key: &str, raw: &str) -> Result<T, ConfigError> {
    raw.trim().parse().map_err(|_| cfg_err(key, format!("`{raw}` is not a valid value")))
}

fn parse_bool(key: &str, raw: &str) -> Result<bool, ConfigError> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(cfg_err(key, format!("`{raw}` is not a boolean (true/false)"))),
    }
}

impl AuditConfig {
    /// Builds the configuration from an optional TOML text, then environment overrides, then checks it.
    pub fn load(toml_text: Option<&str>, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut c: AuditConfig = match toml_text {
            Some(t) => toml::from_str(t).map_err(|e| {
                let msg = e.message().to_string();
                let key = msg.split('`').nth(1).map(str::to_string).unwrap_or_else(|| "config file".to_string());
                cfg_err(key, msg)
            })?,
            None => AuditConfig::default(),
        };
        c.apply_env(&env)?;
        c.check()?;
        Ok(c)
    }

    fn apply_env(&mut self, env: &impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let get = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        if let Some(v) = get("DATABASE_URL") {
            self.database.url = Some(v);
        }
        if let Some(v) = get("AUDIT_DB_POOL_SIZE") {
            self.database.pool_size = parse_env("AUDIT_DB_POOL_SIZE", &v)?;
        }
        if let Some(v) = get("AUDIT_DB_SSL") {
            self.database.ssl = parse_bool("AUDIT_DB_SSL", &v)?;
        }
        if let Some(v) = get("AUDIT_DB_DATA_DIR") {
            self.database.data_dir = PathBuf::from(v);
        }
        if let Some(v) = get("AUDIT_DB_QUERY_TIMEOUT") {
            self.database.query_timeout = parse_env("AUDIT_DB_QUERY_TIMEOUT", &v)?;
        }
        if let Some(v) = get("AUDIT_DB_CONNECTION_TIMEOUT") {
            self.database.connection_timeout = parse_env("AUDIT_DB_CONNECTION_TIMEOUT", &v)?;
        }
        if let Some(v) = get("REDIS_URL") {
            self.cache.redis_url = Some(v);
        }
        if let Some(v) = get("REDIS_CLUSTER_MODE") {
            self.cache.redis_cluster_mode = parse_bool("REDIS_CLUSTER_MODE", &v)?;
        }
        if let Some(v) = get("AUDIT_DB_CACHE_SIZE_MB") {
            self.cache.max_size_mb = parse_env("AUDIT_DB_CACHE_SIZE_MB", &v)?;
        }
        if let Some(v) = get("AUDIT_DB_CACHE_ENABLED") {
            self.cache.enabled = parse_bool("AUDIT_DB_CACHE_ENABLED", &v)?;
        }
        if let Some(v) = get("AUDIT_DB_PARTITION_RETENTION_DAYS") {
            self.partition.retention_days = parse_env("AUDIT_DB_PARTITION_RETENTION_DAYS", &v)?;
        }
        if let Some(v) = get("AUDIT_DB_PARTITION_INTERVAL") {
            self.partition.interval = PartitionInterval::parse(&v).ok_or_else(|| {
                cfg_err("AUDIT_DB_PARTITION_INTERVAL", format!("`{v}` is not one of monthly, quarterly, yearly"))
            })?;
        }
        if let Some(v) = get("AUDIT_DB_PARTITION_STRATEGY") {
            self.partition.strategy = match v.trim().to_ascii_lowercase().as_str() {
                "range" => PartitionStrategy::Range,
                "hash" => PartitionStrategy::Hash,
                "list" => PartitionStrategy::List,
                _ => {
                    return Err(cfg_err(
                        "AUDIT_DB_PARTITION_STRATEGY",
                        format!("`{v}` is not one of range, hash, list"),
                    ));
                }
            };
        }
        if let Some(v) = get("AUDIT_DB_ARCHIVE_DIR") {
            self.partition.archive_dir = Some(PathBuf::from(v));
        }
        if let Some(v) = get("LOG_LEVEL") {
            self.monitoring.log_level = v;
        }
        if let Some(v) = get("METRICS_ENABLED") {
            self.monitoring.enabled = parse_bool("METRICS_ENABLED", &v)?;
        }
        if let Some(v) = get("SLOW_QUERY_THRESHOLD") {
            self.monitoring.slow_query_threshold = parse_env("SLOW_QUERY_THRESHOLD", &v)?;
        }
        if let Some(v) = get("AUDIT_DB_SIGNING_KEY_FILE") {
            self.integrity.signing_key_file = Some(PathBuf::from(v));
        }
        if let Some(v) = get("AUDIT_DB_CHECKPOINT_INTERVAL_SECS") {
            self.integrity.checkpoint_interval_secs = Some(parse_env("AUDIT_DB_CHECKPOINT_INTERVAL_SECS", &v)?);
        }
        let mut replicas = Vec::new();
        for i in 1.. {
            match get(&format!("AUDIT_DB_READ_REPLICA_{i}")) {
                Some(url) => replicas.push(url),
                None => break,
            }
        }
        if !replicas.is_empty() {
            self.replicas = replicas;
        }
        Ok(())
    }

    /// Checks values that types alone cannot.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.database.pool_size == 0 {
            return Err(cfg_err("database.poolSize", "must be at least 1"));
        }
        if self.database.ssl {
            return Err(cfg_err(
                "database.ssl",
                "TLS to PostgreSQL is not built yet; connect over a private network or through a TLS-terminating \
                 proxy, and leave this off (AUDIT_DB_SSL=false)",
            ));
        }
        if self.database.max_connection_attempts == 0 {
            return Err(cfg_err("database.maxConnectionAttempts", "must be at least 1"));
        }
        if self.partition.partition_column != "timestamp" {
            return Err(cfg_err("partition.partitionColumn", "only `timestamp` is supported"));
        }
        if self.partition.hash_buckets == 0 || self.partition.hash_buckets > 1024 {
            return Err(cfg_err("partition.hashBuckets", "must be between 1 and 1024"));
        }
        if self.partition.retention_days == 0 {
            return Err(cfg_err("partition.retentionDays", "must be at least 1"));
        }
        if self.cache.max_size_mb == 0 && self.cache.enabled {
            return Err(cfg_err("cache.maxSizeMB", "must be at least 1 when the cache is enabled"));
        }
        if self.circuit_breaker.failure_threshold == 0 {
            return Err(cfg_err("circuitBreaker.failureThreshold", "must be at least 1"));
        }
        if self.circuit_breaker.half_open_probes == 0 {
            return Err(cfg_err("circuitBreaker.halfOpenProbes", "must be at least 1"));
        }
        if self.ingest.batch_max_events == 0 {
            return Err(cfg_err("ingest.batchMaxEvents", "must be at least 1"));
        }
        if self.ingest.queue_capacity < self.ingest.batch_max_events {
            return Err(cfg_err("ingest.queueCapacity", "must be at least ingest.batchMaxEvents"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_toml_and_bad_values_name_their_key() {
        let toml = "[cache]\nmaxSizeMB = 50\ndefaultTTL = 60\n[partition]\ninterval = \"yearly\"\n";
        let env = |k: &str| match k {
            "AUDIT_DB_CACHE_SIZE_MB" => Some("200".to_string()),
            "AUDIT_DB_READ_REPLICA_1" => Some("postgres://r1/db".to_string()),
            "AUDIT_DB_READ_REPLICA_2" => Some("postgres://r2/db".to_string()),
            _ => None,
        };
        let c = AuditConfig::load(Some(toml), env).unwrap();
        assert_eq!(c.cache.max_size_mb, 200);
        assert_eq!(c.cache.default_ttl, 60);
        assert_eq!(c.partition.interval, PartitionInterval::Yearly);
        assert_eq!(c.replicas.len(), 2);

        let e = AuditConfig::load(None, |k| (k == "AUDIT_DB_POOL_SIZE").then(|| "many".to_string())).unwrap_err();
        assert_eq!(e.key, "AUDIT_DB_POOL_SIZE");
        let e = AuditConfig::load(Some("[cache]\nmaxSizeMb = 5\n"), |_| None).unwrap_err();
        assert!(e.to_string().contains("maxSizeMb"), "{e}");
        let e = AuditConfig::load(None, |k| (k == "AUDIT_DB_SSL").then(|| "true".into())).unwrap_err();
        assert_eq!(e.key, "database.ssl", "TLS is refused rather than silently ignored");
        let e = AuditConfig::load(None, |k| (k == "AUDIT_DB_PARTITION_INTERVAL").then(|| "weekly".into())).unwrap_err();
        assert_eq!(e.key, "AUDIT_DB_PARTITION_INTERVAL");
    }
}
