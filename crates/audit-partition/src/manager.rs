//! [`PartitionManager`]: the partitioning scheme, partition creation without blocking readers, and on-demand
//! coverage for the write path.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use audit_core::{
    AuditError, AuditResult, DataClassification, Direct, PartitionProvisioner, ResiliencePolicy, RetrySchedule,
};
use audit_pg::{Connector, PgPool, PoolOptions, build_pool, is_creation_race, pg_error, quote_ident, quote_literal};
use chrono::{DateTime, Utc};
use tokio_postgres::Client;

use crate::archive::{Archive, DirArchive};
use crate::catalog::{self, CatalogPartition, Detail};
use crate::config::{PartitionConfig, PartitionInterval, PartitionStrategy};
use crate::db::{On, ddl_retry_schedule, retry_lock_timeouts};
use crate::period::{PARENT_TABLE, Period, ts_literal};
use audit_core::metrics::PARTITIONS_CREATED;

/// Name of the unique index that replaces the primary key under the hash and list strategies.
pub const EVENT_KEY_INDEX: &str = "audit_log_event_key";
/// Session-level advisory lock key that serialises maintenance across instances (`"auditpm"` in ASCII).
pub const MAINTENANCE_LOCK_KEY: i64 = 0x0061_7564_6974_706d;
/// Transaction-level advisory lock key that serialises recording the partitioning scheme.
const SCHEME_LOCK_KEY: i64 = 0x0061_7564_6974_7363;
/// Connections of the manager's pool: on-demand work is one DDL at a time per process (see `provisioning`) plus
/// short catalog reads and legal-hold statements.
const POOL_SIZE: u32 = 4;

/// Creates, covers, ages out and reports the time partitions of `audit_log` (see the crate docs for the rules).
///
/// One value per process; cheap to share behind an `Arc`. Every statement runs under the resilience policy `R`
/// (deadline, circuit breaker; [`Direct`] adds nothing), on a connection of a small pool opened through the
/// given [`Connector`] (connect timeout, session settings) — except where the session matters: the advisory-lock
/// holder and the maintenance session (`DETACH … CONCURRENTLY`, the archive cursor, the drop transaction), which
/// are dedicated connections opened through the same connector.
pub struct PartitionManager<R = Direct> {
    pub(crate) connector: Connector,
    pub(crate) pool: PgPool,
    pub(crate) acquire_timeout: Duration,
    pub(crate) policy: R,
    pub(crate) ddl_retry: RetrySchedule,
    pub(crate) config: PartitionConfig,
    pub(crate) archive: Option<Arc<dyn Archive>>,
    pub(crate) actor: String,
    pub(crate) oversize_bytes: i64,
    event_key_unique: bool,
    known: RwLock<HashSet<Period>>,
    /// Serialises partition creation within the process (other processes are handled by the race rules).
    provisioning: tokio::sync::Mutex<()>,
}

impl<R> std::fmt::Debug for PartitionManager<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionManager")
            .field("target", &self.connector.target())
            .field("config", &self.config)
            .field("actor", &self.actor)
            .field("archive", &self.archive.as_ref().map(|a| a.staging_dir()))
            .finish_non_exhaustive()
    }
}

impl PartitionManager<Direct> {
    /// [`Self::connect_with_policy`] without a resilience policy (each statement runs once; the connector's
    /// connect timeout and `statement_timeout` still apply). For tools and tests.
    pub async fn connect(connector: &Connector, config: PartitionConfig) -> AuditResult<Self> {
        Self::connect_with_policy(connector, config, Direct).await
    }
}

impl<R: ResiliencePolicy> PartitionManager<R> {
    /// Connects through `connector` (whose options apply to every connection: connect timeout, and for the pool
    /// its `statement_timeout`), records the partitioning scheme of `config` (or checks it against the one
    /// recorded: a different strategy, interval or bucket count is refused while `audit_log` has partitions), and
    /// returns a manager whose every statement runs under `policy`. `archive_dir` from the config becomes a
    /// [`DirArchive`]; see [`Self::with_archive`].
    pub async fn connect_with_policy(connector: &Connector, config: PartitionConfig, policy: R) -> AuditResult<Self> {
        config.check().map_err(|(key, why)| AuditError::invalid(format!("{key}: {why}")))?;
        let ddl_retry = ddl_retry_schedule();
        // Long enough for a provisioning step that waits out its lock timeouts on another connection.
        let acquire_timeout = connector.options().connect_timeout
            + Duration::from_millis(config.lock_timeout).saturating_mul(ddl_retry.max_attempts);
        let pool_connector = connector.with_options(audit_pg::ConnectOptions {
            application_name: "audit-partition".into(),
            ..connector.options().clone()
        });
        let pool = build_pool(
            pool_connector,
            &PoolOptions {
                min_connections: 0,
                max_connections: POOL_SIZE,
                idle_timeout: Duration::from_secs(600),
                acquire_timeout,
                validate_connections: false,
            },
        )?;
        let mut mgr = Self {
            connector: connector.clone(),
            pool,
            acquire_timeout,
            policy,
            ddl_retry,
            archive: config.archive_dir.as_ref().map(|d| Arc::new(DirArchive::new(d.clone())) as Arc<dyn Archive>),
            actor: format!("audit-partition@pid{}", std::process::id()),
            oversize_bytes: 64 * 1024 * 1024 * 1024,
            event_key_unique: false,
            known: RwLock::new(HashSet::new()),
            provisioning: tokio::sync::Mutex::new(()),
            config,
        };
        mgr.reconcile_scheme().await?;
        mgr.event_key_unique = mgr.run(On::Pool, |c| async move { catalog::event_key_is_unique(&*c).await }).await?;
        mgr.refresh_known(On::Pool).await?;
        Ok(mgr)
    }

    /// Room left on the archive (`None` without an archive, or when it cannot tell).
    pub fn archive_space(&self) -> Option<crate::archive::ArchiveSpace> {
        self.archive.as_ref().and_then(|a| a.space())
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

    /// The resilience policy every statement runs under.
    pub fn policy(&self) -> &R {
        &self.policy
    }

    /// `SET LOCAL lock_timeout` text for this configuration.
    pub(crate) fn set_local_lock_timeout(&self) -> String {
        format!("SET LOCAL lock_timeout = {}", quote_literal(&format!("{}ms", self.config.lock_timeout.max(1))))
    }

    /// Session-level `SET lock_timeout` text (for statements that cannot run in a transaction block).
    pub(crate) fn set_lock_timeout(&self) -> String {
        format!("SET lock_timeout = {}", quote_literal(&format!("{}ms", self.config.lock_timeout.max(1))))
    }

    /// Records the scheme, or checks it against the recorded one (see [`Self::connect_with_policy`]).
    async fn reconcile_scheme(&self) -> AuditResult<()> {
        let schedule = &self.ddl_retry;
        let what = "recording the partition scheme";
        self.run(On::Pool, |c| async move {
            retry_lock_timeouts(schedule, what, c, |mut c| async move {
                let r = self.try_reconcile(&mut c).await.map_err(|e| e.context(what));
                (c, r)
            })
            .await
        })
        .await
    }

    /// One attempt of [`Self::reconcile_scheme`], in one transaction under the scheme lock.
    async fn try_reconcile(&self, client: &mut Client) -> AuditResult<()> {
        let pg = |what: &'static str| move |e| pg_error(e, what);
        let wanted = Scheme {
            strategy: self.config.strategy.as_str().to_string(),
            interval: self.config.interval.as_str().to_string(),
            buckets: i32::try_from(self.config.hash_buckets).expect("checked to be at most 1024"),
        };
        let tx = client.transaction().await.map_err(pg("beginning"))?;
        tx.batch_execute(&self.set_local_lock_timeout()).await.map_err(pg("setting lock_timeout"))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEME_LOCK_KEY])
            .await
            .map_err(pg("taking the scheme lock"))?;
        let recorded = tx
            .query_opt(
                "SELECT strategy::text, period_interval::text, hash_buckets FROM audit_partition_config FOR UPDATE",
                &[],
            )
            .await
            .map_err(pg("reading the recorded scheme"))?
            .map(|r| Scheme { strategy: r.get(0), interval: r.get(1), buckets: r.get(2) });
        let partitions = catalog::list_partitions(&tx, Detail::Bounds).await?;
        match decide_scheme(recorded.as_ref(), &wanted, &partitions, self.config.strategy, self.config.interval) {
            SchemeDecision::Keep => return tx.commit().await.map_err(pg("committing")),
            SchemeDecision::Refuse(msg) => return Err(AuditError::invalid(msg)),
            SchemeDecision::Record { reshape_key: true } => {
                tx.batch_execute(&key_shape_sql(self.config.strategy)).await.map_err(pg("shaping the event key"))?;
            }
            SchemeDecision::Record { reshape_key: false } => {}
        }
        tx.execute(
            "INSERT INTO audit_partition_config (id, strategy, period_interval, hash_buckets, updated_at) \
             VALUES (true, $1, $2, $3, now()) ON CONFLICT (id) DO UPDATE SET strategy = EXCLUDED.strategy, \
             period_interval = EXCLUDED.period_interval, hash_buckets = EXCLUDED.hash_buckets, updated_at = now()",
            &[&wanted.strategy, &wanted.interval, &wanted.buckets],
        )
        .await
        .map_err(pg("recording the scheme"))?;
        tx.commit().await.map_err(pg("committing"))?;
        tracing::info!(
            strategy = wanted.strategy,
            interval = wanted.interval,
            buckets = wanted.buckets,
            "recorded partition scheme"
        );
        Ok(())
    }

    /// Reloads the in-memory set of periods that have a partition.
    pub(crate) async fn refresh_known(&self, on: On<'_>) -> AuditResult<()> {
        let parts = self.run(on, |c| async move { catalog::list_partitions(&*c, Detail::Bounds).await }).await?;
        let set: HashSet<Period> =
            parts.iter().filter(|p| !p.detach_pending).filter_map(|p| p.period(self.config.interval)).collect();
        *self.known.write().expect("known-period lock poisoned") = set;
        Ok(())
    }

    /// Forgets that `p` has a partition (it is being dropped).
    pub(crate) fn forget(&self, p: Option<Period>) {
        if let Some(p) = p {
            self.known.write().expect("known-period lock poisoned").remove(&p);
        }
    }

    fn remember(&self, p: Period) {
        self.known.write().expect("known-period lock poisoned").insert(p);
    }

    fn is_known(&self, p: &Period) -> bool {
        self.known.read().expect("known-period lock poisoned").contains(p)
    }

    /// The SQL that builds the partition for `p` (detached), attaches it, and drops the helper CHECK: one batch,
    /// so one (implicit) transaction.
    pub(crate) fn create_sql(&self, p: Period) -> String {
        let name = p.table_name();
        let t = quote_ident(&name);
        let (from, to) = (ts_literal(p.start()), ts_literal(p.end()));
        let mut sql = self.set_local_lock_timeout() + ";\n";
        let sub = match self.config.strategy {
            PartitionStrategy::Range => "",
            PartitionStrategy::Hash => " PARTITION BY HASH (organization_id)",
            PartitionStrategy::List => " PARTITION BY LIST (data_classification)",
        };
        sql += &format!("CREATE TABLE {t} (LIKE {PARENT_TABLE} INCLUDING DEFAULTS INCLUDING CONSTRAINTS){sub};\n");
        sql += &no_truncate_sql(&name);
        for (leaf, bound) in self.sub_partitions(&name) {
            sql += &format!("CREATE TABLE {} PARTITION OF {t} FOR VALUES {bound};\n", quote_ident(&leaf));
            sql += &no_truncate_sql(&leaf);
        }
        let check = quote_ident(&format!("{name}_bounds"));
        sql += &format!(
            "ALTER TABLE {t} ADD CONSTRAINT {check} CHECK (\"timestamp\" >= {from} AND \"timestamp\" < {to});\n\
             ALTER TABLE {PARENT_TABLE} ATTACH PARTITION {t} FOR VALUES FROM ({from}) TO ({to});\n\
             ALTER TABLE {t} DROP CONSTRAINT {check};\n"
        );
        sql
    }

    /// The leaves (name, bound) under a partition named `name`, by strategy.
    fn sub_partitions(&self, name: &str) -> Vec<(String, String)> {
        match self.config.strategy {
            PartitionStrategy::Range => Vec::new(),
            PartitionStrategy::Hash => {
                let n = self.config.hash_buckets;
                (0..n).map(|i| (format!("{name}_h{i}"), format!("WITH (MODULUS {n}, REMAINDER {i})"))).collect()
            }
            PartitionStrategy::List => DataClassification::ALL
                .iter()
                .map(|c| {
                    let leaf = format!("{name}_{}", c.as_str().to_ascii_lowercase());
                    (leaf, format!("IN ({})", quote_literal(c.as_str())))
                })
                .collect(),
        }
    }

    /// Creates the partition for `p` unless it exists; `Ok(true)` when this call created it. Safe to race with
    /// other processes: "exists" and "would overlap" count as success when the partition in place has exactly
    /// the wanted bounds. The caller holds `provisioning`.
    async fn create_period(&self, p: Period) -> AuditResult<bool> {
        let name = p.table_name();
        let exact = || self.run(On::Pool, |c| async move { catalog::exact_partition(&*c, p).await });
        if exact().await?.is_some() {
            self.remember(p);
            return Ok(false);
        }
        let what = format!("creating partition {name}");
        match self.batch(On::Pool, &what, &self.create_sql(p)).await {
            Ok(()) => {
                tracing::info!(partition = %name, from = %p.start(), to = %p.end(), "created partition");
                metrics::counter!(PARTITIONS_CREATED).increment(1);
                self.remember(p);
                Ok(true)
            }
            Err(e) if is_creation_race(&e) => match exact().await? {
                Some(existing) => {
                    tracing::debug!(partition = %existing, "partition created concurrently by another process");
                    self.remember(p);
                    Ok(false)
                }
                None => Err(e.with_component("partition")),
            },
            Err(e) => Err(e),
        }
    }

    /// Creates the partitions of `periods` that do not exist; returns the ones this call created.
    async fn create_periods(&self, periods: impl IntoIterator<Item = Period>) -> AuditResult<Vec<String>> {
        let _one_at_a_time = self.provisioning.lock().await;
        let mut created = Vec::new();
        for p in periods {
            if self.create_period(p).await? {
                created.push(p.table_name());
            }
        }
        Ok(created)
    }

    /// Keeps the current period and the `premake` periods after it; returns the partitions this call created.
    /// Called at migrate time and by maintenance.
    pub async fn premake(&self) -> AuditResult<Vec<String>> {
        self.premake_at(Utc::now()).await
    }

    pub(crate) async fn premake_at(&self, now: DateTime<Utc>) -> AuditResult<Vec<String>> {
        let first = Period::of(self.config.interval, now);
        self.create_periods((0..=i64::from(self.config.premake)).map(|i| first.offset(i))).await
    }

    /// Creates the partitions of every period between `from` and `to` (inclusive), e.g. before a bulk import.
    pub async fn ensure_range(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> AuditResult<Vec<String>> {
        if from > to {
            return Err(AuditError::invalid(format!("ensure_range: `from` ({from}) is after `to` ({to})")));
        }
        self.create_periods(Period::span(self.config.interval, from, to)).await
    }
}

impl<R: ResiliencePolicy> PartitionProvisioner for PartitionManager<R> {
    /// Fast path: every period already known in memory → no I/O. Otherwise refreshes from the catalog and
    /// creates what is still missing (racing safely with other processes).
    async fn ensure_covering(&self, timestamps: &[DateTime<Utc>]) -> AuditResult<()> {
        let interval = self.config.interval;
        let missing: BTreeSet<Period> =
            timestamps.iter().map(|t| Period::of(interval, *t)).filter(|p| !self.is_known(p)).collect();
        if missing.is_empty() {
            return Ok(());
        }
        self.refresh_known(On::Pool).await?;
        let still_missing: Vec<Period> = missing.into_iter().filter(|p| !self.is_known(p)).collect();
        self.create_periods(still_missing).await.map(drop)
    }

    fn forget_known(&self) {
        self.known.write().expect("known-period lock poisoned").clear();
    }

    /// True exactly when a unique index of `audit_log` has the key `(event_id, timestamp)` — the primary key of
    /// the range strategy. Under hash and list the unique index [`EVENT_KEY_INDEX`] must include the
    /// sub-partition column, so it does not make `(event_id, timestamp)` unique. Read from the catalog at connect.
    fn event_key_is_unique(&self) -> bool {
        self.event_key_unique
    }

    /// `partition.maintenanceInterval` when `partition.autoMaintenance` is on: a library client then runs
    /// [`PartitionManager::maintain`] in the background, as `serve` does.
    fn maintenance_interval(&self) -> Option<std::time::Duration> {
        self.config.auto_maintenance.then(|| std::time::Duration::from_millis(self.config.maintenance_interval))
    }

    async fn maintain(&self) -> AuditResult<()> {
        let report = PartitionManager::maintain(self).await?;
        tracing::info!(report = ?report, "partition maintenance round");
        Ok(())
    }
}

/// Statement triggers are not cloned to partitions: refuse TRUNCATE (and UPDATE/DELETE statements, as on the
/// parent) on every table of a partition's tree. Row triggers come from the parent.
fn no_truncate_sql(table: &str) -> String {
    format!(
        "CREATE TRIGGER {} BEFORE TRUNCATE ON {t} FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse_change();\n\
         CREATE TRIGGER {} BEFORE UPDATE OR DELETE ON {t} FOR EACH STATEMENT \
         EXECUTE FUNCTION audit_log_refuse_change();\n",
        quote_ident(&format!("{table}_no_truncate")),
        quote_ident(&format!("{table}_no_update_delete_stmt")),
        t = quote_ident(table)
    )
}

/// A partitioning scheme as recorded in `audit_partition_config`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Scheme {
    strategy: String,
    interval: String,
    buckets: i32,
}

/// What to do with the recorded scheme.
#[derive(Debug, PartialEq, Eq)]
enum SchemeDecision {
    /// It is the wanted one.
    Keep,
    /// Record the wanted one; reshape the event key when `audit_log` has no partitions yet.
    Record { reshape_key: bool },
    /// The table has partitions of another scheme: refused, with why.
    Refuse(String),
}

/// Decides from the recorded scheme, the wanted one and the existing partitions.
fn decide_scheme(
    recorded: Option<&Scheme>,
    wanted: &Scheme,
    partitions: &[CatalogPartition],
    strategy: PartitionStrategy,
    interval: PartitionInterval,
) -> SchemeDecision {
    if recorded == Some(wanted) {
        return SchemeDecision::Keep;
    }
    let count = partitions.len();
    if count == 0 {
        return SchemeDecision::Record { reshape_key: true };
    }
    let Scheme { strategy: ws, interval: wi, buckets: wb } = wanted;
    match recorded {
        Some(Scheme { strategy: s, interval: i, buckets: b }) => SchemeDecision::Refuse(format!(
            "audit_log is partitioned with strategy `{s}`, interval `{i}`, {b} hash bucket(s) and has {count} \
             partition(s); the configuration asks for `{ws}`, `{wi}`, {wb} bucket(s). Changing the scheme of a \
             table that has partitions is refused: restore the recorded settings, or migrate the data into a new \
             table"
        )),
        None => match scheme_mismatch(partitions, strategy, interval) {
            Some(why) => SchemeDecision::Refuse(format!(
                "audit_log already has {count} partition(s) that do not fit strategy `{ws}`, interval `{wi}`: {why}"
            )),
            None => SchemeDecision::Record { reshape_key: false },
        },
    }
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
    let want = match strategy {
        PartitionStrategy::Range => None,
        PartitionStrategy::Hash => Some("h"),
        PartitionStrategy::List => Some("l"),
    };
    parts.iter().find_map(|p| {
        if p.period(interval).is_none() {
            Some(format!("{} has bounds {}", p.name, p.bound))
        } else if p.sub_strategy.as_deref() != want {
            Some(format!("{} is sub-partitioned as {:?}", p.name, p.sub_strategy))
        } else {
            None
        }
    })
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
            leaves: None,
            estimated_rows: None,
            total_bytes: None,
            index_count: 0,
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
    fn the_scheme_is_recorded_kept_or_refused() {
        use PartitionInterval::*;
        use PartitionStrategy::*;
        let scheme = |s: &str, i: &str, b| Scheme { strategy: s.into(), interval: i.into(), buckets: b };
        let monthly = scheme("range", "monthly", 4);
        let parts = vec![part("audit_log_2026_11", "2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z", None)];
        assert_eq!(decide_scheme(Some(&monthly), &monthly, &parts, Range, Monthly), SchemeDecision::Keep);
        assert_eq!(
            decide_scheme(Some(&monthly), &scheme("hash", "monthly", 4), &[], Hash, Monthly),
            SchemeDecision::Record { reshape_key: true },
            "no partitions yet: any scheme may be recorded"
        );
        assert!(matches!(
            decide_scheme(Some(&monthly), &scheme("range", "quarterly", 4), &parts, Range, Quarterly),
            SchemeDecision::Refuse(m) if m.contains("refused") && m.contains("quarterly")
        ));
        assert_eq!(
            decide_scheme(None, &monthly, &parts, Range, Monthly),
            SchemeDecision::Record { reshape_key: false }
        );
        assert!(matches!(
            decide_scheme(None, &scheme("hash", "monthly", 4), &parts, Hash, Monthly),
            SchemeDecision::Refuse(m) if m.contains("audit_log_2026_11")
        ));
    }

    #[test]
    fn key_shape_includes_the_sub_partition_column() {
        assert!(key_shape_sql(PartitionStrategy::Hash).contains("(event_id, \"timestamp\", organization_id)"));
        assert!(key_shape_sql(PartitionStrategy::List).contains("(event_id, \"timestamp\", data_classification)"));
        assert!(key_shape_sql(PartitionStrategy::Range).contains("PRIMARY KEY (event_id, \"timestamp\")"));
    }
}
