//! Legal holds: while one is active, no partition holding a row of its organisation or classification is dropped.

use std::collections::BTreeSet;

use audit_core::{AuditError, AuditResult, DataClassification, ResiliencePolicy};
use audit_pg::{pg_error, quote_ident};
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::GenericClient;

use crate::db::On;
use crate::manager::PartitionManager;

/// Where legal-hold rules apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldTarget {
    /// Every event of one organisation.
    Organization(String),
    /// Every event of one data classification.
    Classification(DataClassification),
}

/// A legal hold as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LegalHold {
    /// Hold id.
    pub id: i64,
    /// The organisation held, if the hold is on one.
    pub organization_id: Option<String>,
    /// The classification held, if the hold is on one.
    pub data_classification: Option<String>,
    /// Why (case number, request).
    pub reason: String,
    /// Who placed it.
    pub created_by: String,
    /// When it was placed.
    pub created_at: DateTime<Utc>,
    /// When it was released (`None` while active).
    pub released_at: Option<DateTime<Utc>>,
    /// Who released it.
    pub released_by: Option<String>,
}

impl<R: ResiliencePolicy> PartitionManager<R> {
    /// Places a legal hold; returns its id. The id is drawn first and the row inserted with it, so that a retry
    /// after a lost answer cannot place the hold twice.
    pub async fn place_legal_hold(&self, target: &HoldTarget, reason: &str, by: &str) -> AuditResult<i64> {
        if reason.trim().is_empty() {
            return Err(AuditError::invalid("a legal hold needs a reason"));
        }
        let (org, class) = match target {
            HoldTarget::Organization(o) => (Some(o.as_str()), None),
            HoldTarget::Classification(c) => (None, Some(c.as_str())),
        };
        let id: i64 = self
            .run(On::Pool, |c| async move {
                c.query_one("SELECT nextval(pg_get_serial_sequence('audit_legal_holds', 'id'))", &[])
                    .await
                    .map(|r| r.get(0))
                    .map_err(|e| pg_error(e, "drawing a legal hold id"))
            })
            .await?;
        self.run(On::Pool, |c| async move {
            c.execute(
                "INSERT INTO audit_legal_holds (id, organization_id, data_classification, reason, created_by) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING",
                &[&id, &org, &class, &reason, &by],
            )
            .await
            .map_err(|e| pg_error(e, "placing legal hold"))
        })
        .await?;
        tracing::info!(id, ?target, by, "legal hold placed");
        Ok(id)
    }

    /// Releases an active legal hold; `Ok(false)` if there was no active hold with that id.
    pub async fn release_legal_hold(&self, id: i64, by: &str) -> AuditResult<bool> {
        let n = self
            .run(On::Pool, |c| async move {
                c.execute(
                    "UPDATE audit_legal_holds SET released_at = now(), released_by = $2 \
                     WHERE id = $1 AND released_at IS NULL",
                    &[&id, &by],
                )
                .await
                .map_err(|e| pg_error(e, "releasing legal hold"))
            })
            .await?;
        if n > 0 {
            tracing::info!(id, by, "legal hold released");
        }
        Ok(n > 0)
    }

    /// Lists legal holds (active only unless `include_released`).
    pub async fn legal_holds(&self, include_released: bool) -> AuditResult<Vec<LegalHold>> {
        let rows = self
            .run(On::Pool, |c| async move {
                c.query(
                    "SELECT id, organization_id::text, data_classification::text, reason, created_by, created_at, \
                     released_at, released_by FROM audit_legal_holds WHERE $1 OR released_at IS NULL ORDER BY id",
                    &[&include_released],
                )
                .await
                .map_err(|e| pg_error(e, "listing legal holds"))
            })
            .await?;
        Ok(rows
            .iter()
            .map(|r| LegalHold {
                id: r.get(0),
                organization_id: r.get(1),
                data_classification: r.get(2),
                reason: r.get(3),
                created_by: r.get(4),
                created_at: r.get(5),
                released_at: r.get(6),
                released_by: r.get(7),
            })
            .collect())
    }
}

/// Active holds matching a row of `table`.
fn holds_sql(table: &str) -> String {
    let t = quote_ident(table);
    format!(
        "SELECT h.id FROM audit_legal_holds h WHERE h.released_at IS NULL AND ( \
           (h.organization_id IS NOT NULL AND EXISTS (SELECT 1 FROM {t} x WHERE x.organization_id = h.organization_id)) \
           OR (h.data_classification IS NOT NULL \
               AND EXISTS (SELECT 1 FROM {t} x WHERE x.data_classification = h.data_classification))) \
         ORDER BY h.id"
    )
}

/// Ids of the active legal holds that match a row of `table`.
pub(crate) async fn holds_on<C: GenericClient + Sync>(client: &C, table: &str) -> AuditResult<Vec<i64>> {
    Ok(client
        .query(holds_sql(table).as_str(), &[])
        .await
        .map_err(|e| pg_error(e, &format!("checking legal holds on {table}")))?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Ids of the active legal holds on any of these organisations or classifications — what the archive pass saw in
/// a table, so the drop re-checks holds without reading the table again. Matches as [`holds_on`] does.
pub(crate) async fn holds_matching<C: GenericClient + Sync>(
    client: &C,
    organizations: &BTreeSet<String>,
    classifications: &BTreeSet<String>,
) -> AuditResult<Vec<i64>> {
    let organizations: Vec<&str> = organizations.iter().map(String::as_str).collect();
    let classifications: Vec<&str> = classifications.iter().map(String::as_str).collect();
    Ok(client
        .query(
            "SELECT id FROM audit_legal_holds WHERE released_at IS NULL \
             AND (organization_id = ANY($1) OR data_classification = ANY($2)) ORDER BY id",
            &[&organizations, &classifications],
        )
        .await
        .map_err(|e| pg_error(e, "re-checking legal holds"))?
        .iter()
        .map(|r| r.get(0))
        .collect())
}
