//! audit-cache: the two-tier query cache of audit-db.
//!
//! * **L1** — in-process, on `quick_cache`, bounded by bytes (`maxSizeMB`) and entries (`maxKeys`), per-entry TTL,
//!   single-flight loading.
//! * **L2** — Redis (a server through bb8-redis, or a Redis Cluster), compact binary values with `PX` TTLs.
//! * **Freshness** — generation tokens per (organisation, month), per organisation and global live in Redis; a
//!   query reads the tokens of its scope *before* it runs and an answer is served only under identical tokens,
//!   while every commit replaces the tokens of what it wrote *before* the writers are acknowledged. Without Redis,
//!   in-process counters give read-your-writes in the process and answers older than `localStalenessMs` are not
//!   served. The model and its proof sketch are in `docs/caching.md`.
//!
//! [`TieredCache`] implements [`audit_core::QueryCache`]; a query or a write never gets a Redis error (only
//! `clear()` reports one). Every Redis call goes through the cache's `ResiliencePolicy` and is bounded by
//! [`CacheOptions::redis_timeout`]; a generation bump Redis did not acknowledge is re-sent in the background.
//! Time (TTLs, staleness) is read from tokio's clock, so tests can run on paused time.
//!
//! Modules follow the stages of a call: [`TieredCache`] and its construction (`tiered`), reads (`lookup`),
//! writes and the re-sending of bumps (`invalidate`), and the Redis call plumbing with its health (`remote`), over
//! the tiers themselves (`l1`, `l2`, `codec`) and the generation keys (`generation`).

mod clock;
mod codec;
mod config;
mod error;
mod generation;
mod invalidate;
mod l1;
mod l2;
mod lookup;
mod remote;
mod tiered;

pub use codec::CodecError;
pub use config::{CacheConfig, CacheOptions};
pub use error::CacheError;
pub use tiered::TieredCache;

#[cfg(test)]
pub(crate) mod test_support {
    use audit_core::{DataClassification, NewEvent, Status, StoredEvent};
    use chrono::DateTime;

    /// An event of `org` at `micros` whose `details` hold a string of `details_len` bytes.
    pub(crate) fn event_with_details(org: &str, micros: i64, details_len: usize) -> StoredEvent {
        let mut details = serde_json::Map::new();
        details.insert("blob".into(), serde_json::Value::String("x".repeat(details_len)));
        StoredEvent {
            id: 1,
            ingested_at: DateTime::from_timestamp_micros(micros).unwrap(),
            seq: 0,
            leaf_hash: [7; 32],
            event: NewEvent {
                event_id: uuid::Uuid::now_v7(),
                event_id_supplied: false,
                timestamp: DateTime::from_timestamp_micros(micros).unwrap(),
                action: "read".into(),
                status: Status::Success,
                principal_id: Some("u".into()),
                organization_id: Some(org.into()),
                target_resource_type: None,
                target_resource_id: None,
                outcome_description: None,
                correlation_id: None,
                data_classification: DataClassification::Internal,
                retention_policy: "standard".into(),
                event_version: "1.0".into(),
                ttl: None,
                processing_latency: None,
                details,
            },
        }
    }
}
