//! audit-index
