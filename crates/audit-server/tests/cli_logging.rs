//! `LOG_FORMAT`: JSON lines a log pipeline can read, or text for people.

#[path = "support/cli.rs"]
mod cli;

use audit_testkit::TestDb;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line_with_level_target_and_fields() {
    let db = TestDb::create("cli_log_json").await;
    let migrate = cli::run(&db.url, &[], &["migrate"]);
    assert!(migrate.status.success(), "{}", String::from_utf8_lossy(&migrate.stderr));
    let o = cli::run(&db.url, &[("LOG_FORMAT", "json")], &["query", "--org", "nobody"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stderr = String::from_utf8(o.stderr).expect("logs are UTF-8");
    let lines: Vec<Value> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    assert!(!lines.is_empty(), "the query logs at info");
    for l in &lines {
        for key in ["timestamp", "level", "target", "fields"] {
            assert!(l.get(key).is_some(), "`{key}` missing in {l}");
        }
    }
    let answered = lines
        .iter()
        .find(|l| l["fields"]["message"] == "query answered")
        .unwrap_or_else(|| panic!("no `query answered` line in {stderr}"));
    assert_eq!(answered["fields"]["cache"], "db");
    assert_eq!(answered["level"], "INFO");

    let text = cli::run(&db.url, &[("LOG_FORMAT", "text")], &["query", "--org", "nobody"]);
    let text = String::from_utf8_lossy(&text.stderr);
    assert!(
        text.contains("query answered") && serde_json::from_str::<Value>(text.lines().next().unwrap_or("")).is_err()
    );
    let bad = cli::run(&db.url, &[("LOG_FORMAT", "yaml")], &["query", "--org", "nobody"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("LOG_FORMAT"), "a bad value names the variable");
}
