//! GDPR erasure by crypto-shredding, through the `audit-db` binary against a real PostgreSQL: two data subjects'
//! events ingested (recent and 2019, the latter archived by retention) and checkpointed; a legal hold refuses the
//! erasure; after it, the erased subject's values read as `[erased]` and its plaintext is nowhere — not in the
//! raw table, not in the archive, not in a new evidence pack, not in any authorised read — while the other
//! subject is untouched, `verify` and `verify-pack` are clean and an inclusion proof taken before still verifies.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use audit_integrity::{Hash, NoteVerifier, leaf_hash, verify_inclusion};
use audit_testkit::{TestDb, sql};
use chrono::{Duration, SecondsFormat, TimeZone, Utc};
use serde_json::{Value, json};
use uuid::Uuid;

#[path = "support/cli.rs"]
mod cli;
use cli::{json_lines, ok, stderr, stdout, ts};

const ORG: &str = "north-clinic";
/// The erased subject: a patient id and a name only ever written in `target_resource_id` / `details.patient_name`.
const ALICE_ID: &str = "patient-alicia-7781";
const ALICE_NAME: &str = "Alicia Quennell-Vasquez";
/// The subject that stays.
const BOB_ID: &str = "patient-boris-5512";
const BOB_NAME: &str = "Boris Okonkwo-Lindqvist";

struct Env {
    vars: Vec<(String, String)>,
}

impl Env {
    fn run(&self, db: &TestDb, args: &[&str]) -> Output {
        let vars: Vec<(&str, &str)> = self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        cli::run(&db.url, &vars, args)
    }

    fn json(&self, db: &TestDb, args: &[&str]) -> Value {
        let o = self.run(db, args);
        ok(&o, &format!("{args:?}"));
        serde_json::from_str(&stdout(&o)).unwrap_or_else(|e| panic!("{args:?} prints JSON ({e}): {}", stdout(&o)))
    }

    fn query(&self, db: &TestDb, args: &[&str]) -> Vec<Value> {
        let mut full = vec!["query", "--limit", "10000"];
        full.extend_from_slice(args);
        let o = self.run(db, &full);
        ok(&o, "query");
        json_lines(&o)
    }
}

fn event(ts: String, principal: &str, patient: &str, name: &str, i: usize) -> Value {
    json!({
        "event_id": Uuid::new_v4().to_string(), "action": "patient_data_access", "status": "success",
        "timestamp": ts, "organization_id": ORG, "principal_id": principal, "data_classification": "PHI",
        "target_resource_type": "patient_record", "target_resource_id": patient,
        "details": {"patient_name": name, "access_reason": "treatment", "i": i},
    })
}

fn hash_hex(s: &Value) -> Hash {
    hex::decode(s.as_str().unwrap()).unwrap().try_into().unwrap()
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Every byte of the archive directory's files, data files decompressed.
fn archive_text(dir: &Path) -> String {
    let mut text = String::new();
    for path in files_under(dir) {
        if path.to_string_lossy().ends_with(".gz") {
            let out = Command::new("gzip").arg("-dc").arg(&path).output().expect("gzip runs");
            assert!(out.status.success());
            text.push_str(&String::from_utf8(out.stdout).unwrap());
        } else {
            text.push_str(&String::from_utf8_lossy(&std::fs::read(&path).unwrap()));
        }
    }
    text
}

fn dir_text(dir: &Path) -> String {
    files_under(dir).iter().map(|p| String::from_utf8_lossy(&std::fs::read(p).unwrap()).into_owned()).collect()
}

/// The whole of `audit_log` and `audit_subject_keys` as text, the way a database dump would show them.
async fn raw_dump(su: &tokio_postgres::Client) -> String {
    let mut text = String::new();
    for table in ["audit_log", "audit_subject_keys"] {
        for r in su.query(&format!("SELECT t::text FROM {table} t"), &[]).await.unwrap() {
            text.push_str(&r.get::<_, String>(0));
            text.push('\n');
        }
    }
    text
}

fn contains_any(text: &str, needles: &[&str]) -> Vec<String> {
    let lower = text.to_lowercase();
    needles.iter().filter(|n| lower.contains(&n.to_lowercase())).map(|n| n.to_string()).collect()
}

fn keys(dir: &Path) -> (PathBuf, PathBuf) {
    let out = dir.join("keys");
    ok(&cli::run_offline(&["keygen", "--out", out.to_str().unwrap()]), "keygen");
    let o = cli::run_offline(&["keygen", "--master", "--out", out.to_str().unwrap()]);
    ok(&o, "keygen --master");
    let master = out.join("master.key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&master).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let again = cli::run_offline(&["keygen", "--master", "--out", out.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(1), "a master key is never silently replaced");
    (out.join("signing.key"), master)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasing_a_subject_shreds_its_values_everywhere_and_keeps_every_proof() {
    let db = TestDb::create("cli_privacy_erase").await;
    let dir = tempfile::tempdir().unwrap();
    let (signing, master) = keys(dir.path());
    let archive = dir.path().join("archive");
    let env = Env {
        vars: vec![
            ("AUDIT_DB_SIGNING_KEY_FILE".into(), signing.to_str().unwrap().into()),
            ("AUDIT_DB_MASTER_KEY_FILE".into(), master.to_str().unwrap().into()),
            ("AUDIT_DB_PERSONAL_FIELDS".into(), "principal_id,target_resource_id,details.patient_name".into()),
            ("AUDIT_DB_ARCHIVE_DIR".into(), archive.to_str().unwrap().into()),
            // 2019 partitions are expired, nothing recent is.
            ("AUDIT_DB_PARTITION_RETENTION_DAYS".into(), "1000".into()),
        ],
    };
    ok(&env.run(&db, &["migrate"]), "migrate");

    // Two subjects, recent events and 2019 events (the latter go to the archive). One principal for both.
    let mut lines = Vec::new();
    for i in 0..12 {
        lines.push(event(ts(Duration::minutes(i as i64 + 5)), "dr-carol-1", ALICE_ID, ALICE_NAME, i));
        lines.push(event(ts(Duration::minutes(i as i64 + 5)), "dr-carol-1", BOB_ID, BOB_NAME, i));
    }
    for i in 0..3 {
        let old =
            Utc.with_ymd_and_hms(2019, 3, 3 + i as u32, 10, 0, 0).unwrap().to_rfc3339_opts(SecondsFormat::Micros, true);
        lines.push(event(old.clone(), "dr-carol-1", ALICE_ID, ALICE_NAME, 100 + i));
        lines.push(event(old, "dr-carol-1", BOB_ID, BOB_NAME, 100 + i));
    }
    let file = cli::write_lines(dir.path(), "events.ndjson", &lines);
    let o = env.run(&db, &["ingest", file.to_str().unwrap()]);
    ok(&o, "ingest");
    assert_eq!(cli::counts(&cli::summary(&o)), json!({"accepted": 30, "rejected": 0, "duplicates": 0}));
    ok(&env.run(&db, &["checkpoint"]), "checkpoint");

    // Stored encrypted from the start: the raw table holds no plaintext of either subject, while an authorised
    // read gives every value back, and a query by the subject's id finds its events (the equality token).
    let su = sql(&db.url).await;
    let dump = raw_dump(&su).await;
    assert_eq!(contains_any(&dump, &[ALICE_ID, ALICE_NAME, BOB_ID, BOB_NAME, "dr-carol-1"]), Vec::<String>::new());
    let alice = env.query(&db, &["--resource-id", ALICE_ID]);
    assert_eq!(alice.len(), 15, "every event of the subject, found by its id");
    assert!(alice.iter().all(|e| e["target_resource_id"] == ALICE_ID && e["details"]["patient_name"] == ALICE_NAME));
    assert!(alice.iter().all(|e| e["principal_id"] == "dr-carol-1"));
    assert_eq!(env.query(&db, &["--principal", "dr-carol-1"]).len(), 30);
    let by_name =
        env.query(&db, &["--resource-id", BOB_ID, "--details", &json!({"patient_name": BOB_NAME}).to_string()]);
    assert_eq!(by_name.len(), 15, "details containment on a personal key, with the subject named");

    // Retention archives the 2019 partition (its rows leave the table; the archive has them, sealed).
    let run = env.json(&db, &["partitions", "drop-expired"]);
    assert!(run.to_string().contains("audit_log_2019_03"), "the 2019 partition is dropped: {run}");
    let archived = archive_text(&archive);
    assert!(archived.contains("patient_data_access"), "the archive holds the 2019 events");
    assert_eq!(contains_any(&archived, &[ALICE_ID, ALICE_NAME, BOB_ID, BOB_NAME]), Vec::<String>::new());

    // An inclusion proof for one of the subject's recent events, before the erasure.
    let target = alice.iter().find(|e| e["timestamp"].as_str().unwrap() > "2020").unwrap();
    let event_id = target["event_id"].as_str().unwrap().to_string();
    let proof_before = env.json(&db, &["proof", "--event-id", &event_id]);

    // A legal hold on the organisation refuses the erasure, and changes nothing.
    let hold = env.json(&db, &["partitions", "hold", "place", "--org", ORG, "--reason", "case 2026-17"]);
    let o = env.run(&db, &["erase", "--subject", ALICE_ID]);
    assert_eq!(o.status.code(), Some(3), "a held subject is not erased: {}\n{}", stdout(&o), stderr(&o));
    let refused: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(refused["status"], "refused_legal_hold");
    assert_eq!(refused["legal_holds"][0]["id"], hold["hold_id"]);
    assert_eq!(env.query(&db, &["--resource-id", ALICE_ID]).len(), 12, "nothing erased under the hold");
    let released = env.json(&db, &["partitions", "hold", "release", &hold["hold_id"].to_string()]);
    assert_eq!(released["released"], true);

    // Dry run: says what would be erased, erases nothing.
    let dry = env.json(&db, &["erase", "--subject", ALICE_ID, "--dry-run"]);
    assert_eq!(dry["status"], "dry_run");
    assert_eq!(dry["total_events"], 12, "the 12 live events (the 3 archived ones are gone from the table)");
    assert_eq!(dry["plaintext_events"], 0);
    let key_id = dry["subject_key_id"].as_str().unwrap().to_string();
    assert_eq!(env.query(&db, &["--resource-id", ALICE_ID]).len(), 12);

    // The erasure.
    let done = env.json(&db, &["erase", "--subject", ALICE_ID, "--by", "dpo@north-clinic"]);
    assert_eq!(done["status"], "erased", "{done}");
    assert_eq!(done["subject_key_id"], json!(key_id));
    assert_eq!(done["erasure_event_ids"].as_array().unwrap().len(), 1);
    let key_rows: i64 = su
        .query_one("SELECT count(*) FROM audit_subject_keys WHERE key_id = decode($1, 'hex')", &[&key_id])
        .await
        .unwrap()
        .get(0);
    assert_eq!(key_rows, 0, "the key is gone: nothing in the database can open the subject's values");

    // Queries by the erased subject's id find nothing; every read shows `[erased]` where its values were.
    assert_eq!(env.query(&db, &["--resource-id", ALICE_ID]), Vec::<Value>::new());
    let all = env.query(&db, &["--org", ORG]);
    assert_eq!(all.len(), 25, "24 recent events and the erasure's own");
    let erased: Vec<&Value> = all.iter().filter(|e| e["target_resource_id"] == "[erased]").collect();
    assert_eq!(erased.len(), 12);
    assert!(erased.iter().all(|e| e["details"]["patient_name"] == "[erased]"));
    assert!(erased.iter().all(|e| e["principal_id"] == "dr-carol-1"), "another subject's value in the same row stays");
    let bob = env.query(&db, &["--resource-id", BOB_ID]);
    assert_eq!(bob.len(), 12, "the other subject is untouched");
    assert!(bob.iter().all(|e| e["details"]["patient_name"] == BOB_NAME));
    let record: Vec<&Value> = all.iter().filter(|e| e["action"] == "personal_data_erasure").collect();
    assert_eq!(record.len(), 1);
    assert_eq!(record[0]["details"]["subject_key_id"], json!(key_id));
    assert_eq!(record[0]["details"]["events_affected"], 12);
    assert_eq!(record[0]["principal_id"], "dpo@north-clinic");
    let everything = all.iter().map(Value::to_string).collect::<String>();
    assert_eq!(contains_any(&everything, &[ALICE_ID, ALICE_NAME]), Vec::<String>::new());

    // Nowhere in the raw table, the archive or a new evidence pack.
    assert_eq!(contains_any(&raw_dump(&su).await, &[ALICE_ID, ALICE_NAME]), Vec::<String>::new());
    assert_eq!(contains_any(&archive_text(&archive), &[ALICE_ID, ALICE_NAME]), Vec::<String>::new());
    ok(&env.run(&db, &["checkpoint"]), "checkpoint after the erasure");
    let pack = dir.path().join("pack");
    ok(&env.run(&db, &["export-pack", "--org", ORG, "--out", pack.to_str().unwrap()]), "export-pack");
    assert_eq!(contains_any(&dir_text(&pack), &[ALICE_ID, ALICE_NAME]), Vec::<String>::new());
    let o = cli::run_offline(&["verify-pack", pack.to_str().unwrap()]);
    ok(&o, "verify-pack");

    // Every proof still holds: verify is clean, and the proof taken before the erasure verifies against its
    // signed checkpoint with the leaf hash of the row as stored now.
    let o = env.run(&db, &["verify"]);
    ok(&o, "verify");
    assert!(stdout(&o).trim().is_empty(), "no findings after the erasure: {}", stdout(&o));
    let row = su
        .query_one(
            &format!("SELECT {} FROM audit_log WHERE event_id = $1", audit_pg::EVENT_COLUMNS),
            &[&Uuid::parse_str(&event_id).unwrap()],
        )
        .await
        .unwrap();
    let stored = audit_pg::stored_event_from_row(&row).unwrap();
    let leaf = leaf_hash(&stored);
    assert_eq!(leaf, hash_hex(&proof_before["leaf_hash"]), "the stored row hashes as it did before the erasure");
    let path: Vec<Hash> = proof_before["proof"].as_array().unwrap().iter().map(hash_hex).collect();
    let (seq, size) = (proof_before["seq"].as_u64().unwrap(), proof_before["tree_size"].as_u64().unwrap());
    assert!(verify_inclusion(&leaf, seq, size, &path, &hash_hex(&proof_before["root_hash"])));
    let verifier =
        NoteVerifier::parse(std::fs::read_to_string(signing.with_file_name("signing.pub")).unwrap().trim()).unwrap();
    let cp = verifier.verify(proof_before["checkpoint"].as_str().unwrap()).expect("the checkpoint is signed");
    assert_eq!(cp.root_hash, hash_hex(&proof_before["root_hash"]));
    let proof_after = env.json(&db, &["proof", "--event-id", &event_id]);
    assert_eq!(proof_after["leaf_hash"], proof_before["leaf_hash"]);
    assert_eq!(proof_after["seq"], proof_before["seq"]);

    // Erasing again: the subject has no key any more.
    let again = env.json(&db, &["erase", "--subject", ALICE_ID]);
    assert_eq!(again["status"], "no_key");
}

fn master_key(dir: &Path, name: &str) -> (PathBuf, String) {
    let out = dir.join(name);
    let o = cli::run_offline(&["keygen", "--master", "--out", out.to_str().unwrap()]);
    ok(&o, "keygen --master");
    let printed: Value = serde_json::from_str(&stdout(&o)).unwrap();
    (out.join("master.key"), printed["master_key_id"].as_str().unwrap().to_string())
}

/// Every stored row of `audit_log` as text, by event id.
async fn rows_by_id(su: &tokio_postgres::Client) -> std::collections::BTreeMap<Uuid, String> {
    su.query("SELECT event_id, t::text FROM audit_log t", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_the_master_key_rewraps_every_subject_key_and_changes_no_stored_value() {
    use audit_core::KeyManager as _;
    let db = TestDb::create("cli_privacy_rotate").await;
    let dir = tempfile::tempdir().unwrap();
    let (signing, old) = keys(dir.path());
    let old_key = audit_privacy::FileMasterKey::parse(&std::fs::read_to_string(&old).unwrap()).unwrap();
    let old_id = old_key.master_key_id();
    let (new, new_id) = master_key(dir.path(), "new");
    let (wrong, wrong_id) = master_key(dir.path(), "wrong");
    let env_with = |master: &Path| Env {
        vars: vec![
            ("AUDIT_DB_SIGNING_KEY_FILE".into(), signing.to_str().unwrap().into()),
            ("AUDIT_DB_MASTER_KEY_FILE".into(), master.to_str().unwrap().into()),
            ("AUDIT_DB_PERSONAL_FIELDS".into(), "principal_id,target_resource_id,details.patient_name".into()),
        ],
    };
    let (env_old, env_new) = (env_with(&old), env_with(&new));
    ok(&env_old.run(&db, &["migrate"]), "migrate");
    let mut lines = Vec::new();
    for i in 0..5 {
        lines.push(event(ts(Duration::minutes(i as i64 + 5)), "dr-carol-1", ALICE_ID, ALICE_NAME, i));
        lines.push(event(ts(Duration::minutes(i as i64 + 5)), "dr-carol-1", BOB_ID, BOB_NAME, i));
    }
    let file = cli::write_lines(dir.path(), "events.ndjson", &lines);
    ok(&env_old.run(&db, &["ingest", file.to_str().unwrap()]), "ingest");
    ok(&env_old.run(&db, &["checkpoint"]), "checkpoint");
    let alice = env_old.query(&db, &["--resource-id", ALICE_ID]);
    assert_eq!(alice.len(), 5);
    let event_id = alice[0]["event_id"].as_str().unwrap().to_string();
    let proof_before = env_old.json(&db, &["proof", "--event-id", &event_id]);
    let su = sql(&db.url).await;
    let rows_before = rows_by_id(&su).await;
    let keys_sql = "SELECT key_id, subject_index, wrapped_key, master_key_id FROM audit_subject_keys ORDER BY key_id";
    let keys_before = su.query(keys_sql, &[]).await.unwrap();
    assert_eq!(keys_before.len(), 3, "alice, bob, dr-carol-1");

    // A wrong old key is refused by name (the key the subject keys are under, and the one given); nothing changes.
    let o =
        env_old.run(&db, &["keys", "rotate-master", "--old", wrong.to_str().unwrap(), "--new", new.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains(&old_id) && err.contains(&wrong_id) && err.contains("old master key"), "{err}");
    assert!(err.contains(wrong.to_str().unwrap()), "the file is named: {err}");
    // The new key as the old one is refused too.
    let o =
        env_old.run(&db, &["keys", "rotate-master", "--old", old.to_str().unwrap(), "--new", old.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("new master key"), "{}", stderr(&o));
    let unchanged = su.query(keys_sql, &[]).await.unwrap();
    assert!(unchanged.iter().zip(&keys_before).all(|(a, b)| a.get::<_, Vec<u8>>(2) == b.get::<_, Vec<u8>>(2)));

    // The rotation.
    let done = env_old.json(
        &db,
        &[
            "keys",
            "rotate-master",
            "--old",
            old.to_str().unwrap(),
            "--new",
            new.to_str().unwrap(),
            "--by",
            "ops@north-clinic",
        ],
    );
    assert_eq!(done["rotation"]["old_master_key_id"], json!(old_id));
    assert_eq!(done["rotation"]["new_master_key_id"], json!(new_id));
    assert_eq!(done["rotation"]["subject_keys_rewrapped"], 3);

    // Same subject keys (ids, subjects), re-wrapped: the new key unwraps each, the old file none.
    let new_key = audit_privacy::FileMasterKey::parse(&std::fs::read_to_string(&new).unwrap()).unwrap();
    let keys_after = su.query(keys_sql, &[]).await.unwrap();
    assert_eq!(keys_after.len(), 4, "plus the key of the rotation event's principal");
    for before in &keys_before {
        let id: Vec<u8> = before.get(0);
        let after = keys_after.iter().find(|r| r.get::<_, Vec<u8>>(0) == id).expect("the same key id");
        assert_eq!(after.get::<_, Vec<u8>>(1), before.get::<_, Vec<u8>>(1));
        assert_eq!(after.get::<_, String>(3), new_id);
        let context = [id.as_slice(), after.get::<_, Vec<u8>>(1).as_slice()].concat();
        let (w_before, w_after): (Vec<u8>, Vec<u8>) = (before.get(2), after.get(2));
        assert_ne!(w_after, w_before);
        let secret = old_key.unwrap(&w_before, &context).await.unwrap();
        assert_eq!(new_key.unwrap(&w_after, &context).await.unwrap(), secret, "the subject key itself is unchanged");
        assert!(old_key.unwrap(&w_after, &context).await.is_err(), "the old master key opens nothing any more");
    }
    // Every stored event row is byte for byte what it was.
    let rows_after = rows_by_id(&su).await;
    for (id, text) in &rows_before {
        assert_eq!(rows_after.get(id), Some(text), "row {id} unchanged");
    }

    // Reads: with the new key, every value; with the old key, an error naming both master keys.
    let alice = env_new.query(&db, &["--resource-id", ALICE_ID]);
    assert_eq!(alice.len(), 5);
    assert!(alice.iter().all(|e| e["details"]["patient_name"] == ALICE_NAME && e["principal_id"] == "dr-carol-1"));
    let o = env_old.run(&db, &["query", "--resource-id", BOB_ID]);
    assert_eq!(o.status.code(), Some(1), "the old key reads nothing: {}", stdout(&o));
    assert!(stderr(&o).contains(&new_id) && stderr(&o).contains(&old_id), "{}", stderr(&o));

    // The rotation is an audit event with key ids only.
    let record = env_new.query(&db, &["--action", "master_key_rotation"]);
    assert_eq!(record.len(), 1);
    assert_eq!(record[0]["event_id"], done["event_id"]);
    assert_eq!(record[0]["principal_id"], "ops@north-clinic");
    assert_eq!(record[0]["details"]["old_master_key_id"], json!(old_id));
    assert_eq!(record[0]["details"]["new_master_key_id"], json!(new_id));
    let secrets: Vec<String> = [&old, &new]
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap().lines().nth(1).unwrap().trim().to_string())
        .collect();
    let text = record[0].to_string() + &raw_dump(&su).await;
    assert!(secrets.iter().all(|s| !text.contains(s.as_str())), "no key material is recorded");

    // Integrity: verify is clean, the earlier proof's leaf is the row's, a new checkpoint covers the event.
    let o = env_new.run(&db, &["verify"]);
    ok(&o, "verify");
    assert!(stdout(&o).trim().is_empty(), "no findings after the rotation: {}", stdout(&o));
    let proof_after = env_new.json(&db, &["proof", "--event-id", &event_id]);
    assert_eq!(proof_after["leaf_hash"], proof_before["leaf_hash"]);

    // Erasure still works under the new key.
    let erased = env_new.json(&db, &["erase", "--subject", ALICE_ID]);
    assert_eq!(erased["status"], "erased", "{erased}");
    assert_eq!(env_new.query(&db, &["--resource-id", ALICE_ID]), Vec::<Value>::new());
    let bob = env_new.query(&db, &["--resource-id", BOB_ID]);
    assert!(bob.len() == 5 && bob.iter().all(|e| e["details"]["patient_name"] == BOB_NAME));
    ok(&env_new.run(&db, &["checkpoint"]), "checkpoint");
    let o = env_new.run(&db, &["verify"]);
    ok(&o, "verify after erasure");
    assert!(stdout(&o).trim().is_empty(), "{}", stdout(&o));

    // A second run has nothing left to do.
    let again =
        env_new.json(&db, &["keys", "rotate-master", "--old", old.to_str().unwrap(), "--new", new.to_str().unwrap()]);
    assert_eq!(again["rotation"]["subject_keys_rewrapped"], 0);
}
