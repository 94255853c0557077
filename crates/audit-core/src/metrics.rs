//! The names of every metric audit-db records, with their help text: one list, so that dashboards, alerts and
//! docs can be checked against it. Libraries record through the `metrics` facade with these names; only the binary
//! installs an exporter (and calls [`describe_all`]).

/// Histogram of every database operation, labelled `operation` (insert, insert_batch, query, count, get,
/// transaction, verify, checkpoint) and `status` (success, error). The seed's name and buckets.
pub const OPERATION_DURATION: &str = "audit_db_operation_duration_seconds";
/// The seed's histogram buckets for [`OPERATION_DURATION`], seconds.
pub const OPERATION_DURATION_BUCKETS: [f64; 6] = [0.001, 0.01, 0.1, 1.0, 5.0, 10.0];
/// Operations slower than the slow-query threshold, labelled `operation`.
pub const SLOW_OPERATIONS: &str = "audit_db_slow_operations_total";
/// Events by outcome, labelled `result` (stored, duplicate, rejected).
pub const EVENTS: &str = "audit_db_events_total";
/// Write transactions committed.
pub const WRITE_TRANSACTIONS: &str = "audit_db_write_transactions_total";
/// Histogram of one write transaction's duration.
pub const WRITE_TRANSACTION_DURATION: &str = "audit_db_write_transaction_seconds";
/// Histogram of events per group-commit flush.
pub const GROUP_COMMIT_BATCH_SIZE: &str = "audit_db_group_commit_batch_size";
/// Histogram of how long an insert waited in the queue before its transaction began.
pub const GROUP_COMMIT_WAIT: &str = "audit_db_group_commit_wait_seconds";
/// Events waiting for the group-commit writer.
pub const INSERT_QUEUE_DEPTH: &str = "audit_db_insert_queue_depth";
/// Capacity of the group-commit queue.
pub const INSERT_QUEUE_CAPACITY: &str = "audit_db_insert_queue_capacity";
/// Work refused to protect the service, labelled `reason` (queue_full, concurrency, database_unavailable).
pub const LOAD_SHED: &str = "audit_db_load_shed_total";
/// Times a write batch waited for an unavailable database instead of failing.
pub const WRITE_WAITS: &str = "audit_db_write_waits_total";
/// Queries answered, labelled `tier` (l1, l2, db).
pub const QUERIES: &str = "audit_db_queries_total";
/// WAL bytes a read replica has not replayed yet (against the primary's current position), labelled `replica`.
pub const REPLICA_LAG_BYTES: &str = "audit_db_replica_lag_bytes";
/// How far behind a read replica's replayed state is, seconds (0 when it has replayed everything the primary
/// wrote, however long ago the last commit was), labelled `replica`.
pub const REPLICA_LAG_SECONDS: &str = "audit_db_replica_lag_seconds";
/// 1 while a read replica is eligible for reads, 0 while excluded, labelled `replica`.
pub const REPLICA_HEALTHY: &str = "audit_db_replica_healthy";
/// Reads served, labelled `target` (a replica id or `primary`).
pub const REPLICA_ROUTED_QUERIES: &str = "audit_db_replica_routed_queries_total";
/// Times a read replica was taken out of rotation, labelled `replica` and `reason` (down, lagging, promoted,
/// read_failed).
pub const REPLICA_EXCLUSIONS: &str = "audit_db_replica_exclusions_total";
