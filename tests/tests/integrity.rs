//! Tamper evidence end to end: checkpoints over real rows, then a superuser bypasses the triggers
//! (`session_replication_role = replica`) and alters, deletes, injects and reorders rows — `verify` names each.

use std::collections::BTreeMap;
use std::sync::Arc;

use audit_client::{AuditClient, ClientConfig};
use audit_core::{Direct, NoCache};
use audit_integrity::{FindingKind, NoteSigner, verify_inclusion, verify_pack};
use audit_partition::PartitionConfig;
use audit_testkit::{TestDb, sql};
use chrono::{Duration, SecondsFormat, Utc};
use serde_json::{Value, json};
use uuid::Uuid;

mod support;
use support::Client;

async fn setup(prefix: &str) -> (TestDb, Client) {
    let db = TestDb::create(prefix).await;
    let client = support::client(&db.url).await;
    (db, client)
}

fn events(orgs: &[Option<&str>], n: usize) -> Vec<Value> {
    let now = Utc::now();
    (0..n)
        .map(|i| {
            let mut e = json!({
                "event_id": Uuid::new_v4().to_string(),
                "action": "patient_data_access",
                "status": "success",
                "timestamp": (now - Duration::seconds(i as i64 * 37)).to_rfc3339_opts(SecondsFormat::Micros, true),
                "principal_id": format!("dr_{}", i % 9),
                "details": {"fields": ["name", "dob"], "amount": 1250.00, "nested": {"b": 2, "a": [1, 2.50, "x\ny"]}},
            });
            if let Some(o) = orgs[i % orgs.len()] {
                e["organization_id"] = json!(o);
            }
            e
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_is_clean_after_checkpoint_and_names_every_tampering() {
    let (db, client) = setup("integ_tamper").await;
    let orgs = [Some("hospital_a"), Some("bank_b"), None];
    let r = client.insert_batch(events(&orgs, 900)).await.unwrap();
    assert_eq!(r.accepted(), 900);
    let signer = NoteSigner::generate("audit-db-test").unwrap();
    let verifier = signer.verifier();
    let store = support::integrity(&db.url);
    let sealed = store.checkpoint(&signer, None, Utc::now()).await.unwrap();
    assert_eq!(sealed.len(), 3);
    assert!(sealed.iter().all(|s| s.new_checkpoint && s.tree_size == 300));

    // Clean, including the leaf hashes computed before the insert matching what the database gives back.
    let report = store.verify(&verifier, None, false, &|_| {}).await.unwrap();
    assert!(report.findings.is_empty(), "{:?}", report.findings);
    assert_eq!(report.leaves, 900);

    // More events, a second checkpoint, and a consistency proof between the two.
    client.insert_batch(events(&orgs, 30)).await.unwrap();
    store.checkpoint(&signer, None, Utc::now()).await.unwrap();
    let c = store.consistency_proof(&verifier, "hospital_a", None, None).await.unwrap();
    assert_eq!((c.old_size, c.new_size), (300, 310));
    let hex32 = |s: &str| -> [u8; 32] { hex::decode(s).unwrap().try_into().unwrap() };
    let proof: Vec<[u8; 32]> = c.proof.iter().map(|h| hex32(h)).collect();
    assert!(audit_integrity::verify_consistency(300, 310, &hex32(&c.old_root), &hex32(&c.new_root), &proof));

    // An inclusion proof verifies against the signed root, with O(log n) hashes.
    let pg = sql(&db.url).await;
    let some: Uuid = pg
        .query_one("SELECT event_id FROM audit_log WHERE organization_id = 'bank_b' AND seq = 123", &[])
        .await
        .unwrap()
        .get(0);
    let p = store.inclusion_proof(&verifier, some).await.unwrap();
    let proof: Vec<[u8; 32]> = p.proof.iter().map(|h| hex32(h)).collect();
    assert!(proof.len() <= 10);
    assert!(verify_inclusion(&hex32(&p.leaf_hash), p.seq as u64, p.tree_size as u64, &proof, &hex32(&p.root_hash)));
    assert!(verifier.verify(&p.checkpoint).is_ok());

    // The superuser bypasses the triggers.
    pg.batch_execute("SET session_replication_role = replica").await.unwrap();
    let altered: Uuid = pg
        .query_one(
            "UPDATE audit_log SET details = jsonb_set(details, '{fields}', '[\"name\",\"ssn\"]') \
             WHERE organization_id = 'hospital_a' AND seq = 10 RETURNING event_id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let deleted: Uuid = pg
        .query_one("DELETE FROM audit_log WHERE organization_id = 'hospital_a' AND seq = 20 RETURNING event_id", &[])
        .await
        .unwrap()
        .get(0);
    // A forged row with a plausible sequence number (a duplicate of seq 30) and a made-up leaf hash.
    let forged = Uuid::new_v4();
    pg.execute(
        "INSERT INTO audit_log (event_id, \"timestamp\", ingested_at, action, status, organization_id, details, seq, leaf_hash) \
         SELECT $1, \"timestamp\", ingested_at, 'patient_data_access', 'success', organization_id, details, seq, leaf_hash \
         FROM audit_log WHERE organization_id = 'hospital_a' AND seq = 30",
        &[&forged],
    )
    .await
    .unwrap();
    // Two rows swap positions in the bank's log.
    let a: Uuid = pg
        .query_one("SELECT event_id FROM audit_log WHERE organization_id = 'bank_b' AND seq = 40", &[])
        .await
        .unwrap()
        .get(0);
    let b: Uuid = pg
        .query_one("SELECT event_id FROM audit_log WHERE organization_id = 'bank_b' AND seq = 41", &[])
        .await
        .unwrap()
        .get(0);
    pg.batch_execute(
        "UPDATE audit_log SET seq = CASE seq WHEN 40 THEN 41 ELSE 40 END WHERE organization_id = 'bank_b' AND seq IN (40, 41)",
    )
    .await
    .unwrap();

    let report = store.verify(&verifier, None, false, &|_| {}).await.unwrap();
    let has = |kind: FindingKind, id: Uuid| report.findings.iter().any(|f| f.kind == kind && f.event_id == Some(id));
    assert!(has(FindingKind::Altered, altered), "{:#?}", report.findings);
    assert!(
        report.findings.iter().any(|f| f.kind == FindingKind::Missing && f.seq == Some(20) && f.log_id == "hospital_a"),
        "{:#?}",
        report.findings
    );
    let _ = deleted;
    assert!(has(FindingKind::Injected, forged), "{:#?}", report.findings);
    assert!(has(FindingKind::Reordered, a) && has(FindingKind::Reordered, b), "{:#?}", report.findings);
    assert!(
        report.findings.iter().all(|f| !f.log_id.is_empty()),
        "the shared log is untouched: {:#?}",
        report.findings
    );

    // Sealing new rows extends the signed frontier, so it never blesses the old tampering…
    client.insert_batch(events(&[Some("hospital_a")], 1)).await.unwrap();
    // …but it refuses to sign new rows that were changed before they were sealed.
    pg.batch_execute(
        "UPDATE audit_log SET action = 'forged' WHERE organization_id = 'hospital_a' \
         AND seq = (SELECT size - 1 FROM audit_log_heads WHERE log_id = 'hospital_a')",
    )
    .await
    .unwrap();
    let refused = store.checkpoint(&signer, Some("hospital_a"), Utc::now()).await.unwrap_err();
    assert!(refused.message().contains("refusing to sign"), "{}", refused.message());

    // A forged checkpoint row (signature by another key with the same id text) is a bad signature.
    let other = NoteSigner::generate("audit-db-test").unwrap();
    let note = other.sign(&audit_integrity::Checkpoint {
        origin: audit_integrity::origin_for("bank_b"),
        tree_size: 5,
        root_hash: [7u8; 32],
        time: Utc::now(),
    });
    pg.execute(
        "INSERT INTO audit_checkpoints (log_id, tree_size, root_hash, created_at, key_id, signature, note, frontier) \
         VALUES ('bank_b', 5, $1, now(), $2, '\\x00', $3, '\\x')",
        &[&[7u8; 32].as_slice(), &verifier.key_id(), &note],
    )
    .await
    .unwrap();
    let report = store.verify(&verifier, Some("bank_b"), false, &|_| {}).await.unwrap();
    assert!(report.findings.iter().any(|f| f.kind == FindingKind::BadSignature), "{:#?}", report.findings);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_verify_reads_only_what_is_new() {
    let (db, client) = setup("integ_incr").await;
    client.insert_batch(events(&[Some("o1")], 500)).await.unwrap();
    let signer = NoteSigner::generate("k").unwrap();
    let store = support::integrity(&db.url);
    store.checkpoint(&signer, None, Utc::now()).await.unwrap();
    let full = store.verify(&signer.verifier(), None, false, &|_| {}).await.unwrap();
    assert!(full.findings.is_empty());
    assert_eq!(full.leaves, 500);
    client.insert_batch(events(&[Some("o1")], 20)).await.unwrap();
    store.checkpoint(&signer, None, Utc::now()).await.unwrap();
    let inc = store.verify(&signer.verifier(), None, true, &|_| {}).await.unwrap();
    assert!(inc.findings.is_empty(), "{:?}", inc.findings);
    assert_eq!(inc.leaves, 20, "only the new leaves are read");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evidence_pack_verifies_offline_holds_one_org_and_fails_after_any_edit() {
    let (db, client) = setup("integ_pack").await;
    client.insert_batch(events(&[Some("hospital_a"), Some("bank_b")], 200)).await.unwrap();
    let signer = NoteSigner::generate("audit-db").unwrap();
    let store = support::integrity(&db.url);
    store.checkpoint(&signer, None, Utc::now()).await.unwrap();
    let files: BTreeMap<String, Vec<u8>> =
        store.export_pack(&signer, "hospital_a", None, None, Utc::now()).await.unwrap();
    let report = verify_pack(&files, Some(&signer.verifier())).expect("the pack verifies");
    assert_eq!(report.events, 100);
    let all = String::from_utf8(files.values().flatten().copied().collect()).unwrap_or_default();
    assert!(!all.contains("bank_b"), "no other organisation's data in the pack");
    // Every single-byte change of every file breaks it (sampled positions per file to keep the test fast).
    for (name, bytes) in &files {
        let step = (bytes.len() / 40).max(1);
        for pos in (0..bytes.len()).step_by(step) {
            let mut changed = files.clone();
            let b = changed.get_mut(name).unwrap();
            b[pos] ^= 0x01;
            assert!(verify_pack(&changed, None).is_err(), "{name} byte {pos} changed and the pack still verified");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaves_hashed_before_insert_equal_leaves_of_what_the_database_gives_back() {
    let (db, client) = setup("integ_roundtrip").await;
    let tricky = [
        json!({"amount": 1250.00, "rate": 1.5e3, "tiny": 1e-7, "neg0": -0.0, "big": 123456789012345678901234567890u128}),
        json!({"ü": "ünïcödé ✓ 🚑", "a\u{0001}b": "ctl\u{0007}\u{001f}", "line": "\u{2028}\u{2029}", "q": "\"\\/"}),
        json!({"nested": {"z": [1, {"y": [true, false, null]}, []], "a": {}}, "": ""}),
        json!({"long": "x".repeat(5000)}),
        json!({}),
    ];
    let now = Utc::now();
    let mut evs = Vec::new();
    for (i, d) in tricky.iter().enumerate() {
        evs.push(json!({"action": "a", "status": "attempt", "details": d, "organization_id": "o",
            "timestamp": (now - Duration::nanoseconds(123_456_789 * i as i64)).to_rfc3339_opts(SecondsFormat::Nanos, true),
            "processing_latency": i, "ttl": "7d", "event_version": "2.1", "outcome_description": "ok ✓"}));
    }
    // Numbers as their text, exactly as a producer might send them.
    evs.push(
        serde_json::from_str(&format!(
            r#"{{"action":"a","status":"success","timestamp":"{}","details":{{"n":1.50E+2,"m":-0,"k":0.000}}}}"#,
            now.to_rfc3339_opts(SecondsFormat::Micros, true)
        ))
        .unwrap(),
    );
    let r = client.insert_batch(evs).await.unwrap();
    assert_eq!(r.accepted(), 6, "{:?}", r.items);
    let store = support::integrity(&db.url);
    let signer = NoteSigner::generate("k").unwrap();
    store.checkpoint(&signer, None, Utc::now()).await.expect("every stored leaf matches its content");
    let report = store.verify(&signer.verifier(), None, false, &|_| {}).await.unwrap();
    assert!(report.findings.is_empty(), "{:#?}", report.findings);
    assert_eq!(report.leaves, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_log_head_or_all_its_rows_does_not_hide_the_log_from_verify() {
    let (db, client) = setup("integ_hidden").await;
    client.insert_batch(events(&[Some("acme"), Some("globex")], 40)).await.unwrap();
    let signer = NoteSigner::generate("k").unwrap();
    let store = support::integrity(&db.url);
    store.checkpoint(&signer, None, Utc::now()).await.unwrap();
    let pg = sql(&db.url).await;
    pg.batch_execute(
        "SET session_replication_role = replica; \
         UPDATE audit_log SET action = 'tampered' WHERE organization_id = 'globex' AND seq = 3; \
         DELETE FROM audit_log_heads WHERE log_id = 'globex'; \
         DELETE FROM audit_log WHERE organization_id = 'acme'; \
         DELETE FROM audit_log_heads WHERE log_id = 'acme';",
    )
    .await
    .unwrap();
    let report = store.verify(&signer.verifier(), None, false, &|_| {}).await.unwrap();
    assert!(report.findings.iter().any(|f| f.log_id == "globex"), "{:#?}", report.findings);
    assert!(
        report.findings.iter().any(|f| f.log_id == "acme" && f.kind == FindingKind::Missing),
        "{:#?}",
        report.findings
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proofs_and_verify_survive_retention_dropping_old_partitions() {
    let db = TestDb::create("integ_retention").await;
    support::migrate(&db.url).await;
    let archive = tempfile::tempdir().unwrap();
    let config =
        PartitionConfig { retention_days: 1000, archive_dir: Some(archive.path().to_path_buf()), ..Default::default() };
    let pm = support::partitions(&db.url, config.clone()).await;
    let client = AuditClient::connect(ClientConfig::default(), &db.url, pm, NoCache, Direct).await.unwrap();
    // Old (2019) and recent events interleaved in one organisation's log, so dropped positions are scattered.
    let mut evs = events(&[Some("clinic")], 120);
    for (i, e) in evs.iter_mut().enumerate() {
        if i % 3 == 0 {
            e["timestamp"] = json!(format!("2019-0{}-1{}T08:00:00.000001Z", 1 + i % 9, i % 10));
        }
    }
    assert_eq!(client.insert_batch(evs).await.unwrap().accepted(), 120);
    let signer = NoteSigner::generate("k").unwrap();
    let store = support::integrity(&db.url);
    store.checkpoint(&signer, None, Utc::now()).await.unwrap();

    let retention = support::partitions(&db.url, config).await;
    let report = retention.retention(false).await.unwrap();
    let dropped: usize = report.items.iter().filter(|i| i.action == audit_partition::RetentionAction::Dropped).count();
    assert!(dropped >= 1, "{report:#?}");
    let pg = sql(&db.url).await;
    let left: i64 = pg.query_one("SELECT count(*) FROM audit_log", &[]).await.unwrap().get(0);
    assert_eq!(left, 80, "the 40 events of 2019 are gone");

    // The log still verifies, and its remaining events still have proofs, a pack, and a consistency proof.
    let v = signer.verifier();
    let clean = store.verify(&v, None, false, &|_| {}).await.unwrap();
    assert!(clean.findings.is_empty(), "{:#?}", clean.findings);
    let remaining: Uuid =
        pg.query_one("SELECT event_id FROM audit_log ORDER BY seq DESC LIMIT 1", &[]).await.unwrap().get(0);
    assert!(store.inclusion_proof(&v, remaining).await.is_ok());
    let pack = store.export_pack(&signer, "clinic", None, None, Utc::now()).await.unwrap();
    assert_eq!(verify_pack(&pack, Some(&v)).unwrap().events, 80);
    client.insert_batch(events(&[Some("clinic")], 5)).await.unwrap();
    store.checkpoint(&signer, None, Utc::now()).await.unwrap();
    let c = store.consistency_proof(&v, "clinic", None, None).await.unwrap();
    assert_eq!((c.old_size, c.new_size), (120, 125));
    assert!(store.verify(&v, None, false, &|_| {}).await.unwrap().findings.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_can_seal_logs_on_an_interval() {
    let (db, client) = setup("integ_interval").await;
    let signer = NoteSigner::generate("k").unwrap();
    let task = audit_integrity::store::spawn_checkpointer(
        Arc::new(support::integrity(&db.url)),
        signer.clone(),
        std::time::Duration::from_millis(200),
    );
    client.insert_batch(events(&[Some("o1")], 10)).await.unwrap();
    let store = support::integrity(&db.url);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let cps = store.checkpoints("o1").await.unwrap();
        if cps.iter().any(|c| c.tree_size == 10) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no checkpoint of size 10 within 30 s: {cps:?}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    task.abort();
    assert!(store.verify(&signer.verifier(), None, false, &|_| {}).await.unwrap().findings.is_empty());
}

/// Every leaf hash of a log in order, straight from SQL (the test's own reading, independent of the store).
async fn all_leaves(pg: &tokio_postgres::Client, org: &str, size: i64) -> Vec<[u8; 32]> {
    pg.query("SELECT leaf_hash FROM audit_log WHERE organization_id = $1 AND seq < $2 ORDER BY seq", &[&org, &size])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, &[u8]>(0).try_into().unwrap())
        .collect()
}

async fn event_at(pg: &tokio_postgres::Client, org: &str, seq: i64) -> Uuid {
    pg.query_one("SELECT event_id FROM audit_log WHERE organization_id = $1 AND seq = $2", &[&org, &seq])
        .await
        .unwrap()
        .get(0)
}

fn hashes(hex_list: &[String]) -> Vec<[u8; 32]> {
    hex_list.iter().map(|h| hex32(h)).collect()
}

/// Issue 17: a proof reads stored nodes and at most two tiles of leaves, never the whole log, and gives exactly the
/// proof the in-memory tree gives — for sizes that are and are not powers of two, size 1, the last leaf, and across
/// several checkpoints; a database whose node rows are missing (sealed before migration 000110) fills them once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proofs_from_stored_nodes_equal_the_whole_tree_and_read_a_bounded_number_of_rows() {
    use audit_integrity::MerkleTree;
    let (db, client) = setup("integ_nodes").await;
    let pg = sql(&db.url).await;
    let store = support::integrity(&db.url);
    let signer = NoteSigner::generate("k").unwrap();
    let v = signer.verifier();

    // One event in its own log: a tree of size 1 (empty audit path).
    client.insert_batch(events(&[Some("tiny")], 1)).await.unwrap();
    let mut sizes = Vec::new();
    let mut total = 0usize;
    for grow in [1usize, 255, 1, 300, 467, 1024, 1000] {
        client.insert_batch(events(&[Some("big")], grow)).await.unwrap();
        total += grow;
        store.checkpoint(&signer, None, Utc::now()).await.unwrap();
        sizes.push(total as i64);
        let size = total as i64;
        let leaves = all_leaves(&pg, "big", size).await;
        let tree = MerkleTree::new(&leaves);
        let n = size as u64;
        let mut picks: Vec<u64> = vec![0, 1, 127, 255, 256, 257, n / 2, n.saturating_sub(2), n - 1];
        picks.retain(|m| *m < n);
        picks.dedup();
        for m in picks {
            let p = store.inclusion_proof(&v, event_at(&pg, "big", m as i64).await).await.unwrap();
            assert_eq!((p.seq, p.tree_size), (m as i64, size));
            assert_eq!(hashes(&p.proof), tree.inclusion_proof(m), "size {size}, leaf {m}");
            assert_eq!(p.root_hash, hex::encode(tree.root()));
        }
        for &old in &sizes {
            let c = store.consistency_proof(&v, "big", Some(old), Some(size)).await.unwrap();
            assert_eq!(hashes(&c.proof), tree.consistency_proof(old as u64), "{old} → {size}");
        }
    }
    let size = total as i64;
    let tiny = store.inclusion_proof(&v, event_at(&pg, "tiny", 0).await).await.unwrap();
    assert!(tiny.proof.is_empty() && tiny.tree_size == 1);
    assert!(verify_inclusion(&hex32(&tiny.leaf_hash), 0, 1, &[], &hex32(&tiny.root_hash)));

    // Stored nodes: every complete aligned subtree of 256 leaves or more, and nothing below.
    let nodes: i64 = pg
        .query_one("SELECT count(*) FROM audit_log_nodes WHERE log_id = 'big' AND level >= 8", &[])
        .await
        .unwrap()
        .get(0);
    let want: u64 = (8..16).map(|h| (size as u64) >> h).sum();
    assert_eq!(nodes as u64, want);

    // What a proof reads: the event, the checkpoints, O(log n) nodes and at most two tiles of leaves — far fewer
    // rows than the log holds (the whole-tree method read all of them).
    let bounded = 1 + sizes.len() as u64 + 2 * 12 + 2 * 256;
    assert!(bounded < size as u64 / 2, "the log is large enough for the bound to mean something");
    for m in [0, 700, size - 1] {
        let id = event_at(&pg, "big", m).await;
        let before = store.rows_read();
        store.inclusion_proof(&v, id).await.unwrap();
        let read = store.rows_read() - before;
        assert!(read <= bounded, "an inclusion proof of leaf {m} read {read} rows (bound {bounded}, log {size})");
    }
    let before = store.rows_read();
    store.consistency_proof(&v, "big", Some(sizes[3]), None).await.unwrap();
    let read = store.rows_read() - before;
    assert!(read <= bounded, "a consistency proof read {read} rows (bound {bounded}, log {size})");

    // A database upgraded from before the node table: the first proof fills the nodes once, the next is bounded.
    pg.batch_execute("DELETE FROM audit_log_nodes").await.unwrap();
    let id = event_at(&pg, "big", 1234).await;
    let first = store.inclusion_proof(&v, id).await.unwrap();
    let again_before = store.rows_read();
    let again = store.inclusion_proof(&v, id).await.unwrap();
    assert!(store.rows_read() - again_before <= bounded);
    assert_eq!(first.proof, again.proof);
    let refilled: i64 =
        pg.query_one("SELECT count(*) FROM audit_log_nodes WHERE log_id = 'big'", &[]).await.unwrap().get(0);
    assert_eq!(refilled as u64, want);
}

fn hex32(s: &str) -> [u8; 32] {
    hex::decode(s).unwrap().try_into().unwrap()
}

/// Tampering still makes a proof fail with an integrity error: a changed leaf hash in the proof's tile, a changed
/// stored node on its path, the target event's own content, and leaves tampered before the nodes were filled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proof_over_tampered_leaves_or_nodes_is_an_integrity_error() {
    use audit_core::ErrorKind;
    let (db, client) = setup("integ_nodes_tamper").await;
    let pg = sql(&db.url).await;
    let store = support::integrity(&db.url);
    let signer = NoteSigner::generate("k").unwrap();
    let v = signer.verifier();
    client.insert_batch(events(&[Some("o")], 1100)).await.unwrap();
    store.checkpoint(&signer, None, Utc::now()).await.unwrap();
    let integrity = |r: Result<_, audit_core::AuditError>| match r {
        Err(e) => assert_eq!(e.kind(), ErrorKind::Integrity, "{e}"),
        Ok(_) => panic!("a proof over tampered data was returned"),
    };
    pg.batch_execute("SET session_replication_role = replica").await.unwrap();

    // A leaf hash in the tile of leaf 10 (positions 0..256).
    let target = event_at(&pg, "o", 10).await;
    store.inclusion_proof(&v, target).await.unwrap();
    pg.batch_execute(
        "UPDATE audit_log SET leaf_hash = decode(repeat('00', 32), 'hex') WHERE organization_id = 'o' AND seq = 20",
    )
    .await
    .unwrap();
    integrity(store.inclusion_proof(&v, target).await);

    // A stored node on the path of leaf 600: the right sibling of tile 2 is node (8, 3).
    let target = event_at(&pg, "o", 600).await;
    store.inclusion_proof(&v, target).await.unwrap();
    pg.batch_execute("UPDATE audit_log_nodes SET hash = sha256(hash) WHERE log_id = 'o' AND level = 8 AND idx = 3")
        .await
        .unwrap();
    integrity(store.inclusion_proof(&v, target).await);

    // The target's own content (its leaf hash left as it was).
    let target = event_at(&pg, "o", 1050).await;
    store.inclusion_proof(&v, target).await.unwrap();
    pg.execute("UPDATE audit_log SET action = 'forged' WHERE event_id = $1", &[&target]).await.unwrap();
    integrity(store.inclusion_proof(&v, target).await);

    // Nodes missing and a leaf far from the target changed: the fill checks the signed root and stores nothing.
    pg.batch_execute("DELETE FROM audit_log_nodes").await.unwrap();
    let target = event_at(&pg, "o", 900).await;
    integrity(store.inclusion_proof(&v, target).await);
    let stored: i64 = pg.query_one("SELECT count(*) FROM audit_log_nodes", &[]).await.unwrap().get(0);
    assert_eq!(stored, 0, "no node is stored from leaves that do not hash to the signed root");
}
