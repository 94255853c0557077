//! The index layout of issue 14 against real PostgreSQL: a database of the previous schema (GIN on `details` on
//! every partition) holding signed checkpoints is upgraded by `App::migrate` without touching a proof and verifies
//! clean; sealing builds the GIN on the partitions no longer written; the seed's queries and details containment
//! return exactly the right events on sealed and written partitions and have an index to use on sealed ones.

use std::collections::BTreeSet;
use std::path::Path;

use audit_core::{DataClassification, EventFilter, Status};
use audit_integrity::NoteSigner;
use audit_server::app::App;
use audit_server::config::AuditConfig;
use audit_testkit::{TestDb, sql};
use chrono::{DateTime, Datelike as _, Duration, SecondsFormat, TimeZone as _, Utc};
use serde_json::{Value, json};
use uuid::Uuid;

/// The migration that introduced this layout: every migration before it makes the "old" schema.
const LAYOUT_MIGRATION: &str = "2026-12-01-000100_index_layout";

/// The migrations of the schema before this layout (applied by hand to build an "old" database), in order.
fn old_migrations(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.as_str() < LAYOUT_MIGRATION && root.join(n).join("up.sql").exists())
        .collect();
    names.sort();
    names
}

async fn open_app(url: &str) -> App {
    let mut config = AuditConfig::default();
    config.database.url = Some(url.to_string());
    config.cache.enabled = false;
    App::open(config).await.expect("the app opens")
}

/// Applies the old migrations' SQL and records them as applied the way diesel does, so that `App::migrate` sees a
/// database of the previous schema and applies only what came after.
async fn build_old_schema(url: &str) {
    let c = sql(url).await;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../migrations");
    c.batch_execute(
        "CREATE TABLE __diesel_schema_migrations (version VARCHAR(50) PRIMARY KEY NOT NULL, \
         run_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP)",
    )
    .await
    .unwrap();
    for m in old_migrations(&root) {
        let m = m.as_str();
        let up = std::fs::read_to_string(root.join(m).join("up.sql")).unwrap();
        c.batch_execute(&up).await.unwrap_or_else(|e| panic!("{m}: {e}"));
        let version: String = m.split('_').next().unwrap().chars().filter(|c| *c != '-').collect();
        c.execute("INSERT INTO __diesel_schema_migrations (version) VALUES ($1)", &[&version]).await.unwrap();
    }
}

/// Start of the month of `t` (the current partition's lower bound with the default monthly interval).
fn month_start(t: DateTime<Utc>) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(t.year(), t.month(), 1, 0, 0, 0).single().unwrap()
}

/// `n` events spread over the last 70 days (so over at least two ended months and the current one), with
/// details that containment queries can find. Every third event has an `access_reason` of `billing`.
fn events(n: usize, now: DateTime<Utc>, tag: &str) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let ts = now - Duration::minutes((i as i64 * 70 * 24 * 60) / n as i64) - Duration::seconds(1);
            json!({
                "event_id": Uuid::new_v4().to_string(),
                "timestamp": ts.to_rfc3339_opts(SecondsFormat::Micros, true),
                "action": if i % 5 == 0 { "user_authentication" } else { "patient_data_access" },
                "status": if i % 7 == 0 { "failure" } else { "success" },
                "principal_id": format!("user_{}", i % 13),
                "organization_id": format!("hospital_{}", i % 4),
                "data_classification": if i % 2 == 0 { "PHI" } else { "INTERNAL" },
                "details": {
                    "access_reason": if i % 3 == 0 { "billing" } else { "treatment" },
                    "tag": tag,
                    "n": i,
                },
            })
        })
        .collect()
}

async fn leaves(url: &str) -> Vec<(Option<String>, i64, Vec<u8>, Uuid)> {
    let c = sql(url).await;
    c.query("SELECT organization_id, seq, leaf_hash, event_id FROM audit_log ORDER BY organization_id, seq", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

/// Names of valid indexes on table `t`.
async fn indexes_on(url: &str, t: &str) -> BTreeSet<String> {
    let c = sql(url).await;
    c.query(
        "SELECT x.relname::text FROM pg_index i JOIN pg_class x ON x.oid = i.indexrelid \
         WHERE i.indrelid = to_regclass($1) AND i.indisvalid",
        &[&t],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_from_the_previous_schema_keeps_every_proof_and_verifies_clean() {
    let db = TestDb::create("ixl_upgrade").await;
    build_old_schema(&db.url).await;
    let now = Utc::now();
    // Two periods back: ended well over SEAL_GRACE ago whatever the day of the month.
    let old_month = month_start(month_start(month_start(now) - Duration::days(1)) - Duration::days(1));
    let old_part = format!("audit_log_{}", old_month.format("%Y_%m"));
    {
        let app = open_app(&db.url).await;
        app.partitions().await.unwrap().ensure_range(now - Duration::days(71), now).await.unwrap();
        // The old schema: the GIN is a partitioned index cloned onto every partition.
        assert!(indexes_on(&db.url, "audit_log").await.contains("audit_log_details_gin_idx"));
        let client = app.client().await.unwrap();
        let report = client.insert_batch(events(1_200, now, "before")).await.unwrap();
        assert_eq!(report.accepted(), 1_200);
        let store = app.integrity().unwrap();
        let signer = NoteSigner::from_seed("upgrade-test", [3u8; 32]).unwrap();
        let sealed = store.checkpoint(&signer, None, Utc::now()).await.unwrap();
        assert_eq!(sealed.iter().map(|s| s.tree_size).sum::<i64>(), 1_200);
    }
    let before = leaves(&db.url).await;

    // The upgrade, as `audit-db migrate` runs it.
    let app = open_app(&db.url).await;
    let applied = app.migrate().await.unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../migrations");
    let newer = std::fs::read_dir(&root).unwrap().filter(|e| {
        let n = e.as_ref().unwrap().file_name().to_string_lossy().into_owned();
        n.as_str() >= LAYOUT_MIGRATION
    });
    assert_eq!(applied.len(), newer.count(), "only the layout migration and later ones are applied: {applied:?}");

    // Not one proof rewritten: same rows, same seq, same leaf hashes.
    assert_eq!(leaves(&db.url).await, before);
    // The per-row GIN is gone from the parent; the ended month was sealed and has its own GIN again.
    assert!(!indexes_on(&db.url, "audit_log").await.contains("audit_log_details_gin_idx"));
    let old_indexes = indexes_on(&db.url, &old_part).await;
    assert!(old_indexes.contains(&format!("{old_part}_details_gin")), "{old_part}: {old_indexes:?}");
    let cur_part = format!("audit_log_{}", now.format("%Y_%m"));
    assert!(
        !indexes_on(&db.url, &cur_part).await.iter().any(|i| i.contains("gin")),
        "the partition being written keeps the cheap index set"
    );
    let c = sql(&db.url).await;
    let sealed: Vec<String> = c
        .query("SELECT partition_name FROM audit_partition_seals", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(sealed.contains(&old_part), "{sealed:?}");
    assert!(!sealed.contains(&cur_part), "{sealed:?}");

    // The checkpoints signed before the upgrade verify clean, and the log goes on after it.
    let store = app.integrity().unwrap();
    let signer = NoteSigner::from_seed("upgrade-test", [3u8; 32]).unwrap();
    let report = store.verify(&signer.verifier(), None, false, &|_| {}).await.unwrap();
    assert!(report.findings.is_empty(), "{:?}", report.findings);
    assert_eq!(report.leaves, 1_200);
    let client = app.client().await.unwrap();
    assert_eq!(client.insert_batch(events(300, Utc::now(), "after")).await.unwrap().accepted(), 300);
    store.checkpoint(&signer, None, Utc::now()).await.unwrap();
    let report = store.verify(&signer.verifier(), None, false, &|_| {}).await.unwrap();
    assert!(report.findings.is_empty(), "{:?}", report.findings);
    assert_eq!(report.leaves, 1_500);

    // A second migrate is a no-op (nothing applied, nothing due).
    assert!(app.migrate().await.unwrap().is_empty());
    drop(app);
    db.drop().await.unwrap();
}

/// Every event id of every page of `f`.
async fn all_ids(client: &audit_server::app::Client, mut f: EventFilter) -> BTreeSet<Uuid> {
    f.limit = Some(500);
    let mut out = BTreeSet::new();
    loop {
        let a = client.query(&f).await.unwrap();
        out.extend(a.page.events.iter().map(|e| e.event.event_id));
        match a.page.next_cursor {
            Some(c) => f.after = Some(c),
            None => return out,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_queries_and_details_containment_are_exact_on_sealed_and_written_partitions() {
    let db = TestDb::create("ixl_queries").await;
    let app = open_app(&db.url).await;
    app.migrate().await.unwrap();
    let now = Utc::now();
    let pm = app.partitions().await.unwrap();
    pm.ensure_range(now - Duration::days(71), now).await.unwrap();
    let evs = events(2_000, now, "q");
    let client = app.client().await.unwrap();
    assert_eq!(client.insert_batch(evs.clone()).await.unwrap().accepted(), 2_000);
    // Every period that is over (the grace period is for late events; this test has none).
    let sealed = pm.seal_due(now + Duration::hours(2)).await.unwrap();
    assert!(sealed.len() >= 2, "at least two ended months: {sealed:?}");
    assert!(sealed.iter().map(|s| s.rows).sum::<i64>() > 0, "{sealed:?}");
    // Sealing again finds nothing due.
    assert!(pm.seal_due(now + Duration::hours(2)).await.unwrap().is_empty());

    let ts = |e: &Value| DateTime::parse_from_rfc3339(e["timestamp"].as_str().unwrap()).unwrap().with_timezone(&Utc);
    let id = |e: &Value| Uuid::parse_str(e["event_id"].as_str().unwrap()).unwrap();
    let written_from = month_start(now);
    let windows = [("sealed", written_from - Duration::days(30), written_from), ("written", written_from, now)];
    for (age, from, to) in windows {
        let in_window = |e: &&Value| ts(e) >= from && ts(e) < to;
        let base = || {
            let mut f = EventFilter::default();
            f.time.gte = Some(from);
            f.time.lt = Some(to);
            f
        };
        // 1. organisation + window.
        let mut f = base();
        f.organization_id = Some("hospital_1".into());
        let want: BTreeSet<Uuid> =
            evs.iter().filter(in_window).filter(|e| e["organization_id"] == "hospital_1").map(id).collect();
        assert_eq!(all_ids(&client, f).await, want, "org window on {age}");
        // 2. PHI access at one hospital.
        let mut f = base();
        f.organization_id = Some("hospital_2".into());
        f.data_classification = Some(DataClassification::Phi);
        let want: BTreeSet<Uuid> = evs
            .iter()
            .filter(in_window)
            .filter(|e| e["organization_id"] == "hospital_2" && e["data_classification"] == "PHI")
            .map(id)
            .collect();
        assert_eq!(all_ids(&client, f).await, want, "PHI access on {age}");
        // 3. failed logins.
        let mut f = base();
        f.actions = vec!["user_authentication".into()];
        f.statuses = vec![Status::Failure];
        let want: BTreeSet<Uuid> = evs
            .iter()
            .filter(in_window)
            .filter(|e| e["action"] == "user_authentication" && e["status"] == "failure")
            .map(id)
            .collect();
        assert!(!want.is_empty(), "the data set has failed logins on {age}");
        assert_eq!(all_ids(&client, f).await, want, "failed logins on {age}");
        // 4. principal + action.
        let mut f = base();
        f.principal_id = Some("user_5".into());
        f.actions = vec!["patient_data_access".into()];
        let want: BTreeSet<Uuid> = evs
            .iter()
            .filter(in_window)
            .filter(|e| e["principal_id"] == "user_5" && e["action"] == "patient_data_access")
            .map(id)
            .collect();
        assert_eq!(all_ids(&client, f).await, want, "principal + action on {age}");
        // 5. details containment within an organisation.
        let mut f = base();
        f.organization_id = Some("hospital_3".into());
        f.details_contains = Some(json!({"access_reason": "billing"}));
        let want: BTreeSet<Uuid> = evs
            .iter()
            .filter(in_window)
            .filter(|e| e["organization_id"] == "hospital_3" && e["details"]["access_reason"] == "billing")
            .map(id)
            .collect();
        assert!(!want.is_empty(), "the data set has billing accesses at hospital_3 on {age}");
        assert_eq!(all_ids(&client, f).await, want, "details containment on {age}");
    }

    // On a sealed partition every kind has an index to use (seq scans disabled: the question is whether an index
    // can answer, not which plan a tiny table prefers; the benchmark's EXPLAIN shows the choice at scale).
    let c = sql(&db.url).await;
    c.batch_execute("ANALYZE audit_log; SET enable_seqscan = off").await.unwrap();
    let part = format!("audit_log_{}", (written_from - Duration::days(1)).format("%Y_%m"));
    for (what, wher) in [
        ("org window", "organization_id = 'hospital_1'"),
        ("phi", "organization_id = 'hospital_2' AND data_classification = 'PHI'"),
        ("failed logins", "action = 'user_authentication' AND status = 'failure'"),
        ("principal action", "principal_id = 'user_5' AND action = 'patient_data_access'"),
        ("details", "details @> '{\"access_reason\": \"billing\"}'"),
    ] {
        let plan: Vec<String> = c
            .query(&format!("EXPLAIN SELECT event_id FROM {part} WHERE {wher}"), &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let text = plan.join("\n");
        assert!(text.contains("Index"), "{what} on {part} has no index:\n{text}");
        if what == "details" {
            assert!(text.contains(&format!("{part}_details_gin")), "containment uses the sealed GIN:\n{text}");
        }
    }
    drop(client);
    drop(app);
    db.drop().await.unwrap();
}
