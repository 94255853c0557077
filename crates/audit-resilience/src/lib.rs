//! audit-resilience
