//! The read path: filters, keyset paging, counts and lookups through diesel-async.

use audit_core::AuditError;
use audit_core::event::{DataClassification, NewEvent, Status, StoredEvent};
use audit_core::filter::{Cursor, EventFilter, Page};
use chrono::{DateTime, Utc};
use diesel::dsl::count_star;
use diesel::pg::Pg;
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::pg::diesel_error;
use crate::schema::audit_log;

/// One stored row as diesel reads it.
#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = audit_log, check_for_backend(Pg))]
struct Row {
    id: i64,
    event_id: Uuid,
    timestamp: DateTime<Utc>,
    ingested_at: DateTime<Utc>,
    action: String,
    status: String,
    principal_id: Option<String>,
    organization_id: Option<String>,
    target_resource_type: Option<String>,
    target_resource_id: Option<String>,
    outcome_description: Option<String>,
    correlation_id: Option<String>,
    data_classification: String,
    retention_policy: String,
    event_version: String,
    ttl: Option<String>,
    processing_latency: Option<i32>,
    details: serde_json::Value,
    seq: i64,
    leaf_hash: Vec<u8>,
}

impl TryFrom<Row> for StoredEvent {
    type Error = AuditError;

    fn try_from(r: Row) -> Result<Self, AuditError> {
        let bad = |what: &str| AuditError::integrity(format!("stored event {} has {what}", r.event_id));
        let status = Status::parse(&r.status).ok_or_else(|| bad("an unknown status"))?;
        let data_classification =
            DataClassification::parse(&r.data_classification).ok_or_else(|| bad("an unknown classification"))?;
        let details = match r.details {
            serde_json::Value::Object(ref m) => m.clone(),
            _ => return Err(bad("details that are not an object")),
        };
        let leaf_hash: [u8; 32] = r.leaf_hash.as_slice().try_into().map_err(|_| bad("a leaf hash of wrong length"))?;
        Ok(StoredEvent {
            id: r.id,
            ingested_at: r.ingested_at,
            seq: r.seq,
            leaf_hash,
            event: NewEvent {
                event_id: r.event_id,
                event_id_supplied: true,
                timestamp: r.timestamp,
                action: r.action,
                status,
                principal_id: r.principal_id,
                organization_id: r.organization_id,
                target_resource_type: r.target_resource_type,
                target_resource_id: r.target_resource_id,
                outcome_description: r.outcome_description,
                correlation_id: r.correlation_id,
                data_classification,
                retention_policy: r.retention_policy,
                event_version: r.event_version,
                ttl: r.ttl,
                processing_latency: r.processing_latency,
                details,
            },
        })
    }
}

type Boxed<'a> = audit_log::BoxedQuery<'a, Pg>;

/// Applies every filter field except paging; shared by `query` and `count` so they can never disagree.
fn filtered(f: &EventFilter) -> Boxed<'static> {
    let mut q = audit_log::table.into_boxed();
    if let Some(v) = f.event_id {
        q = q.filter(audit_log::event_id.eq(v));
    }
    if !f.actions.is_empty() {
        q = q.filter(audit_log::action.eq_any(f.actions.clone()));
    }
    if !f.statuses.is_empty() {
        let s: Vec<String> = f.statuses.iter().map(|s| s.as_str().to_string()).collect();
        q = q.filter(audit_log::status.eq_any(s));
    }
    if let Some(v) = &f.principal_id {
        q = q.filter(audit_log::principal_id.eq(v.clone()));
    }
    if let Some(v) = &f.organization_id {
        q = q.filter(audit_log::organization_id.eq(v.clone()));
    }
    if let Some(v) = &f.target_resource_type {
        q = q.filter(audit_log::target_resource_type.eq(v.clone()));
    }
    if let Some(v) = &f.target_resource_id {
        q = q.filter(audit_log::target_resource_id.eq(v.clone()));
    }
    if let Some(v) = &f.outcome_description {
        q = q.filter(audit_log::outcome_description.eq(v.clone()));
    }
    if let Some(v) = &f.correlation_id {
        q = q.filter(audit_log::correlation_id.eq(v.clone()));
    }
    if let Some(v) = f.data_classification {
        q = q.filter(audit_log::data_classification.eq(v.as_str().to_string()));
    }
    if let Some(v) = &f.retention_policy {
        q = q.filter(audit_log::retention_policy.eq(v.clone()));
    }
    if let Some(v) = &f.event_version {
        q = q.filter(audit_log::event_version.eq(v.clone()));
    }
    if let Some(v) = &f.ttl {
        q = q.filter(audit_log::ttl.eq(v.clone()));
    }
    if let Some(v) = f.processing_latency {
        q = q.filter(audit_log::processing_latency.eq(v));
    }
    if let Some(t) = f.time.gte {
        q = q.filter(audit_log::timestamp.ge(t));
    }
    if let Some(t) = f.time.gt {
        q = q.filter(audit_log::timestamp.gt(t));
    }
    if let Some(t) = f.time.lte {
        q = q.filter(audit_log::timestamp.le(t));
    }
    if let Some(t) = f.time.lt {
        q = q.filter(audit_log::timestamp.lt(t));
    }
    if let Some(d) = &f.details_contains {
        q = q.filter(audit_log::details.contains(d.clone()));
    }
    q
}

/// One page of matching events, newest first, with a cursor when more match.
pub async fn query(conn: &mut AsyncPgConnection, f: &EventFilter) -> Result<Page, AuditError> {
    if let Some(d) = &f.details_contains
        && !d.is_object()
    {
        return Err(AuditError::invalid("details: a containment filter must be a JSON object"));
    }
    let limit = f.effective_limit()?;
    let mut q = filtered(f);
    if let Some(c) = f.after {
        q = q.filter(
            audit_log::timestamp
                .lt(c.timestamp)
                .or(audit_log::timestamp.eq(c.timestamp).and(audit_log::event_id.lt(c.event_id))),
        );
    }
    let rows: Vec<Row> = q
        .order((audit_log::timestamp.desc(), audit_log::event_id.desc()))
        .limit(i64::from(limit) + 1)
        .select(Row::as_select())
        .load(conn)
        .await
        .map_err(|e| diesel_error(e, "querying events"))?;
    let more = rows.len() > limit as usize;
    let mut events = rows.into_iter().take(limit as usize).map(StoredEvent::try_from).collect::<Result<Vec<_>, _>>()?;
    events.shrink_to_fit();
    let next_cursor = if more {
        events.last().map(|e| Cursor { timestamp: e.event.timestamp, event_id: e.event.event_id })
    } else {
        None
    };
    Ok(Page { events, next_cursor })
}

/// How many events match (paging fields are ignored).
pub async fn count(conn: &mut AsyncPgConnection, f: &EventFilter) -> Result<i64, AuditError> {
    filtered(f).select(count_star()).get_result(conn).await.map_err(|e| diesel_error(e, "counting events"))
}

/// The event with this id, if stored.
pub async fn get(conn: &mut AsyncPgConnection, event_id: Uuid) -> Result<Option<StoredEvent>, AuditError> {
    let row: Option<Row> = audit_log::table
        .filter(audit_log::event_id.eq(event_id))
        .select(Row::as_select())
        .first(conn)
        .await
        .optional()
        .map_err(|e| diesel_error(e, "looking up an event"))?;
    row.map(StoredEvent::try_from).transpose()
}
