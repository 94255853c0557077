//! The read path: filters, keyset paging, counts and lookups through diesel-async.

use audit_core::AuditError;
use audit_core::event::StoredEvent;
use audit_core::filter::{Cursor, EventFilter, Page};
use audit_pg::schema::audit_log;
use audit_pg::{PgConn, build_query, stored_event_from_row};
use diesel::dsl::count_star;
use diesel::pg::Pg;
use diesel::prelude::*;
use uuid::Uuid;

/// The full row: diesel's `all_columns` of the table, declared in `audit_pg::EVENT_COLUMNS` order (what
/// `stored_event_from_row` reads).
const ROW: <audit_log::table as diesel::Table>::AllColumns = audit_log::all_columns;

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

/// The statement [`query`] runs for `f` (SQL text and encoded parameters) and the page size: built in one place,
/// so that a benchmark's raw baseline ([`crate::query_statement`]) runs exactly what the client sends.
pub(crate) fn page_statement(f: &EventFilter) -> Result<(audit_pg::BuiltQuery, u32), AuditError> {
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
    let q = q.order((audit_log::timestamp.desc(), audit_log::event_id.desc())).limit(i64::from(limit) + 1).select(ROW);
    Ok((build_query(&q)?, limit))
}

/// One page of matching events, newest first, with a cursor when more match.
pub(crate) async fn query(conn: &mut PgConn, f: &EventFilter) -> Result<Page, AuditError> {
    let (statement, limit) = page_statement(f)?;
    let rows = statement.fetch(conn, "querying events").await?;
    let more = rows.len() > limit as usize;
    let mut events = rows.iter().take(limit as usize).map(stored_event_from_row).collect::<Result<Vec<_>, _>>()?;
    events.shrink_to_fit();
    let next_cursor = if more {
        events.last().map(|e| Cursor { timestamp: e.event.timestamp, event_id: e.event.event_id })
    } else {
        None
    };
    Ok(Page { events, next_cursor })
}

/// How many events match (paging fields are ignored).
pub(crate) async fn count(conn: &mut PgConn, f: &EventFilter) -> Result<i64, AuditError> {
    let q = filtered(f).select(count_star());
    let row = build_query(&q)?.fetch_optional(conn, "counting events").await?;
    row.map(|r| r.try_get::<_, i64>(0))
        .transpose()
        .map_err(|e| audit_pg::pg_error(e, "counting events"))
        .map(|n| n.unwrap_or(0))
}

/// The event with this id, if stored.
pub(crate) async fn get(conn: &mut PgConn, event_id: Uuid) -> Result<Option<StoredEvent>, AuditError> {
    let q = audit_log::table.filter(audit_log::event_id.eq(event_id)).select(ROW).limit(1);
    let row = build_query(&q)?.fetch_optional(conn, "looking up an event").await?;
    row.as_ref().map(stored_event_from_row).transpose()
}
