//! The embedded private cluster against the system's real PostgreSQL binaries.

use std::time::{Duration, Instant};

use audit_embedded::{ClusterOptions, EmbeddedError, PORT_FILE, PrivateCluster};
use audit_testkit::cluster::{cluster_tempdir, start_private_cluster, test_options};

async fn connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

async fn scalar(url: &str, sql: &str) -> String {
    let client = connect(url).await.unwrap_or_else(|e| panic!("connect {url}: {e}"));
    let rows = client.simple_query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{sql}: no row"))
}

fn is_connection_refused(err: &tokio_postgres::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::ConnectionRefused;
        }
        source = e.source();
    }
    false
}

#[tokio::test]
async fn opens_a_durable_local_cluster_and_serves_queries() {
    let cluster = start_private_cluster().await.unwrap();
    let url = cluster.url();
    assert_eq!(url, format!("postgres://postgres@127.0.0.1:{}/audit", cluster.port()));
    assert_eq!(scalar(&url, "SELECT current_database()").await, "audit");
    assert_eq!(scalar(&url, "SHOW fsync").await, "on");
    assert_eq!(scalar(&url, "SHOW listen_addresses").await, "127.0.0.1");
    assert_eq!(scalar(&url, "SHOW max_connections").await, "200");
    assert_eq!(scalar(&url, "SHOW wal_level").await, "replica");
    assert_eq!(scalar(&url, "SHOW port").await, cluster.port().to_string());
    assert_eq!(scalar(&url, "SHOW server_encoding").await, "UTF8");
    assert_eq!(scalar(&url, "SHOW unix_socket_directories").await, cluster.data_dir().display().to_string());
    assert!(scalar(&url, "SELECT version()").await.starts_with("PostgreSQL "));
    let remembered = std::fs::read_to_string(cluster.data_dir().join(PORT_FILE)).unwrap();
    assert_eq!(remembered.trim(), cluster.port().to_string());
    assert!(cluster.is_running().await);
}

#[tokio::test]
async fn stop_refuses_connections_and_start_brings_the_data_back() {
    let cluster = start_private_cluster().await.unwrap();
    let url = cluster.url();
    let client = connect(&url).await.unwrap();
    client.batch_execute("CREATE TABLE t (v text); INSERT INTO t VALUES ('before stop')").await.unwrap();
    drop(client);

    cluster.stop().await.unwrap();
    assert!(!cluster.is_running().await);
    let err = connect(&url).await.expect_err("a stopped cluster must refuse connections");
    assert!(is_connection_refused(&err), "expected connection refused, got {err:?}");
    cluster.stop().await.expect("stopping a stopped cluster is a no-op");

    cluster.start().await.unwrap();
    assert!(cluster.is_running().await);
    assert_eq!(scalar(&url, "SELECT v FROM t").await, "before stop");

    cluster.restart().await.unwrap();
    assert_eq!(scalar(&url, "SELECT count(*) FROM t").await, "1");
}

#[tokio::test]
async fn committed_rows_survive_an_immediate_stop() {
    let cluster = start_private_cluster().await.unwrap();
    let url = cluster.url();
    let client = connect(&url).await.unwrap();
    client.batch_execute("CREATE TABLE t (v int); INSERT INTO t SELECT generate_series(1, 1000)").await.unwrap();
    cluster.stop_immediate().await.unwrap();
    assert!(client.simple_query("SELECT 1").await.is_err(), "the session must be gone after the crash");
    cluster.start().await.unwrap();
    assert_eq!(scalar(&url, "SELECT sum(v) FROM t").await, "500500");
}

#[tokio::test]
async fn reopening_reuses_the_running_server_and_the_remembered_port() {
    let dir = cluster_tempdir().unwrap();
    let data = dir.path().join("data");
    let first = PrivateCluster::open(&data, test_options()).await.unwrap();
    let started = scalar(&first.url(), "SELECT pg_postmaster_start_time()::text").await;

    // A second handle on a running directory reuses that server instead of failing.
    let second =
        PrivateCluster::open(&data, ClusterOptions { stop_on_drop: true, ..ClusterOptions::default() }).await.unwrap();
    assert_eq!(second.port(), first.port());
    assert_eq!(second.url(), first.url());
    assert_eq!(scalar(&second.url(), "SELECT pg_postmaster_start_time()::text").await, started);
    // It did not start the server, so dropping it leaves the server running.
    drop(second);
    assert!(first.is_running().await);

    // After a stop, opening again (no port given) starts on the remembered port.
    let port = first.port();
    first.stop().await.unwrap();
    drop(first);
    let third = PrivateCluster::open(&data, test_options()).await.unwrap();
    assert_eq!(third.port(), port);
    assert_ne!(scalar(&third.url(), "SELECT pg_postmaster_start_time()::text").await, started);
}

#[tokio::test]
async fn a_streaming_replica_receives_rows_written_on_the_primary() {
    let primary = start_private_cluster().await.unwrap();
    let replica = primary.create_replica().await.unwrap();
    assert_ne!(replica.port(), primary.port());
    assert_eq!(scalar(&replica.url(), "SELECT pg_is_in_recovery()").await, "t");
    assert_eq!(scalar(&primary.url(), "SELECT pg_is_in_recovery()").await, "f");
    assert_eq!(scalar(&primary.url_for("postgres"), "SELECT count(*) FROM pg_stat_replication").await, "1");

    let marker = uuid::Uuid::new_v4().to_string();
    let client = connect(&primary.url()).await.unwrap();
    client.batch_execute("CREATE TABLE events (v text)").await.unwrap();
    client.execute("INSERT INTO events VALUES ($1)", &[&marker]).await.unwrap();

    let reader = connect(&replica.url()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match reader.query_opt("SELECT v FROM events WHERE v = $1", &[&marker]).await {
            Ok(Some(row)) => {
                assert_eq!(row.get::<_, String>(0), marker);
                break;
            }
            // Not replayed yet (the table may not exist yet either).
            Ok(None) | Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            other => panic!("the row never reached the replica: {other:?}"),
        }
    }
    let err = reader.batch_execute("INSERT INTO events VALUES ('x')").await.expect_err("a standby is read-only");
    assert_eq!(err.code(), Some(&tokio_postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION));

    // Failover: the promoted replica accepts writes and keeps the replicated row.
    replica.promote().await.unwrap();
    assert_eq!(scalar(&replica.url(), "SELECT pg_is_in_recovery()").await, "f");
    let writer = connect(&replica.url()).await.unwrap();
    writer.batch_execute("INSERT INTO events VALUES ('after promotion')").await.unwrap();
    assert_eq!(scalar(&replica.url(), "SELECT count(*) FROM events").await, "2");
}

#[tokio::test]
async fn missing_binaries_name_the_package_to_install() {
    let empty = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let options = ClusterOptions { bin_dir: Some(empty.path().to_path_buf()), ..ClusterOptions::default() };
    let err = PrivateCluster::open(data.path().join("data"), options).await.expect_err("no binaries there");
    assert!(matches!(err, EmbeddedError::BinariesNotFound { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("apt-get install postgresql-15"), "{msg}");
    assert!(msg.contains("postgresql@15"), "{msg}");
    assert!(msg.contains(&empty.path().display().to_string()), "{msg}");
    assert!(!data.path().join("data").exists(), "nothing may be created without binaries");
}

#[tokio::test]
async fn a_taken_remembered_port_is_replaced_but_a_taken_explicit_port_is_an_error() {
    let dir = cluster_tempdir().unwrap();
    let data = dir.path().join("data");
    let first = PrivateCluster::open(&data, test_options()).await.unwrap();
    let old_port = first.port();
    first.stop().await.unwrap();
    drop(first);

    // Someone else now listens on the remembered port.
    let squatter = std::net::TcpListener::bind(("127.0.0.1", old_port)).unwrap();
    let explicit = ClusterOptions { port: Some(old_port), ..test_options() };
    let err = PrivateCluster::open(&data, explicit).await.expect_err("the explicit port is taken");
    assert!(err.to_string().contains("Address already in use"), "{err}");

    let moved = PrivateCluster::open(&data, test_options()).await.unwrap();
    assert_ne!(moved.port(), old_port);
    assert_eq!(scalar(&moved.url(), "SELECT current_database()").await, "audit");
    let remembered = std::fs::read_to_string(data.join(PORT_FILE)).unwrap();
    assert_eq!(remembered.trim(), moved.port().to_string());
    drop(squatter);
}

fn running_as_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap().split_whitespace().nth(2).unwrap();
    uid == "0"
}

#[tokio::test]
async fn a_data_dir_the_postgres_user_cannot_reach_is_reported_when_root() {
    // A 0700 directory owned by this user: as root, the `postgres` OS user cannot traverse it.
    let private = tempfile::tempdir().unwrap();
    std::fs::set_permissions(private.path(), std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let data = private.path().join("data");
    let result = PrivateCluster::open(&data, test_options()).await;
    if running_as_root() {
        match result {
            Err(EmbeddedError::NotAccessible { path, .. }) => assert_eq!(path, private.path()),
            other => panic!("expected NotAccessible, got {other:?}"),
        }
    } else {
        // Not root: PostgreSQL runs as this user, who owns the directory.
        let cluster = result.unwrap();
        assert_eq!(scalar(&cluster.url(), "SELECT 1").await, "1");
    }
}
