//! The client API gaps issue 10 closed, each against a real PostgreSQL (and a private redis-server where the cache
//! needs one): `transaction` with a callback that reads its own inserts, the client's cache handle, the pool options
//! of the read and the write pool, `autoMaintenance` in a library client, and the health report's write counters
//! and cache state.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use audit_cache::{CacheConfig, TieredCache};
use audit_client::{Ack, AuditClient, ClientConfig};
use audit_core::{
    AuditError, AuditResult, CacheTier, Direct, ErrorClass, ErrorKind, EventFilter, HealthState, QueryCache as _,
};
use audit_partition::{PartitionConfig, PartitionManager};
use audit_testkit::redis::RedisServer;
use audit_testkit::wait_for;
use audit_testkit::{TestDb, sql};
use chrono::{Datelike, Months, SecondsFormat, Utc};
use serde_json::{Value, json};
use uuid::Uuid;

mod support;

/// A valid event of `org` with a caller-given `event_id`, `i` seconds old.
fn event(org: &str, i: i64) -> Value {
    json!({"event_id": Uuid::new_v4().to_string(), "action": "patient_data_access", "status": "success",
           "timestamp": (Utc::now() - chrono::Duration::seconds(i)).to_rfc3339_opts(SecondsFormat::Micros, true),
           "organization_id": org, "principal_id": format!("u{i}"), "details": {"i": i}})
}

fn event_id(e: &Value) -> Uuid {
    Uuid::parse_str(e["event_id"].as_str().unwrap()).unwrap()
}

fn org(name: &str) -> EventFilter {
    EventFilter { organization_id: Some(name.into()), limit: Some(1_000), ..EventFilter::default() }
}

async fn rows(pg: &tokio_postgres::Client) -> i64 {
    pg.query_one("SELECT count(*) FROM audit_log", &[]).await.unwrap().get(0)
}

// ---- transaction(callback) ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_callback_reads_its_own_inserts_which_others_see_only_after_the_commit() {
    let db = TestDb::create("api_tx_commit").await;
    let client = support::client(&db.url).await;
    let pg = Arc::new(sql(&db.url).await);
    let events: Vec<Value> = (0..3).map(|i| event("clinic", i)).collect();
    let mut ids: Vec<Uuid> = events.iter().map(event_id).collect();
    ids.sort();

    let (outside_pg, outside, want) = (pg.clone(), client.clone(), ids.clone());
    let acks = client
        .transaction(move |tx| {
            Box::pin(async move {
                let mut acks = Vec::new();
                for e in events {
                    acks.push(tx.insert(e).await?);
                }
                // Inside: the transaction's own reads see its inserts (count, query, get).
                assert_eq!(tx.count(&org("clinic")).await?, 3, "count inside the transaction");
                let mut seen: Vec<Uuid> =
                    tx.query(&org("clinic")).await?.events.iter().map(|e| e.event.event_id).collect();
                seen.sort();
                assert_eq!(seen, want, "query inside the transaction");
                for id in &want {
                    assert!(tx.get(*id).await?.is_some(), "get({id}) inside the transaction");
                }
                // Outside, before the commit: nothing, neither on a plain connection nor through the client's pool.
                assert_eq!(rows(&outside_pg).await, 0, "another connection sees an uncommitted insert");
                assert_eq!(
                    outside.count(&org("clinic")).await?,
                    0,
                    "the client's read pool sees an uncommitted insert"
                );
                assert!(outside.get(want[0]).await?.is_none());
                Ok(acks)
            })
        })
        .await
        .expect("the transaction commits");

    let mut acked: Vec<Uuid> = acks
        .iter()
        .map(|a| match a {
            Ack::Stored { event_id, .. } => *event_id,
            Ack::Duplicate { event_id, .. } => panic!("{event_id} reported as a duplicate"),
        })
        .collect();
    acked.sort();
    assert_eq!(acked, ids, "the callback's value (its acks) is returned");
    let row = pg.query_one("SELECT count(*), count(DISTINCT xmin::text) FROM audit_log", &[]).await.unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (3, 1), "all three committed, in one transaction");
    assert_eq!(client.count(&org("clinic")).await.unwrap(), 3);
    for id in &ids {
        assert!(client.get(*id).await.unwrap().is_some(), "{id} visible after the commit");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_from_the_callback_rolls_back_every_insert_of_the_transaction() {
    let db = TestDb::create("api_tx_rollback").await;
    let client = support::client(&db.url).await;
    let pg = sql(&db.url).await;
    let (a, b) = (event("clinic", 1), event("clinic", 2));
    let (a_id, b_id) = (event_id(&a), event_id(&b));

    let result: AuditResult<()> = client
        .transaction(move |tx| {
            Box::pin(async move {
                tx.insert(a).await?;
                tx.insert(b).await?;
                assert_eq!(tx.count(&org("clinic")).await?, 2, "both were written inside the transaction");
                Err(AuditError::invalid("the caller changed its mind"))
            })
        })
        .await;
    let err = result.expect_err("the callback's error is returned");
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err:?}");
    assert_eq!(err.message(), "the caller changed its mind");
    assert_eq!(rows(&pg).await, 0, "nothing of the failed transaction is stored");
    assert!(client.get(a_id).await.unwrap().is_none() && client.get(b_id).await.unwrap().is_none());

    // The same events commit in a later transaction (the rollback left nothing half-done, no lock held).
    let (a, b) = (event("clinic", 1), event("clinic", 2));
    let n = client
        .transaction(move |tx| {
            Box::pin(async move {
                tx.insert(a).await?;
                tx.insert(b).await?;
                tx.count(&org("clinic")).await
            })
        })
        .await
        .unwrap();
    assert_eq!(n, 2);
    assert_eq!(rows(&pg).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_dropped_midway_stores_nothing_and_leaves_the_pool_usable() {
    let db = TestDb::create("api_tx_dropped").await;
    // One connection per pool: the next transaction can only work if the abandoned connection was not handed out
    // again mid-transaction (its COMMIT would then store the abandoned insert too).
    let mut config = ClientConfig::default();
    config.database.pool_size = 1;
    let client = support::client_with(&db.url, &db.url, config).await;
    let pg = sql(&db.url).await;
    let abandoned = event("clinic", 5);
    let abandoned_id = event_id(&abandoned);

    let inserted = Arc::new(AtomicBool::new(false));
    let flag = inserted.clone();
    let outcome = tokio::time::timeout(
        Duration::from_secs(2),
        client.transaction(move |tx| {
            Box::pin(async move {
                tx.insert(abandoned).await?;
                flag.store(true, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(600)).await;
                Ok(())
            })
        }),
    )
    .await;
    assert!(outcome.is_err(), "the transaction was still running when its future was dropped");
    assert!(inserted.load(Ordering::SeqCst), "the insert ran inside the abandoned transaction");

    // The pool works: a transaction (write pool) and a group-committed insert, in the same organisation (whose log
    // head the abandoned transaction had locked).
    let (next, single) = (event("clinic", 1), event("clinic", 2));
    let (next_id, single_id) = (event_id(&next), event_id(&single));
    let ack = tokio::time::timeout(
        Duration::from_secs(30),
        client.transaction(move |tx| Box::pin(async move { tx.insert(next).await })),
    )
    .await
    .expect("the next transaction does not hang")
    .expect("the next transaction commits");
    assert!(matches!(ack, Ack::Stored { .. }), "{ack:?}");
    assert!(matches!(client.insert(single).await.unwrap(), Ack::Stored { .. }));

    let stored: Vec<Uuid> =
        pg.query("SELECT event_id FROM audit_log", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    assert!(!stored.contains(&abandoned_id), "the abandoned insert was committed");
    assert_eq!(stored.len(), 2, "{stored:?}");
    assert!(stored.contains(&next_id) && stored.contains(&single_id));
    assert!(client.get(abandoned_id).await.unwrap().is_none());
    // The abandoned session is gone from the server (rolled back), not left idle in transaction.
    let pg = &pg;
    wait_for("the abandoned session to end", Duration::from_secs(10), || async move {
        let open: i64 = pg
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND state LIKE 'idle in transaction%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        open == 0
    })
    .await;
}

// ---- the client's cache ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_exposes_its_cache_stats_and_clear() {
    let db = TestDb::create("api_cache").await;
    support::migrate(&db.url).await;
    let pm = support::partitions(&db.url, PartitionConfig::default()).await;
    // L1 only; answers may be served for a minute (the test's queries are seconds apart on a loaded machine).
    let cache = TieredCache::new(&CacheConfig { local_staleness_ms: 60_000, ..CacheConfig::default() }).unwrap();
    let client = AuditClient::connect(ClientConfig::default(), &db.url, pm, cache, Direct).await.unwrap();
    let mut events: Vec<Value> = (0..12).map(|i| event("acme", i)).collect();
    events.extend((0..5).map(|i| event("globex", i)));
    assert_eq!(client.insert_batch(events).await.unwrap().accepted(), 17);
    let acme = org("acme");

    let first = client.query(&acme).await.unwrap();
    assert_eq!(first.tier, CacheTier::Db);
    assert_eq!(first.page.events.len(), 12);
    let second = client.query(&acme).await.unwrap();
    assert_eq!(second.tier, CacheTier::L1, "a repeated query is an L1 hit");
    assert_eq!(second.page.events, first.page.events);
    let stats = client.cache().stats();
    assert_eq!((stats.l1_hits, stats.l2_hits, stats.misses), (1, 0, 1), "{stats:?}");
    assert_eq!(stats.entries, 1, "{stats:?}");
    assert!(stats.bytes > 0, "{stats:?}");
    assert_eq!(stats.hit_ratio, 0.5, "{stats:?}");

    let cleared = client.cache().clear().await.unwrap();
    assert!(cleared > 0, "clear() drops the cached answer");
    assert_eq!(cleared, stats.entries, "clear() reports what it dropped");
    assert_eq!(client.cache().stats().entries, 0);

    let third = client.query(&acme).await.unwrap();
    assert_eq!(third.tier, CacheTier::Db, "after clear() the query goes to the database");
    assert_eq!(third.page.events, first.page.events);
    let stats = client.cache().stats();
    assert_eq!((stats.l1_hits, stats.misses, stats.entries), (1, 2, 1), "{stats:?}");
}

// ---- pool options of both pools ----

/// Connections of `application_name` to the test's database.
async fn connections(pg: &tokio_postgres::Client, app: &str) -> i64 {
    pg.query_one(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1",
        &[&app],
    )
    .await
    .unwrap()
    .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_size_min_connections_and_acquire_timeout_hold_for_the_read_and_the_write_pool() {
    let db = TestDb::create("api_pools").await;
    // The client's connections carry an application_name of their own (the URL's wins over the default).
    let app = format!("audit-pool-{}", Uuid::new_v4().simple());
    let sep = if db.url.contains('?') { '&' } else { '?' };
    let url = format!("{}{sep}application_name={app}", db.url);
    let mut config = ClientConfig::default();
    config.database.pool_size = 2;
    config.database.min_connections = 2;
    config.database.acquire_timeout = Some(1_500);
    let acquire_timeout = Duration::from_millis(1_500);
    let client = support::client_with(&db.url, &url, config).await;
    let pg = Arc::new(sql(&db.url).await);

    // Idle: `minConnections` per pool are opened and kept (2 read + 2 write).
    let (p, a) = (&pg, app.as_str());
    wait_for("2 + 2 idle connections", Duration::from_secs(15), || async move { connections(p, a).await == 4 }).await;

    // Concurrent load on both pools never opens more than `poolSize` per pool.
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (pg, app, sampling) = (pg.clone(), app.clone(), sampling.clone());
        tokio::spawn(async move {
            let mut most = 0;
            while sampling.load(Ordering::SeqCst) {
                most = most.max(connections(&pg, &app).await);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            most
        })
    };
    let mut tasks = Vec::new();
    for i in 0..60 {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            let name = format!("org{}", i % 6);
            match i % 3 {
                0 => c.insert(event(&name, i)).await.map(drop),
                1 => c.query(&org(&name)).await.map(drop),
                _ => c.count(&org(&name)).await.map(drop),
            }
        }));
    }
    for t in tasks {
        t.await.unwrap().expect("every operation of the load succeeds");
    }
    sampling.store(false, Ordering::SeqCst);
    let most = sampler.await.unwrap();
    assert!(most <= 4, "{most} connections under load with poolSize 2 per pool");
    assert_eq!(connections(&pg, &app).await, 4, "minConnections stay open after the load");

    // Write pool: two transactions hold both connections; a third waits `acquireTimeout`, then is refused.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let (started_tx, mut started_rx) = tokio::sync::mpsc::unbounded_channel();
    let holders: Vec<_> = (0..2)
        .map(|_| {
            let (c, gate, started) = (client.clone(), gate.clone(), started_tx.clone());
            tokio::spawn(async move {
                c.transaction(move |tx| {
                    Box::pin(async move {
                        let n = tx.count(&EventFilter::default()).await?;
                        started.send(()).unwrap();
                        let _permit = gate.acquire().await.unwrap();
                        Ok(n)
                    })
                })
                .await
            })
        })
        .collect();
    for _ in 0..2 {
        tokio::time::timeout(Duration::from_secs(30), started_rx.recv()).await.expect("both holders started");
    }
    let started = Instant::now();
    let err = client
        .transaction(|tx| Box::pin(async move { tx.count(&EventFilter::default()).await }))
        .await
        .expect_err("no write connection is free");
    let waited = started.elapsed();
    println!("write pool exhausted: refused after {} ms: {err}", waited.as_millis());
    assert_eq!(err.class(), ErrorClass::Unavailable, "{err:?}");
    assert!(waited >= acquire_timeout - Duration::from_millis(100), "refused after {waited:?}, before acquireTimeout");
    assert!(waited < acquire_timeout + Duration::from_secs(3), "refused after {waited:?}, acquireTimeout 1.5 s");
    gate.add_permits(2);
    for h in holders {
        h.await.unwrap().expect("the holders commit");
    }

    // Read pool: another session locks the table, so two reads block holding both read connections; a third read
    // waits `acquireTimeout`, then is refused.
    let locker = sql(&db.url).await;
    locker.batch_execute("BEGIN; LOCK TABLE audit_log IN ACCESS EXCLUSIVE MODE").await.unwrap();
    let blocked: Vec<_> = (0..2)
        .map(|_| {
            let c = client.clone();
            tokio::spawn(async move { c.count(&EventFilter::default()).await })
        })
        .collect();
    let (p, a) = (&pg, app.as_str());
    wait_for("two reads waiting for the lock", Duration::from_secs(15), || async move {
        let waiting: i64 = p
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1 \
                 AND wait_event_type = 'Lock'",
                &[&a],
            )
            .await
            .unwrap()
            .get(0);
        waiting == 2
    })
    .await;
    let started = Instant::now();
    let err = client.get(Uuid::new_v4()).await.expect_err("no read connection is free");
    let waited = started.elapsed();
    println!("read pool exhausted: refused after {} ms: {err}", waited.as_millis());
    assert_eq!(err.class(), ErrorClass::Unavailable, "{err:?}");
    assert!(waited >= acquire_timeout - Duration::from_millis(100), "refused after {waited:?}, before acquireTimeout");
    assert!(waited < acquire_timeout + Duration::from_secs(3), "refused after {waited:?}, acquireTimeout 1.5 s");
    locker.batch_execute("ROLLBACK").await.unwrap();
    for b in blocked {
        assert_eq!(b.await.unwrap().expect("the blocked reads answer once the lock is gone"), 20);
    }
    assert!(connections(&pg, &app).await <= 4);
}

// ---- autoMaintenance in a library client ----

/// Whether `audit_log` has an attached partition named `name`.
async fn partition_exists(pg: &tokio_postgres::Client, name: &str) -> bool {
    let n: i64 = pg
        .query_one(
            "SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = 'audit_log'::regclass AND c.relname = $1",
            &[&name],
        )
        .await
        .unwrap()
        .get(0);
    n == 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_library_client_with_auto_maintenance_keeps_future_partitions_ready() {
    let db = TestDb::create("api_auto_maint").await;
    support::migrate(&db.url).await;
    let config =
        PartitionConfig { auto_maintenance: true, maintenance_interval: 1_000, premake: 3, ..Default::default() };
    let pm = support::partitions(&db.url, config).await;
    // No premake here and no insert later: only the client's background maintenance can create partitions.
    let client: AuditClient<PartitionManager> =
        AuditClient::connect(ClientConfig::default(), &db.url, pm, audit_core::NoCache, Direct).await.unwrap();
    let pg = sql(&db.url).await;
    let this_month = Utc::now().date_naive().with_day(1).unwrap();
    let names: Vec<String> = (0..=3)
        .map(|k| {
            let m = this_month + Months::new(k);
            format!("audit_log_{:04}_{:02}", m.year(), m.month())
        })
        .collect();
    let (p, n) = (&pg, &names);
    wait_for(
        "the client's maintenance to create the current and 3 future partitions",
        Duration::from_secs(20),
        || async move {
            for name in n {
                if !partition_exists(p, name).await {
                    return false;
                }
            }
            true
        },
    )
    .await;

    // An operator drops a future partition by hand; the next maintenance round puts it back.
    let last = names.last().unwrap().clone();
    pg.batch_execute(&format!("ALTER TABLE audit_log DETACH PARTITION {last}; DROP TABLE {last}")).await.unwrap();
    assert!(!partition_exists(&pg, &last).await);
    let l = last.as_str();
    wait_for("the dropped future partition to be recreated", Duration::from_secs(20), || async move {
        partition_exists(p, l).await
    })
    .await;
    drop(client);
}

// ---- health ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_counts_writes_in_success_rate_and_response_time() {
    let db = TestDb::create("api_health_ops").await;
    let client = support::client(&db.url).await;
    for i in 0..5 {
        client.insert(event("clinic", i)).await.unwrap();
    }
    assert_eq!(client.insert_batch((0..10).map(|i| event("lab", i)).collect()).await.unwrap().accepted(), 10);

    // Six writes and no read.
    let m = client.health().await.metrics;
    assert_eq!(m["operations"], json!(6), "{m}");
    assert_eq!(m["operation_errors"], json!(0), "{m}");
    assert_eq!(m["events_stored"], json!(15), "{m}");
    assert_eq!(m["successRate"].as_f64(), Some(1.0), "{m}");
    assert!(m["averageResponseTime"].as_f64().is_some_and(|ms| ms > 0.0), "writes take time: {m}");

    // A refused write counts against the success rate.
    client.insert(json!({"status": "success"})).await.expect_err("no action, no timestamp");
    let m = client.health().await.metrics;
    assert_eq!(m["operations"], json!(7), "{m}");
    assert_eq!(m["operation_errors"], json!(1), "{m}");
    let rate = m["successRate"].as_f64().unwrap();
    assert!((rate - 6.0 / 7.0).abs() < 1e-9, "successRate {rate}: {m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_component_is_degraded_while_redis_is_down() {
    let db = TestDb::create("api_health_cache").await;
    let redis = RedisServer::start().await;
    support::migrate(&db.url).await;
    let pm = support::partitions(&db.url, PartitionConfig::default()).await;
    let cache = TieredCache::new(&CacheConfig {
        redis_url: Some(redis.url()),
        key_prefix: format!("audit-db-api-{}:", Uuid::new_v4().simple()),
        ..CacheConfig::default()
    })
    .unwrap();
    let client = AuditClient::connect(ClientConfig::default(), &db.url, pm, cache, Direct).await.unwrap();
    assert_eq!(client.insert_batch((0..10).map(|i| event("acme", i)).collect()).await.unwrap().accepted(), 10);
    let acme = org("acme");
    let cache_state = |c: &AuditClient<PartitionManager, TieredCache>| {
        let c = c.clone();
        async move {
            let report = c.health().await;
            (report.components["cache"].status, report.overall, report)
        }
    };

    // Redis up: answers cached, the cache healthy.
    assert_eq!(client.query(&acme).await.unwrap().page.events.len(), 10);
    let (cache, overall, report) = cache_state(&client).await;
    assert_eq!(cache, HealthState::Healthy, "{:#?}", report.components);
    assert_eq!(overall, HealthState::Healthy, "{:#?}", report.components);

    // Redis killed: queries still answer; the cache component says it is in trouble, the service is degraded.
    redis.kill();
    let c = &client;
    let acme = &acme;
    wait_for("the cache to report degraded with Redis down", Duration::from_secs(20), || async move {
        assert_eq!(c.query(acme).await.expect("a dead Redis costs no error").page.events.len(), 10);
        cache_state(c).await.0 == HealthState::Degraded
    })
    .await;
    let (_, overall, report) = cache_state(&client).await;
    assert_eq!(report.components["primary"].status, HealthState::Healthy);
    assert_eq!(overall, HealthState::Degraded, "a dead cache degrades, never fails, the service");
    println!("cache with Redis down: {}", serde_json::to_string(&report.components["cache"]).unwrap());

    // Redis back: the cache recovers.
    redis.restart().await;
    wait_for("the cache to report healthy again", Duration::from_secs(30), || async move {
        assert_eq!(c.query(acme).await.unwrap().page.events.len(), 10);
        cache_state(c).await.0 == HealthState::Healthy
    })
    .await;
}
