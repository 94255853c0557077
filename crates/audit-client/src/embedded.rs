//! Private PostgreSQL clusters (embedded default and test clusters).
