//! Resilience of the client library against real failures: a connection lost while COMMIT is in flight (through a
//! TCP proxy that forwards the COMMIT and cuts the connection before the answer arrives) and a query that outlives
//! its deadline. Only `audit-client`'s public API with the `Direct` policy is used here, so what is proven is the
//! client's own behaviour (`store_patiently` and exactly-once by `event_id`), not a retry policy's; the same
//! failures under audit-resilience's `Policy` are in `crates/audit-server/tests/cli_resilience.rs`.

use audit_testkit::proxy;
use audit_testkit::proxy::{server_addr, through};

use std::collections::HashMap;
use std::time::{Duration, Instant};

use audit_client::{Ack, BatchItem, ClientConfig};
use audit_core::{ErrorClass, EventFilter};
use audit_testkit::{TestDb, assert_exactly_once_and_gap_free, sql};
use chrono::{SecondsFormat, Utc};
use proxy::TcpProxy;
use serde_json::{Value, json};
use uuid::Uuid;

mod support;
use support::Client;

/// Migrates `db` and premakes its partitions directly, then connects a client to `client_url` (which may go
/// through a proxy).
async fn client(db: &TestDb, client_url: &str, config: ClientConfig) -> Client {
    support::migrate(&db.url).await;
    support::partitions(&db.url, Default::default()).await.premake().await.expect("premake");
    support::client_with(&db.url, client_url, config).await
}

/// `n` events over a few organisations, every third without an `event_id` (the client assigns one).
fn events(n: usize, tag: &str) -> Vec<Value> {
    let now = Utc::now();
    (0..n)
        .map(|i| {
            let mut e = json!({
                "action": format!("{tag}_{}", i % 4), "status": "success", "organization_id": format!("org{}", i % 5),
                "timestamp": (now - chrono::Duration::milliseconds(i as i64 * 10)).to_rfc3339_opts(SecondsFormat::Micros, true),
                "principal_id": format!("u{i}"), "details": {"i": i}
            });
            if i % 3 != 0 {
                e["event_id"] = json!(Uuid::new_v4().to_string());
            }
            e
        })
        .collect()
}

/// Each `Stored` ack names the row that really holds its event (id and seq).
async fn assert_acks_match_rows(pg: &tokio_postgres::Client, acks: &[Ack]) {
    let rows = pg.query("SELECT event_id, id, seq FROM audit_log", &[]).await.unwrap();
    let stored: HashMap<Uuid, (i64, i64)> = rows.iter().map(|r| (r.get(0), (r.get(1), r.get(2)))).collect();
    for ack in acks {
        match ack {
            Ack::Stored { event_id, id, seq, .. } => {
                assert_eq!(stored.get(event_id), Some(&(*id, *seq)), "the ack of {event_id} names its row")
            }
            Ack::Duplicate { event_id, .. } => panic!("{event_id} was reported as a duplicate"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_insert_whose_commit_is_lost_reports_every_event_stored_once() {
    let db = TestDb::create("res_lost_commit_bulk").await;
    let proxy = TcpProxy::start(server_addr(&db.url).await).await;
    let client = client(&db, &through(&db.url, &proxy), ClientConfig::default()).await;

    proxy.cut_next_commits(1);
    let batch = events(600, "bulk");
    let report = client.insert_batch(batch.clone()).await.expect("the batch is stored despite the lost COMMIT");
    assert_eq!(proxy.commits_cut(), 1, "the COMMIT was forwarded and its answer never delivered");
    assert_eq!((report.accepted(), report.duplicates(), report.rejected()), (600, 0, 0));
    let acks: Vec<Ack> = report
        .items
        .iter()
        .map(|i| match i {
            BatchItem::Ok(a) => a.clone(),
            BatchItem::Rejected(r) => panic!("rejected: {r}"),
        })
        .collect();
    let pg = sql(&db.url).await;
    assert_exactly_once_and_gap_free(&pg, 600).await;
    assert_acks_match_rows(&pg, &acks).await;

    // Sending the same events again (what a caller unsure of the outcome would do): the ones with a caller-given
    // event_id are recognised; nothing is stored twice.
    let with_ids: Vec<Value> = batch.into_iter().filter(|e| e.get("event_id").is_some()).collect();
    let again = client.insert_batch(with_ids.clone()).await.unwrap();
    assert_eq!((again.accepted(), again.duplicates()), (0, with_ids.len()));
    assert_exactly_once_and_gap_free(&pg, 600).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_committed_inserts_whose_commit_is_lost_are_acknowledged_stored_once() {
    let db = TestDb::create("res_lost_commit_group").await;
    let proxy = TcpProxy::start(server_addr(&db.url).await).await;
    let client = client(&db, &through(&db.url, &proxy), ClientConfig::default()).await;

    proxy.cut_next_commits(1);
    let tasks: Vec<_> = events(300, "single")
        .into_iter()
        .map(|e| {
            let c = client.clone();
            tokio::spawn(async move { c.insert(e).await })
        })
        .collect();
    let mut acks = Vec::new();
    for t in tasks {
        acks.push(t.await.unwrap().expect("every insert is acknowledged"));
    }
    assert_eq!(proxy.commits_cut(), 1);
    let pg = sql(&db.url).await;
    assert_exactly_once_and_gap_free(&pg, 300).await;
    assert_acks_match_rows(&pg, &acks).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_whose_commit_is_lost_is_ambiguous_and_safe_to_send_again() {
    // `Transaction::commit` retries only under a retrying policy; with `Direct` the caller gets the ambiguity as
    // an Unavailable error, and sending the same events again must never store them twice.
    let db = TestDb::create("res_lost_commit_tx").await;
    let proxy = TcpProxy::start(server_addr(&db.url).await).await;
    let client = client(&db, &through(&db.url, &proxy), ClientConfig::default()).await;
    let batch: Vec<Value> = events(40, "tx").into_iter().filter(|e| e.get("event_id").is_some()).collect();

    proxy.cut_next_commits(1);
    let mut tx = client.begin();
    for e in &batch {
        tx.insert(e.clone()).unwrap();
    }
    let err = tx.commit().await.expect_err("the caller cannot know whether a COMMIT without answer happened");
    assert_eq!(err.class(), ErrorClass::Unavailable, "{err}");
    assert_eq!(proxy.commits_cut(), 1);
    let pg = sql(&db.url).await;
    assert_exactly_once_and_gap_free(&pg, batch.len() as i64).await;

    let mut tx = client.begin();
    for e in &batch {
        tx.insert(e.clone()).unwrap();
    }
    let acks = tx.commit().await.expect("the second commit is answered");
    assert!(acks.iter().all(|a| matches!(a, Ack::Duplicate { .. })), "{acks:?}");
    assert_exactly_once_and_gap_free(&pg, batch.len() as i64).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_past_its_deadline_is_cancelled_on_the_server() {
    let db = TestDb::create("res_deadline").await;
    let mut config = ClientConfig::default();
    config.database.query_timeout = 300;
    let client = client(&db, &db.url, config).await;
    let report = client.insert_batch(events(50, "deadline")).await.unwrap();
    assert_eq!(report.accepted(), 50);

    // Another session holds an exclusive lock: the query would wait as long as the lock is held.
    let locker = sql(&db.url).await;
    locker.batch_execute("BEGIN; LOCK TABLE audit_log IN ACCESS EXCLUSIVE MODE").await.unwrap();
    let locker_pid: i32 = locker.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);

    let filter = EventFilter { organization_id: Some("org1".into()), ..EventFilter::default() };
    let started = Instant::now();
    let outcome = tokio::time::timeout(Duration::from_secs(30), client.query(&filter)).await;
    let elapsed = started.elapsed();
    let err = match outcome {
        Ok(Err(e)) => e,
        Ok(Ok(a)) => panic!("the query answered ({} rows) although the table was locked", a.page.events.len()),
        Err(_) => panic!("the query was not cut at its 300 ms deadline (still waiting after 30 s)"),
    };
    println!("query cut after {} ms: {err}", elapsed.as_millis());

    // The server itself gave up on the statement: no backend of this database is still running it.
    let checker = sql(&db.url).await;
    let running: i64 = checker
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND backend_type = 'client backend' \
             AND pid <> pg_backend_pid() AND pid <> $1 AND state <> 'idle'",
            &[&locker_pid],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(running, 0, "a backend is still running (or waiting in) the cancelled query");
    assert!(err.message().contains("statement timeout"), "the server cancelled it: {err}");

    locker.batch_execute("ROLLBACK").await.unwrap();
    let answer = client.query(&filter).await.expect("the same query answers once the lock is gone");
    assert_eq!(answer.page.events.len(), 10, "org1 holds 10 of the 50 events");

    assert_eq!(
        err.class(),
        ErrorClass::Unavailable,
        "a statement timeout (SQLSTATE 57014) must be reported as unavailable: {err:?}"
    );
}
