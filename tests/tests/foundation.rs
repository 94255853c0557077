//! Foundation: the write path, exactly-once storage, group commit, transactions, every filter and the cursor, a
//! missing partition, and the append-only triggers — all against a real PostgreSQL.

use std::collections::HashSet;

use audit_client::{Ack, BatchItem};

mod support;
use audit_core::{EventFilter, Status, StoredEvent};
use audit_testkit::{TestDb, assert_exactly_once_and_gap_free, sql};
use chrono::{DateTime, Duration, SecondsFormat, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use uuid::Uuid;

use support::Client;

async fn setup(prefix: &str) -> (TestDb, Client) {
    let db = TestDb::create(prefix).await;
    let client = client_for(&db.url).await;
    (db, client)
}

async fn client_for(url: &str) -> Client {
    support::migrate(url).await;
    support::partitions(url, Default::default()).await.premake().await.expect("premake");
    support::client(url).await
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn event(org: &str, action: &str, t: DateTime<Utc>) -> Value {
    json!({"action": action, "status": "success", "timestamp": ts(t), "organization_id": org,
           "event_id": Uuid::new_v4().to_string(), "details": {"k": 1}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_inserts_are_durable_exactly_once_in_few_transactions() {
    let (db, client) = setup("found_group").await;
    let now = Utc::now();
    let mut tasks = Vec::new();
    let mut ids = Vec::new();
    for i in 0..1000 {
        let e = event(&format!("org{}", i % 13), "user_authentication", now - Duration::seconds(i));
        ids.push(Uuid::parse_str(e["event_id"].as_str().unwrap()).unwrap());
        let c = client.clone();
        tasks.push(tokio::spawn(async move { c.insert(e).await }));
    }
    for t in tasks {
        assert!(matches!(t.await.unwrap().unwrap(), Ack::Stored { .. }));
    }
    let pg = sql(&db.url).await;
    let row = pg
        .query_one("SELECT count(*), count(DISTINCT event_id), count(DISTINCT xmin::text) FROM audit_log", &[])
        .await
        .unwrap();
    let (rows, distinct, txns): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(rows, 1000);
    assert_eq!(distinct, 1000);
    assert!(txns <= 50, "1000 concurrent inserts took {txns} transactions");
    let stored: HashSet<Uuid> =
        pg.query("SELECT event_id FROM audit_log", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(stored, ids.into_iter().collect());
    // Sequence numbers: gap-free and unique per organisation.
    assert_exactly_once_and_gap_free(&pg, 1000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_are_reported_and_never_stored_twice() {
    let (db, client) = setup("found_dup").await;
    let now = Utc::now();
    let a = event("o1", "login", now);
    let b = event("o1", "login", now - Duration::minutes(1));
    // Within one batch, and against stored rows.
    let r = client.insert_batch(vec![a.clone(), a.clone(), b.clone()]).await.unwrap();
    assert_eq!((r.accepted(), r.duplicates()), (2, 1));
    let r = client.insert_batch(vec![a.clone(), b.clone()]).await.unwrap();
    assert_eq!((r.accepted(), r.duplicates()), (0, 2));
    assert!(matches!(client.insert(a.clone()).await.unwrap(), Ack::Duplicate { .. }));
    // Same event_id with a different timestamp is a different event.
    let mut a2 = a.clone();
    a2["timestamp"] = json!(ts(now - Duration::hours(2)));
    assert!(matches!(client.insert(a2).await.unwrap(), Ack::Stored { .. }));

    // Two independent clients (separate pools and writers) racing the same 2,000 events.
    let other = client_for(&db.url).await;
    let events: Vec<Value> =
        (0..2000).map(|i| event(&format!("org{}", i % 5), "x", now - Duration::seconds(i))).collect();
    let (r1, r2) = tokio::join!(client.insert_batch(events.clone()), other.insert_batch(events.clone()));
    let (r1, r2) = (r1.unwrap(), r2.unwrap());
    assert_eq!(r1.accepted() + r2.accepted(), 2000);
    assert_eq!(r1.duplicates() + r2.duplicates(), 2000);
    let pg = sql(&db.url).await;
    let n: i64 = pg.query_one("SELECT count(*) FROM audit_log", &[]).await.unwrap().get(0);
    assert_eq!(n, 2000 + 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_event_never_blocks_valid_ones_beside_it() {
    let (_db, client) = setup("found_reject").await;
    let now = Utc::now();
    let good = event("o1", "login", now);
    let mut typo = event("o1", "login", now);
    typo["principalId"] = json!("u1");
    let mut future = event("o1", "login", now);
    future["timestamp"] = json!(ts(now + Duration::days(3650)));
    let mut numeric_org = event("o1", "login", now);
    numeric_org["organization_id"] = json!(123);
    let r = client.insert_batch(vec![typo, good.clone(), future, numeric_org]).await.unwrap();
    assert_eq!(r.accepted(), 1);
    let reasons: Vec<String> = r
        .items
        .iter()
        .filter_map(|i| match i {
            BatchItem::Rejected(r) => Some(r.reason.clone()),
            _ => None,
        })
        .collect();
    assert!(reasons[0].contains("principalId") && reasons[0].contains("principal_id"), "{}", reasons[0]);
    assert!(reasons[1].starts_with("timestamp") && reasons[1].contains("future"), "{}", reasons[1]);
    assert!(reasons[2].starts_with("organization_id"), "{}", reasons[2]);
    let err = client.insert(json!({"status": "success", "timestamp": ts(now)})).await.unwrap_err();
    assert!(err.message().starts_with("action"), "{}", err.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_commit_all_or_nothing() {
    let (db, client) = setup("found_tx").await;
    let now = Utc::now();
    let acks = client
        .transaction(|tx| {
            Box::pin(async move {
                let a = tx.insert(event("o1", "a", now)).await?;
                let b = tx.insert(event("o2", "b", now)).await?;
                Ok(vec![a, b])
            })
        })
        .await
        .unwrap();
    assert_eq!(acks.len(), 2);
    let ids: Vec<Uuid> = acks.iter().map(|a| a.event_id()).collect();
    assert!(client.get(ids[0]).await.unwrap().is_some() && client.get(ids[1]).await.unwrap().is_some());
    // A failing callback stores nothing.
    let failed = client
        .transaction(|tx| {
            Box::pin(async move {
                tx.insert(event("o1", "c", now)).await?;
                tx.insert(json!({"action": "d", "status": "nope", "timestamp": ts(now)})).await?;
                Ok(())
            })
        })
        .await;
    assert!(failed.is_err());
    let pg = sql(&db.url).await;
    let n: i64 = pg.query_one("SELECT count(*) FROM audit_log", &[]).await.unwrap().get(0);
    assert_eq!(n, 2, "the failed transaction stored nothing");
    let pg_xmins: i64 = pg.query_one("SELECT count(DISTINCT xmin::text) FROM audit_log", &[]).await.unwrap().get(0);
    assert_eq!(pg_xmins, 1, "both events of the transaction were committed together");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_for_missing_periods_are_stored_and_found() {
    let (db, client) = setup("found_2019").await;
    let t = DateTime::parse_from_rfc3339("2019-03-14T15:09:26.535897Z").unwrap().with_timezone(&Utc);
    let e = event("legacy", "import", t);
    let id = Uuid::parse_str(e["event_id"].as_str().unwrap()).unwrap();
    assert!(matches!(client.insert(e).await.unwrap(), Ack::Stored { .. }));
    let got = client.get(id).await.unwrap().expect("stored");
    assert_eq!(got.event.timestamp, t);
    let mut f = EventFilter { organization_id: Some("legacy".into()), ..Default::default() };
    f.time.gte = Some(t - Duration::days(1));
    f.time.lte = Some(t);
    assert_eq!(client.query(&f).await.unwrap().page.events.len(), 1);
    let pg = sql(&db.url).await;
    let parts: i64 = pg
        .query_one(
            "SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = 'audit_log'::regclass AND c.relname LIKE 'audit_log_2019%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(parts >= 1, "a 2019 partition was created on demand");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_refuses_update_delete_and_truncate() {
    let (db, client) = setup("found_append").await;
    client.insert(event("o1", "a", Utc::now())).await.unwrap();
    let pg = sql(&db.url).await;
    for stmt in [
        "UPDATE audit_log SET action = 'changed'",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
        "UPDATE audit_checkpoints SET tree_size = 0",
    ] {
        let e = pg.batch_execute(stmt).await.expect_err(stmt);
        let code = e.as_db_error().map(|d| d.code().code().to_string());
        assert_eq!(code.as_deref(), Some("42501"), "{stmt}: {e}");
    }
    // Also each partition on its own.
    let part: String = pg
        .query_one(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = 'audit_log'::regclass LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    for stmt in [format!("TRUNCATE {part}"), format!("DELETE FROM {part}")] {
        assert!(pg.batch_execute(&stmt).await.is_err(), "{stmt} must be refused");
    }
    let n: i64 = pg.query_one("SELECT count(*) FROM audit_log", &[]).await.unwrap().get(0);
    assert_eq!(n, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_are_idempotent_and_revert_cleanly() {
    let db = TestDb::create("found_migr").await;
    let first = support::migrate(&db.url).await;
    assert!(!first.is_empty());
    assert!(support::migrate(&db.url).await.is_empty());
    while audit_pg::revert_last(&support::connector(&db.url)).await.unwrap().is_some() {}
    let pg = sql(&db.url).await;
    let n: i64 = pg
        .query_one("SELECT count(*) FROM pg_class WHERE relname IN ('audit_log', 'audit_log_heads')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    assert_eq!(support::migrate(&db.url).await, first);
}

// ---- every filter and the cursor against an independently computed answer ----

const ORGS: [&str; 3] = ["h1", "b2", "c3"];
const PRINCIPALS: [&str; 4] = ["u1", "u2", "u3", "u4"];
const ACTIONS: [&str; 4] = ["patient_data_access", "payment_processed", "user_authentication", "export"];
const CLASSES: [&str; 5] = ["PUBLIC", "INTERNAL", "CONFIDENTIAL", "PHI", "FINANCIAL"];

fn random_event(rng: &mut StdRng, now: DateTime<Utc>) -> Value {
    let t = if rng.gen_bool(0.05) {
        DateTime::parse_from_rfc3339("2019-06-01T00:00:00Z").unwrap().with_timezone(&Utc)
            + Duration::minutes(rng.gen_range(0..100_000))
    } else {
        now - Duration::seconds(rng.gen_range(0..90 * 86_400))
    };
    let mut e = json!({
        "event_id": Uuid::from_u128(rng.r#gen::<u128>()).to_string(),
        "timestamp": ts(t),
        "action": (ACTIONS[rng.gen_range(0..4)]),
        "status": (["attempt", "success", "failure"][rng.gen_range(0..3)]),
        "principal_id": (PRINCIPALS[rng.gen_range(0..4)]),
        "data_classification": (CLASSES[rng.gen_range(0..5)]),
        "retention_policy": (["standard", "minimal"][rng.gen_range(0..2)]),
        "event_version": (["1.0", "2.0"][rng.gen_range(0..2)]),
        "target_resource_type": (["patient_record", "transaction"][rng.gen_range(0..2)]),
        "target_resource_id": format!("r{}", rng.gen_range(0..6)),
        "correlation_id": format!("c{}", rng.gen_range(0..5)),
        "outcome_description": (["ok", "denied"][rng.gen_range(0..2)]),
        "ttl": (["30d", "1y"][rng.gen_range(0..2)]),
        "processing_latency": rng.gen_range(0..4),
        "details": {"reason": (["treatment", "billing"][rng.gen_range(0..2)]), "n": rng.gen_range(0..3),
                    "tags": ([json!(["a"]), json!(["a", "b"]), json!(["b"])][rng.gen_range(0..3)].clone())},
    });
    if rng.gen_bool(0.9) {
        e["organization_id"] = json!((ORGS[rng.gen_range(0..3)]));
    }
    // Same timestamp as another event now and then, so the cursor's tie-break is exercised.
    if rng.gen_bool(0.05) {
        e["timestamp"] = json!(ts(now - Duration::days(3)));
    }
    e
}

fn contains(target: &Value, filter: &Value) -> bool {
    match (target, filter) {
        (Value::Object(t), Value::Object(f)) => f.iter().all(|(k, fv)| t.get(k).is_some_and(|tv| contains(tv, fv))),
        (Value::Array(t), Value::Array(f)) => f.iter().all(|fv| t.iter().any(|tv| contains(tv, fv))),
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (a, b) => a == b,
    }
}

fn matches(e: &StoredEvent, f: &EventFilter) -> bool {
    let v = &e.event;
    let eq = |want: &Option<String>, have: &Option<String>| want.as_ref().is_none_or(|w| have.as_ref() == Some(w));
    (f.actions.is_empty() || f.actions.contains(&v.action))
        && (f.statuses.is_empty() || f.statuses.contains(&v.status))
        && eq(&f.principal_id, &v.principal_id)
        && eq(&f.organization_id, &v.organization_id)
        && eq(&f.target_resource_type, &v.target_resource_type)
        && eq(&f.target_resource_id, &v.target_resource_id)
        && eq(&f.outcome_description, &v.outcome_description)
        && eq(&f.correlation_id, &v.correlation_id)
        && eq(&f.ttl, &v.ttl)
        && f.retention_policy.as_ref().is_none_or(|r| r == &v.retention_policy)
        && f.event_version.as_ref().is_none_or(|r| r == &v.event_version)
        && f.data_classification.is_none_or(|c| c == v.data_classification)
        && f.processing_latency.is_none_or(|p| Some(p) == v.processing_latency)
        && f.event_id.is_none_or(|id| id == v.event_id)
        && f.time.gte.is_none_or(|t| v.timestamp >= t)
        && f.time.gt.is_none_or(|t| v.timestamp > t)
        && f.time.lte.is_none_or(|t| v.timestamp <= t)
        && f.time.lt.is_none_or(|t| v.timestamp < t)
        && f.details_contains.as_ref().is_none_or(|d| contains(&Value::Object(v.details.clone()), d))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_filter_and_the_cursor_return_exactly_the_right_events() {
    let (_db, client) = setup("found_filter").await;
    let now = Utc::now();
    let mut rng = StdRng::seed_from_u64(20261125);
    let input: Vec<Value> = (0..3000).map(|_| random_event(&mut rng, now)).collect();
    let report = client.insert_batch(input).await.unwrap();
    assert_eq!(report.accepted(), 3000);

    // The independent answer: everything read back once, filtered in Rust.
    let mut all: Vec<StoredEvent> = Vec::new();
    let mut f = EventFilter { limit: Some(10_000), ..Default::default() };
    loop {
        let page = client.query(&f).await.unwrap().page;
        all.extend(page.events.iter().cloned());
        match page.next_cursor {
            Some(c) => f.after = Some(c),
            None => break,
        }
    }
    assert_eq!(all.len(), 3000);
    let mut sorted = all.clone();
    sorted.sort_by_key(|e| std::cmp::Reverse((e.event.timestamp, e.event.event_id)));
    assert_eq!(all, sorted, "results come newest first with event_id as tie-break");

    let t = |days: i64| Some(now - Duration::days(days));
    let mut filters: Vec<EventFilter> = vec![
        EventFilter { organization_id: Some("h1".into()), ..Default::default() },
        EventFilter { principal_id: Some("u2".into()), ..Default::default() },
        EventFilter { actions: vec!["export".into()], ..Default::default() },
        EventFilter { actions: vec!["export".into(), "payment_processed".into()], ..Default::default() },
        EventFilter { statuses: vec![Status::Failure], ..Default::default() },
        EventFilter { statuses: vec![Status::Failure, Status::Attempt], ..Default::default() },
        EventFilter { target_resource_type: Some("transaction".into()), ..Default::default() },
        EventFilter { target_resource_id: Some("r3".into()), ..Default::default() },
        EventFilter { outcome_description: Some("denied".into()), ..Default::default() },
        EventFilter { correlation_id: Some("c4".into()), ..Default::default() },
        EventFilter { data_classification: Some(audit_core::DataClassification::Phi), ..Default::default() },
        EventFilter { retention_policy: Some("minimal".into()), ..Default::default() },
        EventFilter { event_version: Some("2.0".into()), ..Default::default() },
        EventFilter { ttl: Some("1y".into()), ..Default::default() },
        EventFilter { processing_latency: Some(2), ..Default::default() },
        EventFilter { event_id: Some(all[1234].event.event_id), ..Default::default() },
        EventFilter { details_contains: Some(json!({"reason": "billing"})), ..Default::default() },
        EventFilter { details_contains: Some(json!({"tags": ["b"], "n": 1})), ..Default::default() },
        EventFilter {
            organization_id: Some("b2".into()),
            actions: vec!["payment_processed".into()],
            statuses: vec![Status::Success],
            ..Default::default()
        },
    ];
    for (gte, gt, lte, lt) in [
        (t(30), None, None, None),
        (None, t(30), None, None),
        (None, None, t(10), None),
        (None, None, None, t(3)),
        (t(60), None, t(3), None),
        (None, t(3), None, t(2)),
    ] {
        let mut f = EventFilter { organization_id: Some("c3".into()), ..Default::default() };
        f.time = audit_core::TimeRange { gte, gt, lte, lt };
        filters.push(f.clone());
        f.organization_id = None;
        filters.push(f);
    }
    let exact = all.iter().find(|e| e.event.timestamp == now_floor(now - Duration::days(3))).map(|e| e.event.timestamp);
    if let Some(x) = exact {
        let mut f = EventFilter::default();
        f.time.gte = Some(x);
        f.time.lte = Some(x);
        filters.push(f);
    }
    for base in filters {
        let expected: Vec<Uuid> = all.iter().filter(|e| matches(e, &base)).map(|e| e.event.event_id).collect();
        assert_eq!(client.count(&base).await.unwrap() as usize, expected.len(), "count of {base:?}");
        let mut got = Vec::new();
        let mut f = EventFilter { limit: Some(37), ..base.clone() };
        loop {
            let page = client.query(&f).await.unwrap().page;
            assert!(page.events.len() <= 37);
            got.extend(page.events.iter().map(|e| e.event.event_id));
            match page.next_cursor {
                Some(c) => f.after = Some(c),
                None => break,
            }
        }
        assert_eq!(got, expected, "{base:?}");
    }
    // Limits are checked.
    let err = client.query(&EventFilter { limit: Some(10_001), ..Default::default() }).await.unwrap_err();
    assert!(err.message().starts_with("limit"), "{}", err.message());
    let default = client.query(&EventFilter::default()).await.unwrap().page;
    assert_eq!(default.events.len(), 100);
}

fn now_floor(t: DateTime<Utc>) -> DateTime<Utc> {
    audit_core::event::truncate_to_micros(t)
}
