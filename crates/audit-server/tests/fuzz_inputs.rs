//! Property-based fuzzing of every input surface an outsider reaches without the HTTP routes (those are being
//! rewritten; their bodies go through the same validator and filter parser tested here):
//!
//! - NDJSON event lines through the validator (NUL, lone surrogates, huge numbers, deep nesting, duplicate keys,
//!   every timestamp form, wrong types, torn lines), and a mixed batch through the client into PostgreSQL;
//! - query filters and cursors, from HTTP query strings and from CLI flags (`FilterParams`);
//! - configuration files and environment values (`AuditConfig::load`);
//! - evidence packs given to `verify-pack` (corrupted, truncated, oversized, path-traversing names);
//! - signed notes (checkpoints);
//! - HTTP headers against a real `audit-db serve` (raw TCP): hostile `Authorization`, `Content-Type`,
//!   `Content-Length` (short, long, garbage, twice, with `Transfer-Encoding`), `Accept`, `Idempotency-Key`,
//!   duplicate and huge headers, non-UTF-8 bytes — never a 5xx, every refusal names what was wrong, nothing of a
//!   refused request written.
//!
//! Properties: never a panic; every rejection names what was wrong (a field, parameter, key or file); nothing is
//! written for a rejected input, and valid data beside it is stored.
//!
//! Cases per property: `AUDIT_FUZZ_CASES` (default 64, fast); `cargo xtask fuzz --cases N` runs more.

#[path = "support/cli.rs"]
mod cli;
#[path = "support/raw_http.rs"]
mod raw_http;
#[path = "support/service.rs"]
mod service;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use audit_core::Validator;
use audit_core::validate::FIELDS;
use audit_integrity::{Checkpoint, NoteSigner, verify_pack};
use audit_server::config::{AuditConfig, ENVIRONMENT};
use audit_server::filter_params::{FilterParams, ParamNames};
use audit_testkit::TestDb;
use chrono::{TimeZone as _, Utc};
use clap::Parser as _;
use proptest::prelude::*;
use proptest::strategy::ValueTree as _;
use proptest::test_runner::{Config as PtConfig, TestRunner};
use serde_json::{Value, json};
use uuid::Uuid;

fn cases(default: u32) -> u32 {
    std::env::var("AUDIT_FUZZ_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

fn config(default: u32) -> PtConfig {
    PtConfig { cases: cases(default), failure_persistence: None, ..PtConfig::default() }
}

/// Prints the number of cases a property ran, for the report (`cargo xtask fuzz` sums them).
fn ran(surface: &str, n: u32) {
    println!("fuzz {surface}: {n} cases, 0 panics");
}

// --- NDJSON event lines ---------------------------------------------------------------------------------------

fn valid_event() -> Value {
    json!({
        "event_id": Uuid::new_v4().to_string(), "action": "record_view", "status": "success",
        "organization_id": "fuzz-org", "principal_id": "u1", "timestamp": Utc::now().to_rfc3339(),
        "details": {"k": "v"},
    })
}

/// Timestamp forms, good and bad.
fn timestamp_form() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!("2026-01-02T03:04:05Z")),
        Just(json!("2026-01-02T03:04:05.123456789+05:30")),
        Just(json!("2026-01-02 03:04:05")),
        Just(json!("2026-01-02")),
        Just(json!("2026-13-45T99:99:99Z")),
        Just(json!("2016-12-31T23:59:60Z")),
        Just(json!("0000-01-01T00:00:00Z")),
        Just(json!("-0001-01-01T00:00:00Z")),
        Just(json!("+275760-09-13T00:00:00Z")),
        Just(json!("9999-12-31T23:59:59Z")),
        Just(json!("")),
        Just(json!("now")),
        Just(json!(1_700_000_000)),
        Just(json!(1_700_000_000_123_i64)),
        Just(json!(-1)),
        Just(json!(1e300)),
        Just(Value::Null),
        Just(json!({"$date": "2026-01-01"})),
        "[0-9T:.Z+-]{0,40}".prop_map(Value::from),
    ]
}

/// A line: a valid event with one hostile change, or hostile text.
fn hostile_line() -> impl Strategy<Value = String> {
    let field = proptest::sample::select(FIELDS.to_vec());
    let junk_value = prop_oneof![
        Just(json!(null)),
        Just(json!(true)),
        Just(json!(12345678901234567890_u64)),
        Just(json!([])),
        Just(json!({})),
        ".{0,300}".prop_map(Value::from),
        "[a-z]{300,400}".prop_map(Value::from),
    ];
    prop_oneof![
        // A field replaced by a value of the wrong kind or size.
        (field.clone(), junk_value).prop_map(|(f, v)| {
            let mut e = valid_event();
            e[f] = v;
            e.to_string()
        }),
        // Every timestamp form.
        timestamp_form().prop_map(|t| {
            let mut e = valid_event();
            e["timestamp"] = t;
            e.to_string()
        }),
        // NUL, as a JSON escape and as a raw byte, in a field and in details.
        (field.clone(), any::<bool>()).prop_map(|(f, raw)| {
            let mut e = valid_event();
            e[f] = json!("a\u{0}b");
            let s = e.to_string();
            if raw { s.replace("\\u0000", "\u{0}") } else { s }
        }),
        Just(valid_event().to_string().replace("\"v\"", "\"\\u0000\"")),
        // Lone surrogates (only expressible as escapes).
        (field.clone(), prop_oneof![Just("\\ud800"), Just("\\udfff"), Just("\\ud800\\u0041"), Just("\\udc00\\ud800")])
            .prop_map(|(f, esc)| {
                let mut e = valid_event();
                e[f] = json!("SURROGATE");
                e.to_string().replace("SURROGATE", esc)
            }),
        Just(valid_event().to_string().replace("\"k\"", "\"\\ud800\"")),
        // Huge numbers.
        prop_oneof![
            Just("1e999999"),
            Just("-1e-999999"),
            Just("123456789012345678901234567890123456789012345678901234567890"),
            Just("1E400"),
            Just("0.0000000000000000000000000000000000000000000000000001"),
            Just("-0"),
        ]
        .prop_map(|n| valid_event().to_string().replace("\"v\"", n)),
        // Deep nesting (serde_json stops at 128; deeper must be a rejection, not a stack overflow).
        (1usize..3000)
            .prop_map(|d| valid_event().to_string().replace("\"v\"", &format!("{}1{}", "[".repeat(d), "]".repeat(d)))),
        (1usize..400).prop_map(|d| {
            let mut nested = "1".to_string();
            for _ in 0..d {
                nested = format!("{{\"a\":{nested}}}");
            }
            valid_event().to_string().replace("\"v\"", &nested)
        }),
        // Duplicate keys.
        (field, ".{0,20}").prop_map(|(f, v)| {
            let s = valid_event().to_string();
            format!("{},{}:{}}}", &s[..s.len() - 1], json!(f), json!(v))
        }),
        // Unknown fields, non-objects, torn lines, random text.
        "[a-z_]{1,12}".prop_map(|k| {
            let mut e = valid_event();
            e[format!("x_{k}")] = json!(1);
            e.to_string()
        }),
        prop_oneof![Just("[]"), Just("null"), Just("42"), Just("\"event\""), Just(""), Just("{")]
            .prop_map(String::from),
        (0usize..200).prop_map(|cut| {
            let s = valid_event().to_string();
            s[..cut.min(s.len() - 1)].to_string()
        }),
        ".{0,200}",
    ]
}

fn validator() -> Validator {
    Validator::default()
}

/// A rejection names a field audit-db knows (or `event`, or a `details` path) and says what was wrong.
fn rejection_names_what(field: &str, reason: &str) -> bool {
    let known = field == "event" || FIELDS.contains(&field) || field == "details" || field.starts_with("details.");
    known && !reason.trim().is_empty()
}

#[test]
fn ndjson_lines_never_panic_and_every_rejection_names_the_field() {
    let mut runner = TestRunner::new(config(256));
    let v = validator();
    let now = Utc::now();
    runner
        .run(&hostile_line(), |line| {
            match v.validate_str(&line, now) {
                Ok(e) => {
                    // What is accepted serialises and holds no NUL (PostgreSQL text and jsonb cannot store one).
                    let text = serde_json::to_string(&e.details).unwrap();
                    prop_assert!(!text.contains("\\u0000"), "NUL accepted in details: {line}");
                    prop_assert!(!e.action.contains('\0'), "NUL accepted in action: {line}");
                }
                Err(err) => {
                    // A known field, or the unknown key the line really has.
                    let named = rejection_names_what(&err.field, &err.reason)
                        || (line.contains(&format!("\"{}\"", err.field)) && !err.reason.trim().is_empty());
                    prop_assert!(named, "{line:?} → {err:?}");
                }
            }
            Ok(())
        })
        .unwrap();
    ran("ndjson-validator", runner.config().cases);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_hostile_lines_stores_exactly_the_valid_ones_beside_them() {
    let db = TestDb::create("fuzz_batch").await;
    let mut config = AuditConfig::default();
    config.database.url = Some(db.url.clone());
    let app = audit_server::app::App::open(config).await.unwrap();
    app.migrate().await.unwrap();
    let client = app.client().await.unwrap();
    let pg = audit_testkit::sql(&db.url).await;
    let n = cases(8);
    let mut runner = TestRunner::new(config_no_shrink(n));
    let lines = proptest::collection::vec((hostile_line(), any::<bool>()), 1..20);
    let mut rows_expected = 0i64;
    let mut trees = Vec::new();
    for _ in 0..n {
        trees.push(lines.new_tree(&mut runner).unwrap().current());
    }
    for case in trees {
        let now = Utc::now();
        let mut parsed = Vec::new();
        let mut valid_ids = BTreeSet::new();
        for (line, add_valid) in &case {
            let r = client.validator().validate_str(line, now);
            if let Ok(e) = &r {
                valid_ids.insert(e.event_id);
            }
            parsed.push(r);
            if *add_valid {
                let e = valid_event();
                let r = client.validator().validate_value(e, now);
                valid_ids.insert(r.as_ref().unwrap().event_id);
                parsed.push(r);
            }
        }
        let rejected = parsed.iter().filter(|r| r.is_err()).count();
        let report = client.insert_validated(parsed).await.expect("a batch with rejections is not an error");
        assert_eq!(report.rejected(), rejected);
        assert_eq!(report.accepted() + report.duplicates(), valid_ids.len());
        rows_expected += report.accepted() as i64;
        let stored: i64 = pg.query_one("SELECT count(*) FROM audit_log", &[]).await.unwrap().get(0);
        assert_eq!(stored, rows_expected, "only the valid lines are stored");
        for id in &valid_ids {
            let found: i64 =
                pg.query_one("SELECT count(*) FROM audit_log WHERE event_id = $1", &[id]).await.unwrap().get(0);
            assert_eq!(found, 1, "the valid event {id} beside the rejected ones is stored once");
        }
    }
    ran("ndjson-batch-into-postgres", n);
}

fn config_no_shrink(n: u32) -> PtConfig {
    PtConfig { cases: n, failure_persistence: None, max_shrink_iters: 0, ..PtConfig::default() }
}

// --- query filters and cursors ----------------------------------------------------------------------------------

const PARAMS: &[&str] = &[
    "org",
    "principal",
    "action",
    "status",
    "resource_type",
    "resource_id",
    "classification",
    "correlation_id",
    "retention_policy",
    "event_id",
    "from",
    "to",
    "details",
    "limit",
    "after",
];

fn param_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("now-30d".to_string()),
        Just("now-99999999999d".to_string()),
        Just("now+1h".to_string()),
        Just("2026-01-01T00:00:00Z".to_string()),
        Just("-1".to_string()),
        Just("99999999999999999999".to_string()),
        Just("{\"a\":".to_string()),
        Just("{\"a\":1}".to_string()),
        Just("[1,2]".to_string()),
        Just("success,failure,bogus".to_string()),
        Just("PHI".to_string()),
        Just("\u{0}".to_string()),
        Just("eyJ4IjoxfQ".to_string()),
        Just("!!!notbase64".to_string()),
        Just(Uuid::nil().to_string()),
        "[A-Za-z0-9_=+/-]{0,60}",
        ".{0,40}",
    ]
}

fn names_a_param(msg: &str, names: ParamNames) -> bool {
    PARAMS.iter().any(|p| match names {
        ParamNames::Http => msg.contains(p),
        ParamNames::Cli => msg.contains(&format!("--{}", p.replace('_', "-"))),
    })
}

#[test]
fn http_query_strings_never_panic_and_errors_name_the_parameter() {
    let pairs = proptest::collection::vec(
        (prop_oneof![proptest::sample::select(PARAMS.to_vec()).prop_map(String::from), "[a-z]{1,8}"], param_value()),
        0..6,
    );
    let mut runner = TestRunner::new(config(256));
    runner
        .run(&pairs, |pairs| {
            let qs = serde_urlencoded::to_string(&pairs).unwrap();
            match serde_urlencoded::from_str::<FilterParams>(&qs) {
                Ok(p) => {
                    if let Err(e) = p.to_filter(Utc::now(), ParamNames::Http) {
                        prop_assert!(names_a_param(&e.to_string(), ParamNames::Http), "{qs}: {e}");
                    }
                }
                // Unknown or repeated parameters, or a `limit` that is not a number: the message names it.
                Err(e) => {
                    let text = e.to_string();
                    prop_assert!(
                        text.contains('`')
                            && (names_a_param(&text, ParamNames::Http)
                                || pairs.iter().any(|(k, _)| text.contains(k.as_str()))),
                        "{qs}: {text}"
                    );
                }
            }
            Ok(())
        })
        .unwrap();
    ran("http-query-string", runner.config().cases);
}

#[derive(Debug, clap::Parser)]
struct QueryFlags {
    #[command(flatten)]
    params: FilterParams,
}

#[test]
fn cli_filter_flags_never_panic_and_errors_name_the_flag() {
    let flags = proptest::collection::vec((proptest::sample::select(PARAMS.to_vec()), param_value()), 0..6);
    let mut runner = TestRunner::new(config(256));
    runner
        .run(&flags, |flags| {
            let mut args = vec!["query".to_string()];
            for (k, v) in &flags {
                args.push(format!("--{}={v}", k.replace('_', "-")));
            }
            match QueryFlags::try_parse_from(&args) {
                Ok(q) => {
                    if let Err(e) = q.params.to_filter(Utc::now(), ParamNames::Cli) {
                        prop_assert!(names_a_param(&e.to_string(), ParamNames::Cli), "{args:?}: {e}");
                    }
                }
                Err(e) => {
                    let text = e.to_string();
                    prop_assert!(text.contains("--") || text.contains("argument"), "{args:?}: {text}");
                }
            }
            Ok(())
        })
        .unwrap();
    ran("cli-filter-flags", runner.config().cases);
}

// --- configuration ----------------------------------------------------------------------------------------------

fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("1".to_string()),
        Just("-1".to_string()),
        Just("0".to_string()),
        Just("99999999999999999999".to_string()),
        Just("1.5".to_string()),
        Just("true".to_string()),
        Just("\"x\"".to_string()),
        Just("\"\"".to_string()),
        Just("[]".to_string()),
        Just("{}".to_string()),
        Just("\"monthly\"".to_string()),
        Just("\"../../etc\"".to_string()),
        Just("\"\\u0000\"".to_string()),
        Just("nan".to_string()),
        Just("inf".to_string()),
        Just("1979-05-27T07:32:00Z".to_string()),
    ]
}

const SECTIONS: &[&str] =
    &["database", "partition", "cache", "circuitBreaker", "monitoring", "ingest", "integrity", "replicaRouter", "nope"];
const KEYS: &[&str] = &[
    "url",
    "poolSize",
    "queryTimeout",
    "connectionTimeout",
    "ssl",
    "interval",
    "retentionDays",
    "premake",
    "archiveDir",
    "maxSizeMb",
    "enabled",
    "failureThreshold",
    "timeoutMs",
    "resetTimeoutMs",
    "logLevel",
    "logFormat",
    "slowQueryThreshold",
    "queueCapacity",
    "checkpointIntervalSecs",
    "strategy",
    "bogus",
];

#[test]
fn config_files_and_environment_values_never_panic_and_errors_name_the_key() {
    let file = proptest::collection::vec(
        (proptest::sample::select(SECTIONS.to_vec()), proptest::sample::select(KEYS.to_vec()), toml_value()),
        0..6,
    );
    let env_names: Vec<&str> = ENVIRONMENT.iter().map(|(k, _)| *k).collect();
    let env = proptest::collection::vec((proptest::sample::select(env_names), param_value()), 0..5);
    let raw = prop_oneof![Just(None), ".{0,80}".prop_map(Some)];
    let mut runner = TestRunner::new(config(256));
    runner
        .run(&(file, env, raw), |(file, env, raw)| {
            let mut text = String::new();
            for (section, key, value) in &file {
                text.push_str(&format!("[{section}]\n{key} = {value}\n"));
            }
            let text = raw.unwrap_or(text);
            let vars: BTreeMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
            match AuditConfig::load(Some(&text), |k| vars.get(k).cloned()) {
                Ok(_) => {}
                Err(e) => {
                    prop_assert!(!e.key.is_empty() && !e.reason.trim().is_empty(), "{text:?} {vars:?}: {e:?}");
                    let known = vars.contains_key(&e.key)
                        || text.contains(e.key.rsplit('.').next().unwrap_or(&e.key))
                        || (e.key == "config file" && e.reason.starts_with("line "));
                    prop_assert!(
                        known,
                        "the error names `{}`, which the input does not have: {text:?} {vars:?}",
                        e.key
                    );
                }
            }
            Ok(())
        })
        .unwrap();
    ran("config", runner.config().cases);
}

// --- signed notes -----------------------------------------------------------------------------------------------

fn signer() -> &'static NoteSigner {
    static S: OnceLock<NoteSigner> = OnceLock::new();
    S.get_or_init(|| NoteSigner::from_seed("fuzz", [7; 32]).unwrap())
}

/// Mutations of a byte string: flip, truncate, insert, duplicate a line, append garbage.
fn mutation() -> impl Strategy<Value = (u8, usize, u8)> {
    (0u8..6, any::<usize>(), any::<u8>())
}

fn mutate(bytes: &[u8], (kind, at, b): (u8, usize, u8)) -> Vec<u8> {
    let mut v = bytes.to_vec();
    if v.is_empty() {
        return vec![b];
    }
    let i = at % v.len();
    match kind {
        0 => v[i] ^= b.max(1),
        1 => v.truncate(i),
        2 => v.insert(i, b),
        3 => {
            let line: Vec<u8> = v[i..].iter().take_while(|c| **c != b'\n').copied().collect();
            v.splice(i..i, line.into_iter().chain([b'\n']));
        }
        4 => v.extend(std::iter::repeat_n(b, 1 + at % 4096)),
        _ => v.drain(i..(i + 1 + at % 16).min(v.len())).for_each(drop),
    }
    v
}

#[test]
fn signed_notes_never_panic_and_only_the_signed_text_verifies() {
    let cp = Checkpoint {
        origin: "audit-db.example/log/fuzz".into(),
        tree_size: 42,
        root_hash: [9; 32],
        time: Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap(),
    };
    let note = signer().sign(&cp);
    let verifier = signer().verifier();
    assert_eq!(verifier.verify(&note).unwrap(), cp);
    let mut runner = TestRunner::new(config(512));
    runner
        .run(&mutation(), |m| {
            let bytes = mutate(note.as_bytes(), m);
            let text = String::from_utf8_lossy(&bytes);
            match verifier.verify(&text) {
                Ok(got) => prop_assert!(text == note && got == cp, "a changed note verified: {text:?}"),
                Err(e) => prop_assert!(!e.to_string().trim().is_empty()),
            }
            Ok(())
        })
        .unwrap();
    ran("signed-notes", runner.config().cases);
}

// --- evidence packs ---------------------------------------------------------------------------------------------

/// A real pack: events ingested, sealed and exported by the binary.
async fn real_pack(db: &TestDb, dir: &std::path::Path) -> (BTreeMap<String, Vec<u8>>, std::path::PathBuf) {
    cli::ok(&cli::run(&db.url, &[], &["migrate"]), "migrate");
    let lines: Vec<String> = (0..20)
        .map(|i| {
            json!({"event_id": Uuid::new_v4(), "action": "view", "status": "success", "organization_id": "acme",
                   "timestamp": (Utc::now() - chrono::Duration::seconds(i)).to_rfc3339()})
            .to_string()
        })
        .collect();
    let file = cli::write_lines(dir, "e.ndjson", &lines);
    cli::ok(&cli::run(&db.url, &[], &["ingest", file.to_str().unwrap()]), "ingest");
    let keys = dir.join("keys");
    cli::ok(&cli::run_offline(&["keygen", "--out", keys.to_str().unwrap()]), "keygen");
    let key = keys.join("signing.key");
    let env = [("AUDIT_DB_SIGNING_KEY_FILE", key.to_str().unwrap())];
    cli::ok(&cli::run(&db.url, &env, &["checkpoint"]), "checkpoint");
    let out = dir.join("pack");
    cli::ok(&cli::run(&db.url, &env, &["export-pack", "--org", "acme", "--out", out.to_str().unwrap()]), "export");
    let mut files = BTreeMap::new();
    for e in std::fs::read_dir(&out).unwrap() {
        let e = e.unwrap();
        files.insert(e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap());
    }
    (files, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evidence_packs_never_panic_and_every_problem_names_a_file() {
    let db = TestDb::create("fuzz_pack").await;
    let dir = tempfile::tempdir().unwrap();
    let (pack, pack_dir) = real_pack(&db, dir.path()).await;
    verify_pack(&pack, None).expect("the real pack verifies");
    let names: Vec<String> = pack.keys().cloned().collect();
    let traversing = prop_oneof![
        Just("../../etc/passwd".to_string()),
        Just("/etc/shadow".to_string()),
        Just("a/../../b".to_string()),
        Just("..".to_string()),
        Just("events.ndjson/../manifest.json".to_string()),
        Just("C:\\Windows\\x".to_string()),
        Just("\u{0}".to_string()),
    ];
    #[derive(Debug, Clone)]
    enum Change {
        Mutate(usize, (u8, usize, u8)),
        Remove(usize),
        Extra(String, usize),
        ListInManifest(String),
        Oversize(usize, usize),
    }
    let n = names.len();
    let change = prop_oneof![
        (0..n, mutation()).prop_map(|(i, m)| Change::Mutate(i, m)),
        (0..n).prop_map(Change::Remove),
        (traversing.clone(), 0usize..64).prop_map(|(p, s)| Change::Extra(p, s)),
        traversing.prop_map(Change::ListInManifest),
        (0..n, 1usize..(4 << 20)).prop_map(|(i, s)| Change::Oversize(i, s)),
    ];
    let mut runner = TestRunner::new(config(256));
    runner
        .run(&proptest::collection::vec(change, 1..4), |changes| {
            let mut files = pack.clone();
            let mut changed = false;
            for c in &changes {
                match c {
                    Change::Mutate(i, m) => {
                        let name = &names[*i];
                        let before = files.get(name).cloned().unwrap_or_default();
                        let after = mutate(&before, *m);
                        changed |= after != before;
                        files.insert(name.clone(), after);
                    }
                    Change::Remove(i) => changed |= files.remove(&names[*i]).is_some(),
                    Change::Extra(p, size) => {
                        files.insert(p.clone(), vec![b'x'; *size]);
                        changed = true;
                    }
                    Change::ListInManifest(p) => {
                        if let Some(m) = files.get("manifest.json") {
                            let mut v: Value = serde_json::from_slice(m).unwrap_or(Value::Null);
                            if let Some(list) = v["files"].as_array_mut() {
                                list.push(json!({"path": p, "sha256": "00", "size": 0}));
                                files.insert("manifest.json".into(), serde_json::to_vec_pretty(&v).unwrap());
                                changed = true;
                            }
                        }
                    }
                    Change::Oversize(i, extra) => {
                        if let Some(f) = files.get_mut(&names[*i]) {
                            f.extend(std::iter::repeat_n(b' ', *extra));
                            changed = true;
                        }
                    }
                }
            }
            match verify_pack(&files, None) {
                Ok(_) => prop_assert!(!changed, "a changed pack verified: {changes:?}"),
                Err(problems) => {
                    prop_assert!(!problems.is_empty());
                    for p in &problems {
                        let listed: Vec<&str> = changes
                            .iter()
                            .filter_map(|c| match c {
                                Change::ListInManifest(p) | Change::Extra(p, _) => Some(p.as_str()),
                                _ => None,
                            })
                            .collect();
                        // The paths the (possibly mutated) manifest lists are names too.
                        let in_manifest: Vec<String> = files
                            .get("manifest.json")
                            .and_then(|m| serde_json::from_slice::<Value>(m).ok())
                            .and_then(|v| v["files"].as_array().cloned())
                            .unwrap_or_default()
                            .iter()
                            .filter_map(|f| f["path"].as_str().map(str::to_string))
                            .collect();
                        let names_file = files.keys().chain(pack.keys()).any(|f| p.contains(f.as_str()))
                            || listed.iter().any(|f| p.contains(f))
                            || in_manifest.iter().any(|f| p.contains(f.as_str()))
                            || ["manifest.json", "events.ndjson", "proofs.json", "checkpoint", "signing.pub"]
                                .iter()
                                .any(|f| p.contains(f));
                        prop_assert!(names_file, "problem names no file: {p} ({changes:?})");
                    }
                }
            }
            Ok(())
        })
        .unwrap();
    ran("evidence-packs", runner.config().cases);

    // The binary on disk: a truncated events file and a file named like a traversal in the manifest.
    let events = pack_dir.join("events.ndjson");
    let text = std::fs::read(&events).unwrap();
    std::fs::write(&events, &text[..text.len() / 2]).unwrap();
    let o = cli::run_offline(&["verify-pack", pack_dir.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", cli::stdout(&o));
    assert!(cli::stdout(&o).contains("events.ndjson"), "{}", cli::stdout(&o));
}

// --- HTTP headers against a real serve ----------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum AuthH {
    Valid,
    LowerScheme,
    Missing,
    Empty,
    Basic,
    Bytes(Vec<u8>),
    Huge(usize),
    ValidThenBad(Vec<u8>),
    BadThenValid(Vec<u8>),
    UnknownKey(String),
}

#[derive(Debug, Clone)]
enum LengthH {
    Exact,
    Short(usize),
    Long(usize),
    Garbage(String),
    TwiceDiffering(usize),
    TwiceSame,
    Chunked,
    ChunkedAndLength,
    None,
}

#[derive(Debug, Clone, Copy)]
enum RouteH {
    Single,
    Array,
    Batch,
    List,
}

#[derive(Debug, Clone)]
struct HeaderCase {
    route: RouteH,
    auth: AuthH,
    content_type: Option<Vec<u8>>,
    length: LengthH,
    accept: Option<Vec<u8>>,
    idempotency: Vec<Vec<u8>>,
    extra: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Header value bytes: anything but CR and LF (the line structure), often printable, sometimes not UTF-8.
fn value_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => proptest::collection::vec(any::<u8>().prop_filter("no CR/LF", |b| *b != b'\r' && *b != b'\n'), 0..max),
        4 => proptest::collection::vec(0x20u8..0x7f, 0..max),
        1 => proptest::collection::vec(0x80u8..=0xff, 1..8),
    ]
}

fn header_case() -> impl Strategy<Value = HeaderCase> {
    let route = prop_oneof![Just(RouteH::Single), Just(RouteH::Array), Just(RouteH::Batch), Just(RouteH::List)];
    let auth = prop_oneof![
        4 => Just(AuthH::Valid),
        1 => Just(AuthH::LowerScheme),
        1 => Just(AuthH::Missing),
        1 => Just(AuthH::Empty),
        1 => Just(AuthH::Basic),
        1 => value_bytes(80).prop_map(AuthH::Bytes),
        1 => (1usize..200_000).prop_map(AuthH::Huge),
        1 => value_bytes(40).prop_map(AuthH::ValidThenBad),
        1 => value_bytes(40).prop_map(AuthH::BadThenValid),
        1 => "[A-Za-z0-9_.-]{0,80}".prop_map(AuthH::UnknownKey),
    ];
    let content_type = prop_oneof![
        Just(None),
        Just(Some(b"application/json".to_vec())),
        Just(Some(b"application/x-ndjson".to_vec())),
        Just(Some(b"application/json; charset=utf-16".to_vec())),
        Just(Some(b"text/plain".to_vec())),
        Just(Some(b"multipart/form-data; boundary=x".to_vec())),
        value_bytes(60).prop_map(Some),
    ];
    let length = prop_oneof![
        4 => Just(LengthH::Exact),
        1 => (1usize..64).prop_map(LengthH::Short),
        1 => (1usize..64).prop_map(LengthH::Long),
        1 => prop_oneof![
            Just("-1".to_string()),
            Just("abc".to_string()),
            Just("99999999999999999999999".to_string()),
            Just("1e3".to_string()),
            Just(" ".to_string()),
            Just("+5".to_string()),
            "[0-9a-z ,+-]{0,12}",
        ]
        .prop_map(LengthH::Garbage),
        1 => (1usize..64).prop_map(LengthH::TwiceDiffering),
        1 => Just(LengthH::TwiceSame),
        1 => Just(LengthH::Chunked),
        1 => Just(LengthH::ChunkedAndLength),
        1 => Just(LengthH::None),
    ];
    let accept = prop_oneof![
        Just(None),
        Just(Some(b"application/json".to_vec())),
        Just(Some(b"application/fhir+json".to_vec())),
        Just(Some(b"*/*;q=0.1, text/html".to_vec())),
        value_bytes(60).prop_map(Some),
    ];
    let name = prop_oneof![
        "[A-Za-z][A-Za-z0-9-]{0,30}".prop_map(String::into_bytes),
        Just(b"X-Audit-Min-LSN".to_vec()),
        Just(b"X-Audit-Consistency".to_vec()),
        Just(b"Host".to_vec()),
        Just(b"Expect".to_vec()),
        Just(b"Transfer-Encoding".to_vec()),
        Just(b"X-Request-Id".to_vec()),
        proptest::collection::vec(any::<u8>().prop_filter("no CR/LF/colon", |b| !b"\r\n:".contains(b)), 1..20),
    ];
    let extra = proptest::collection::vec(
        (name, prop_oneof![value_bytes(60), (1usize..120_000).prop_map(|n| vec![b'h'; n])]),
        0..3,
    );
    (route, auth, content_type, length, accept, proptest::collection::vec(value_bytes(40), 0..3), extra).prop_map(
        |(route, auth, content_type, length, accept, idempotency, extra)| HeaderCase {
            route,
            auth,
            content_type,
            length,
            accept,
            idempotency,
            extra,
        },
    )
}

/// Event ids a 2xx answer acknowledges (JSON or NDJSON; objects whose `result` is stored or duplicate).
fn acknowledged_ids(body: &[u8]) -> BTreeSet<Uuid> {
    fn walk(v: &Value, out: &mut BTreeSet<Uuid>) {
        match v {
            Value::Object(o) => {
                if matches!(o.get("result").and_then(Value::as_str), Some("stored" | "duplicate"))
                    && let Some(id) = o.get("event_id").and_then(Value::as_str).and_then(|s| s.parse().ok())
                {
                    out.insert(id);
                }
                o.values().for_each(|x| walk(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let mut out = BTreeSet::new();
    let text = String::from_utf8_lossy(body);
    match serde_json::from_str::<Value>(&text) {
        Ok(v) => walk(&v, &mut out),
        Err(_) => text.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).for_each(|v| walk(&v, &mut out)),
    }
    out
}

/// What a refusal's detail may name: a header, the body or one of its lines/fields, a parameter, a setting.
fn names_what_was_wrong(detail: &str) -> bool {
    let d = detail.to_ascii_lowercase();
    [
        "authorization",
        "body",
        "content-type",
        "content-length",
        "x-audit-",
        "accept",
        "format",
        "line ",
        "query",
        "api.",
    ]
    .iter()
    .any(|n| d.contains(n))
        || FIELDS.iter().any(|f| d.contains(f))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_headers_never_cause_a_5xx_and_refused_requests_write_nothing() {
    let db = TestDb::create("fuzz_headers").await;
    cli::ok(&cli::run(&db.url, &[], &["migrate"]), "migrate");
    let created = cli::run(&db.url, &[], &["api-keys", "create", "--org", "hdr", "--scopes", "ingest,query"]);
    cli::ok(&created, "api-keys create");
    let key = cli::stdout(&created).trim().to_string();
    let svc = service::Service::start(&db, &[("AUDIT_DB_AUDIT_READS", "false")]).await;
    let port: u16 = svc.base.rsplit(':').next().unwrap().parse().unwrap();
    let pg = audit_testkit::sql(&db.url).await;
    let handle = tokio::runtime::Handle::current();
    let statuses = std::sync::Mutex::new(BTreeMap::<u16, u32>::new());
    let mut runner = TestRunner::new(config(64));
    runner
        .run(&header_case(), |case| {
            let event = |n: usize| {
                let mut e = valid_event();
                e["organization_id"] = json!("hdr");
                e["details"] = json!({"n": n});
                e
            };
            let (method, path, body, sent): (&str, &str, Vec<u8>, Vec<Uuid>) = match case.route {
                RouteH::Single => {
                    let e = event(0);
                    let id = e["event_id"].as_str().unwrap().parse().unwrap();
                    ("POST", "/v1/events", e.to_string().into_bytes(), vec![id])
                }
                RouteH::Array => {
                    let es = vec![event(0), event(1)];
                    let ids = es.iter().map(|e| e["event_id"].as_str().unwrap().parse().unwrap()).collect();
                    ("POST", "/v1/events", Value::Array(es).to_string().into_bytes(), ids)
                }
                RouteH::Batch => {
                    let es = [event(0), event(1), event(2)];
                    let ids = es.iter().map(|e| e["event_id"].as_str().unwrap().parse().unwrap()).collect();
                    let text: String = es.iter().map(|e| format!("{e}\n")).collect();
                    ("POST", "/v1/events:batch", text.into_bytes(), ids)
                }
                RouteH::List => ("GET", "/v1/events?limit=5", Vec::new(), Vec::new()),
            };
            let mut head: Vec<Vec<u8>> = Vec::new();
            let bearer = format!("Bearer {key}").into_bytes();
            let auth = |v: &[u8]| [b"Authorization: ".as_slice(), v].concat();
            match &case.auth {
                AuthH::Valid => head.push(auth(&bearer)),
                AuthH::LowerScheme => head.push(auth(format!("bearer {key}").as_bytes())),
                AuthH::Missing => {}
                AuthH::Empty => head.push(auth(b"")),
                AuthH::Basic => head.push(auth(b"Basic dXNlcjpwYXNz")),
                AuthH::Bytes(b) => head.push(auth(b)),
                AuthH::Huge(n) => head.push(auth(&[b"Bearer ".as_slice(), &vec![b'k'; *n]].concat())),
                AuthH::ValidThenBad(b) => {
                    head.push(auth(&bearer));
                    head.push(auth(b));
                }
                AuthH::BadThenValid(b) => {
                    head.push(auth(b));
                    head.push(auth(&bearer));
                }
                AuthH::UnknownKey(k) => head.push(auth(format!("Bearer {k}").as_bytes())),
            }
            if let Some(ct) = &case.content_type {
                head.push([b"Content-Type: ".as_slice(), ct].concat());
            }
            if let Some(a) = &case.accept {
                head.push([b"Accept: ".as_slice(), a].concat());
            }
            for k in &case.idempotency {
                head.push([b"Idempotency-Key: ".as_slice(), k].concat());
            }
            for (n, v) in &case.extra {
                head.push([n.as_slice(), b": ", v].concat());
            }
            let cl = |n: usize| format!("Content-Length: {n}").into_bytes();
            let chunked = |b: &[u8]| {
                let mut out = Vec::new();
                if !b.is_empty() {
                    out.extend(format!("{:x}\r\n", b.len()).into_bytes());
                    out.extend_from_slice(b);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\n\r\n");
                out
            };
            let mut payload = body.clone();
            match &case.length {
                LengthH::Exact => head.push(cl(body.len())),
                LengthH::Short(d) => head.push(cl(body.len().saturating_sub(*d))),
                LengthH::Long(d) => head.push(cl(body.len() + d)),
                LengthH::Garbage(g) => head.push(format!("Content-Length: {g}").into_bytes()),
                LengthH::TwiceDiffering(d) => {
                    head.push(cl(body.len()));
                    head.push(cl(body.len() + d));
                }
                LengthH::TwiceSame => {
                    head.push(cl(body.len()));
                    head.push(cl(body.len()));
                }
                LengthH::Chunked => {
                    head.push(b"Transfer-Encoding: chunked".to_vec());
                    payload = chunked(&body);
                }
                LengthH::ChunkedAndLength => {
                    head.push(b"Transfer-Encoding: chunked".to_vec());
                    head.push(cl(body.len()));
                    payload = chunked(&body);
                }
                LengthH::None => {}
            }
            let request = raw_http::request(method, path, &head, &payload);
            let (answer, stored) = tokio::task::block_in_place(|| {
                handle.block_on(async {
                    let a = raw_http::send(port, &request, std::time::Duration::from_millis(1_500)).await;
                    let stored: Vec<Uuid> = pg
                        .query("SELECT event_id FROM audit_log WHERE event_id = ANY($1)", &[&sent])
                        .await
                        .unwrap()
                        .iter()
                        .map(|r| r.get(0))
                        .collect();
                    (a, stored)
                })
            });
            let a = answer.map_err(|e| TestCaseError::fail(format!("transport error: {e}")))?;
            *statuses.lock().unwrap().entry(a.status).or_default() += 1;
            let stored: BTreeSet<Uuid> = stored.into_iter().collect();
            if a.cut {
                // The request promised more body than it sent and the server waited for it; the client gave up. No
                // 5xx; what was stored are complete lines of this request (a streamed batch stores complete lines
                // before a broken body ends it, and reports them to a client that is still there).
                prop_assert!(
                    matches!(case.length, LengthH::Long(_)),
                    "the server waited on a request that sent its whole body: {case:?}"
                );
                prop_assert!(a.status == 0 || a.status < 500, "status {} for {case:?}: {}", a.status, a.text());
                prop_assert!(acknowledged_ids(&a.body).is_subset(&stored), "acknowledged but not stored: {case:?}");
                prop_assert!(stored.is_empty() || matches!(case.route, RouteH::Batch), "stored {stored:?}: {case:?}");
                return Ok(());
            }
            prop_assert!(a.status >= 200 && a.status < 500, "status {} for {case:?}: {}", a.status, a.text());
            if (200..300).contains(&a.status) {
                let acked = acknowledged_ids(&a.body);
                prop_assert_eq!(&stored, &acked, "stored ≠ acknowledged for {:?}: {}", case, a.text());
            } else {
                prop_assert!(stored.is_empty(), "a {} wrote {stored:?} for {case:?}", a.status);
                if a.header("content-type") == Some("application/problem+json") {
                    let p: Value = serde_json::from_slice(&a.body)
                        .map_err(|e| TestCaseError::fail(format!("problem not JSON ({e}): {}", a.text())))?;
                    let detail = p["detail"].as_str().unwrap_or_default();
                    prop_assert!(names_what_was_wrong(detail), "refusal names nothing: {p} for {case:?}");
                } else {
                    // hyper's own refusals of a request it cannot parse (bad header bytes, conflicting lengths, too
                    // large a head) come before any route, without a body.
                    prop_assert!(
                        [400, 413, 431].contains(&a.status) && a.body.is_empty(),
                        "a refusal without a problem body: {} {} for {case:?}",
                        a.status,
                        a.text()
                    );
                }
            }
            Ok(())
        })
        .unwrap();
    println!("fuzz http-headers: statuses {:?}", statuses.lock().unwrap());
    ran("http-headers", runner.config().cases);
    drop(svc);
}
