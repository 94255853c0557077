//! [`PartitionManager`]: the partitioning scheme, partition creation without blocking readers, on-demand
//! coverage for the write path, and legal holds.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, RwLock};

use audit_core::config::{PartitionConfig, PartitionInterval, PartitionStrategy};
use audit_core::{AuditError, AuditResult, DataClassification, PartitionProvisioner};
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard};
use tokio_postgres::Client;

use crate::archive::{Archive, DirArchive};
use crate::db::{self, ident, pg_err, retry_lock};
use crate::period::{PARENT_TABLE, Period, interval_name, ts_literal};

/// Name of the unique index that replaces the primary key under the hash and list strategies.
pub const EVENT_KEY_INDEX: &str = "audit_log_event_key";
/// Session-level advisory lock key that serialises maintenance across instances (`"auditpm"` in ASCII).
pub const MAINTENANCE_LOCK_KEY: i64 = 0x0061_7564_6974_706d;
/// Transaction-level advisory lock key that serialises recording the partitioning scheme.
const SCHEME_LOCK_KEY: i64 = 0x0061_7564_6974_7363;

/// Strategy as stored in the config table.
pub fn strategy_name(s: PartitionStrategy) -> &'static str {
    match s {
        PartitionStrategy::Range => "range",
        PartitionStrategy::Hash => "hash",
        PartitionStrategy::List => "list",
    }
}

/// One attached (or detaching) child of `audit_log`, as read from `pg_catalog`.
#[derive(Debug, Clone)]
pub(crate) struct CatalogPartition {
    pub name: String,
    pub detach_pending: bool,
    pub range_from: Option<DateTime<Utc>>,
    pub range_to: Option<DateTime<Utc>>,
    pub bound: String,
    /// `h` hash or `l` list when sub-partitioned.
    pub sub_strategy: Option<String>,
}

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

/// Creates, covers, ages out and reports the time partitions of `audit_log` (see the crate docs for the rules).
///
/// One value per process; cheap to share behind an `Arc`. It keeps one connection for on-demand work and opens
/// dedicated connections for maintenance (one of them only to hold the advisory lock).
pub struct PartitionManager {
    pub(crate) url: String,
    pub(crate) config: PartitionConfig,
    pub(crate) archive: Option<Arc<dyn Archive>>,
    pub(crate) actor: String,
    pub(crate) oversize_bytes: i64,
    known: RwLock<HashSet<Period>>,
    conn: Mutex<Option<Client>>,
}

impl std::fmt::Debug for PartitionManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionManager")
            .field("config", &self.config)
            .field("actor", &self.actor)
            .field("archive", &self.archive.as_ref().map(|a| a.staging_dir()))
            .finish_non_exhaustive()
    }
}

impl PartitionManager {
    /// Connects to `database_url`, records the partitioning scheme of `config` (or checks it against the one
    /// recorded: a different strategy, interval or bucket count is refused while `audit_log` has partitions), and
    /// returns a manager. `archive_dir` from the config becomes a [`DirArchive`]; see [`Self::with_archive`].
    pub async fn connect(database_url: &str, config: PartitionConfig) -> AuditResult<Self> {
        if config.partition_column != "timestamp" {
            return Err(AuditError::invalid("partition.partitionColumn: only `timestamp` is supported"));
        }
        if config.hash_buckets == 0 || config.hash_buckets > 1024 {
            return Err(AuditError::invalid("partition.hashBuckets must be between 1 and 1024"));
        }
        let archive: Option<Arc<dyn Archive>> =
            config.archive_dir.as_ref().map(|d| Arc::new(DirArchive::new(d.clone())) as Arc<dyn Archive>);
        let mut client = db::connect(database_url, "audit-partition").await?;
        let mgr = Self {
            url: database_url.to_string(),
            actor: format!("audit-partition@pid{}", std::process::id()),
            oversize_bytes: 64 * 1024 * 1024 * 1024,
            archive,
            known: RwLock::new(HashSet::new()),
            conn: Mutex::new(None),
            config,
        };
        mgr.reconcile_scheme(&mut client).await?;
        mgr.refresh_known(&client).await?;
        *mgr.conn.lock().await = Some(client);
        Ok(mgr)
    }

    /// Uses `archive` for retention instead of the configured directory (e.g. object storage).
    pub fn with_archive(mut self, archive: Arc<dyn Archive>) -> Self {
        self.archive = Some(archive);
        self
    }

    /// Names who runs retention in the retention log (default `audit-partition@pid<N>`).
    pub fn with_actor(mut self, actor: impl Into<String>) -> Self {
        self.actor = actor.into();
        self
    }

    /// Size above which `analyze` reports a partition as oversized (default 64 GiB).
    pub fn with_oversize_threshold(mut self, bytes: u64) -> Self {
        self.oversize_bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        self
    }

    /// The configuration in force.
    pub fn config(&self) -> &PartitionConfig {
        &self.config
    }

    /// The shared connection, reconnecting if it was lost.
    pub(crate) async fn client(&self) -> AuditResult<MappedMutexGuard<'_, Client>> {
        let mut guard = self.conn.lock().await;
        if guard.as_ref().is_none_or(Client::is_closed) {
            *guard = Some(db::connect(&self.url, "audit-partition").await?);
        }
        Ok(MutexGuard::map(guard, |c| c.as_mut().expect("connected just above")))
    }

    /// `SET LOCAL lock_timeout` text for this configuration.
    pub(crate) fn set_local_lock_timeout(&self) -> String {
        format!("SET LOCAL lock_timeout = '{}ms'", self.config.lock_timeout.max(1))
    }

    /// Session-level `SET lock_timeout` text (for statements that cannot run in a transaction block).
    pub(crate) fn set_lock_timeout(&self) -> String {
        format!("SET lock_timeout = '{}ms'", self.config.lock_timeout.max(1))
    }

    /// Records the scheme, or checks it against the recorded one (see [`Self::connect`]).
    async fn reconcile_scheme(&self, client: &mut Client) -> AuditResult<()> {
        let partitions = list_partitions(client).await?;
        retry_lock!("recording the partition scheme", self.try_reconcile(client, &partitions).await)
            .map_err(|e| pg_err(e, "recording the partition scheme"))?
    }

    async fn try_reconcile(
        &self,
        client: &mut Client,
        partitions: &[CatalogPartition],
    ) -> Result<AuditResult<()>, tokio_postgres::Error> {
        let want_strategy = strategy_name(self.config.strategy);
        let want_interval = interval_name(self.config.interval);
        let want_buckets = i32::try_from(self.config.hash_buckets).expect("checked to be at most 1024");
        let tx = client.transaction().await?;
        tx.batch_execute(&self.set_local_lock_timeout()).await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEME_LOCK_KEY]).await?;
        let row = tx
            .query_opt(
                "SELECT strategy::text, period_interval::text, hash_buckets FROM audit_partition_config FOR UPDATE",
                &[],
            )
            .await?;
        let count: i64 =
            tx.query_one("SELECT count(*) FROM pg_inherits WHERE inhparent = 'audit_log'::regclass", &[]).await?.get(0);
        let recorded = row.map(|r| (r.get::<_, String>(0), r.get::<_, String>(1), r.get::<_, i32>(2)));
        let wanted = (want_strategy.to_string(), want_interval.to_string(), want_buckets);
        if recorded.as_ref() == Some(&wanted) {
            tx.commit().await?;
            return Ok(Ok(()));
        }
        if count > 0 {
            let msg = match &recorded {
                Some((s, i, b)) => Some(format!(
                    "audit_log is partitioned with strategy `{s}`, interval `{i}`, {b} hash bucket(s) and has \
                     {count} partition(s); the configuration asks for `{want_strategy}`, `{want_interval}`, \
                     {want_buckets} bucket(s). Changing the scheme of a table that has partitions is refused: \
                     restore the recorded settings, or migrate the data into a new table"
                )),
                None => scheme_mismatch(partitions, self.config.strategy, self.config.interval).map(|why| {
                    format!(
                        "audit_log already has {count} partition(s) that do not fit strategy `{want_strategy}`, \
                         interval `{want_interval}`: {why}"
                    )
                }),
            };
            if let Some(msg) = msg {
                return Ok(Err(AuditError::invalid(msg)));
            }
        } else {
            tx.batch_execute(&key_shape_sql(self.config.strategy)).await?;
        }
        tx.execute(
            "INSERT INTO audit_partition_config (id, strategy, period_interval, hash_buckets, updated_at) \
             VALUES (true, $1, $2, $3, now()) ON CONFLICT (id) DO UPDATE SET strategy = EXCLUDED.strategy, \
             period_interval = EXCLUDED.period_interval, hash_buckets = EXCLUDED.hash_buckets, updated_at = now()",
            &[&want_strategy, &want_interval, &want_buckets],
        )
        .await?;
        tx.commit().await?;
        tracing::info!(
            strategy = want_strategy,
            interval = want_interval,
            buckets = want_buckets,
            "recorded partition scheme"
        );
        Ok(Ok(()))
    }

    /// Reloads the in-memory set of periods that have a partition.
    pub(crate) async fn refresh_known(&self, client: &Client) -> AuditResult<()> {
        let parts = list_partitions(client).await?;
        let set: HashSet<Period> = parts
            .iter()
            .filter(|p| !p.detach_pending)
            .filter_map(|p| Period::from_bounds(self.config.interval, p.range_from?, p.range_to?))
            .collect();
        *self.known.write().expect("known-period lock poisoned") = set;
        Ok(())
    }

    pub(crate) fn forget(&self, p: Option<Period>) {
        if let Some(p) = p {
            self.known.write().expect("known-period lock poisoned").remove(&p);
        }
    }

    /// The SQL that builds the partition for `p` (detached), attaches it, and drops the helper CHECK.
    pub(crate) fn create_sql(&self, p: Period) -> String {
        let name = p.table_name();
        let t = ident(&name);
        let (from, to) = (ts_literal(p.start()), ts_literal(p.end()));
        // Statement triggers are not cloned to partitions: refuse TRUNCATE (and UPDATE/DELETE statements, as on
        // the parent) on every table of the partition's tree. Row triggers come from the parent.
        let no_truncate = |table: &str| {
            format!(
                "CREATE TRIGGER {} BEFORE TRUNCATE ON {t} FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse_change();\n\
                 CREATE TRIGGER {} BEFORE UPDATE OR DELETE ON {t} FOR EACH STATEMENT \
                 EXECUTE FUNCTION audit_log_refuse_change();\n",
                ident(&format!("{table}_no_truncate")),
                ident(&format!("{table}_no_update_delete_stmt")),
                t = ident(table)
            )
        };
        let mut sql = self.set_local_lock_timeout() + ";\n";
        let sub = match self.config.strategy {
            PartitionStrategy::Range => "",
            PartitionStrategy::Hash => " PARTITION BY HASH (organization_id)",
            PartitionStrategy::List => " PARTITION BY LIST (data_classification)",
        };
        sql += &format!("CREATE TABLE {t} (LIKE {PARENT_TABLE} INCLUDING DEFAULTS INCLUDING CONSTRAINTS){sub};\n");
        sql += &no_truncate(&name);
        match self.config.strategy {
            PartitionStrategy::Range => {}
            PartitionStrategy::Hash => {
                let n = self.config.hash_buckets;
                for i in 0..n {
                    let leaf = format!("{name}_h{i}");
                    sql += &format!(
                        "CREATE TABLE {} PARTITION OF {t} FOR VALUES WITH (MODULUS {n}, REMAINDER {i});\n",
                        ident(&leaf)
                    );
                    sql += &no_truncate(&leaf);
                }
            }
            PartitionStrategy::List => {
                for c in DataClassification::ALL {
                    let leaf = format!("{name}_{}", c.as_str().to_ascii_lowercase());
                    sql +=
                        &format!("CREATE TABLE {} PARTITION OF {t} FOR VALUES IN ('{}');\n", ident(&leaf), c.as_str());
                    sql += &no_truncate(&leaf);
                }
            }
        }
        let check = ident(&format!("{name}_bounds"));
        sql += &format!(
            "ALTER TABLE {t} ADD CONSTRAINT {check} CHECK (\"timestamp\" >= {from} AND \"timestamp\" < {to});\n\
             ALTER TABLE {PARENT_TABLE} ATTACH PARTITION {t} FOR VALUES FROM ({from}) TO ({to});\n\
             ALTER TABLE {t} DROP CONSTRAINT {check};\n"
        );
        sql
    }

    /// Creates the partition for `p` unless it exists; `Ok(true)` when this call created it. Safe to race with
    /// other processes: "exists" and "would overlap" count as success when the partition in place has exactly
    /// the wanted bounds.
    pub(crate) async fn create_period(&self, client: &mut Client, p: Period) -> AuditResult<bool> {
        let name = p.table_name();
        if exact_partition(client, p).await?.is_some() {
            self.known.write().expect("known-period lock poisoned").insert(p);
            return Ok(false);
        }
        let sql = self.create_sql(p);
        let res = retry_lock!(&name, run_in_transaction(client, &sql).await);
        match res {
            Ok(()) => {
                tracing::info!(partition = %name, from = %p.start(), to = %p.end(), "created partition");
                metrics::counter!("audit_partition_created_total").increment(1);
                self.known.write().expect("known-period lock poisoned").insert(p);
                Ok(true)
            }
            Err(e) if db::is_creation_race(&e) => match exact_partition(client, p).await? {
                Some(existing) => {
                    tracing::debug!(partition = %existing, "partition created concurrently by another process");
                    self.known.write().expect("known-period lock poisoned").insert(p);
                    Ok(false)
                }
                None => Err(pg_err(e, &format!("creating partition {name}")).with_component("partition")),
            },
            Err(e) => Err(pg_err(e, &format!("creating partition {name}"))),
        }
    }

    /// Keeps the current period and the `premake` periods after it; returns the partitions this call created.
    /// Called at migrate time and by maintenance.
    pub async fn premake(&self) -> AuditResult<Vec<String>> {
        let mut client = self.client().await?;
        self.premake_on(&mut client, Utc::now()).await
    }

    pub(crate) async fn premake_on(&self, client: &mut Client, now: DateTime<Utc>) -> AuditResult<Vec<String>> {
        let mut created = Vec::new();
        let mut p = Period::of(self.config.interval, now);
        for _ in 0..=self.config.premake {
            if self.create_period(client, p).await? {
                created.push(p.table_name());
            }
            p = p.next();
        }
        Ok(created)
    }

    /// Creates the partitions of every period between `from` and `to` (inclusive), e.g. before a bulk import.
    pub async fn ensure_range(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> AuditResult<Vec<String>> {
        if from > to {
            return Err(AuditError::invalid("ensure_range: `from` is after `to`"));
        }
        let mut client = self.client().await?;
        let mut created = Vec::new();
        for p in Period::span(self.config.interval, from, to) {
            if self.create_period(&mut client, p).await? {
                created.push(p.table_name());
            }
        }
        Ok(created)
    }

    /// Places a legal hold; returns its id.
    pub async fn place_legal_hold(&self, target: &HoldTarget, reason: &str, by: &str) -> AuditResult<i64> {
        if reason.trim().is_empty() {
            return Err(AuditError::invalid("a legal hold needs a reason"));
        }
        let (org, class) = match target {
            HoldTarget::Organization(o) => (Some(o.as_str()), None),
            HoldTarget::Classification(c) => (None, Some(c.as_str())),
        };
        let client = self.client().await?;
        let row = client
            .query_one(
                "INSERT INTO audit_legal_holds (organization_id, data_classification, reason, created_by) \
                 VALUES ($1, $2, $3, $4) RETURNING id",
                &[&org, &class, &reason, &by],
            )
            .await
            .map_err(|e| pg_err(e, "placing legal hold"))?;
        let id: i64 = row.get(0);
        tracing::info!(id, ?target, by, "legal hold placed");
        Ok(id)
    }

    /// Releases an active legal hold; `Ok(false)` if there was no active hold with that id.
    pub async fn release_legal_hold(&self, id: i64, by: &str) -> AuditResult<bool> {
        let client = self.client().await?;
        let n = client
            .execute(
                "UPDATE audit_legal_holds SET released_at = now(), released_by = $2 WHERE id = $1 AND released_at IS NULL",
                &[&id, &by],
            )
            .await
            .map_err(|e| pg_err(e, "releasing legal hold"))?;
        if n > 0 {
            tracing::info!(id, by, "legal hold released");
        }
        Ok(n > 0)
    }

    /// Lists legal holds (active only unless `include_released`).
    pub async fn legal_holds(&self, include_released: bool) -> AuditResult<Vec<LegalHold>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT id, organization_id::text, data_classification::text, reason, created_by, created_at, \
                 released_at, released_by FROM audit_legal_holds WHERE $1 OR released_at IS NULL ORDER BY id",
                &[&include_released],
            )
            .await
            .map_err(|e| pg_err(e, "listing legal holds"))?;
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

impl PartitionProvisioner for PartitionManager {
    /// Fast path: every period already known in memory → no I/O. Otherwise refreshes from the catalog and
    /// creates what is still missing (racing safely with other processes).
    async fn ensure_covering(&self, timestamps: &[DateTime<Utc>]) -> AuditResult<()> {
        let interval = self.config.interval;
        let missing: BTreeSet<Period> = {
            let known = self.known.read().expect("known-period lock poisoned");
            timestamps.iter().map(|t| Period::of(interval, *t)).filter(|p| !known.contains(p)).collect()
        };
        if missing.is_empty() {
            return Ok(());
        }
        let mut client = self.client().await?;
        self.refresh_known(&client).await?;
        for p in missing {
            if self.known.read().expect("known-period lock poisoned").contains(&p) {
                continue;
            }
            self.create_period(&mut client, p).await?;
        }
        Ok(())
    }

    fn forget_known(&self) {
        self.known.write().expect("known-period lock poisoned").clear();
    }
}

/// Runs a batch of statements in one transaction (rolled back on error).
pub(crate) async fn run_in_transaction(client: &mut Client, sql: &str) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.batch_execute(sql).await?;
    tx.commit().await
}

/// SQL that gives `audit_log` the unique key the strategy allows (only run while it has no partitions).
fn key_shape_sql(strategy: PartitionStrategy) -> String {
    match strategy {
        PartitionStrategy::Range => format!(
            "DROP INDEX IF EXISTS {EVENT_KEY_INDEX};\n\
             DO $$ BEGIN\n\
               IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'audit_log_pkey'\n\
                              AND conrelid = 'audit_log'::regclass) THEN\n\
                 ALTER TABLE audit_log ADD CONSTRAINT audit_log_pkey PRIMARY KEY (event_id, \"timestamp\");\n\
               END IF;\n\
             END $$;"
        ),
        PartitionStrategy::Hash | PartitionStrategy::List => {
            let col = if strategy == PartitionStrategy::Hash { "organization_id" } else { "data_classification" };
            format!(
                "ALTER TABLE audit_log DROP CONSTRAINT IF EXISTS audit_log_pkey;\n\
                 DROP INDEX IF EXISTS {EVENT_KEY_INDEX};\n\
                 CREATE UNIQUE INDEX {EVENT_KEY_INDEX} ON audit_log (event_id, \"timestamp\", {col}) NULLS NOT DISTINCT;"
            )
        }
    }
}

/// Why existing partitions do not fit a scheme, if they do not.
fn scheme_mismatch(
    parts: &[CatalogPartition],
    strategy: PartitionStrategy,
    interval: PartitionInterval,
) -> Option<String> {
    for p in parts {
        let fits_interval = match (p.range_from, p.range_to) {
            (Some(f), Some(t)) => Period::from_bounds(interval, f, t).is_some(),
            _ => false,
        };
        if !fits_interval {
            return Some(format!("{} has bounds {}", p.name, p.bound));
        }
        let want = match strategy {
            PartitionStrategy::Range => None,
            PartitionStrategy::Hash => Some("h"),
            PartitionStrategy::List => Some("l"),
        };
        if p.sub_strategy.as_deref() != want {
            return Some(format!("{} is sub-partitioned as {:?}", p.name, p.sub_strategy));
        }
    }
    None
}

/// Lists the children of `audit_log` with their bounds (bounds parsed by the server, whatever its TimeZone).
pub(crate) async fn list_partitions(client: &Client) -> AuditResult<Vec<CatalogPartition>> {
    let rows = client
        .query(
            "SELECT c.relname::text, i.inhdetachpending, \
                    (regexp_match(b.expr, $$FROM \\('([^']+)'\\)$$))[1]::timestamptz, \
                    (regexp_match(b.expr, $$TO \\('([^']+)'\\)$$))[1]::timestamptz, \
                    b.expr, pt.partstrat::text \
             FROM pg_inherits i \
             JOIN pg_class c ON c.oid = i.inhrelid \
             CROSS JOIN LATERAL (SELECT pg_get_expr(c.relpartbound, c.oid) AS expr) b \
             LEFT JOIN pg_partitioned_table pt ON pt.partrelid = c.oid \
             WHERE i.inhparent = 'audit_log'::regclass \
             ORDER BY c.relname",
            &[],
        )
        .await
        .map_err(|e| pg_err(e, "listing partitions"))?;
    Ok(rows
        .iter()
        .map(|r| CatalogPartition {
            name: r.get(0),
            detach_pending: r.get(1),
            range_from: r.get(2),
            range_to: r.get(3),
            bound: r.get(4),
            sub_strategy: r.get(5),
        })
        .collect())
}

/// The name of the attached partition whose bounds are exactly those of `p`, if there is one.
async fn exact_partition(client: &Client, p: Period) -> AuditResult<Option<String>> {
    let parts = list_partitions(client).await?;
    Ok(parts
        .into_iter()
        .find(|c| c.range_from == Some(p.start()) && c.range_to == Some(p.end()) && !c.detach_pending)
        .map(|c| c.name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(name: &str, from: &str, to: &str, sub: Option<&str>) -> CatalogPartition {
        let ts = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        CatalogPartition {
            name: name.into(),
            detach_pending: false,
            range_from: Some(ts(from)),
            range_to: Some(ts(to)),
            bound: format!("FROM {from} TO {to}"),
            sub_strategy: sub.map(str::to_string),
        }
    }

    #[test]
    fn existing_partitions_must_fit_the_scheme() {
        let parts = vec![part("audit_log_2026_11", "2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z", None)];
        assert_eq!(scheme_mismatch(&parts, PartitionStrategy::Range, PartitionInterval::Monthly), None);
        assert!(scheme_mismatch(&parts, PartitionStrategy::Range, PartitionInterval::Quarterly).is_some());
        assert!(scheme_mismatch(&parts, PartitionStrategy::Hash, PartitionInterval::Monthly).is_some());
        let hashed = vec![part("audit_log_2026_q4", "2026-10-01T00:00:00Z", "2027-01-01T00:00:00Z", Some("h"))];
        assert_eq!(scheme_mismatch(&hashed, PartitionStrategy::Hash, PartitionInterval::Quarterly), None);
        assert!(scheme_mismatch(&hashed, PartitionStrategy::List, PartitionInterval::Quarterly).is_some());
    }

    #[test]
    fn key_shape_includes_the_sub_partition_column() {
        assert!(key_shape_sql(PartitionStrategy::Hash).contains("(event_id, \"timestamp\", organization_id)"));
        assert!(key_shape_sql(PartitionStrategy::List).contains("(event_id, \"timestamp\", data_classification)"));
        assert!(key_shape_sql(PartitionStrategy::Range).contains("PRIMARY KEY (event_id, \"timestamp\")"));
    }
}
