//! PartitionManager against real PostgreSQL: a fresh database per test with both migrations applied.

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use audit_core::{
    AuditError, AuditResult, DataClassification, ErrorClass, ErrorKind, PartitionProvisioner, ResiliencePolicy,
    SqlState, StoredEvent,
};
use audit_partition::{
    HoldTarget, PartitionConfig, PartitionInterval, PartitionManager, PartitionStrategy, Period, RetentionAction,
};
use audit_pg::{ConnectOptions, Connector};
use audit_testkit::TestDb;
use chrono::{DateTime, TimeDelta, Utc};
use tokio_postgres::Client;

/// A fresh database (the test kit's) with every migration applied, and a connector to it.
struct Db {
    db: TestDb,
    connector: Connector,
}

impl Db {
    async fn new() -> Self {
        let db = TestDb::create("partition").await;
        let connector = Connector::new(&db.url, ConnectOptions::default()).expect("connector");
        audit_pg::run_migrations(&connector).await.expect("migrations");
        Db { db, connector }
    }

    /// A plain SQL connection for the test's own checks, in UTC (bound texts are compared as printed).
    async fn client(&self) -> Client {
        let c = audit_testkit::sql(&self.db.url).await;
        c.batch_execute("SET TimeZone = 'UTC'").await.unwrap();
        c
    }
}

fn config(strategy: PartitionStrategy, interval: PartitionInterval) -> PartitionConfig {
    PartitionConfig { strategy, interval, lock_timeout: 300, ..PartitionConfig::default() }
}

fn ts(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// (child, parent, bound) of every table in audit_log's tree below the root, from pg_catalog.
async fn tree(c: &Client) -> Vec<(String, String, String)> {
    c.query(
        "SELECT t.relid::text, t.parentrelid::text, pg_get_expr(k.relpartbound, k.oid) \
         FROM pg_partition_tree('audit_log') t JOIN pg_class k ON k.oid = t.relid \
         WHERE t.level > 0 ORDER BY 1",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

async fn top_level(c: &Client) -> BTreeMap<String, String> {
    tree(c).await.into_iter().filter(|(_, p, _)| p == "audit_log").map(|(n, _, b)| (n, b)).collect()
}

fn range_bound(p: Period) -> String {
    format!(
        "FOR VALUES FROM ('{}') TO ('{}')",
        p.start().format("%Y-%m-%d %H:%M:%S+00"),
        p.end().format("%Y-%m-%d %H:%M:%S+00")
    )
}

/// Inserts `n` rows at `at` with plain INSERT; seq values start at `seq0` (unique per organisation).
async fn insert_rows(c: &Client, at: DateTime<Utc>, n: i64, org: Option<&str>, class: &str, policy: &str, seq0: i64) {
    c.execute(
        "INSERT INTO audit_log (event_id, \"timestamp\", ingested_at, action, status, seq, leaf_hash, \
                                organization_id, data_classification, retention_policy) \
         SELECT gen_random_uuid(), $1::timestamptz + make_interval(secs => g), now(), 'test.action', 'success', \
                $5::bigint + g, sha256(convert_to(($5::bigint + g) || coalesce($2, '-'), 'UTF8')), $2, $3, $4 \
         FROM generate_series(0::bigint, $6::bigint - 1) g",
        &[&at, &org, &class, &policy, &seq0, &n],
    )
    .await
    .expect("insert rows");
}

#[tokio::test]
async fn range_premake_and_on_demand_2019_partition() {
    let db = Db::new().await;
    let c = db.client().await;
    let mgr = PartitionManager::connect(&db.connector, config(PartitionStrategy::Range, PartitionInterval::Monthly))
        .await
        .unwrap();
    let now = Utc::now();
    assert!(mgr.event_key_is_unique(), "range: the primary key is (event_id, timestamp)");
    let created = mgr.premake().await.unwrap();
    let cur = Period::of(PartitionInterval::Monthly, now);
    let expected: Vec<String> = (0..=3).map(|i| cur.offset(i).table_name()).collect();
    assert_eq!(created, expected);
    assert!(mgr.premake().await.unwrap().is_empty(), "premake is idempotent");

    let old = ts("2019-03-10T12:00:00Z");
    mgr.ensure_covering(&[old, old]).await.unwrap();
    mgr.ensure_covering(&[old]).await.unwrap();
    let parts = top_level(&c).await;
    assert_eq!(parts.len(), 5);
    let p2019 = Period::of(PartitionInterval::Monthly, old);
    assert_eq!(parts["audit_log_2019_03"], range_bound(p2019));
    assert_eq!(parts["audit_log_2019_03"], "FOR VALUES FROM ('2019-03-01 00:00:00+00') TO ('2019-04-01 00:00:00+00')");
    for name in &expected {
        assert_eq!(parts[name], range_bound(Period::parse_name(PartitionInterval::Monthly, name).unwrap()));
    }
    // The helper CHECK is gone, the parent's four indexes plus the key are there (the GIN on details is built
    // when the partition is sealed, not on creation), and TRUNCATE is refused.
    let checks: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_constraint WHERE conrelid = 'audit_log_2019_03'::regclass AND conname LIKE '%_bounds'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(checks, 0);
    let idx: i64 = c
        .query_one("SELECT count(*) FROM pg_index WHERE indrelid = 'audit_log_2019_03'::regclass", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(idx, 5);
    // Sealing (its period is long over) adds the per-leaf GIN, freezes and analyses, and is recorded.
    let sealed = mgr.seal_due(Utc::now()).await.unwrap();
    assert!(
        sealed.iter().any(|r| r.partition == "audit_log_2019_03" && r.indexes == ["audit_log_2019_03_details_gin"])
    );
    let idx: i64 = c
        .query_one("SELECT count(*) FROM pg_index WHERE indrelid = 'audit_log_2019_03'::regclass AND indisvalid", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(idx, 6);
    assert!(mgr.seal_due(Utc::now()).await.unwrap().is_empty(), "nothing is sealed twice");
    insert_rows(&c, old, 3, Some("acme"), "INTERNAL", "standard", 0).await;
    let err = c.batch_execute("TRUNCATE audit_log_2019_03").await.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "42501");
    let err = c.batch_execute("DELETE FROM audit_log_2019_03 WHERE false").await.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "42501", "statement-level refusal, as on the parent");
    let status = mgr.status().await.unwrap();
    let s = status.iter().find(|s| s.name == "audit_log_2019_03").unwrap();
    assert_eq!((s.range_from, s.range_to), (Some(p2019.start()), Some(p2019.end())));
    assert_eq!(s.index_count, 6);
    assert!(s.total_bytes > 0);
    let analysis = mgr.analyze().await.unwrap();
    assert!(analysis.missing_future.is_empty());
    // Standard rows are kept 2555 days after the partition's upper bound.
    let expired = p2019.end() + TimeDelta::days(2555) <= Utc::now();
    assert_eq!(analysis.past_retention, if expired { vec![p2019.table_name()] } else { Vec::new() });
}

#[tokio::test]
async fn quarterly_partitions_are_calendar_quarters() {
    let db = Db::new().await;
    let c = db.client().await;
    let mgr = PartitionManager::connect(&db.connector, config(PartitionStrategy::Range, PartitionInterval::Quarterly))
        .await
        .unwrap();
    mgr.ensure_covering(&[ts("2026-05-15T00:00:00Z"), ts("2025-12-31T23:59:59Z")]).await.unwrap();
    let parts = top_level(&c).await;
    assert_eq!(
        parts.get("audit_log_2026_q2").map(String::as_str),
        Some("FOR VALUES FROM ('2026-04-01 00:00:00+00') TO ('2026-07-01 00:00:00+00')")
    );
    assert_eq!(
        parts.get("audit_log_2025_q4").map(String::as_str),
        Some("FOR VALUES FROM ('2025-10-01 00:00:00+00') TO ('2026-01-01 00:00:00+00')")
    );
    assert_eq!(parts.len(), 2);
}

#[tokio::test]
async fn hash_strategy_builds_bucket_subpartitions_and_replaces_the_primary_key() {
    let db = Db::new().await;
    let c = db.client().await;
    let cfg = PartitionConfig { hash_buckets: 4, ..config(PartitionStrategy::Hash, PartitionInterval::Yearly) };
    let mgr = PartitionManager::connect(&db.connector, cfg).await.unwrap();
    assert!(!mgr.event_key_is_unique(), "hash: the unique key includes organization_id");
    mgr.ensure_covering(&[ts("2024-06-01T00:00:00Z")]).await.unwrap();
    let t = tree(&c).await;
    let top: Vec<_> = t.iter().filter(|(_, p, _)| p == "audit_log").collect();
    assert_eq!(top.len(), 1);
    assert_eq!(top[0].0, "audit_log_2024");
    assert_eq!(top[0].2, "FOR VALUES FROM ('2024-01-01 00:00:00+00') TO ('2025-01-01 00:00:00+00')");
    let leaves: BTreeMap<_, _> =
        t.iter().filter(|(_, p, _)| p == "audit_log_2024").map(|(n, _, b)| (n.clone(), b.clone())).collect();
    assert_eq!(leaves.len(), 4);
    for i in 0..4 {
        assert_eq!(leaves[&format!("audit_log_2024_h{i}")], format!("FOR VALUES WITH (modulus 4, remainder {i})"));
    }
    let strat: String = c
        .query_one("SELECT partstrat::text FROM pg_partitioned_table WHERE partrelid = 'audit_log_2024'::regclass", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(strat, "h");
    let pk: i64 =
        c.query_one("SELECT count(*) FROM pg_constraint WHERE conname = 'audit_log_pkey'", &[]).await.unwrap().get(0);
    assert_eq!(pk, 0);
    let key: bool = c
        .query_one("SELECT indisunique FROM pg_index WHERE indexrelid = 'audit_log_event_key'::regclass", &[])
        .await
        .unwrap()
        .get(0);
    assert!(key);
    for (i, org) in ["a", "b", "c", "d", "e", "f", "g", "h"].iter().enumerate() {
        insert_rows(&c, ts("2024-06-01T00:00:00Z"), 2, Some(org), "INTERNAL", "standard", i as i64 * 10).await;
    }
    insert_rows(&c, ts("2024-06-01T00:00:00Z"), 1, None, "INTERNAL", "standard", 0).await;
    let in_leaves: i64 = c
        .query_one(
            "SELECT sum((SELECT count(*) FROM audit_log_2024_h0) + (SELECT count(*) FROM audit_log_2024_h1) \
             + (SELECT count(*) FROM audit_log_2024_h2) + (SELECT count(*) FROM audit_log_2024_h3))::bigint",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(in_leaves, 17);
    let err = c.batch_execute("TRUNCATE audit_log_2024_h1").await.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "42501");
    let status = mgr.status().await.unwrap();
    assert_eq!(status[0].leaves, 4);
    assert_eq!(status[0].sub_partitioning.as_deref(), Some("hash"));
}

#[tokio::test]
async fn list_strategy_builds_one_leaf_per_classification() {
    let db = Db::new().await;
    let c = db.client().await;
    let mgr = PartitionManager::connect(&db.connector, config(PartitionStrategy::List, PartitionInterval::Monthly))
        .await
        .unwrap();
    assert!(!mgr.event_key_is_unique(), "list: the unique key includes data_classification");
    mgr.ensure_covering(&[ts("2026-02-03T00:00:00Z")]).await.unwrap();
    let t = tree(&c).await;
    let leaves: BTreeMap<_, _> =
        t.iter().filter(|(_, p, _)| p == "audit_log_2026_02").map(|(n, _, b)| (n.clone(), b.clone())).collect();
    assert_eq!(leaves.len(), DataClassification::ALL.len());
    for class in DataClassification::ALL {
        let leaf = format!("audit_log_2026_02_{}", class.as_str().to_ascii_lowercase());
        assert_eq!(leaves[&leaf], format!("FOR VALUES IN ('{}')", class.as_str()));
    }
    insert_rows(&c, ts("2026-02-03T00:00:00Z"), 2, Some("acme"), "PHI", "phi_extended", 0).await;
    let n: i64 = c.query_one("SELECT count(*) FROM audit_log_2026_02_phi", &[]).await.unwrap().get(0);
    assert_eq!(n, 2);
    let n: i64 = c.query_one("SELECT count(*) FROM audit_log_2026_02_internal", &[]).await.unwrap().get(0);
    assert_eq!(n, 0);
}

#[tokio::test]
async fn changing_the_scheme_of_a_partitioned_table_is_refused() {
    let db = Db::new().await;
    let range = config(PartitionStrategy::Range, PartitionInterval::Monthly);
    let mgr = PartitionManager::connect(&db.connector, range.clone()).await.unwrap();
    mgr.premake().await.unwrap();
    for other in [
        config(PartitionStrategy::Range, PartitionInterval::Quarterly),
        config(PartitionStrategy::Hash, PartitionInterval::Monthly),
    ] {
        let err = PartitionManager::connect(&db.connector, other).await.unwrap_err();
        assert_eq!(err.class(), ErrorClass::InvalidInput);
        assert!(err.message().contains("refused"), "{}", err.message());
    }
    PartitionManager::connect(&db.connector, range).await.expect("the recorded scheme is accepted");
    let c = db.client().await;
    let recorded: String =
        c.query_one("SELECT period_interval::text FROM audit_partition_config", &[]).await.unwrap().get(0);
    assert_eq!(recorded, "monthly");
}

#[tokio::test]
async fn eight_concurrent_maintainers_and_writers_create_each_partition_once() {
    let db = Db::new().await;
    let cfg = config(PartitionStrategy::Hash, PartitionInterval::Monthly);
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (connector, cfg) = (db.connector.clone(), cfg.clone());
        set.spawn(async move { PartitionManager::connect(&connector, cfg).await });
    }
    let mut managers = Vec::new();
    while let Some(r) = set.join_next().await {
        managers.push(Arc::new(r.unwrap().expect("concurrent connect")));
    }
    let mut set = tokio::task::JoinSet::new();
    for m in &managers {
        let m = m.clone();
        set.spawn(async move { m.maintain().await });
    }
    let mut ran = 0;
    while let Some(r) = set.join_next().await {
        let report = r.unwrap().expect("maintain succeeds");
        if report.ran {
            ran += 1;
        } else {
            assert!(report.skipped_reason.unwrap().contains("another instance"));
        }
    }
    assert!(ran >= 1);
    // Writers racing on a period nobody has (no maintenance lock here: the DDL race handling alone).
    let old = ts("2019-07-04T00:00:00Z");
    let mut set = tokio::task::JoinSet::new();
    for m in &managers {
        let m = m.clone();
        set.spawn(async move {
            m.ensure_covering(&[old]).await?;
            m.premake().await
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap().expect("concurrent ensure_covering/premake succeed");
    }
    let c = db.client().await;
    let parts = top_level(&c).await;
    let cur = Period::of(PartitionInterval::Monthly, Utc::now());
    let mut expected: HashSet<String> = (0..=3).map(|i| cur.offset(i).table_name()).collect();
    expected.insert("audit_log_2019_07".into());
    assert_eq!(parts.keys().cloned().collect::<HashSet<_>>(), expected);
    let bounds: HashSet<&String> = parts.values().collect();
    assert_eq!(bounds.len(), parts.len(), "no two partitions share bounds");
    assert_eq!(tree(&c).await.len(), parts.len() * 5, "each month has exactly its four buckets");
}

struct RetentionFixture {
    db: Db,
    archive: tempfile::TempDir,
    old: Period,
    phi: Period,
    cur: Period,
}

/// retention_days 365; `old` (800 days ago, INTERNAL/standard rows: expired), `phi` (900 days ago, PHI rows: kept
/// 2555 days by the classification floor), and the current month.
async fn retention_fixture() -> (RetentionFixture, PartitionManager) {
    let db = Db::new().await;
    let archive = tempfile::tempdir().unwrap();
    let cfg = PartitionConfig {
        retention_days: 365,
        archive_dir: Some(archive.path().to_path_buf()),
        ..config(PartitionStrategy::Range, PartitionInterval::Monthly)
    };
    let mgr = PartitionManager::connect(&db.connector, cfg).await.unwrap().with_actor("retention-test");
    let now = Utc::now();
    let old = Period::of(PartitionInterval::Monthly, now - TimeDelta::days(800));
    let phi = Period::of(PartitionInterval::Monthly, now - TimeDelta::days(900));
    let cur = Period::of(PartitionInterval::Monthly, now);
    mgr.ensure_covering(&[old.start(), phi.start(), cur.start()]).await.unwrap();
    let c = db.client().await;
    insert_rows(&c, old.start(), 25, Some("acme"), "INTERNAL", "standard", 0).await;
    insert_rows(&c, old.start() + TimeDelta::days(3), 7, None, "PUBLIC", "minimal", 0).await;
    insert_rows(&c, phi.start(), 4, Some("acme"), "PHI", "minimal", 100).await;
    insert_rows(&c, cur.start(), 2, Some("acme"), "INTERNAL", "minimal", 200).await;
    (RetentionFixture { db, archive, old, phi, cur }, mgr)
}

async fn snapshot(c: &Client) -> (Vec<(String, String, String)>, i64, i64, i64) {
    let count = |sql: &'static str| async move { c.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) };
    (
        tree(c).await,
        count("SELECT count(*) FROM audit_log").await,
        count("SELECT count(*) FROM audit_retention_log").await,
        count("SELECT count(*) FROM audit_log_pruned_leaves").await,
    )
}

fn archive_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_file()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

#[tokio::test]
async fn retention_dry_run_changes_nothing_then_archives_and_drops_exactly_the_expired() {
    let (fx, mgr) = retention_fixture().await;
    let c = fx.db.client().await;
    let before = snapshot(&c).await;

    let plan = mgr.retention(true).await.unwrap();
    assert!(plan.dry_run);
    assert_eq!(plan.items.len(), 1, "{plan:?}");
    assert_eq!(plan.items[0].partition, fx.old.table_name());
    assert_eq!(plan.items[0].action, RetentionAction::WouldDrop);
    assert_eq!(plan.items[0].rows, 32);
    assert_eq!(plan.items[0].retention_days, 365);
    assert_eq!(snapshot(&c).await, before, "a dry run changes nothing");
    assert!(archive_files(fx.archive.path()).is_empty());

    let mut originals: Vec<(Option<String>, i64, Vec<u8>, String)> = c
        .query(
            "SELECT organization_id::text, seq, leaf_hash, event_id::text FROM audit_log \
             WHERE \"timestamp\" >= $1 AND \"timestamp\" < $2",
            &[&fx.old.start(), &fx.old.end()],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    originals.sort();

    let report = mgr.retention(false).await.unwrap();
    let dropped: Vec<_> = report.items.iter().filter(|i| i.action == RetentionAction::Dropped).collect();
    assert_eq!(dropped.len(), 1, "{report:?}");
    let item = dropped[0];
    assert_eq!(item.partition, fx.old.table_name());
    assert_eq!(item.rows, 32);

    let parts = top_level(&c).await;
    assert!(!parts.contains_key(&fx.old.table_name()));
    assert!(parts.contains_key(&fx.phi.table_name()));
    assert!(parts.contains_key(&fx.cur.table_name()));
    let exists: bool = c.query_one("SELECT to_regclass($1) IS NOT NULL", &[&fx.old.table_name()]).await.unwrap().get(0);
    assert!(!exists, "the table is dropped, not only detached");

    // The archive holds every dropped event, and its checksum matches the manifest and the log.
    let receipt = item.archive.as_ref().unwrap();
    assert_eq!(audit_partition::sha256_file(std::path::Path::new(&receipt.location)).unwrap(), receipt.sha256);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&receipt.manifest_location).unwrap()).unwrap();
    assert_eq!(manifest["sha256"].as_str(), Some(receipt.sha256.as_str()));
    assert_eq!(manifest["rows"].to_string(), "32");
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(&receipt.location).unwrap()).read_to_string(&mut text).unwrap();
    let mut archived_ids: Vec<String> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["event_id"].as_str().unwrap().to_string())
        .collect();
    archived_ids.sort();
    let mut original_ids: Vec<String> = originals.iter().map(|o| o.3.clone()).collect();
    original_ids.sort();
    assert_eq!(archived_ids, original_ids);
    // Each line is a stored event in the JSON form of `audit-db query` and evidence packs.
    let mut archived: Vec<(Option<String>, i64, Vec<u8>, String)> = text
        .lines()
        .map(|l| {
            let e: StoredEvent = serde_json::from_str(l).unwrap_or_else(|err| panic!("{err}: {l}"));
            (e.event.organization_id, e.seq, e.leaf_hash.to_vec(), e.event.event_id.to_string())
        })
        .collect();
    archived.sort();
    assert_eq!(archived, originals);

    // Leaf hashes are kept.
    let mut kept: Vec<(Option<String>, i64, Vec<u8>, String)> = c
        .query("SELECT organization_id::text, seq, leaf_hash, partition_name FROM audit_log_pruned_leaves", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    kept.sort();
    assert_eq!(
        kept.iter().map(|k| (k.0.clone(), k.1, k.2.clone())).collect::<Vec<_>>(),
        originals.iter().map(|o| (o.0.clone(), o.1, o.2.clone())).collect::<Vec<_>>()
    );

    // Integrity reads them back per log, by position.
    for log in [Some("acme"), None] {
        let got = audit_pg::pruned_leaves::read(&c, log.unwrap_or(""), 0, 1_000).await.unwrap();
        let want: BTreeMap<i64, Vec<u8>> =
            originals.iter().filter(|o| o.0.as_deref() == log).map(|o| (o.1, o.2.clone())).collect();
        assert_eq!(got.into_iter().map(|(s, l)| (s, l.to_vec())).collect::<BTreeMap<_, _>>(), want, "{log:?}");
    }

    // The run is on record, and the record is append-only.
    let rows = c
        .query(
            "SELECT action::text, row_count, archive_sha256, recorded_by FROM audit_retention_log \
             WHERE partition_name = $1 ORDER BY id",
            &[&fx.old.table_name()],
        )
        .await
        .unwrap();
    let log: Vec<(String, Option<i64>, Option<String>, String)> =
        rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect();
    assert_eq!(log.len(), 2);
    assert_eq!(log[0].0, "detaching");
    assert_eq!(log[1], ("dropped".to_string(), Some(32), Some(receipt.sha256.clone()), "retention-test".into()));
    let err = c.batch_execute("UPDATE audit_retention_log SET detail = 'x'").await.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "42501");
    let err = c.batch_execute("DELETE FROM audit_log_pruned_leaves").await.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "42501");

    // Nothing else is expired now.
    let again = mgr.retention(false).await.unwrap();
    assert!(again.items.is_empty(), "{again:?}");
}

#[tokio::test]
async fn a_legal_hold_prevents_the_drop_until_released() {
    let (fx, mgr) = retention_fixture().await;
    let c = fx.db.client().await;
    let hold = mgr.place_legal_hold(&HoldTarget::Organization("acme".into()), "case 42", "counsel").await.unwrap();
    let other_hold =
        mgr.place_legal_hold(&HoldTarget::Classification(DataClassification::Financial), "audit", "cfo").await.unwrap();
    let plan = mgr.retention(true).await.unwrap();
    assert_eq!(plan.items.len(), 1);
    assert_eq!(plan.items[0].action, RetentionAction::Held);
    assert_eq!(plan.items[0].holds, vec![hold], "the FINANCIAL hold matches no row there");

    let report = mgr.retention(false).await.unwrap();
    assert_eq!(report.items[0].action, RetentionAction::Held);
    assert!(top_level(&c).await.contains_key(&fx.old.table_name()));
    let analysis = mgr.analyze().await.unwrap();
    assert_eq!(analysis.held, vec![(fx.old.table_name(), vec![hold])]);
    let held_logged: i64 =
        c.query_one("SELECT count(*) FROM audit_retention_log WHERE action = 'held'", &[]).await.unwrap().get(0);
    assert_eq!(held_logged, 1);
    assert!(archive_files(fx.archive.path()).is_empty());

    assert!(mgr.release_legal_hold(hold, "counsel").await.unwrap());
    assert!(!mgr.release_legal_hold(hold, "counsel").await.unwrap());
    assert_eq!(mgr.legal_holds(false).await.unwrap().iter().map(|h| h.id).collect::<Vec<_>>(), vec![other_hold]);
    let report = mgr.retention(false).await.unwrap();
    assert_eq!(report.items[0].action, RetentionAction::Dropped);
    assert!(!top_level(&c).await.contains_key(&fx.old.table_name()));
}

#[tokio::test]
async fn readers_are_not_blocked_while_a_partition_is_dropped() {
    let (fx, mgr) = retention_fixture().await;
    let mgr = Arc::new(mgr);
    // A long reader that has touched the expiring partition.
    let mut long = fx.db.client().await;
    let tx = long.transaction().await.unwrap();
    let n: i64 = tx.query_one("SELECT count(*) FROM audit_log", &[]).await.unwrap().get(0);
    assert_eq!(n, 38);

    let m = mgr.clone();
    let run = tokio::spawn(async move { m.retention(false).await });
    // New readers while retention works: each must finish within the configured lock_timeout.
    let reader = fx.db.client().await;
    reader.batch_execute(&format!("SET lock_timeout = '{}ms'", mgr.config().lock_timeout)).await.unwrap();
    let mut reads = 0;
    while !run.is_finished() && reads < 200 {
        let res = reader.query_one("SELECT count(*) FROM audit_log WHERE organization_id = 'acme'", &[]).await;
        res.expect("a reader is never blocked beyond lock_timeout");
        reads += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(reads > 0);
    tx.commit().await.unwrap();
    let first = run.await.unwrap().unwrap();
    let c = fx.db.client().await;
    if top_level(&c).await.contains_key(&fx.old.table_name()) || first.items[0].action != RetentionAction::Dropped {
        // The long reader outlasted the bounded retries: the next run finishes (detach finalize / resume).
        let second = mgr.retention(false).await.unwrap();
        assert!(
            second.items.iter().any(|i| i.partition == fx.old.table_name() && i.action == RetentionAction::Dropped),
            "{first:?}\n{second:?}"
        );
    }
    let exists: bool = c.query_one("SELECT to_regclass($1) IS NOT NULL", &[&fx.old.table_name()]).await.unwrap().get(0);
    assert!(!exists);
    let n: i64 = c.query_one("SELECT count(*) FROM audit_log_pruned_leaves", &[]).await.unwrap().get(0);
    assert_eq!(n, 32);
}

#[tokio::test]
async fn maintenance_without_archive_only_plans_and_a_held_lock_makes_others_skip() {
    let db = Db::new().await;
    let mgr = PartitionManager::connect(&db.connector, config(PartitionStrategy::Range, PartitionInterval::Monthly))
        .await
        .unwrap();
    let holder = db.client().await;
    let got: bool = holder
        .query_one("SELECT pg_try_advisory_lock($1)", &[&audit_partition::MAINTENANCE_LOCK_KEY])
        .await
        .unwrap()
        .get(0);
    assert!(got);
    let skipped = mgr.maintain().await.unwrap();
    assert!(!skipped.ran);
    assert!(skipped.created.is_empty());
    let err = mgr.retention(false).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::InvalidInput, "no archive configured: refused before locking");
    holder.execute("SELECT pg_advisory_unlock($1)", &[&audit_partition::MAINTENANCE_LOCK_KEY]).await.unwrap();
    let report = mgr.maintain().await.unwrap();
    assert!(report.ran);
    assert_eq!(report.created.len(), 4);
    let retention = report.retention.unwrap();
    assert!(retention.dry_run);
    assert!(!retention.notes.is_empty());
    assert!(report.analysis.unwrap().missing_future.is_empty());
    let json = serde_json::to_value(mgr.status().await.unwrap()).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 4);
    assert_eq!(json[0]["state"], "attached");
}

#[tokio::test]
async fn an_interrupted_drop_is_finished_by_the_next_run() {
    let (fx, mgr) = retention_fixture().await;
    let c = fx.db.client().await;
    let name = fx.old.table_name();
    // What a run that died right after DETACH leaves behind: its intent record and a detached table.
    c.execute(
        "INSERT INTO audit_retention_log (run_id, action, partition_name, range_from, range_to, retention_days, \
         row_count, recorded_by) VALUES (gen_random_uuid(), 'detaching', $1, $2, $3, 365, 32, 'crashed-run')",
        &[&name, &fx.old.start(), &fx.old.end()],
    )
    .await
    .unwrap();
    c.batch_execute(&format!("ALTER TABLE audit_log DETACH PARTITION {name}")).await.unwrap();
    let plan = mgr.retention(true).await.unwrap();
    assert!(plan.items.is_empty(), "a detached table is not a partition any more: {plan:?}");

    let report = mgr.retention(false).await.unwrap();
    assert_eq!(report.items.len(), 1, "{report:?}");
    let item = &report.items[0];
    assert_eq!((item.partition.as_str(), item.action, item.rows), (name.as_str(), RetentionAction::Dropped, 32));
    assert!(item.detail.as_deref().unwrap().starts_with("resumed from run"));
    let exists: bool = c.query_one("SELECT to_regclass($1) IS NOT NULL", &[&name]).await.unwrap().get(0);
    assert!(!exists);
    let n: i64 = c.query_one("SELECT count(*) FROM audit_log_pruned_leaves", &[]).await.unwrap().get(0);
    assert_eq!(n, 32);
    assert_eq!(archive_files(fx.archive.path()).len(), 2, "data file and manifest");
}

/// A directory archive that, while it stores a partition's file (after every row was read, before the drop),
/// tries to write one more row into the detached table by name, as a stray writer could.
struct WriterDuringStore {
    inner: audit_partition::DirArchive,
    url: String,
    write: std::sync::Mutex<Option<Result<u64, String>>>,
}

impl audit_partition::Archive for WriterDuringStore {
    fn staging_dir(&self) -> std::path::PathBuf {
        self.inner.staging_dir()
    }

    fn store<'a>(
        &'a self,
        staged: &'a std::path::Path,
        manifest: &'a audit_partition::ArchiveManifest,
    ) -> audit_partition::ArchiveFuture<'a, audit_partition::ArchiveReceipt> {
        Box::pin(async move {
            let c = audit_testkit::sql(&self.url).await;
            c.batch_execute("SET lock_timeout = '300ms'").await.unwrap();
            let sql = format!(
                "INSERT INTO {} (event_id, \"timestamp\", ingested_at, action, status, seq, leaf_hash, \
                 organization_id, data_classification, retention_policy) \
                 VALUES (gen_random_uuid(), $1, now(), 'late.write', 'success', 999, sha256('late'), 'acme', \
                 'INTERNAL', 'standard')",
                manifest.partition
            );
            let res = c.execute(sql.as_str(), &[&manifest.range_from]).await;
            *self.write.lock().unwrap() =
                Some(res.map_err(|e| e.code().map(|c| c.code().to_string()).unwrap_or_default()));
            self.inner.store(staged, manifest).await
        })
    }
}

#[tokio::test]
async fn a_row_written_into_the_detached_table_during_its_archive_is_refused_not_lost() {
    let (fx, mgr) = retention_fixture().await;
    let archive = Arc::new(WriterDuringStore {
        inner: audit_partition::DirArchive::new(fx.archive.path()),
        url: fx.db.db.url.clone(),
        write: std::sync::Mutex::new(None),
    });
    let mgr = mgr.with_archive(archive.clone());
    let report = mgr.retention(false).await.unwrap();
    let write = archive.write.lock().unwrap().clone().expect("the archive was stored");
    // The table is locked from the archive's first read to the drop: the stray write waits and times out.
    assert_eq!(write, Err(SqlState::LOCK_NOT_AVAILABLE.as_str().to_string()), "{report:?}");
    let item = report.items.iter().find(|i| i.partition == fx.old.table_name()).unwrap();
    assert_eq!((item.action, item.rows), (RetentionAction::Dropped, 32), "{report:?}");
    let c = fx.db.client().await;
    let n: i64 = c.query_one("SELECT count(*) FROM audit_log_pruned_leaves", &[]).await.unwrap().get(0);
    assert_eq!(n, 32, "one kept leaf per archived row");
    let t = &item.timings;
    assert!(
        t.detach_s.is_some() && t.archive_s.is_some() && t.keep_leaves_s.is_some() && t.drop_transaction_s.is_some()
    );
}

#[tokio::test]
async fn background_maintenance_creates_the_premade_partitions() {
    let db = Db::new().await;
    let cfg = PartitionConfig { premake: 2, ..config(PartitionStrategy::Range, PartitionInterval::Yearly) };
    let mgr = Arc::new(PartitionManager::connect(&db.connector, cfg).await.unwrap());
    let handle = mgr.clone().spawn_maintenance(Duration::from_millis(50));
    let c = db.client().await;
    let mut parts = BTreeMap::new();
    for _ in 0..200 {
        parts = top_level(&c).await;
        if parts.len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    handle.abort();
    let cur = Period::of(PartitionInterval::Yearly, Utc::now());
    let expected: Vec<String> = (0..=2).map(|i| cur.offset(i).table_name()).collect();
    assert_eq!(parts.keys().cloned().collect::<Vec<_>>(), expected);
}

/// A policy that counts the calls it runs and, when `open`, refuses them as an open breaker does. Logic only; the
/// manager under it talks to the real database.
#[derive(Debug, Clone, Default)]
struct Counting(Arc<(AtomicUsize, AtomicBool)>);

impl Counting {
    fn calls(&self) -> usize {
        self.0.0.load(Ordering::SeqCst)
    }
    fn open(&self) {
        self.0.1.store(true, Ordering::SeqCst);
    }
}

impl ResiliencePolicy for Counting {
    async fn execute<T, F, Fut>(&self, mut op: F) -> AuditResult<T>
    where
        T: Send,
        F: FnMut() -> Fut + Send,
        Fut: std::future::Future<Output = AuditResult<T>> + Send,
    {
        if self.0.1.load(Ordering::SeqCst) {
            return Err(AuditError::circuit_open("breaker `test` is open"));
        }
        self.0.0.fetch_add(1, Ordering::SeqCst);
        op().await
    }
}

#[tokio::test]
async fn every_statement_runs_under_the_policy() {
    let db = Db::new().await;
    let c = db.client().await;
    let policy = Counting::default();
    let cfg = config(PartitionStrategy::Range, PartitionInterval::Monthly);
    let mgr = PartitionManager::connect_with_policy(&db.connector, cfg.clone(), policy.clone()).await.unwrap();
    assert!(policy.calls() >= 3, "scheme, event key and catalog: {}", policy.calls());
    let before = policy.calls();
    mgr.ensure_covering(&[ts("2021-05-05T00:00:00Z")]).await.unwrap();
    assert!(policy.calls() > before);
    let before = policy.calls();
    mgr.maintain().await.unwrap();
    assert!(policy.calls() > before + 4, "lock, premake, plan and analysis: {}", policy.calls() - before);

    // An open breaker stops every path before it reaches the database, and says so by kind.
    policy.open();
    let parts = top_level(&c).await;
    for err in [
        mgr.ensure_covering(&[ts("2018-01-01T00:00:00Z")]).await.unwrap_err(),
        mgr.status().await.unwrap_err(),
        mgr.maintain().await.map(|_| ()).unwrap_err(),
        mgr.place_legal_hold(&HoldTarget::Organization("acme".into()), "case 1", "counsel")
            .await
            .map(drop)
            .unwrap_err(),
        PartitionManager::connect_with_policy(&db.connector, cfg, policy.clone()).await.map(drop).unwrap_err(),
    ] {
        assert_eq!(err.kind(), ErrorKind::CircuitOpen, "{err}");
    }
    assert_eq!(top_level(&c).await, parts, "nothing was created behind an open breaker");
    let holds: i64 = c.query_one("SELECT count(*) FROM audit_legal_holds", &[]).await.unwrap().get(0);
    assert_eq!(holds, 0);
}

#[tokio::test]
async fn partition_ddl_waits_out_a_lock_held_elsewhere_and_then_reports_the_lock_timeout() {
    let db = Db::new().await;
    // lock_timeout 500 ms: six attempts wait at least 3 s in all, well past the 800 ms the lock is held below.
    let cfg = PartitionConfig { lock_timeout: 500, ..config(PartitionStrategy::Range, PartitionInterval::Monthly) };
    let mgr = Arc::new(PartitionManager::connect(&db.connector, cfg).await.unwrap());
    // A transaction that holds audit_log exclusively for a while: creating a partition hits lock_timeout and is
    // retried until the lock goes.
    let mut holder = db.client().await;
    let tx = holder.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE audit_log IN ACCESS EXCLUSIVE MODE").await.unwrap();
    let m = mgr.clone();
    let started = std::time::Instant::now();
    let create = tokio::spawn(async move { m.ensure_covering(&[ts("2020-02-02T00:00:00Z")]).await });
    tokio::time::sleep(Duration::from_millis(800)).await;
    tx.commit().await.unwrap();
    create.await.unwrap().expect("created once the lock was released");
    assert!(started.elapsed() >= Duration::from_millis(800));
    let c = db.client().await;
    assert!(top_level(&c).await.contains_key("audit_log_2020_02"));

    // Held for longer than every retry: the error is the lock timeout, by SQLSTATE.
    let tx = holder.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE audit_log IN ACCESS EXCLUSIVE MODE").await.unwrap();
    let err = mgr.ensure_covering(&[ts("2020-03-03T00:00:00Z")]).await.unwrap_err();
    assert_eq!(err.sqlstate(), Some(SqlState::LOCK_NOT_AVAILABLE), "{err}");
    assert_eq!(err.class(), ErrorClass::Transient);
    tx.rollback().await.unwrap();
    assert!(!top_level(&c).await.contains_key("audit_log_2020_03"));
}
