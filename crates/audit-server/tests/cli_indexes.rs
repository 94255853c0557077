//! `audit-db indexes …` as an operator runs it, against a private cluster with pg_stat_statements preloaded:
//! recommend names the missing index; an `apply` killed (kill -9, its connection gone) in the middle of a
//! concurrent partition build leaves an invalid index behind, and the next `apply` leaves nothing invalid.

use std::time::Duration;

use audit_testkit::cluster::start_private_cluster_with_statements;
use serde_json::Value;

#[path = "support/cli.rs"]
mod cli;

fn json(url: &str, args: &[&str]) -> Value {
    let o = cli::run(url, &[], args);
    cli::ok(&o, &args.join(" "));
    serde_json::from_str(&cli::stdout(&o)).unwrap_or_else(|e| panic!("{e}: {}", cli::stdout(&o)))
}

async fn invalid_indexes(pg: &tokio_postgres::Client) -> Vec<String> {
    pg.query("SELECT indexrelid::regclass::text FROM pg_index WHERE NOT indisvalid OR NOT indisready", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_killed_mid_build_is_finished_by_the_next_run() -> anyhow::Result<()> {
    let cluster = start_private_cluster_with_statements().await?;
    let url = cluster.url();
    cli::ok(&cli::run(&url, &[], &["migrate"]), "migrate");
    cli::ok(&cli::run(&url, &[], &["partitions", "create", "--from", "now-60d", "--to", "now"]), "partitions create");
    let pg = audit_testkit::sql(&url).await;
    pg.batch_execute(
        "INSERT INTO audit_log (event_id, \"timestamp\", ingested_at, action, status, principal_id, organization_id, seq, leaf_hash)
         SELECT gen_random_uuid(), now() - (g % 5000000) * interval '1 second', now(), 'action.' || (g % 10), 'success',
                'user-' || (g % 300), 'org-' || (g % 10), g, sha256(g::text::bytea)
           FROM generate_series(1, 60000) g;
         ANALYZE audit_log;
         DROP INDEX audit_log_principal_action_idx;
         CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
         SELECT pg_stat_statements_reset();",
    )
    .await?;
    let stmt = pg
        .prepare(
            "SELECT id FROM audit_log WHERE principal_id = $1 AND action = $2 ORDER BY \"timestamp\" DESC LIMIT 50",
        )
        .await?;
    for i in 0..30 {
        pg.query(&stmt, &[&format!("user-{}", i * 7 % 300), &format!("action.{}", i % 10)]).await?;
    }

    let report = json(&url, &["indexes", "recommend", "--format", "json"]);
    let create = report["recommendations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["action"]["kind"] == "create" && r["action"]["columns"][0] == "principal_id")
        .unwrap_or_else(|| panic!("no principal+action creation: {report:#}"))
        .clone();
    let name = create["action"]["name"].as_str().unwrap().to_string();
    assert!(create["statements"][0]["query"].as_str().unwrap().contains("principal_id"), "{create:#}");
    assert!(create["statements"][0]["calls"].as_i64().unwrap() >= 30, "{create:#}");

    // A transaction holding an old snapshot makes each concurrent partition build wait at its last phase: the
    // apply is caught in the middle of its first partition, and killed there.
    let blocker = audit_testkit::sql(&url).await;
    blocker.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM audit_index_actions;").await?;
    let mut child = cli::async_command(&["indexes", "apply"]).env("DATABASE_URL", &url).spawn()?;
    let pid = child.id().expect("running");
    let build_pid: i32 = {
        let mut found = None;
        for _ in 0..600 {
            if let Some(r) = pg
                .query_opt(
                    "SELECT pid FROM pg_stat_activity WHERE application_name = 'audit-db indexes'
                        AND query LIKE 'CREATE INDEX CONCURRENTLY%' AND wait_event_type = 'Lock'",
                    &[],
                )
                .await?
            {
                found = Some(r.get(0));
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        found.expect("apply reached a concurrent partition build within 60 s")
    };
    // kill -9 the CLI; its server session dies with it (as when the machine running it crashes).
    std::process::Command::new("kill").args(["-9", &pid.to_string()]).status()?;
    child.wait().await?;
    pg.query_one("SELECT pg_terminate_backend($1)", &[&build_pid]).await?;
    blocker.batch_execute("COMMIT").await?;
    let left = invalid_indexes(&pg).await;
    assert!(left.iter().any(|i| i == &name), "the parent index is left invalid: {left:?}");
    assert!(left.len() >= 2, "and the partition index whose build was interrupted: {left:?}");

    // The next run finishes it: nothing invalid, the index on every partition.
    let o = cli::run(&url, &[], &["indexes", "apply", "--format", "json"]);
    cli::ok(&o, "indexes apply (after the crash)");
    let done: Value = serde_json::from_str(&cli::stdout(&o))?;
    assert!(
        done.as_array().unwrap().iter().any(|d| d["action"]["kind"] == "repair" && d["outcome"] == "done"),
        "the half-done build was repaired: {done:#}"
    );
    assert_eq!(invalid_indexes(&pg).await, Vec::<String>::new());
    let r = pg
        .query_one(
            "SELECT (SELECT count(*) FROM pg_partition_tree('audit_log') WHERE isleaf),
                    (SELECT count(*) FROM pg_partition_tree($1::text::regclass) WHERE isleaf AND level > 0)",
            &[&name],
        )
        .await?;
    assert_eq!(r.get::<_, i64>(0), r.get::<_, i64>(1), "{name} on every partition");

    // status as JSON shows it, with its partitions covered.
    let status = json(&url, &["indexes", "status", "--format", "json"]);
    let s = status.as_array().unwrap().iter().find(|u| u["name"] == name.as_str()).expect("listed");
    assert_eq!(s["valid"], true);
    assert_eq!(s["partitions_covered"], s["partitions_total"]);
    // Protected indexes cannot be dropped from the CLI.
    let o = cli::run(&url, &[], &["indexes", "drop", "audit_log_log_seq_idx"]);
    assert_eq!(o.status.code(), Some(2), "{}", cli::stderr(&o));
    assert!(cli::stderr(&o).contains("protected"), "{}", cli::stderr(&o));
    Ok(())
}

/// GET `path` from 127.0.0.1:`port` (HTTP/1.0, whole body).
async fn http_get(port: u16, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes()).await.ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.ok()?;
    buf.split_once("\r\n\r\n").map(|(_, body)| body.to_string())
}

/// `serve` runs an index round at start (then every `analysisInterval`): `/health` carries the `indexes`
/// component and `/metrics` the index series.
#[tokio::test]
async fn serve_reports_indexes_in_health_and_metrics() -> anyhow::Result<()> {
    let db = audit_testkit::TestDb::create("idx_serve").await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let _serve = cli::async_command(&["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("DATABASE_URL", &db.url)
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let mut health = Value::Null;
    for _ in 0..300 {
        if let Some(body) = http_get(port, "/health").await
            && let Ok(v) = serde_json::from_str::<Value>(&body)
            && !v["components"]["indexes"].is_null()
        {
            health = v;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ix = &health["components"]["indexes"];
    assert_eq!(ix["status"], "healthy", "{health:#}");
    let names: Vec<&str> =
        ix["details"]["indexes"].as_array().unwrap().iter().filter_map(|i| i["name"].as_str()).collect();
    assert!(names.contains(&"audit_log_pkey") && names.contains(&"audit_log_log_seq_idx"), "{names:?}");
    let metrics = http_get(port, "/metrics").await.unwrap_or_default();
    assert!(metrics.contains("audit_db_index_size_bytes{index=\"audit_log_pkey\"}"), "{metrics}");
    assert!(metrics.contains("audit_db_index_scans_total"), "{metrics}");
    Ok(())
}
