//! The cache's clock: milliseconds on tokio's clock since the cache was built.
//!
//! Tokio's clock (not `std::time::Instant`) so that TTLs and staleness bounds follow `tokio::time::pause` /
//! `advance`: tests of expiry run on paused time instead of sleeping.

use tokio::time::Instant;

/// Milliseconds since construction, plus one (so that `0` can mean "never" in stored instants).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    base: Instant,
}

impl Clock {
    /// A clock starting now.
    pub(crate) fn start() -> Self {
        Self { base: Instant::now() }
    }

    /// Now, in ms on this clock (never 0).
    pub(crate) fn now_ms(&self) -> u64 {
        u64::try_from(Instant::now().saturating_duration_since(self.base).as_millis()).unwrap_or(u64::MAX - 1) + 1
    }
}
