//! End-to-end tests of audit-db (in `tests/`), run against real PostgreSQL and Redis with the helpers of
//! `audit-testkit`. This library is empty: the crate exists for its integration tests.
