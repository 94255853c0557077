//! Configuration at the edge: each library crate owns its section type (`[database]` in audit-pg, `[partition]` in
//! audit-partition, …); this module puts them together as the seed's `EnhancedDatabaseConfig`, reads an optional
//! TOML file and then the environment (which wins), and checks the result. Only binaries read files and the
//! environment.

use audit_cache::CacheConfig;
use audit_client::IngestConfig;
use audit_index::IndexConfig;
use audit_integrity::IntegrityConfig;
use audit_partition::{PartitionConfig, PartitionInterval, PartitionStrategy};
use audit_pg::DatabaseConfig;
use audit_privacy::PrivacyConfig;
use audit_replica::{ReplicaEndpoint, RouterConfig};
use audit_resilience::CircuitBreakerConfig;
use serde::{Deserialize, Serialize};

/// A configuration problem, naming the key (TOML path or environment variable).
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

/// `[monitoring]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct MonitoringConfig {
    /// Export metrics at `/metrics` (off: the route answers 404 and no recorder is installed).
    pub enabled: bool,
    /// Database operations slower than this are logged at warn, ms.
    pub slow_query_threshold: u64,
    /// How long the seed kept metrics (kept for compatibility; metrics are exported, not stored).
    pub metrics_retention_days: u32,
    /// `tracing` filter (`info`, `debug`, …).
    pub log_level: String,
    /// How log lines look (`LOG_FORMAT`).
    pub log_format: LogFormat,
}

impl Default for MonitoringConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            slow_query_threshold: 1_000,
            metrics_retention_days: 7,
            log_level: "info".into(),
            log_format: LogFormat::Text,
        }
    }
}

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (colour on a terminal).
    Text,
    /// One JSON object per line: timestamp, level, target, fields, span and span list.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("`{s}` is not one of json, text")),
        }
    }
}

/// `[api]`: the HTTP service's limits and its auditing of reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiConfig {
    /// Largest request body accepted, bytes (larger: 413, nothing stored).
    pub body_limit_bytes: usize,
    /// A request taking longer is answered 503 (ms); batch ingests of large files need a generous bound.
    pub request_timeout_ms: u64,
    /// Requests served at once; more wait for a slot (bounds memory and database pressure).
    pub concurrency_limit: usize,
    /// Request-body bytes in flight at once, over all requests (from before the body is read until its events are
    /// acknowledged). A request whose bytes do not fit is answered 429 + `Retry-After` with its body discarded
    /// unbuffered, so memory under overload is bounded by this budget instead of by the number of clients. A body
    /// larger than the budget reserves all of it (it runs alone).
    pub inflight_body_bytes: usize,
    /// Record every read of audit data as an `audit_log_access` event in the reader's organisation. Off only for
    /// tests and benchmarks: HIPAA audit controls cover access to the audit log itself.
    pub audit_reads: bool,
    /// How long a key lookup is cached, ms (at most 1000: revocation takes effect within a second).
    pub key_cache_ttl_ms: u64,
}

/// Default of `api.inflightBodyBytes`: 1 MiB. Parsed and prepared events take about eight times their NDJSON size
/// while they wait for the database, and a streamed batch holds at most one 1 MiB chunk of its body at a time, so
/// this bounds serve's extra memory under overload to about 10 MiB (measured: docs/reliability.md). Small batches
/// run many at once; a body of 1 MiB or more runs alone, which still keeps the database busy (its write rate, not
/// the budget, limits throughput).
pub const DEFAULT_INFLIGHT_BODY_BYTES: usize = 1024 * 1024;

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            body_limit_bytes: 10 * 1024 * 1024,
            request_timeout_ms: 300_000,
            concurrency_limit: 1024,
            inflight_body_bytes: DEFAULT_INFLIGHT_BODY_BYTES,
            audit_reads: true,
            key_cache_ttl_ms: 1_000,
        }
    }
}

impl ApiConfig {
    fn check(&self) -> Result<(), (&'static str, String)> {
        if self.body_limit_bytes == 0 {
            return Err(("api.bodyLimitBytes", "must be at least 1".into()));
        }
        if self.request_timeout_ms == 0 {
            return Err(("api.requestTimeoutMs", "must be at least 1".into()));
        }
        if self.concurrency_limit == 0 {
            return Err(("api.concurrencyLimit", "must be at least 1".into()));
        }
        if self.inflight_body_bytes == 0 {
            return Err(("api.inflightBodyBytes", "must be at least 1".into()));
        }
        if u32::try_from(self.body_limit_bytes).is_err() {
            return Err(("api.bodyLimitBytes", "at most 4294967295 (4 GiB)".into()));
        }
        if self.key_cache_ttl_ms > 1_000 {
            return Err(("api.keyCacheTtlMs", "at most 1000: a revoked key must stop working within a second".into()));
        }
        Ok(())
    }
}

/// Everything, as one value: the seed's sections plus `[ingest]` and `[integrity]`.
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
    /// `[replicaRouter]`: strategy, health-check interval, fallback to the primary, lag bounds.
    pub replica_router: RouterConfig,
    /// `[indexes]`: the index manager (usage history, recommendations, automatic creation and drop).
    pub indexes: IndexConfig,
    /// `[[replicas]]` (id, url, weight, maxLag), or `AUDIT_DB_READ_REPLICA_1..N` (ids `replica-1`, …), which
    /// replace the file's list when set.
    pub replicas: Vec<ReplicaEndpoint>,
    /// `[api]`: the HTTP service.
    pub api: ApiConfig,
    /// `[privacy]`: personal fields and the master key (crypto-shredding; off by default).
    pub privacy: PrivacyConfig,
}

fn parse<T: std::str::FromStr>(key: &str, raw: &str) -> Result<T, ConfigError> {
    raw.trim().parse().map_err(|_| cfg_err(key, format!("`{raw}` is not a valid value")))
}

fn parse_bool(key: &str, raw: &str) -> Result<bool, ConfigError> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(cfg_err(key, format!("`{raw}` is not a boolean (true/false)"))),
    }
}

fn parse_enum<T: std::str::FromStr<Err = String>>(key: &str, raw: &str) -> Result<T, ConfigError> {
    raw.parse().map_err(|reason| cfg_err(key, reason))
}

/// Sets one setting from an environment variable's value (`key` is the variable's name, for errors).
/// A TOML error as a configuration error: the key when serde names one (`unknown field `x``, `missing field
/// `x``), else `config file`; the reason with the line and column. (Syntax errors quote tokens in backticks too —
/// "expected `.`, `=`" — which must not be taken for a key.)
fn toml_error(text: &str, e: &toml::de::Error) -> ConfigError {
    let msg = e.message().trim().to_string();
    // Only messages whose quoted word is a key; "unknown variant `x`" quotes the value (found by fuzzing).
    let named = ["unknown field `", "missing field `", "duplicate key `"]
        .iter()
        .find_map(|p| msg.split_once(p).and_then(|(_, rest)| rest.split_once('`')).map(|(k, _)| k.to_string()));
    let at = e.span().map(|span| {
        let before = &text[..span.start.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        format!("line {line}, column {column}: ")
    });
    cfg_err(named.unwrap_or_else(|| "config file".to_string()), format!("{}{msg}", at.unwrap_or_default()))
}

type Setter = fn(&mut AuditConfig, key: &str, value: &str) -> Result<(), ConfigError>;

/// Every environment variable the configuration reads (besides `AUDIT_DB_READ_REPLICA_1..N`), and what it sets.
/// The one list: deployment manifests are checked against it.
pub const ENVIRONMENT: &[(&str, Setter)] = &[
    ("DATABASE_URL", |c, _, v| {
        c.database.url = Some(v.to_string());
        Ok(())
    }),
    ("AUDIT_DB_POOL_SIZE", |c, k, v| {
        c.database.pool_size = parse(k, v)?;
        Ok(())
    }),
    ("AUDIT_DB_SSL", |c, k, v| {
        c.database.ssl = parse_bool(k, v)?;
        Ok(())
    }),
    ("AUDIT_DB_DATA_DIR", |c, _, v| {
        c.database.data_dir = v.into();
        Ok(())
    }),
    ("AUDIT_DB_QUERY_TIMEOUT", |c, k, v| {
        c.database.query_timeout = parse(k, v)?;
        Ok(())
    }),
    ("AUDIT_DB_CONNECTION_TIMEOUT", |c, k, v| {
        c.database.connection_timeout = parse(k, v)?;
        Ok(())
    }),
    ("REDIS_URL", |c, _, v| {
        c.cache.redis_url = Some(v.to_string());
        Ok(())
    }),
    ("REDIS_CLUSTER_MODE", |c, k, v| {
        c.cache.redis_cluster_mode = parse_bool(k, v)?;
        Ok(())
    }),
    ("AUDIT_DB_CACHE_SIZE_MB", |c, k, v| {
        c.cache.max_size_mb = parse(k, v)?;
        Ok(())
    }),
    ("AUDIT_DB_CACHE_ENABLED", |c, k, v| {
        c.cache.enabled = parse_bool(k, v)?;
        Ok(())
    }),
    ("AUDIT_DB_PARTITION_RETENTION_DAYS", |c, k, v| {
        c.partition.retention_days = parse(k, v)?;
        Ok(())
    }),
    ("AUDIT_DB_PARTITION_INTERVAL", |c, k, v| {
        c.partition.interval = parse_enum::<PartitionInterval>(k, v)?;
        Ok(())
    }),
    ("AUDIT_DB_PARTITION_STRATEGY", |c, k, v| {
        c.partition.strategy = parse_enum::<PartitionStrategy>(k, v)?;
        Ok(())
    }),
    ("AUDIT_DB_ARCHIVE_DIR", |c, _, v| {
        c.partition.archive_dir = Some(v.into());
        Ok(())
    }),
    ("LOG_LEVEL", |c, _, v| {
        c.monitoring.log_level = v.to_string();
        Ok(())
    }),
    ("LOG_FORMAT", |c, k, v| {
        c.monitoring.log_format = parse_enum::<LogFormat>(k, v)?;
        Ok(())
    }),
    ("METRICS_ENABLED", |c, k, v| {
        c.monitoring.enabled = parse_bool(k, v)?;
        Ok(())
    }),
    ("SLOW_QUERY_THRESHOLD", |c, k, v| {
        c.monitoring.slow_query_threshold = parse(k, v)?;
        Ok(())
    }),
    ("AUDIT_DB_SIGNING_KEY_FILE", |c, _, v| {
        c.integrity.signing_key_file = Some(v.into());
        Ok(())
    }),
    ("AUDIT_DB_AUTO_INDEX_OPTIMIZATION", |c, k, v| {
        c.indexes.enable_auto_creation = parse_bool(k, v)?;
        Ok(())
    }),
    ("AUDIT_DB_CHECKPOINT_INTERVAL_SECS", |c, k, v| {
        c.integrity.checkpoint_interval_secs = Some(parse(k, v)?);
        Ok(())
    }),
    ("AUDIT_DB_API_BODY_LIMIT", |c, k, v| {
        c.api.body_limit_bytes = parse(k, v)?;
        Ok(())
    }),
    ("AUDIT_DB_API_TIMEOUT", |c, k, v| {
        c.api.request_timeout_ms = parse(k, v)?;
        Ok(())
    }),
    ("AUDIT_DB_API_CONCURRENCY", |c, k, v| {
        c.api.concurrency_limit = parse(k, v)?;
        Ok(())
    }),
    ("AUDIT_DB_API_INFLIGHT_BYTES", |c, k, v| {
        c.api.inflight_body_bytes = parse(k, v)?;
        Ok(())
    }),
    ("AUDIT_DB_AUDIT_READS", |c, k, v| {
        c.api.audit_reads = parse_bool(k, v)?;
        Ok(())
    }),
    ("AUDIT_DB_PERSONAL_FIELDS", |c, k, v| {
        c.privacy.personal_fields = audit_core::PersonalFields::parse(v).map_err(|r| cfg_err(k, r))?;
        Ok(())
    }),
    ("AUDIT_DB_MASTER_KEY_FILE", |c, _, v| {
        c.privacy.master_key_file = Some(v.into());
        Ok(())
    }),
];

/// Prefix of the numbered read-replica variables (`AUDIT_DB_READ_REPLICA_1`, `_2`, … until the first gap).
pub const REPLICA_ENV_PREFIX: &str = "AUDIT_DB_READ_REPLICA_";

impl AuditConfig {
    /// Builds the configuration from an optional TOML text, then environment overrides, then checks it.
    pub fn load(toml_text: Option<&str>, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut c: AuditConfig = match toml_text {
            Some(t) => toml::from_str(t).map_err(|e| toml_error(t, &e))?,
            None => AuditConfig::default(),
        };
        c.apply_env(&env)?;
        c.check()?;
        Ok(c)
    }

    fn apply_env(&mut self, env: &impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let get = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        for (key, set) in ENVIRONMENT {
            if let Some(v) = get(key) {
                set(self, key, &v)?;
            }
        }
        let replicas: Vec<ReplicaEndpoint> = (1..)
            .map_while(|i| get(&format!("{REPLICA_ENV_PREFIX}{i}")).map(|url| ReplicaEndpoint::numbered(i, url)))
            .collect();
        if !replicas.is_empty() {
            self.replicas = replicas;
        }
        Ok(())
    }

    /// Checks values that types alone cannot.
    pub fn check(&self) -> Result<(), ConfigError> {
        self.database.check().map_err(|(k, r)| cfg_err(k, r))?;
        self.partition.check().map_err(|(k, r)| cfg_err(k, r))?;
        self.cache.check().map_err(|(k, r)| cfg_err(k, r))?;
        self.circuit_breaker.check().map_err(|(k, r)| cfg_err(k, r))?;
        self.ingest.check().map_err(|(k, r)| cfg_err(k, r))?;
        self.replica_router.check().map_err(|(k, r)| cfg_err(k, r))?;
        self.indexes.check().map_err(|(k, r)| cfg_err(k, r))?;
        audit_replica::check_replicas(&self.replicas).map_err(|(k, r)| cfg_err(k, r))?;
        self.api.check().map_err(|(k, r)| cfg_err(k, r))?;
        self.privacy.check().map_err(|(k, r)| cfg_err(k, r))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_syntax_errors_give_the_position_and_no_token_as_a_key() {
        // Found by fuzzing: "expected `.`, `=`" made `.` the key.
        let e = AuditConfig::load(Some("[cache]\n:"), |_| None).unwrap_err();
        assert_eq!(e.key, "config file");
        assert!(e.reason.starts_with("line 2, column 1: "), "{e}");
        let e = AuditConfig::load(Some("[cache]\nbogus = 1\n"), |_| None).unwrap_err();
        assert_eq!(e.key, "bogus");
        assert!(e.reason.starts_with("line 2, column 1: unknown field `bogus`"), "{e}");
        let e = AuditConfig::load(Some("[partition]\ninterval = \"weekly\"\n"), |_| None).unwrap_err();
        assert_eq!(e.key, "config file", "the value is not the key: {e}");
        assert!(e.reason.starts_with("line 2, column 12: ") && e.reason.contains("weekly"), "{e}");
    }

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
        assert_eq!((c.replicas[1].id.as_str(), c.replicas[1].url.as_str()), ("replica-2", "postgres://r2/db"));

        let e = AuditConfig::load(None, |k| (k == "AUDIT_DB_POOL_SIZE").then(|| "many".to_string())).unwrap_err();
        assert_eq!(e.key, "AUDIT_DB_POOL_SIZE");
        let e = AuditConfig::load(Some("[cache]\nmaxSizeMb = 5\n"), |_| None).unwrap_err();
        assert!(e.to_string().contains("maxSizeMb"), "{e}");
        let c = AuditConfig::load(None, |k| (k == "AUDIT_DB_SSL").then(|| "true".into())).unwrap();
        assert!(c.database.ssl, "TLS is asked for (crates/audit-pg/tests/tls.rs proves what it does)");
        let e = AuditConfig::load(None, |k| (k == "AUDIT_DB_PARTITION_INTERVAL").then(|| "weekly".into())).unwrap_err();
        assert_eq!(e.key, "AUDIT_DB_PARTITION_INTERVAL");
        let c = AuditConfig::load(Some("[indexes]\nunusedThresholdDays = 7\nanalysisInterval = 3600000\n"), |k| {
            (k == "AUDIT_DB_AUTO_INDEX_OPTIMIZATION").then(|| "true".into())
        })
        .unwrap();
        assert!(c.indexes.enable_auto_creation && !c.indexes.enable_auto_drop);
        assert_eq!((c.indexes.unused_threshold_days, c.indexes.analysis_interval), (7, 3_600_000));
        let e = AuditConfig::load(Some("[indexes]\nanalysisInterval = 5\n"), |_| None).unwrap_err();
        assert_eq!(e.key, "indexes.analysisInterval");
    }

    #[test]
    fn privacy_is_off_by_default_and_needs_a_master_key() {
        assert!(!AuditConfig::default().privacy.is_on());
        let e =
            AuditConfig::load(None, |k| (k == "AUDIT_DB_PERSONAL_FIELDS").then(|| "principal_id".into())).unwrap_err();
        assert_eq!(e.key, "privacy.masterKeyFile");
        let e = AuditConfig::load(None, |k| (k == "AUDIT_DB_PERSONAL_FIELDS").then(|| "email".into())).unwrap_err();
        assert_eq!(e.key, "AUDIT_DB_PERSONAL_FIELDS");
        assert!(e.reason.contains("`email`"), "{e}");
        let toml = "[privacy]\npersonalFields = [\"principal_id\", \"details.patient_name\"]\nmasterKeyFile = \"/k/master.key\"\n";
        let c = AuditConfig::load(Some(toml), |_| None).unwrap();
        assert_eq!(c.privacy.personal_fields.to_list(), "principal_id,details.patient_name");
    }

    #[test]
    fn replicas_come_from_the_file_or_the_numbered_variables() {
        let toml = "[replicaRouter]\nstrategy = \"LEAST_LATENCY\"\nhealthCheckInterval = 500\nfallbackToMaster = false\n\
                    [[replicas]]\nid = \"east\"\nurl = \"postgres://e/db\"\nweight = 3\nmaxLag = 2000\n\
                    [[replicas]]\nid = \"west\"\nurl = \"postgres://w/db\"\n";
        let c = AuditConfig::load(Some(toml), |_| None).unwrap();
        assert_eq!(c.replica_router.strategy, audit_replica::Strategy::LeastLatency);
        assert_eq!(c.replica_router.health_check_interval, 500);
        assert!(!c.replica_router.fallback_to_master);
        let ids: Vec<(&str, u32, Option<u64>)> =
            c.replicas.iter().map(|r| (r.id.as_str(), r.weight, r.max_lag_ms)).collect();
        assert_eq!(ids, [("east", 3, Some(2000)), ("west", 1, None)]);
        // The numbered variables replace the file's list.
        let env = |k: &str| (k == "AUDIT_DB_READ_REPLICA_1").then(|| "postgres://x/db".to_string());
        let c = AuditConfig::load(Some(toml), env).unwrap();
        assert_eq!(c.replicas, [ReplicaEndpoint::numbered(1, "postgres://x/db")]);
        // Mistakes name the entry.
        let dup = "[[replicas]]\nid = \"a\"\nurl = \"postgres://a/db\"\n[[replicas]]\nid = \"a\"\nurl = \"postgres://b/db\"\n";
        assert_eq!(AuditConfig::load(Some(dup), |_| None).unwrap_err().key, "replicas[1].id");
        let bad = "[replicaRouter]\nstrategy = \"fastest\"\n";
        let e = AuditConfig::load(Some(bad), |_| None).unwrap_err();
        assert!(e.to_string().contains("fastest"), "{e}");
    }

    #[test]
    fn every_listed_variable_is_read() {
        for (key, _) in ENVIRONMENT {
            // A value each setter accepts; the point is that the variable changes the configuration.
            let value = match *key {
                "AUDIT_DB_SSL" => "true",
                "AUDIT_DB_PARTITION_INTERVAL" => "yearly",
                "AUDIT_DB_PARTITION_STRATEGY" => "hash",
                "LOG_FORMAT" => "json",
                "REDIS_CLUSTER_MODE" | "AUDIT_DB_CACHE_ENABLED" | "METRICS_ENABLED" | "AUDIT_DB_AUDIT_READS" => "false",
                "AUDIT_DB_AUTO_INDEX_OPTIMIZATION" => "true",
                "DATABASE_URL"
                | "REDIS_URL"
                | "AUDIT_DB_DATA_DIR"
                | "AUDIT_DB_ARCHIVE_DIR"
                | "LOG_LEVEL"
                | "AUDIT_DB_SIGNING_KEY_FILE"
                | "AUDIT_DB_MASTER_KEY_FILE" => "/x",
                "AUDIT_DB_PERSONAL_FIELDS" => "principal_id",
                _ => "7",
            };
            // A personal-field list needs a master key beside it.
            let changed = AuditConfig::load(None, |k| {
                if k == *key {
                    Some(value.to_string())
                } else if *key == "AUDIT_DB_PERSONAL_FIELDS" && k == "AUDIT_DB_MASTER_KEY_FILE" {
                    Some("/k".to_string())
                } else {
                    None
                }
            })
            .unwrap();
            let changed = if *key == "REDIS_CLUSTER_MODE" {
                // false is the default; true needs a URL to be meaningful but is accepted.
                AuditConfig::load(None, |k| (k == *key).then(|| "true".to_string())).unwrap()
            } else {
                changed
            };
            assert_ne!(changed, AuditConfig::default(), "{key} changed nothing");
        }
    }
}
