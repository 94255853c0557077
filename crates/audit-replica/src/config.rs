//! `[replicaRouter]` (how reads are routed) and `[[replicas]]` (the servers), the seed's
//! `createReadReplicaRouter({replicas, strategy, healthCheckInterval, fallbackToMaster})`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How a read picks among the replicas that may serve it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Strategy {
    /// The replica with the lowest moving average of recent query and health-probe latency (the seed's example).
    LeastLatency,
    /// Each replica in turn.
    RoundRobin,
    /// The replica with the fewest reads in flight (ties in turn): adapts to slow replicas under concurrency.
    #[default]
    LeastConnections,
    /// A uniformly random replica.
    Random,
    /// In proportion to each replica's `weight` (smooth weighted round robin: exact shares, evenly interleaved).
    Weighted,
}

impl Strategy {
    /// Every strategy, in documentation order.
    pub const ALL: [Strategy; 5] = [
        Strategy::LeastLatency,
        Strategy::RoundRobin,
        Strategy::LeastConnections,
        Strategy::Random,
        Strategy::Weighted,
    ];

    /// The configuration name (`least_latency`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::LeastLatency => "least_latency",
            Strategy::RoundRobin => "round_robin",
            Strategy::LeastConnections => "least_connections",
            Strategy::Random => "random",
            Strategy::Weighted => "weighted",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Strategy {
    type Err = String;

    /// `least_latency`, `LEAST_LATENCY` (the seed's `RoutingStrategy.LEAST_LATENCY`) and `least-latency` all work.
    fn from_str(s: &str) -> Result<Self, String> {
        let norm = s.trim().to_ascii_lowercase().replace('-', "_");
        Strategy::ALL.into_iter().find(|k| k.as_str() == norm).ok_or_else(|| {
            let names: Vec<&str> = Strategy::ALL.iter().map(|k| k.as_str()).collect();
            format!("`{s}` is not a routing strategy ({})", names.join(", "))
        })
    }
}

impl Serialize for Strategy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Strategy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// `[replicaRouter]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct RouterConfig {
    /// How a read picks among eligible replicas.
    pub strategy: Strategy,
    /// How often every replica is probed (recovery state, replay position, lag, latency), ms.
    pub health_check_interval: u64,
    /// With no replica able to serve a read, answer from the primary (`false`: fail with an unavailable error
    /// naming each replica's state).
    pub fallback_to_master: bool,
    /// Lag bound of replicas that set none (`[[replicas]] maxLag`), ms: a replica further behind serves no read.
    pub max_lag_ms: u64,
    /// How long a read-your-writes read waits for a replica to replay its position before the primary answers,
    /// ms. A replica known to lag more than this is not waited for at all.
    pub read_your_writes_wait_ms: u64,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            strategy: Strategy::default(),
            health_check_interval: 1_000,
            fallback_to_master: true,
            max_lag_ms: 10_000,
            read_your_writes_wait_ms: 50,
        }
    }
}

impl RouterConfig {
    /// Checks what types cannot; the error names the key.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.health_check_interval == 0 {
            return Err(("replicaRouter.healthCheckInterval", "must be at least 1 ms".into()));
        }
        Ok(())
    }

    /// `healthCheckInterval` as a duration.
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.health_check_interval.max(1))
    }
}

/// One `[[replicas]]` entry (or `AUDIT_DB_READ_REPLICA_<n>`, which gets the id `replica-<n>` and the defaults).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReplicaEndpoint {
    /// Names the replica in logs, metrics (`replica` label), breakers (`replica:<id>`) and the status view.
    pub id: String,
    /// Its URL (libpq form; TLS as for the primary).
    pub url: String,
    /// Share of reads under the `weighted` strategy.
    #[serde(default = "one")]
    pub weight: u32,
    /// Lag bound of this replica, ms (default `replicaRouter.maxLagMs`).
    #[serde(default, alias = "maxLag")]
    pub max_lag_ms: Option<u64>,
    /// Optional bound on unreplayed WAL bytes.
    #[serde(default)]
    pub max_lag_bytes: Option<u64>,
}

fn one() -> u32 {
    1
}

impl fmt::Debug for ReplicaEndpoint {
    // The URL may hold a password: only its redacted form is printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicaEndpoint")
            .field("id", &self.id)
            .field("url", &audit_pg::redact(&self.url))
            .field("weight", &self.weight)
            .field("max_lag_ms", &self.max_lag_ms)
            .field("max_lag_bytes", &self.max_lag_bytes)
            .finish()
    }
}

impl ReplicaEndpoint {
    /// The replica of `AUDIT_DB_READ_REPLICA_<n>`: id `replica-<n>`, weight 1, the router's lag bound.
    pub fn numbered(n: usize, url: impl Into<String>) -> Self {
        Self { id: format!("replica-{n}"), url: url.into(), weight: 1, max_lag_ms: None, max_lag_bytes: None }
    }

    /// The breaker and error component of this replica: `replica:<id>`.
    pub fn component(&self) -> String {
        format!("replica:{}", self.id)
    }

    /// Its lag bound, given the router's default.
    pub fn max_lag(&self, config: &RouterConfig) -> Duration {
        Duration::from_millis(self.max_lag_ms.unwrap_or(config.max_lag_ms))
    }
}

/// Checks a list of replicas: ids present, unique, usable as metric labels; weights at least 1. The error names
/// the entry (`replicas[2].id`).
pub fn check_replicas(replicas: &[ReplicaEndpoint]) -> Result<(), (String, String)> {
    let mut seen = std::collections::HashSet::new();
    for (i, r) in replicas.iter().enumerate() {
        let key = |field: &str| format!("replicas[{i}].{field}");
        if r.id.is_empty() || !r.id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
            return Err((key("id"), format!("`{}` must be non-empty letters, digits, `-`, `_` or `.`", r.id)));
        }
        if !seen.insert(r.id.as_str()) {
            return Err((key("id"), format!("`{}` is used by another replica", r.id)));
        }
        if r.url.trim().is_empty() {
            return Err((key("url"), "is empty".into()));
        }
        if r.weight == 0 {
            return Err((key("weight"), "must be at least 1".into()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategies_parse_in_the_seeds_spelling_and_ours() {
        assert_eq!("LEAST_LATENCY".parse::<Strategy>().unwrap(), Strategy::LeastLatency);
        assert_eq!("round-robin".parse::<Strategy>().unwrap(), Strategy::RoundRobin);
        for s in Strategy::ALL {
            assert_eq!(s.as_str().parse::<Strategy>().unwrap(), s);
        }
        let e = "fastest".parse::<Strategy>().unwrap_err();
        assert!(e.contains("`fastest`") && e.contains("weighted"), "{e}");
    }

    #[test]
    fn replica_lists_name_the_bad_entry() {
        let ok = ReplicaEndpoint::numbered(1, "postgres://a/db");
        assert_eq!(ok.id, "replica-1");
        assert_eq!(ok.component(), "replica:replica-1");
        assert!(check_replicas(&[ok.clone(), ReplicaEndpoint::numbered(2, "postgres://b/db")]).is_ok());
        let e = check_replicas(&[ok.clone(), ok.clone()]).unwrap_err();
        assert_eq!(e.0, "replicas[1].id");
        let bad = ReplicaEndpoint { id: "r 1".into(), ..ok.clone() };
        assert_eq!(check_replicas(&[bad]).unwrap_err().0, "replicas[0].id");
        let zero = ReplicaEndpoint { weight: 0, ..ok.clone() };
        assert_eq!(check_replicas(&[zero]).unwrap_err().0, "replicas[0].weight");
    }

    #[test]
    fn debug_output_hides_passwords() {
        let r = ReplicaEndpoint::numbered(1, "postgres://u:hunter2@h/db");
        let shown = format!("{r:?}");
        assert!(!shown.contains("hunter2") && shown.contains("u:***@h"), "{shown}");
    }
}
