//! audit-client: the entry point applications use.

pub mod embedded;
