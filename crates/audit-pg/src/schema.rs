//! Diesel's view of the schema in `migrations/` (the read path's query builder uses it). The column list is
//! the migration's; the macro's generated items are documented there.
#![allow(missing_docs)]

diesel::table! {
    /// Audit events (partitioned by `timestamp`; see the migration).
    audit_log (event_id, timestamp) {
        id -> Int8,
        event_id -> Uuid,
        timestamp -> Timestamptz,
        ingested_at -> Timestamptz,
        action -> Varchar,
        status -> Varchar,
        principal_id -> Nullable<Varchar>,
        organization_id -> Nullable<Varchar>,
        target_resource_type -> Nullable<Varchar>,
        target_resource_id -> Nullable<Varchar>,
        outcome_description -> Nullable<Varchar>,
        correlation_id -> Nullable<Varchar>,
        data_classification -> Varchar,
        retention_policy -> Varchar,
        event_version -> Varchar,
        ttl -> Nullable<Varchar>,
        processing_latency -> Nullable<Int4>,
        details -> Jsonb,
        seq -> Int8,
        leaf_hash -> Bytea,
    }
}
