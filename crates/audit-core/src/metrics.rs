//! The names of every metric audit-db records, with their kind and help text: one list ([`METRICS`]), so that
//! dashboards, alerts, docs and tests can be checked against it. Libraries record through the `metrics` facade
//! with these names; only the binary installs an exporter (and calls [`describe_all`]).

/// What kind of series a metric is (Prometheus types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Observations in buckets (`_bucket`, `_sum`, `_count`).
    Histogram,
}

impl MetricKind {
    /// The Prometheus `# TYPE` word.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
        }
    }
}

/// One metric: name, kind, labels and what it means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricSpec {
    /// The series name.
    pub name: &'static str,
    /// Its type.
    pub kind: MetricKind,
    /// Its label names.
    pub labels: &'static [&'static str],
    /// Help text (what it measures and why an operator looks at it).
    pub help: &'static str,
}

macro_rules! metrics {
    ($($(#[$doc:meta])* $konst:ident = $name:literal, $kind:ident, [$($label:literal),*], $help:literal;)*) => {
        $( $(#[$doc])* pub const $konst: &str = $name; )*
        /// Every metric audit-db records.
        pub const METRICS: &[MetricSpec] = &[
            $( MetricSpec { name: $name, kind: MetricKind::$kind, labels: &[$($label),*], help: $help }, )*
        ];
    };
}

metrics! {
    /// The seed's operation histogram (buckets [`OPERATION_DURATION_BUCKETS`]).
    OPERATION_DURATION = "audit_db_operation_duration_seconds", Histogram, ["operation", "status"],
        "Duration of audit database operations (insert, insert_batch, query, count, get, transaction, verify, checkpoint) by outcome";
    /// The seed's cache hit rate gauge.
    CACHE_HIT_RATE = "audit_db_cache_hit_rate", Gauge, ["cache_type"],
        "Cache hit rate percentage (0-100) since start, per tier (l1, l2) and overall";
    /// The seed's breaker state gauge.
    CIRCUIT_BREAKER_STATE = "audit_db_circuit_breaker_state", Gauge, ["component"],
        "Circuit breaker state (0=closed, 1=open, 2=half-open)";
    /// Process identity.
    BUILD_INFO = "audit_db_build_info", Gauge, ["version"], "Always 1; the version label names the running build";
    /// Operations slower than the slow-query threshold.
    SLOW_OPERATIONS = "audit_db_slow_operations_total", Counter, ["operation"],
        "Database operations slower than SLOW_QUERY_THRESHOLD";
    /// Events by outcome.
    EVENTS = "audit_db_events_total", Counter, ["result"], "Events by outcome (stored, duplicate, rejected)";
    /// Write transactions committed.
    WRITE_TRANSACTIONS = "audit_db_write_transactions_total", Counter, [], "Write transactions committed";
    /// One write transaction's duration.
    WRITE_TRANSACTION_DURATION = "audit_db_write_transaction_seconds", Histogram, [],
        "Duration of one write transaction (locks, duplicate check, COPY, COMMIT)";
    /// Events per group-commit flush.
    GROUP_COMMIT_BATCH_SIZE = "audit_db_group_commit_batch_size", Histogram, [], "Events per group-commit transaction";
    /// Queue wait before a transaction began.
    GROUP_COMMIT_WAIT = "audit_db_group_commit_wait_seconds", Histogram, [],
        "How long an insert waited in the group-commit queue before its transaction began";
    /// Events waiting for the writer.
    INSERT_QUEUE_DEPTH = "audit_db_insert_queue_depth", Gauge, [], "Events waiting for the group-commit writer";
    /// Capacity of the group-commit queue.
    INSERT_QUEUE_CAPACITY = "audit_db_insert_queue_capacity", Gauge, [], "Capacity of the group-commit queue";
    /// Request-body bytes the HTTP service holds now (its in-flight body budget in use).
    HTTP_INFLIGHT_BODY_BYTES = "audit_db_http_inflight_body_bytes", Gauge, [],
        "Request-body bytes in flight in the HTTP service (reserved before a body is read, released when its events are acknowledged); bounded by api.inflightBodyBytes";
    /// Work refused to protect the service.
    LOAD_SHED = "audit_db_load_shed_total", Counter, ["reason"],
        "Requests refused to protect the service (queue_full, concurrency, database_unavailable, body_budget)";
    /// Batches that waited for an unavailable database.
    WRITE_WAITS = "audit_db_write_waits_total", Counter, [],
        "Times a write batch waited for an unavailable database instead of failing";
    /// Queries answered per tier.
    QUERIES = "audit_db_queries_total", Counter, ["tier"], "Queries answered, by tier (l1, l2, db)";
    /// L1/L2 hits.
    CACHE_HITS = "audit_db_cache_hits_total", Counter, ["tier"], "Cache hits by tier (l1, l2)";
    /// Cache misses.
    CACHE_MISSES = "audit_db_cache_misses_total", Counter, [], "Cache misses (answered by the database)";
    /// L1 evictions.
    CACHE_EVICTIONS = "audit_db_cache_evictions_total", Counter, [], "L1 entries evicted for size";
    /// Answers too large for L1.
    CACHE_REJECTED = "audit_db_cache_rejected_total", Counter, [], "Answers too large to keep in L1";
    /// L1 bytes.
    CACHE_BYTES = "audit_db_cache_bytes", Gauge, [], "Bytes held by L1 (by its weigher)";
    /// L1 entries.
    CACHE_ENTRIES = "audit_db_cache_entries", Gauge, [], "Entries held by L1";
    /// Failed Redis calls.
    CACHE_REDIS_ERRORS = "audit_db_cache_redis_errors_total", Counter, ["op"], "Redis calls that failed or timed out";
    /// Redis calls refused by the breaker.
    CACHE_REDIS_BYPASSED = "audit_db_cache_redis_bypassed_total", Counter, ["op"],
        "Redis calls not made because the redis breaker was open";
    /// Redis call duration.
    CACHE_REDIS_DURATION = "audit_db_cache_redis_seconds", Histogram, ["op"], "Duration of Redis calls";
    /// Breaker transitions.
    CIRCUIT_BREAKER_TRANSITIONS = "audit_db_circuit_breaker_transitions_total", Counter, ["component", "to"],
        "Circuit breaker state changes (to = closed, open, half_open)";
    /// Failures a breaker counted.
    CIRCUIT_BREAKER_FAILURES = "audit_db_circuit_breaker_failures_total", Counter, ["component"],
        "Failures that counted against a dependency's breaker";
    /// Calls a breaker refused.
    CIRCUIT_BREAKER_REJECTIONS = "audit_db_circuit_breaker_rejections_total", Counter, ["component"],
        "Calls refused by an open or saturated half-open breaker";
    /// Retries made.
    RESILIENCE_RETRIES = "audit_db_resilience_retries_total", Counter, ["component"], "Retries of failed calls";
    /// Pool connections.
    POOL_CONNECTIONS = "audit_db_pool_connections", Gauge, ["pool", "state"],
        "Pooled database connections by pool (read, write, replica:<id>) and state (idle, in_use)";
    /// Pool size.
    POOL_MAX_CONNECTIONS = "audit_db_pool_max_connections", Gauge, ["pool"], "Most connections a pool opens";
    /// Attached partitions.
    PARTITIONS = "audit_db_partitions", Gauge, [], "Attached partitions of audit_log";
    /// End of the furthest partition.
    PARTITION_COVERAGE_END = "audit_db_partition_coverage_end_timestamp_seconds", Gauge, [],
        "End (unix seconds) of the furthest partition that exists: events after it need a new partition";
    /// Start of the oldest partition.
    PARTITION_OLDEST = "audit_db_partition_oldest_timestamp_seconds", Gauge, [],
        "Start (unix seconds) of the oldest partition";
    /// Partitions created.
    PARTITIONS_CREATED = "audit_db_partitions_created_total", Counter, [],
        "Partitions created (premake, on demand, ensure_range)";
    /// Retention actions.
    RETENTION_ACTIONS = "audit_db_retention_actions_total", Counter, ["action"],
        "Retention actions (dropped, held, detaching, failed)";
    /// DDL lock timeouts.
    PARTITION_LOCK_TIMEOUTS = "audit_db_partition_lock_timeouts_total", Counter, [],
        "Partition DDL steps that hit lock_timeout and were retried";
    /// Maintenance rounds.
    MAINTENANCE_RUNS = "audit_db_partition_maintenance_runs_total", Counter, ["result"],
        "Partition maintenance rounds (ran, skipped: another instance held the lock)";
    /// Archive free space.
    ARCHIVE_FREE_BYTES = "audit_db_archive_free_bytes", Gauge, [], "Free bytes on the archive directory's file system";
    /// Archive writability.
    ARCHIVE_WRITABLE = "audit_db_archive_writable", Gauge, [], "1 when a file can be written to the archive, else 0";
    /// Checkpoints signed.
    CHECKPOINTS = "audit_db_checkpoints_total", Counter, [], "Signed checkpoints written";
    /// Age of each log's newest checkpoint.
    CHECKPOINT_AGE = "audit_db_checkpoint_age_seconds", Gauge, ["log"],
        "Seconds since the newest signed checkpoint of each log";
    /// Findings of the last verify.
    VERIFY_LAST_FINDINGS = "audit_db_verify_last_findings", Gauge, [],
        "Findings of the latest verify run (above 0 means tampering evidence)";
    /// When the last verify finished.
    VERIFY_LAST_RUN = "audit_db_verify_last_run_timestamp_seconds", Gauge, [],
        "When the latest verify run finished (unix seconds)";
    /// HTTP requests.
    HTTP_REQUESTS = "audit_db_http_requests_total", Counter, ["route", "method", "status"],
        "HTTP requests by route template, method and status";
    /// HTTP request duration.
    HTTP_REQUEST_DURATION = "audit_db_http_request_duration_seconds", Histogram, ["route", "method"],
        "HTTP request duration by route template and method";
    /// Unreplayed WAL of a read replica.
    REPLICA_LAG_BYTES = "audit_db_replica_lag_bytes", Gauge, ["replica"],
        "WAL bytes a read replica has not replayed yet (against the primary's current position)";
    /// A read replica's lag in time.
    REPLICA_LAG_SECONDS = "audit_db_replica_lag_seconds", Gauge, ["replica"],
        "Seconds a read replica's replayed state is behind (0 when it has replayed all the primary wrote, however idle)";
    /// Whether a read replica serves reads.
    REPLICA_HEALTHY = "audit_db_replica_healthy", Gauge, ["replica"],
        "1 while a read replica is eligible for reads, 0 while excluded (down, lagging, promoted, failing reads)";
    /// Where reads went.
    REPLICA_ROUTED_QUERIES = "audit_db_replica_routed_queries_total", Counter, ["target"],
        "Reads answered by each server (a replica id or primary; cache hits not counted)";
    /// Exclusions of read replicas.
    REPLICA_EXCLUSIONS = "audit_db_replica_exclusions_total", Counter, ["replica", "reason"],
        "Times a read replica was taken out of rotation (down, lagging, promoted, read_failed)";
    /// Index usage (scans summed over partitions).
    INDEX_SCANS = "audit_db_index_scans_total", Counter, ["index"],
        "Scans of each audit_log index since the last statistics reset, summed over its partitions (set, not incremented: a reset or a dropped partition lowers it, which rate() treats as a counter reset)";
    /// Index size.
    INDEX_SIZE_BYTES = "audit_db_index_size_bytes", Gauge, ["index"],
        "Bytes of each audit_log index, summed over its partitions";
    /// Findings of the last index analysis.
    INDEX_FINDINGS = "audit_db_index_findings", Gauge, ["kind"],
        "Findings of the latest index analysis by kind (unused, duplicate, redundant, invalid, missing_on_partitions, bloated)";
    /// Recommendations of the last index analysis.
    INDEX_RECOMMENDATIONS = "audit_db_index_recommendations", Gauge, ["action"],
        "Recommendations of the latest index analysis by action (create, drop, repair)";
    /// Index actions carried out.
    INDEX_ACTIONS = "audit_db_index_actions_total", Counter, ["action", "outcome"],
        "Index actions by action (create, drop, repair) and outcome (done, planned, skipped, failed)";
}

/// The seed's histogram buckets for [`OPERATION_DURATION`], seconds.
pub const OPERATION_DURATION_BUCKETS: [f64; 6] = [0.001, 0.01, 0.1, 1.0, 5.0, 10.0];

/// Buckets of the other duration histograms, seconds (0.5 ms … 10 s): fine enough for p95/p99 of commits, queue
/// waits and Redis calls, and the seed's edges (0.001, 0.01, 0.1, 1, 5, 10) are among them.
pub const DURATION_BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Buckets of [`GROUP_COMMIT_BATCH_SIZE`], events per transaction.
pub const BATCH_SIZE_BUCKETS: [f64; 13] =
    [1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0];

/// The buckets of a histogram in [`METRICS`] (`None` for counters, gauges and unknown names). An exporter must set
/// them for every histogram: without buckets, metrics-exporter-prometheus publishes a summary, which has no
/// `_bucket` series for `histogram_quantile` (the dashboard's and the seed's queries) and cannot be aggregated
/// across instances.
pub fn histogram_buckets(name: &str) -> Option<&'static [f64]> {
    match spec(name)?.kind {
        MetricKind::Histogram if name == OPERATION_DURATION => Some(&OPERATION_DURATION_BUCKETS),
        MetricKind::Histogram if name == GROUP_COMMIT_BATCH_SIZE => Some(&BATCH_SIZE_BUCKETS),
        MetricKind::Histogram => Some(&DURATION_BUCKETS),
        _ => None,
    }
}

/// Registers every metric's help text with the installed recorder (the binary calls this once, after installing
/// its exporter, so `/metrics` carries `# HELP` lines).
pub fn describe_all() {
    for m in METRICS {
        match m.kind {
            MetricKind::Counter => metrics::describe_counter!(m.name, m.help),
            MetricKind::Gauge => metrics::describe_gauge!(m.name, m.help),
            MetricKind::Histogram => metrics::describe_histogram!(m.name, m.help),
        }
    }
}

/// The spec of `name`, if audit-db records it.
pub fn spec(name: &str) -> Option<&'static MetricSpec> {
    METRICS.iter().find(|m| m.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_follow_prometheus_conventions() {
        let mut seen = std::collections::BTreeSet::new();
        for m in METRICS {
            assert!(seen.insert(m.name), "{} listed twice", m.name);
            assert!(m.name.starts_with("audit_db_"), "{}", m.name);
            assert!(m.name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'), "{}", m.name);
            assert_eq!(m.kind == MetricKind::Counter, m.name.ends_with("_total"), "{}: counters end in _total", m.name);
            assert!(!m.help.is_empty());
            let buckets = histogram_buckets(m.name);
            assert_eq!(buckets.is_some(), m.kind == MetricKind::Histogram, "{}", m.name);
            if let Some(b) = buckets {
                assert!(b.windows(2).all(|w| w[0] < w[1]), "{}: buckets ascend", m.name);
            }
        }
    }
}
