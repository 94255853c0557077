//! audit-resilience: circuit breakers, bounded retry and deadlines that wrap any audit-db operation without
//! knowing what it is.
//!
//! The entry type is [`Policy`], which implements [`audit_core::ResiliencePolicy`]. It is built from small
//! pieces that can be used alone: [`Breaker`] (one per dependency, shared through a [`BreakerRegistry`]), the
//! workspace's [`RetrySchedule`] run by `backon` with [`is_retryable`] as its rule, [`with_timeout`] and
//! [`OpenBackoff`]. Decisions are taken from the error's kind and class alone: only Unavailable errors count
//! against a dependency, only Transient and Unavailable errors are retried, a breaker's CircuitOpen refusal never.
//! Settings come from the `[circuitBreaker]` section, [`CircuitBreakerConfig`], which this crate owns.
//! Classifying driver errors (SQLSTATE, connection errors) is the database client's job, so this crate does not
//! depend on any driver.
//!
//! failsafe supplies the failure policies (when to open, for how long); the state machine is ours, see
//! [`breaker`] for why.

pub mod backoff;
pub mod breaker;
pub mod config;
pub mod policy;
pub mod registry;
pub mod retry;
#[cfg(test)]
mod test_metrics;
pub mod timeout;

pub use backoff::OpenBackoff;
pub use breaker::{Breaker, BreakerSettings, BreakerState, BreakerStatus, Permit, TripPolicy};
pub use config::CircuitBreakerConfig;
pub use policy::Policy;
pub use registry::{BreakerRegistry, names};
pub use retry::{RetrySchedule, is_retryable};
pub use timeout::with_timeout;
