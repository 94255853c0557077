//! The personal-data policy on every library path, against a real PostgreSQL: `insert`, `transaction`,
//! `begin().commit()` and `insert_batch` seal before hashing; `query`, `count`, `get` and transaction reads open
//! (or show `[erased]`) and translate filters to equality tokens; two processes creating the same subject's key at
//! once end with one key; an erasure by one process reaches another within its key-cache TTL.

use audit_core::{ERASED, EventFilter};
use audit_server::app::App;
use audit_server::config::AuditConfig;
use audit_testkit::{TestDb, sql};
use serde_json::{Value, json};

async fn app(db: &TestDb, key: &std::path::Path, ttl_secs: u64) -> App {
    let mut c = AuditConfig::default();
    c.database.url = Some(db.url.clone());
    c.privacy.personal_fields = audit_core::PersonalFields::parse("principal_id,details.patient_name").unwrap();
    c.privacy.master_key_file = Some(key.to_path_buf());
    c.privacy.key_cache_ttl_secs = ttl_secs;
    App::open(c).await.unwrap()
}

fn event(principal: &str, i: usize) -> Value {
    json!({
        "action": "patient_data_access", "status": "success", "timestamp": chrono::Utc::now().to_rfc3339(),
        "principal_id": principal, "organization_id": "org-a", "target_resource_type": "patient_record",
        "target_resource_id": format!("p-{i}"), "details": {"patient_name": format!("Name {principal} {i}"), "i": i},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_and_read_path_seals_and_opens() {
    let db = TestDb::create("privacy_paths").await;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("master.key");
    std::fs::write(&key, audit_privacy::FileMasterKey::generate_text().unwrap()).unwrap();
    let a = app(&db, &key, 0).await;
    a.migrate().await.unwrap();
    let b = app(&db, &key, 60).await;
    let (ca, cb) = (a.client().await.unwrap(), b.client().await.unwrap());

    // Two processes create the same new subject's key at once: one key, both seal alike.
    let (ra, rb) = tokio::join!(ca.insert_batch(vec![event("dr-x", 0)]), cb.insert_batch(vec![event("dr-x", 1)]));
    assert_eq!((ra.unwrap().accepted(), rb.unwrap().accepted()), (1, 1));
    // Every write path.
    ca.insert(event("dr-x", 2)).await.unwrap();
    ca.transaction(|tx| {
        Box::pin(async move {
            tx.insert(event("dr-x", 3)).await?;
            // Reads in the transaction see its own insert, by the plaintext id, opened.
            let page = tx.query(&EventFilter { principal_id: Some("dr-x".into()), ..Default::default() }).await?;
            assert_eq!(page.events.len(), 4);
            assert!(page.events.iter().all(|e| e.event.principal_id.as_deref() == Some("dr-x")));
            Ok(())
        })
    })
    .await
    .unwrap();
    let mut t = ca.begin();
    t.insert(event("dr-x", 4)).unwrap();
    t.insert(event("dr-y", 5)).unwrap();
    let acks = t.commit().await.unwrap();

    let su = sql(&db.url).await;
    let keys: i64 = su.query_one("SELECT count(*) FROM audit_subject_keys", &[]).await.unwrap().get(0);
    // dr-x, dr-y, and p-0…p-5 (the subjects of the patient names: each event's target).
    assert_eq!(keys, 8, "one key per subject, however many processes asked");
    let raw: Vec<(String, String)> = su
        .query("SELECT principal_id, details->>'patient_name' FROM audit_log", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(raw.len(), 6);
    assert!(raw.iter().all(|(p, n)| p.starts_with("pd2.") && n.starts_with("pd2.")), "{raw:?}");

    let by_x = EventFilter { principal_id: Some("dr-x".into()), ..Default::default() };
    assert_eq!(ca.count(&by_x).await.unwrap(), 5);
    assert_eq!(cb.query(&by_x).await.unwrap().page.events.len(), 5);
    let got = ca.get(acks[1].event_id()).await.unwrap().unwrap();
    assert_eq!(got.event.principal_id.as_deref(), Some("dr-y"));
    assert_eq!(got.event.details["patient_name"], "Name dr-y 5");
    assert_eq!(got.event.details["i"], 5, "other details keys are stored as given");

    // B erases dr-x; A (TTL 0) sees it at once; B forgot the key itself.
    let privacy_b = b.privacy().unwrap().unwrap();
    let cb2 = b.client_with_privacy(Some(privacy_b.clone())).await.unwrap();
    let report =
        audit_server::privacy::erase_subject(&cb2, &privacy_b, &b.partitions().await.unwrap(), "dr-x", false, "t")
            .await
            .unwrap();
    assert_eq!(report.status, audit_server::privacy::ErasureStatus::Erased);
    assert_eq!(report.total_events, 5);
    assert_eq!(ca.count(&by_x).await.unwrap(), 0, "nothing answers to the erased id");
    let all = ca.query(&EventFilter::default()).await.unwrap().page.events.clone();
    let erased = all.iter().filter(|e| e.event.principal_id.as_deref() == Some(ERASED)).count();
    assert_eq!(erased, 5);
    assert!(all.iter().filter(|e| e.event.principal_id.as_deref() == Some(ERASED)).all(|e| {
        // details.patient_name's subject is the target (p-i), whose key is not erased: it still reads.
        e.event.details["patient_name"].as_str().unwrap().starts_with("Name dr-x")
    }));
    let cached = cb2.query(&by_x).await.unwrap();
    assert!(cached.page.events.is_empty());
}

/// A subject whose key predates the `pd2` form (value_format 1) keeps sealing in `pd1`, byte for byte as before, so
/// its equality token still finds its events; a new subject's key seals in `pd2`; reads open both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_made_before_pd2_keeps_its_form_and_both_forms_read_back() {
    use audit_core::KeyManager as _;
    use audit_privacy::{FileMasterKey, SubjectKey, ValueFormat};

    let db = TestDb::create("privacy_forms").await;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("master.key");
    let text = FileMasterKey::generate_text().unwrap();
    std::fs::write(&key, &text).unwrap();
    let a = app(&db, &key, 0).await;
    a.migrate().await.unwrap();
    let client = a.client().await.unwrap();

    // The key row an earlier release would have stored for "legacy-dr": wrapped under the master key, bound to its
    // id and subject index, value_format 1.
    let master = FileMasterKey::parse(&text).unwrap();
    let (key_id, secret) = ([5u8; 16], [6u8; 32]);
    let index = master.subject_index("legacy-dr").unwrap();
    let wrapped = master.wrap(&secret, &[&key_id[..], &index[..]].concat()).await.unwrap();
    let su = sql(&db.url).await;
    su.execute(
        "INSERT INTO audit_subject_keys (key_id, subject_index, wrapped_key, master_key_id, value_format) \
         VALUES ($1, $2, $3, $4, 1)",
        &[&key_id.to_vec(), &index.to_vec(), &wrapped, &master.master_key_id()],
    )
    .await
    .unwrap();

    let report = client.insert_batch(vec![event("legacy-dr", 0), event("legacy-dr", 1), event("new-dr", 2)]).await;
    assert_eq!(report.unwrap().accepted(), 3);
    let raw: Vec<String> = first_column(&su, "SELECT principal_id FROM audit_log ORDER BY id").await;
    let v1 = SubjectKey::new(key_id, &secret, ValueFormat::V1).unwrap().seal("principal_id", b"legacy-dr");
    assert_eq!(raw[..2], [v1.clone(), v1], "the old key seals as pd1, exactly as before");
    assert!(raw[2].starts_with("pd2.") && raw[2].len() + 20 < raw[0].len(), "{raw:?}");
    let formats: Vec<i16> = first_column(&su, "SELECT value_format FROM audit_subject_keys").await;
    assert_eq!(formats.iter().filter(|f| **f == 1).count(), 1, "no other key is made in the old form: {formats:?}");

    for (who, n) in [("legacy-dr", 2), ("new-dr", 1)] {
        let page = client.query(&EventFilter { principal_id: Some(who.into()), ..Default::default() }).await.unwrap();
        assert_eq!(page.page.events.len(), n, "{who}");
        assert!(page.page.events.iter().all(|e| e.event.principal_id.as_deref() == Some(who)));
        assert!(page.page.events.iter().all(|e| e.event.details["patient_name"].as_str().unwrap().starts_with("Name")));
    }
}

/// The first column of every row `sql` returns.
async fn first_column<T: for<'a> tokio_postgres::types::FromSql<'a>>(c: &tokio_postgres::Client, sql: &str) -> Vec<T> {
    c.query(sql, &[]).await.unwrap().iter().map(|r| r.get(0)).collect()
}
