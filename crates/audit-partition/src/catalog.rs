//! What `pg_catalog` says about `audit_log`'s partitions and keys: the one catalog query that creation, retention,
//! status and analysis all read.

use audit_core::AuditResult;
use audit_pg::pg_error;
use chrono::{DateTime, Utc};
use tokio_postgres::GenericClient;

use crate::period::{PARENT_TABLE, Period};

/// One child of `audit_log` (attached or half-way through a concurrent detach), as read from `pg_catalog`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CatalogPartition {
    /// Table name.
    pub(crate) name: String,
    /// Half-way through `DETACH … CONCURRENTLY`.
    pub(crate) detach_pending: bool,
    /// Inclusive lower bound (`None` for MINVALUE or a bound we cannot read), parsed by the server.
    pub(crate) range_from: Option<DateTime<Utc>>,
    /// Exclusive upper bound.
    pub(crate) range_to: Option<DateTime<Utc>>,
    /// The bound as PostgreSQL prints it.
    pub(crate) bound: String,
    /// `pg_partitioned_table.partstrat` (`h`, `l`, `r`) when the partition is itself partitioned.
    pub(crate) sub_strategy: Option<String>,
    /// Leaf tables under it (1 for a plain partition); with [`Detail::Sizes`].
    pub(crate) leaves: Option<i64>,
    /// Planner estimate summed over leaves (`reltuples`); `None` until a leaf was vacuumed or analysed, or
    /// without [`Detail::Sizes`].
    pub(crate) estimated_rows: Option<f64>,
    /// `pg_total_relation_size` summed over the partition's tree, bytes; with [`Detail::Sizes`].
    pub(crate) total_bytes: Option<i64>,
    /// Indexes on the partition itself.
    pub(crate) index_count: i64,
}

impl CatalogPartition {
    /// `hash`, `list` or `range` when sub-partitioned, as shown to operators.
    pub(crate) fn sub_partitioning(&self) -> Option<&'static str> {
        match self.sub_strategy.as_deref()? {
            "h" => Some("hash"),
            "l" => Some("list"),
            "r" => Some("range"),
            _ => None,
        }
    }

    /// The period whose bounds these are exactly, if any.
    pub(crate) fn period(&self, interval: crate::PartitionInterval) -> Option<Period> {
        Period::from_bounds(interval, self.range_from?, self.range_to?)
    }
}

/// The children of `audit_log`, in name (= time) order, with bounds parsed by the server whatever its TimeZone.
/// Bounds hold no column references, so they are printed without opening (and locking) the partition.
/// `$1`: also the leaf count, row estimate and size — these take ACCESS SHARE locks on every partition (so they
/// wait behind an ACCESS EXCLUSIVE holder), which the write path's lookups must not, so only reports ask for them.
const PARTITIONS_SQL: &str = "SELECT c.relname::text, i.inhdetachpending, \
        (regexp_match(b.expr, $$FROM \\('([^']+)'\\)$$))[1]::timestamptz, \
        (regexp_match(b.expr, $$TO \\('([^']+)'\\)$$))[1]::timestamptz, \
        b.expr, pt.partstrat::text, \
        CASE WHEN $1 THEN (SELECT count(*) FROM pg_partition_tree(c.oid) t WHERE t.isleaf) END, \
        CASE WHEN $1 THEN (SELECT sum(lc.reltuples)::float8 FROM pg_partition_tree(c.oid) t \
           JOIN pg_class lc ON lc.oid = t.relid WHERE t.isleaf AND lc.reltuples >= 0) END, \
        CASE WHEN $1 THEN (SELECT coalesce(sum(pg_total_relation_size(t.relid)), 0)::bigint \
           FROM pg_partition_tree(c.oid) t) END, \
        (SELECT count(*) FROM pg_index x WHERE x.indrelid = c.oid) \
     FROM pg_inherits i \
     JOIN pg_class c ON c.oid = i.inhrelid \
     CROSS JOIN LATERAL (SELECT pg_get_expr(c.relpartbound, 0) AS expr) b \
     LEFT JOIN pg_partitioned_table pt ON pt.partrelid = c.oid \
     WHERE i.inhparent = 'audit_log'::regclass \
     ORDER BY c.relname";

/// How much [`list_partitions`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Detail {
    /// Names, bounds, sub-partitioning, index counts: catalog reads only, never waits for a partition's lock.
    Bounds,
    /// Also leaves, row estimates and sizes (locks every partition in ACCESS SHARE mode).
    Sizes,
}

/// Lists the children of `audit_log` (see [`CatalogPartition`]).
pub(crate) async fn list_partitions<C: GenericClient + Sync>(
    client: &C,
    detail: Detail,
) -> AuditResult<Vec<CatalogPartition>> {
    let sizes = detail == Detail::Sizes;
    let rows = client.query(PARTITIONS_SQL, &[&sizes]).await.map_err(|e| pg_error(e, "listing partitions"))?;
    Ok(rows
        .iter()
        .map(|r| CatalogPartition {
            name: r.get(0),
            detach_pending: r.get(1),
            range_from: r.get(2),
            range_to: r.get(3),
            bound: r.get(4),
            sub_strategy: r.get(5),
            leaves: r.get(6),
            estimated_rows: r.get(7),
            total_bytes: r.get(8),
            index_count: r.get(9),
        })
        .collect())
}

/// The name of the attached partition whose bounds are exactly those of `p`, if there is one.
pub(crate) async fn exact_partition<C: GenericClient + Sync>(client: &C, p: Period) -> AuditResult<Option<String>> {
    Ok(list_partitions(client, Detail::Bounds)
        .await?
        .into_iter()
        .find(|c| c.range_from == Some(p.start()) && c.range_to == Some(p.end()) && !c.detach_pending)
        .map(|c| c.name))
}

/// Whether a valid unique index of `audit_log` (so of every partition: a partitioned index is cloned onto each
/// one) has exactly `event_id` and `timestamp` as its key, with no predicate or expression.
pub(crate) async fn event_key_is_unique<C: GenericClient + Sync>(client: &C) -> AuditResult<bool> {
    let sql = format!(
        "SELECT EXISTS (SELECT 1 FROM pg_index i \
           WHERE i.indrelid = '{PARENT_TABLE}'::regclass AND i.indisunique AND i.indisvalid \
             AND i.indnkeyatts = 2 AND i.indpred IS NULL AND i.indexprs IS NULL \
             AND (SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_attribute a \
                  WHERE a.attrelid = i.indrelid AND a.attnum = ANY ((i.indkey::int2[])[0:1])) \
                 = ARRAY['event_id', 'timestamp'])"
    );
    Ok(client.query_one(sql.as_str(), &[]).await.map_err(|e| pg_error(e, "reading the event key of audit_log"))?.get(0))
}
