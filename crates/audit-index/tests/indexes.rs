//! The index manager against real PostgreSQL: a private cluster with pg_stat_statements preloaded and HypoPG
//! installed (`.ci/run` installs postgresql-15-hypopg) for the workload tests; the shared server for findings.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use audit_core::IndexAdvisor;
use audit_core::indexes::{ApplyPolicy, Costing, FindingKind, IndexAction, PROTECTED_INDEXES};
use audit_index::{IndexConfig, IndexManager};
use audit_pg::{ConnectOptions, Connector};
use audit_testkit::cluster::start_private_cluster_with_statements;
use chrono::Utc;

const ROWS: i64 = 120_000;
const PRINCIPAL_ACTION: &str = "audit_log_principal_action_idx";

async fn setup(url: &str) -> anyhow::Result<(Connector, tokio_postgres::Client)> {
    let connector = Connector::new(url, ConnectOptions::default())?;
    audit_pg::run_migrations(&connector).await?;
    let pm = audit_partition::PartitionManager::connect(&connector, Default::default()).await?;
    let now = Utc::now();
    pm.ensure_range(now - chrono::Duration::days(100), now).await?;
    pm.premake().await?;
    let pg = audit_testkit::sql(url).await;
    // Rows over the last 100 days: 400 principals, 12 actions, 20 organisations.
    pg.batch_execute(&format!(
        "INSERT INTO audit_log (event_id, \"timestamp\", ingested_at, action, status, principal_id, organization_id,
                                details, seq, leaf_hash)
         SELECT gen_random_uuid(), now() - (g % 8640000) * interval '1 second', now(), 'action.' || (g % 12),
                CASE WHEN g % 7 = 0 THEN 'failure' ELSE 'success' END, 'user-' || (g % 400), 'org-' || (g % 20),
                jsonb_build_object('n', g), g, sha256(g::text::bytea)
           FROM generate_series(1, {ROWS}) g;
         ANALYZE audit_log;"
    ))
    .await?;
    Ok((connector, pg))
}

/// Leaf partition count, and how many of them `index` is attached on.
async fn coverage(pg: &tokio_postgres::Client, index: &str) -> (i64, i64) {
    let r = pg
        .query_one(
            "SELECT (SELECT count(*) FROM pg_partition_tree('audit_log') WHERE isleaf),
                    (SELECT count(*) FROM pg_partition_tree($1::text::regclass) WHERE isleaf AND level > 0)",
            &[&index],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1))
}

const WORKLOAD: &str = r#"SELECT "audit_log"."event_id", "audit_log"."timestamp" FROM "audit_log" WHERE (("audit_log"."principal_id" = $1) AND ("audit_log"."action" = $2)) ORDER BY "audit_log"."timestamp" DESC LIMIT 100"#;

async fn run_workload(pg: &tokio_postgres::Client, n: usize) -> Duration {
    let stmt = pg.prepare(WORKLOAD).await.unwrap();
    let mut times = Vec::new();
    for i in 0..n {
        let (p, a) = (format!("user-{}", (i * 37) % 400), format!("action.{}", i % 12));
        let t = Instant::now();
        pg.query(&stmt, &[&p, &a]).await.unwrap();
        times.push(t.elapsed());
    }
    times.sort();
    times[times.len() / 2]
}

/// Done-when 1: with the principal+action index dropped and a principal+action workload, `recommend` proposes it
/// (statements, calls, saving, HypoPG costing); `apply` builds it on every partition while 4 writers insert; the
/// planner uses it; a partition created afterwards has it; status equals pg_stat_user_indexes summed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn recommends_the_missing_index_and_builds_it_while_writers_insert() -> anyhow::Result<()> {
    let cluster = start_private_cluster_with_statements().await?;
    let url = cluster.url();
    let (connector, pg) = setup(&url).await?;
    pg.batch_execute(&format!("DROP INDEX {PRINCIPAL_ACTION}; CREATE EXTENSION IF NOT EXISTS pg_stat_statements; SELECT pg_stat_statements_reset();")).await?;
    let slow_p50 = run_workload(&pg, 40).await;

    let im = IndexManager::new(&connector, IndexConfig::default());
    let report = im.analyze().await?;
    assert!(report.workload_available, "pg_stat_statements is preloaded in this cluster");
    assert_eq!(report.costing, Costing::Hypopg, "HypoPG is installed (.ci/run)");
    let rec = report
        .recommendations
        .iter()
        .find(|r| matches!(&r.action, IndexAction::Create { columns, .. } if columns.starts_with(&["principal_id".into(), "action".into()])))
        .unwrap_or_else(|| panic!("no principal+action recommendation in {:#?}", report.recommendations));
    let IndexAction::Create { name, columns } = rec.action.clone() else { unreachable!() };
    assert_eq!(columns.last().map(String::as_str), Some("timestamp"), "ordered by timestamp: {columns:?}");
    let stmt =
        rec.statements.iter().find(|s| s.query.contains("principal_id")).expect("the workload statement is named");
    assert!(stmt.calls >= 40, "{stmt:?}");
    assert!(stmt.cost_after < stmt.cost_before / 2.0, "{stmt:?}");
    assert!(rec.estimated_saving_ratio > 0.5 && rec.estimated_saving_ms_per_day > 0.0, "{rec:?}");
    assert!(rec.write_entries_per_day > 0.0 && rec.size_bytes > 0, "{rec:?}");

    // The background round (what `serve` runs) applies only what the configuration allows: with the default
    // enableAutoCreation = false the creation is skipped and logged, nothing is built.
    let (_, applied) = im.run_round().await?;
    let skipped = applied.iter().find(|a| a.action == rec.action).expect("the round considered the creation");
    assert_eq!(skipped.outcome, "skipped", "{applied:?}");
    let exists: Option<tokio_postgres::Row> =
        pg.query_opt("SELECT 1 FROM pg_class WHERE relname = $1", &[&name]).await?;
    assert!(exists.is_none(), "{name} was built although enableAutoCreation is off");
    let logged: i64 = pg
        .query_one(
            "SELECT count(*) FROM audit_index_actions WHERE index_name = $1 AND detail->>'outcome' = 'skipped'",
            &[&name],
        )
        .await?
        .get(0);
    assert_eq!(logged, 1, "the skipped action is recorded");

    // 4 writers insert continuously during the build; each insert's wait is measured.
    let stop = Arc::new(AtomicBool::new(false));
    let max_wait_us = Arc::new(AtomicU64::new(0));
    let inserted = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (url, stop, max_wait_us, inserted) = (url.clone(), stop.clone(), max_wait_us.clone(), inserted.clone());
        writers.push(tokio::spawn(async move {
            let c = audit_testkit::sql(&url).await;
            let ins = c
                .prepare(
                    "INSERT INTO audit_log (event_id, \"timestamp\", ingested_at, action, status, principal_id, seq, leaf_hash)
                     VALUES (gen_random_uuid(), now() - $1::int * interval '1 day', now(), 'login', 'success', 'writer', 0, sha256('x'))",
                )
                .await
                .unwrap();
            let mut i = 0i32;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                c.execute(&ins, &[&((i + w) % 90)]).await.unwrap();
                max_wait_us.fetch_max(t.elapsed().as_micros() as u64, Ordering::Relaxed);
                inserted.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before_build = inserted.load(Ordering::Relaxed);
    max_wait_us.store(0, Ordering::Relaxed);
    let started = Instant::now();
    let applied =
        im.apply(std::slice::from_ref(&rec.action), ApplyPolicy { allow_create: true, ..Default::default() }).await?;
    let build = started.elapsed();
    let during = inserted.load(Ordering::Relaxed) - before_build;
    let longest = Duration::from_micros(max_wait_us.load(Ordering::Relaxed));
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await?;
    }
    eprintln!("build {build:?}: {during} inserts by 4 writers during it, longest single insert {longest:?}");
    let done = applied.iter().find(|a| a.action.index_name() == name).expect("the creation is reported");
    assert_eq!(done.outcome, "done", "{applied:?}");
    assert!(during > 40, "writers kept inserting during the build ({during} in {build:?})");
    assert!(
        longest < Duration::from_secs(1),
        "an insert waited {longest:?} (target ≤ 100 ms is in `cargo xtask bench`)"
    );
    let (total, covered) = coverage(&pg, &name).await;
    assert_eq!(covered, total, "{name} on every partition");
    let invalid: i64 =
        pg.query_one("SELECT count(*) FROM pg_index WHERE NOT indisvalid OR NOT indisready", &[]).await?.get(0);
    assert_eq!(invalid, 0);

    // The planner uses it.
    let plan: Vec<String> = pg
        .query(&format!("EXPLAIN {}", WORKLOAD.replace("$1", "'user-5'").replace("$2", "'action.5'")), &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(plan.iter().any(|l| l.contains(&name[..30])), "plan does not use {name}: {plan:#?}");
    let fast_p50 = run_workload(&pg, 40).await;
    eprintln!("principal+action p50: {slow_p50:?} without the index, {fast_p50:?} with it");

    // A partition created afterwards gets it (ATTACH PARTITION builds the parent's indexes).
    let pm = audit_partition::PartitionManager::connect(&connector, Default::default()).await?;
    pm.ensure_range(Utc::now() + chrono::Duration::days(300), Utc::now() + chrono::Duration::days(301)).await?;
    let (total2, covered2) = coverage(&pg, &name).await;
    assert!(total2 > total && covered2 == total2, "{covered2}/{total2}");

    // Status numbers equal pg_stat_user_indexes summed over the partitions (joined through pg_inherits here).
    pg.batch_execute("SELECT pg_stat_force_next_flush()").await?;
    pg.batch_execute("SELECT 1").await?;
    audit_testkit::wait_for("status to match pg_stat_user_indexes", Duration::from_secs(30), || async {
        let status = im.status().await.unwrap();
        let rows = pg
            .query(
                "SELECT p.relname::text, sum(s.idx_scan)::bigint, sum(s.idx_tup_read)::bigint, count(*)
                   FROM pg_inherits h
                   JOIN pg_class p ON p.oid = h.inhparent
                   JOIN pg_stat_user_indexes s ON s.indexrelid = h.inhrelid
                  WHERE p.relkind = 'I'
                  GROUP BY 1",
                &[],
            )
            .await
            .unwrap();
        status.iter().all(|u| {
            rows.iter().any(|r| {
                r.get::<_, String>(0) == u.name
                    && r.get::<_, i64>(1) == u.scans
                    && r.get::<_, i64>(2) == u.tuples_read
                    && r.get::<_, i64>(3) == u.partitions_covered
            })
        }) && status.iter().any(|u| u.name == name && u.scans > 0)
    })
    .await;
    Ok(())
}

/// Done-when 2: a redundant and an unused index are reported with the right reason, neither is dropped unless
/// allowed, protected indexes are never proposed; usage history survives a statistics reset.
#[tokio::test]
async fn redundant_and_unused_are_reported_protected_never_proposed() -> anyhow::Result<()> {
    let db = audit_testkit::TestDb::create("idx_findings").await;
    let (connector, pg) = setup(&db.url).await?;
    pg.batch_execute(
        "CREATE INDEX audit_log_org_only_idx ON audit_log (organization_id);
         CREATE INDEX audit_log_corr_idx ON audit_log (correlation_id);
         CREATE INDEX audit_log_dup_seq_idx ON audit_log (organization_id, seq);",
    )
    .await?;
    let config = IndexConfig { unused_threshold_days: 30, ..IndexConfig::default() };
    let im = IndexManager::new(&connector, config);
    im.status().await?; // first snapshot: the baseline
    // 40 days of history with no use: move the baseline back.
    pg.batch_execute("UPDATE audit_index_usage_snapshots SET taken_at = taken_at - interval '40 days'").await?;

    // The principal+action index is used now; then the statistics are reset; its use must still count.
    pg.batch_execute("SET enable_seqscan = off; SET enable_bitmapscan = off").await?;
    for i in 0..5 {
        pg.query(
            "SELECT count(*) FROM audit_log WHERE principal_id = $1 AND action = 'action.1'",
            &[&format!("user-{i}")],
        )
        .await?;
    }
    // A backend publishes its counters at most once a second, else when idle for 10 s: ask for the next flush.
    pg.batch_execute("SELECT pg_stat_force_next_flush()").await?;
    pg.batch_execute("SELECT 1").await?;
    audit_testkit::wait_for("the scans to be counted", Duration::from_secs(30), || async {
        im.status().await.unwrap().iter().any(|u| u.name == PRINCIPAL_ACTION && u.history_scans > 0)
    })
    .await;
    pg.batch_execute("SELECT pg_stat_reset()").await?;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let report = im.analyze().await?;
    let find = |index: &str, kind: FindingKind| report.findings.iter().find(|f| f.index == index && f.kind == kind);
    let unused = find("audit_log_corr_idx", FindingKind::Unused).unwrap_or_else(|| panic!("{:#?}", report.findings));
    assert!(unused.reason.contains("30 days") && unused.droppable, "{unused:?}");
    let redundant = find("audit_log_org_only_idx", FindingKind::Redundant).expect("org-only is a prefix of org+ts");
    assert!(redundant.reason.contains("leading prefix of audit_log_"), "{redundant:?}");
    let dup = find("audit_log_dup_seq_idx", FindingKind::Duplicate).expect("same as the integrity index");
    assert!(dup.reason.contains("audit_log_log_seq_idx"), "{dup:?}");
    let used = report.indexes.iter().find(|u| u.name == PRINCIPAL_ACTION).unwrap();
    assert!(used.last_used.is_some() && used.scans == 0, "use survives the reset: {used:?}");
    assert!(find(PRINCIPAL_ACTION, FindingKind::Unused).is_none(), "used after the reset window began");
    for p in PROTECTED_INDEXES {
        assert!(
            !report.recommendations.iter().any(|r| r.action == IndexAction::Drop { name: p.to_string() }),
            "{p} proposed"
        );
        assert!(!report.findings.iter().any(|f| f.index == *p && f.droppable), "{p} droppable");
    }
    let drops: Vec<IndexAction> = report
        .recommendations
        .iter()
        .filter(|r| matches!(r.action, IndexAction::Drop { .. }))
        .map(|r| r.action.clone())
        .collect();
    assert!(drops.contains(&IndexAction::Drop { name: "audit_log_corr_idx".into() }), "{drops:?}");

    // Not allowed: nothing is dropped.
    let applied = im.apply(&drops, ApplyPolicy::default()).await?;
    assert!(applied.iter().all(|a| a.outcome == "skipped"), "{applied:?}");
    let exists = |name: &'static str| {
        let pg = &pg;
        async move { pg.query_opt("SELECT 1 FROM pg_class WHERE relname = $1", &[&name]).await.unwrap().is_some() }
    };
    assert!(exists("audit_log_corr_idx").await && exists("audit_log_org_only_idx").await);
    // Explicit drops: protected refused, others done.
    for p in ["audit_log_pkey", "audit_log_log_seq_idx"] {
        let r = im.drop_index(p, false).await?;
        assert_eq!(r.outcome, "skipped", "{r:?}");
        assert!(r.detail.contains("protected"), "{r:?}");
    }
    assert!(exists("audit_log_pkey").await && exists("audit_log_log_seq_idx").await);
    assert_eq!(im.drop_index("audit_log_corr_idx", false).await?.outcome, "done");
    assert!(!exists("audit_log_corr_idx").await);
    // With enableAutoDrop-like permission, the redundant one goes too.
    let applied = im
        .apply(
            &[IndexAction::Drop { name: "audit_log_org_only_idx".into() }],
            ApplyPolicy { allow_drop: true, ..Default::default() },
        )
        .await?;
    assert_eq!(applied.last().unwrap().outcome, "done", "{applied:?}");
    assert!(!exists("audit_log_org_only_idx").await);
    drop(pg);
    db.drop().await
}
