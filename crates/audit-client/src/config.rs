//! `[ingest]`: the write path's batching, queue and validation limits.

use serde::{Deserialize, Serialize};

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

impl IngestConfig {
    /// Checks what types cannot; the error names the key.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.batch_max_events == 0 {
            return Err(("ingest.batchMaxEvents", "must be at least 1".into()));
        }
        if self.queue_capacity < self.batch_max_events {
            return Err(("ingest.queueCapacity", "must be at least ingest.batchMaxEvents".into()));
        }
        Ok(())
    }
}
