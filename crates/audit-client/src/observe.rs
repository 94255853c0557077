//! What the client measures about itself: every operation's duration and outcome (for the health report's
//! `successRate`/`averageResponseTime`, the seed's `audit_db_operation_duration_seconds` histogram and the slow
//! operation log), and event and transaction counters.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use audit_core::AuditResult;
use audit_core::metrics as metric;

/// The operations the seed's histogram labels (`operation` label values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Operation {
    /// `insert` (one event, group-committed).
    Insert,
    /// `insert_batch` (bulk COPY).
    InsertBatch,
    /// `query` (through the cache).
    Query,
    /// `count`.
    Count,
    /// `get` (one event by id).
    Get,
    /// `transaction` (a caller's unit of work).
    Transaction,
}

impl Operation {
    /// The label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Operation::Insert => "insert",
            Operation::InsertBatch => "insert_batch",
            Operation::Query => "query",
            Operation::Count => "count",
            Operation::Get => "get",
            Operation::Transaction => "transaction",
        }
    }
}

/// Counters since the client started (also exported through the `metrics` facade).
#[derive(Debug)]
pub(crate) struct OperationStats {
    slow: Duration,
    operations: AtomicU64,
    errors: AtomicU64,
    micros: AtomicU64,
    stored: AtomicU64,
    duplicates: AtomicU64,
    rejected: AtomicU64,
    write_transactions: AtomicU64,
}

/// A snapshot of [`OperationStats`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct StatsSnapshot {
    /// Operations run (reads and writes).
    pub operations: u64,
    /// Operations that failed.
    pub errors: u64,
    /// Mean duration of an operation, ms (0 before the first).
    pub average_ms: f64,
    /// Events stored.
    pub stored: u64,
    /// Events recognised as already stored.
    pub duplicates: u64,
    /// Events refused.
    pub rejected: u64,
    /// Write transactions committed.
    pub write_transactions: u64,
}

impl StatsSnapshot {
    /// Share of operations that succeeded (1 before the first).
    pub(crate) fn success_rate(&self) -> f64 {
        if self.operations == 0 { 1.0 } else { (self.operations - self.errors) as f64 / self.operations as f64 }
    }
}

impl OperationStats {
    /// Counters with `slow` as the slow-operation threshold.
    pub(crate) fn new(slow: Duration) -> Self {
        Self {
            slow,
            operations: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            micros: AtomicU64::new(0),
            stored: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            write_transactions: AtomicU64::new(0),
        }
    }

    /// Runs `fut`, recording its duration and outcome as `op`.
    pub(crate) async fn observe<T>(&self, op: Operation, fut: impl Future<Output = AuditResult<T>>) -> AuditResult<T> {
        let started = Instant::now();
        let result = fut.await;
        let elapsed = started.elapsed();
        self.operations.fetch_add(1, Ordering::Relaxed);
        self.micros.fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
        let status = match &result {
            Ok(_) => "success",
            Err(_) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                "error"
            }
        };
        metrics::histogram!(metric::OPERATION_DURATION, "operation" => op.as_str(), "status" => status)
            .record(elapsed.as_secs_f64());
        if elapsed > self.slow {
            metrics::counter!(metric::SLOW_OPERATIONS, "operation" => op.as_str()).increment(1);
            tracing::warn!(operation = op.as_str(), elapsed_ms = elapsed.as_millis() as u64, status, "slow operation");
        }
        result
    }

    /// Counts the outcome of one committed write transaction.
    pub(crate) fn count_written(&self, stored: u64, duplicates: u64, rejected: u64) {
        self.stored.fetch_add(stored, Ordering::Relaxed);
        self.duplicates.fetch_add(duplicates, Ordering::Relaxed);
        self.write_transactions.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(metric::EVENTS, "result" => "stored").increment(stored);
        metrics::counter!(metric::EVENTS, "result" => "duplicate").increment(duplicates);
        metrics::counter!(metric::WRITE_TRANSACTIONS).increment(1);
        self.count_rejected(rejected);
    }

    /// Counts events refused (by validation or by the database).
    pub(crate) fn count_rejected(&self, n: u64) {
        if n > 0 {
            self.rejected.fetch_add(n, Ordering::Relaxed);
            metrics::counter!(metric::EVENTS, "result" => "rejected").increment(n);
        }
    }

    /// Write transactions committed.
    pub(crate) fn write_transactions(&self) -> u64 {
        self.write_transactions.load(Ordering::Relaxed)
    }

    /// The counters now.
    pub(crate) fn snapshot(&self) -> StatsSnapshot {
        let operations = self.operations.load(Ordering::Relaxed);
        let micros = self.micros.load(Ordering::Relaxed);
        StatsSnapshot {
            operations,
            errors: self.errors.load(Ordering::Relaxed),
            average_ms: if operations == 0 { 0.0 } else { micros as f64 / operations as f64 / 1e3 },
            stored: self.stored.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            write_transactions: self.write_transactions.load(Ordering::Relaxed),
        }
    }
}
