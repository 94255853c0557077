//! Tamper evidence as a new user meets it through the `audit-db` binary: keygen, checkpoint, verify (full, per
//! organisation, incremental), inclusion proofs, and offline evidence packs — against a real PostgreSQL, with the
//! tampering done the way an attacker with superuser rights would (triggers bypassed with
//! `session_replication_role = replica`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Output;

use audit_integrity::{Hash, NoteVerifier, event_from_json, leaf_hash, verify_inclusion};
use audit_testkit::{TestDb, sql};
use chrono::Duration;
use serde_json::{Value, json};
use uuid::Uuid;

#[path = "support/cli.rs"]
mod cli;
use cli::{json_lines, ok, stderr, stdout, ts};

/// Organisations used by the tests; no name is a substring of another, so "grep for another organisation" works.
const ORGS: [&str; 4] = ["north-clinic", "south-bank", "east-lab", "west-pharma"];

fn audit_db(db: &TestDb, key: &Path, args: &[&str]) -> Output {
    cli::run(&db.url, &[("AUDIT_DB_SIGNING_KEY_FILE", key.to_str().unwrap())], args)
}

/// `audit-db` with no database and no key in the environment (what an auditor has).
fn audit_db_offline(args: &[&str]) -> Output {
    cli::run_offline(args)
}

/// `n` events per organisation plus `shared` events without one. Every event carries a marker naming its
/// organisation in `details`, so an evidence pack can be searched for other organisations' data.
fn events(n: usize, shared: usize, round: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for i in 0..n {
        for org in ORGS {
            out.push(json!({
                "event_id": Uuid::new_v4().to_string(), "action": "patient_data_access", "status": "success",
                "timestamp": ts(Duration::seconds((i * 7) as i64 + 60)), "organization_id": org,
                "principal_id": format!("{org}-user{}", i % 3), "data_classification": "PHI",
                "target_resource_type": "patient_record", "target_resource_id": format!("{org}-P{i}"),
                "details": {"marker": format!("secret-of-{org}"), "reason": "treatment", "round": round, "i": i},
            }));
        }
    }
    for i in 0..shared {
        out.push(json!({
            "event_id": Uuid::new_v4().to_string(), "action": "system_backup", "status": "success",
            "timestamp": ts(Duration::seconds(i as i64 + 30)), "data_classification": "INTERNAL",
            "details": {"marker": "secret-of-shared-log", "round": round},
        }));
    }
    out
}

fn ingest(db: &TestDb, key: &Path, dir: &Path, name: &str, lines: &[Value]) {
    let file = cli::write_lines(dir, name, lines);
    let o = audit_db(db, key, &["ingest", file.to_str().unwrap()]);
    ok(&o, "ingest");
    assert_eq!(cli::counts(&cli::summary(&o)), json!({"accepted": lines.len(), "rejected": 0, "duplicates": 0}));
}

/// Writes a key with `audit-db keygen` and checks the files a user gets.
fn keygen(dir: &Path) -> PathBuf {
    let out = dir.join("keys");
    let o = audit_db_offline(&["keygen", "--out", out.to_str().unwrap()]);
    ok(&o, "keygen");
    let key = out.join("signing.key");
    let public = out.join("signing.pub");
    assert!(key.is_file() && public.is_file(), "keygen writes signing.key and signing.pub: {}", stdout(&o));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the private key is readable by its owner only");
    }
    let private_text = std::fs::read_to_string(&key).unwrap();
    assert!(private_text.starts_with("PRIVATE+KEY+audit-db+"), "{private_text}");
    let public_text = std::fs::read_to_string(&public).unwrap();
    let verifier = NoteVerifier::parse(public_text.trim()).expect("signing.pub parses as a note key");
    let printed: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(printed["key_id"], json!(verifier.key_id()));
    assert!(!public_text.contains("PRIVATE"), "the public key file holds no private material");

    // A second keygen into the same directory refuses to replace the key.
    let again = audit_db_offline(&["keygen", "--out", out.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(1), "keygen must not silently replace a signing key");
    assert_eq!(std::fs::read_to_string(&key).unwrap(), private_text);
    key
}

/// Rows of one organisation as `audit-db query` prints them, by seq.
fn rows_of(db: &TestDb, key: &Path, org: &str) -> BTreeMap<i64, Value> {
    let o = audit_db(db, key, &["query", "--org", org, "--limit", "10000"]);
    ok(&o, "query");
    json_lines(&o).into_iter().map(|v| (v["seq"].as_i64().unwrap(), v)).collect()
}

fn verified_leaves(o: &Output) -> u64 {
    let err = stderr(o);
    let line = err.lines().find(|l| l.starts_with("verified ")).unwrap_or_else(|| panic!("summary line: {err}"));
    // "verified N log(s), M leaves in …"
    let after = line.split(", ").nth(1).unwrap_or_else(|| panic!("{line}"));
    after.split(' ').next().unwrap().parse().unwrap_or_else(|_| panic!("{line}"))
}

fn hash_hex(s: &Value) -> Hash {
    hex::decode(s.as_str().unwrap()).unwrap().try_into().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_by_a_superuser_is_found_and_named() {
    let db = TestDb::create("cli_integrity_tamper").await;
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path());
    let public = key.with_file_name("signing.pub");
    let verifier = NoteVerifier::parse(std::fs::read_to_string(&public).unwrap().trim()).unwrap();
    ok(&audit_db(&db, &key, &["migrate"]), "migrate");

    // 40 events per organisation and 6 without one.
    let first = events(40, 6, "first");
    ingest(&db, &key, dir.path(), "first.ndjson", &first);
    let o = audit_db(&db, &key, &["checkpoint"]);
    ok(&o, "checkpoint");
    let sealed = json_lines(&o);
    assert_eq!(sealed.len(), ORGS.len() + 1, "one checkpoint per organisation plus the shared log: {sealed:?}");
    for s in &sealed {
        let want = if s["log_id"] == "" { 6 } else { 40 };
        assert_eq!(s["tree_size"], json!(want), "{s}");
        assert_eq!(s["new_checkpoint"], json!(true), "{s}");
    }

    let o = audit_db(&db, &key, &["verify"]);
    ok(&o, "verify of an untouched database");
    assert!(stdout(&o).trim().is_empty(), "no findings: {}", stdout(&o));
    assert_eq!(verified_leaves(&o), 4 * 40 + 6);

    // More ingest, another checkpoint, and an incremental verify reads only what is new.
    let second = events(10, 2, "second");
    ingest(&db, &key, dir.path(), "second.ndjson", &second);
    ok(&audit_db(&db, &key, &["checkpoint"]), "second checkpoint");
    let o = audit_db(&db, &key, &["verify", "--incremental"]);
    ok(&o, "incremental verify");
    assert!(stdout(&o).trim().is_empty(), "no findings: {}", stdout(&o));
    assert_eq!(verified_leaves(&o), 4 * 10 + 2, "incremental verify reads only the rows after the last clean run");

    // An inclusion proof that verifies against the signed checkpoint, for an event of the first round.
    let east = rows_of(&db, &key, "east-lab");
    assert_eq!(east.len(), 50);
    let target = &east[&13];
    let event_id = target["event_id"].as_str().unwrap();
    let o = audit_db(&db, &key, &["proof", "--event-id", event_id]);
    ok(&o, "proof");
    let proof: Value = serde_json::from_str(&stdout(&o)).expect("proof is JSON");
    assert_eq!(proof["event_id"], json!(event_id));
    assert_eq!(proof["organization_id"], json!("east-lab"));
    assert_eq!(proof["seq"], json!(13));
    assert_eq!(proof["tree_size"], json!(50));
    let leaf = hash_hex(&proof["leaf_hash"]);
    assert_eq!(leaf, leaf_hash(&event_from_json(target).unwrap()), "the proof's leaf is the event's canonical hash");
    let root = hash_hex(&proof["root_hash"]);
    let path: Vec<Hash> = proof["proof"].as_array().unwrap().iter().map(hash_hex).collect();
    assert!(verify_inclusion(&leaf, 13, 50, &path, &root), "the inclusion proof verifies");
    assert!(!verify_inclusion(&leaf, 14, 50, &path, &root), "and binds the position");
    let checkpoint = verifier.verify(proof["checkpoint"].as_str().unwrap()).expect("the checkpoint note is signed");
    assert_eq!((checkpoint.tree_size, checkpoint.root_hash), (50, root), "the proof is against the signed head");
    assert_eq!(checkpoint.origin, "audit-db/org/east-lab");

    // --- The attack: a superuser bypasses the append-only triggers. ---
    let north = rows_of(&db, &key, "north-clinic");
    let south = rows_of(&db, &key, "south-bank");
    let west = rows_of(&db, &key, "west-pharma");
    let su = sql(&db.url).await;
    su.batch_execute("SET session_replication_role = replica").await.unwrap();
    // 1. north-clinic seq 7: one key of `details` changed (leaf_hash left alone).
    let altered_id: Uuid = su
        .query_one(
            "UPDATE audit_log SET details = jsonb_set(details, '{reason}', '\"curiosity\"') \
             WHERE organization_id = 'north-clinic' AND seq = 7 RETURNING event_id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(altered_id.to_string(), north[&7]["event_id"].as_str().unwrap());
    // 2. south-bank seq 12: deleted.
    let deleted =
        su.execute("DELETE FROM audit_log WHERE organization_id = 'south-bank' AND seq = 12", &[]).await.unwrap();
    assert_eq!(deleted, 1);
    // 3. west-pharma: a forged row at the plausible position 20, copied from the real one with a new id and
    //    content, and a leaf hash that matches its own content (only the signed root can expose it).
    let mut forged = west[&20].clone();
    let forged_id = Uuid::new_v4();
    let new_row_id: i64 = su.query_one("SELECT nextval('audit_log_id_seq')", &[]).await.unwrap().get(0);
    forged["event_id"] = json!(forged_id.to_string());
    forged["id"] = json!(new_row_id);
    forged["principal_id"] = json!("west-pharma-user1");
    forged["details"] = json!({"marker": "secret-of-west-pharma", "reason": "alibi", "round": "first", "i": 20});
    let forged_leaf = leaf_hash(&event_from_json(&forged).unwrap());
    forged["leaf_hash"] = json!(format!("\\x{}", hex::encode(forged_leaf)));
    let inserted = su
        .execute(
            "INSERT INTO audit_log SELECT * FROM jsonb_populate_record(NULL::audit_log, $1::text::jsonb)",
            &[&forged.to_string()],
        )
        .await
        .unwrap();
    assert_eq!(inserted, 1);
    drop(su);

    let o = audit_db(&db, &key, &["verify"]);
    assert_eq!(o.status.code(), Some(1), "verify must fail after tampering: {}\n{}", stdout(&o), stderr(&o));
    let findings = json_lines(&o);
    let report = format!("{findings:#?}");
    let find = |org: &str, seq: i64, kind: &str| {
        findings.iter().find(|f| f["organization_id"] == json!(org) && f["seq"] == json!(seq) && f["kind"] == kind)
    };
    let altered = find("north-clinic", 7, "altered").unwrap_or_else(|| panic!("altered north-clinic/7: {report}"));
    assert_eq!(altered["event_id"], json!(altered_id.to_string()), "{report}");
    let missing = find("south-bank", 12, "missing").unwrap_or_else(|| panic!("missing south-bank/12: {report}"));
    if !missing["event_id"].is_null() {
        assert_eq!(missing["event_id"], south[&12]["event_id"], "{report}");
    }
    let injected = find("west-pharma", 20, "injected").unwrap_or_else(|| panic!("injected west-pharma/20: {report}"));
    assert_eq!(injected["event_id"], json!(forged_id.to_string()), "{report}");
    // The evidence is localised: an altered row with its signed leaf intact, or an extra row next to an
    // authenticated one, is the only finding of its log; untouched logs have none.
    let of = |org: Option<&str>| findings.iter().filter(|f| f["organization_id"] == json!(org)).count();
    assert_eq!(of(Some("north-clinic")), 1, "{report}");
    assert_eq!(of(Some("west-pharma")), 1, "{report}");
    assert_eq!(of(Some("east-lab")), 0, "{report}");
    assert_eq!(of(None), 0, "{report}");
    assert!(
        findings.iter().all(|f| f["organization_id"] != json!("west-pharma") || f["event_id"] != west[&20]["event_id"]),
        "the genuine row at the forged position is not blamed: {report}"
    );
    for f in &findings {
        assert!(["altered", "missing", "injected"].contains(&f["kind"].as_str().unwrap()), "{report}");
    }

    // Per-organisation verify: the untouched organisation is clean, a tampered one is not.
    let o = audit_db(&db, &key, &["verify", "--org", "east-lab"]);
    ok(&o, "verify --org east-lab");
    assert!(stdout(&o).trim().is_empty(), "{}", stdout(&o));
    let o = audit_db(&db, &key, &["verify", "--org", "south-bank"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(json_lines(&o).iter().all(|f| f["organization_id"] == "south-bank"));
    // Verifying with only the public key (an auditor without the private key) finds the same.
    let o = audit_db(&db, Path::new("/nonexistent/signing.key"), &["verify", "--public-key", public.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(json_lines(&o).len(), findings.len());

    db.drop().await.unwrap();
}

fn read_pack(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap())
        })
        .collect()
}

fn write_pack(dir: &Path, files: &BTreeMap<String, Vec<u8>>) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, bytes) in files {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evidence_pack_verifies_offline_holds_one_organisation_and_detects_any_changed_byte() {
    let db = TestDb::create("cli_integrity_pack").await;
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path());
    let public = key.with_file_name("signing.pub");
    ok(&audit_db(&db, &key, &["migrate"]), "migrate");
    let all = events(12, 4, "pack");
    ingest(&db, &key, dir.path(), "pack.ndjson", &all);
    ok(&audit_db(&db, &key, &["checkpoint"]), "checkpoint");

    let pack = dir.path().join("pack-south-bank");
    let o = audit_db(&db, &key, &["export-pack", "--org", "south-bank", "--out", pack.to_str().unwrap()]);
    ok(&o, "export-pack");
    let summary: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(summary["events"], json!(12), "{summary}");

    // Offline verification: no database, no private key.
    let o = audit_db_offline(&["verify-pack", pack.to_str().unwrap()]);
    ok(&o, "verify-pack");
    let report: Value = serde_json::from_str(&stdout(&o)).expect("verify-pack prints a JSON report");
    assert_eq!(report["events"], json!(12));
    assert_eq!(report["organization_id"], json!("south-bank"));
    ok(
        &audit_db_offline(&["verify-pack", pack.to_str().unwrap(), "--public-key", public.to_str().unwrap()]),
        "verify-pack with the trusted key",
    );
    // Pinned to another key, the pack is refused.
    let other_keys = dir.path().join("other");
    ok(&audit_db_offline(&["keygen", "--out", other_keys.to_str().unwrap()]), "second keygen");
    let o = audit_db_offline(&[
        "verify-pack",
        pack.to_str().unwrap(),
        "--public-key",
        other_keys.join("signing.pub").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "a pack signed by another key is refused: {}", stdout(&o));

    // The pack holds south-bank's events and nothing of anyone else.
    let files = read_pack(&pack);
    let names: BTreeSet<&str> = files.keys().map(String::as_str).collect();
    for required in ["manifest.json", "manifest.sig", "signing.pub", "checkpoint.note", "events.ndjson", "proofs.json"]
    {
        assert!(names.contains(required), "{required} in {names:?}");
    }
    let pack_events: Vec<Value> = std::str::from_utf8(&files["events.ndjson"])
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ours: BTreeSet<String> = all
        .iter()
        .filter(|e| e["organization_id"] == "south-bank")
        .map(|e| e["event_id"].as_str().unwrap().to_string())
        .collect();
    let in_pack: BTreeSet<String> = pack_events.iter().map(|e| e["event_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(in_pack, ours, "the pack holds exactly south-bank's events");
    let mut foreign: Vec<String> = vec!["secret-of-shared-log".into()];
    for e in &all {
        if e["organization_id"] != "south-bank" {
            foreign.push(e["event_id"].as_str().unwrap().to_string());
            foreign.push(e["target_resource_id"].as_str().unwrap_or("secret-of-shared-log").to_string());
        }
    }
    for org in ORGS.iter().filter(|o| **o != "south-bank") {
        foreign.push(org.to_string());
        foreign.push(format!("secret-of-{org}"));
    }
    for (name, bytes) in &files {
        let text = String::from_utf8_lossy(bytes);
        for needle in &foreign {
            assert!(!text.contains(needle.as_str()), "{name} leaks another organisation's data: `{needle}`");
        }
    }

    // Any one changed byte of any file makes the pack fail to verify.
    let mut tried = 0;
    for (name, bytes) in &files {
        let len = bytes.len();
        let mut positions = BTreeSet::from([0, len / 3, len / 2, len - 2, len - 1]);
        positions.retain(|p| *p < len);
        for pos in positions {
            let mut changed = files.clone();
            let b = changed.get_mut(name).unwrap();
            b[pos] ^= 0x01;
            let copy = dir.path().join(format!("tampered-{tried}"));
            write_pack(&copy, &changed);
            let o = audit_db_offline(&["verify-pack", copy.to_str().unwrap()]);
            assert_eq!(
                o.status.code(),
                Some(1),
                "changing byte {pos} of {name} must make verify-pack fail\nstdout: {}\nstderr: {}",
                stdout(&o),
                stderr(&o)
            );
            assert!(stdout(&o).contains("problem"), "{}", stdout(&o));
            tried += 1;
        }
    }
    assert!(tried >= 6 * 3, "every file was tampered with at several positions ({tried} tries)");
    // An extra file slipped into the pack is refused too.
    let mut extra = files.clone();
    extra.insert("notes.txt".into(), b"nothing to see\n".to_vec());
    let copy = dir.path().join("tampered-extra");
    write_pack(&copy, &extra);
    assert_eq!(audit_db_offline(&["verify-pack", copy.to_str().unwrap()]).status.code(), Some(1));
    // The untouched pack still verifies (the copies did not disturb it).
    ok(&audit_db_offline(&["verify-pack", pack.to_str().unwrap()]), "verify-pack again");

    db.drop().await.unwrap();
}
