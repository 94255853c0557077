//! audit-client
