//! audit-replica
