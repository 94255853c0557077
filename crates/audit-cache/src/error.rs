//! What can go wrong inside the cache, and how it reaches callers as an [`AuditError`].

use audit_core::AuditError;

/// What can go wrong inside the cache. Only [`CacheError::Config`] reaches a query's caller (from the constructor);
/// Redis failures on the query and write paths are logged, counted and bypassed. `clear()` reports them.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The configuration cannot work (bad Redis URL, zero budget); names the key.
    #[error("cache configuration: {0}")]
    Config(String),
    /// Redis answered with an error or the connection failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A Redis reply did not have the expected shape.
    #[error("redis reply: {0}")]
    Parse(String),
    /// A Redis call did not finish within its bound.
    #[error("redis call `{op}` took longer than {timeout_ms} ms")]
    Timeout {
        /// The operation (`mget`, `get`, `set`, …).
        op: &'static str,
        /// The bound.
        timeout_ms: u64,
    },
    /// No pooled connection could be had.
    #[error("redis pool: {0}")]
    Pool(String),
}

impl From<redis::ParsingError> for CacheError {
    fn from(e: redis::ParsingError) -> Self {
        CacheError::Parse(e.to_string())
    }
}

impl From<CacheError> for AuditError {
    fn from(e: CacheError) -> Self {
        match e {
            CacheError::Config(m) => AuditError::invalid(m).with_component("cache"),
            other => AuditError::unavailable(other.to_string()).with_component("redis").with_source(other),
        }
    }
}
