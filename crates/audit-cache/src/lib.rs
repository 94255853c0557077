//! audit-cache
