//! audit-partition
