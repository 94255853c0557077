//! `cargo xtask ha-test`: a real failover driven by Patroni and etcd (Debian's `patroni` and `etcd-server`
//! packages), with audit-db writing through the libpq multi-host URL the whole time.
//!
//! 1. etcd on a free port; two Patroni nodes (PostgreSQL 15 from `/usr/lib/postgresql/15/bin`) in a temporary
//!    directory, `synchronous_mode: true` (an acknowledged commit is on the standby before the client hears of it);
//! 2. the schema on the leader; a bulk ingest (`insert_batch` in small chunks) and group-committed single inserts
//!    through `App::client()` with `postgres://…node1,…node2/audit?target_session_attrs=read-write`;
//! 3. once rows are arriving, the leader is crashed (its Patroni killed, its PostgreSQL stopped `-m immediate`):
//!    Patroni promotes the synchronous standby when the leader key expires;
//! 4. the writers finish by themselves (they wait out the failover); every event is then on the new leader exactly
//!    once with gap-free `seq` per organisation. Timings go to stdout as JSON.
//!
//! Everything started here is stopped, by process id or data directory, and the directory removed.

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use audit_server::app::App;
use audit_server::config::AuditConfig;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
const SCOPE: &str = "auditdb-ha";
/// Events of the bulk ingest and of the single-insert writers.
const BULK_EVENTS: usize = 40_000;
const SINGLE_WRITERS: usize = 4;
const SINGLE_EACH: usize = 150;

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `GET path` on a local HTTP endpoint: the status code, or `None` when nothing answers.
async fn http_status(port: u16, path: &str) -> Option<u16> {
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let head = String::from_utf8_lossy(&buf);
        head.split_whitespace().nth(1)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(3), attempt).await.ok().flatten()
}

async fn wait_until<F, Fut>(what: &str, within: Duration, mut cond: F) -> anyhow::Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !cond().await {
        if started.elapsed() > within {
            bail!("timed out after {} s waiting for {what}", within.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(started.elapsed())
}

/// One Patroni node.
struct Node {
    name: String,
    pg_port: u16,
    rest_port: u16,
    data_dir: PathBuf,
    config: PathBuf,
    log: PathBuf,
    patroni: Option<Child>,
}

impl Node {
    fn yaml(&self, dir: &Path, etcd_port: u16) -> String {
        format!(
            r#"scope: {SCOPE}
name: {name}
log:
  level: INFO
restapi:
  listen: 127.0.0.1:{rest}
  connect_address: 127.0.0.1:{rest}
etcd3:
  hosts: 127.0.0.1:{etcd_port}
bootstrap:
  dcs:
    ttl: 20
    loop_wait: 2
    retry_timeout: 5
    maximum_lag_on_failover: 1048576
    synchronous_mode: true
    postgresql:
      use_pg_rewind: false
      parameters:
        wal_level: replica
        hot_standby: "on"
        max_wal_senders: 10
        max_replication_slots: 10
        shared_buffers: 32MB
  initdb:
    - encoding: UTF8
    - locale: C
    - auth: trust
  pg_hba:
    - local all all trust
    - host replication replicator 127.0.0.1/32 trust
    - host all all 127.0.0.1/32 trust
postgresql:
  listen: 127.0.0.1:{pg}
  connect_address: 127.0.0.1:{pg}
  data_dir: {data}
  bin_dir: {PG_BIN}
  pgpass: {pgpass}
  authentication:
    superuser:
      username: postgres
      password: postgres
    replication:
      username: replicator
      password: replicator
  parameters:
    unix_socket_directories: '{sock}'
"#,
            name = self.name,
            rest = self.rest_port,
            pg = self.pg_port,
            data = self.data_dir.display(),
            pgpass = dir.join(format!("{}.pgpass", self.name)).display(),
            sock = dir.display(),
        )
    }

    async fn start(&mut self, dir: &Path) -> anyhow::Result<()> {
        let log = std::fs::File::create(&self.log)?;
        // Patroni itself is the child (not a `runuser` wrapper), so that killing the child kills Patroni: a Patroni
        // left running would restart its PostgreSQL and keep the leader key.
        let mut cmd = Command::new("patroni");
        if let Some((uid, gid)) = postgres_ids()? {
            cmd.uid(uid).gid(gid).env("HOME", dir).env("USER", "postgres");
        }
        cmd.arg(&self.config).stdout(Stdio::from(log.try_clone()?)).stderr(Stdio::from(log)).kill_on_drop(true);
        self.patroni = Some(cmd.spawn().context("starting patroni")?);
        Ok(())
    }

    async fn is(&self, role: &str) -> bool {
        http_status(self.rest_port, &format!("/{role}")).await == Some(200)
    }

    /// The node crashes: Patroni killed, PostgreSQL stopped like a power cut (no shutdown checkpoint).
    async fn crash(&mut self) -> anyhow::Result<()> {
        if let Some(mut p) = self.patroni.take() {
            p.start_kill()?;
            p.wait().await?;
        }
        pg_ctl(&self.data_dir, "immediate").await
    }

    /// A clean stop: Patroni asked to stop (it stops its PostgreSQL), PostgreSQL stopped anyway if still up.
    async fn stop(&mut self) {
        if let Some(mut p) = self.patroni.take() {
            if let Some(pid) = p.id() {
                // SIGTERM to the process we started, by its id.
                let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status().await;
            }
            if tokio::time::timeout(Duration::from_secs(30), p.wait()).await.is_err() {
                let _ = p.start_kill();
                let _ = p.wait().await;
            }
        }
        let _ = pg_ctl(&self.data_dir, "immediate").await;
    }
}

/// The `postgres` OS user's uid and gid when we are root (PostgreSQL refuses to run as root), `None` otherwise.
fn postgres_ids() -> anyhow::Result<Option<(u32, u32)>> {
    if !is_root() {
        return Ok(None);
    }
    let id = |flag: &str| -> anyhow::Result<u32> {
        let out = std::process::Command::new("id").args([flag, "postgres"]).output()?;
        ensure!(out.status.success(), "there is no `postgres` OS user to run PostgreSQL as");
        Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
    };
    Ok(Some((id("-u")?, id("-g")?)))
}

fn is_root() -> bool {
    std::process::Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0"))
}

/// `program` as the `postgres` OS user when we are root (PostgreSQL refuses to run as root).
fn as_postgres(program: &str) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", program]);
        c
    } else {
        Command::new(program)
    }
}

async fn pg_ctl(data_dir: &Path, mode: &str) -> anyhow::Result<()> {
    if !data_dir.join("postmaster.pid").exists() {
        return Ok(());
    }
    let status = as_postgres(&format!("{PG_BIN}/pg_ctl"))
        .arg("-D")
        .arg(data_dir)
        .args(["stop", "-m", mode, "-w"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await?;
    ensure!(status.success(), "pg_ctl stop -m {mode} -D {} failed", data_dir.display());
    Ok(())
}

fn chown_postgres(path: &Path) -> anyhow::Result<()> {
    if is_root() {
        let status = std::process::Command::new("chown").args(["-R", "postgres:postgres"]).arg(path).status()?;
        ensure!(status.success(), "chown postgres {}", path.display());
    }
    Ok(())
}

fn event(tag: &str, i: usize) -> serde_json::Value {
    json!({
        "action": format!("{tag}_{}", i % 5), "status": "success", "organization_id": format!("org{}", i % 9),
        "principal_id": format!("u{}", i % 500), "event_id": uuid::Uuid::new_v4().to_string(),
        "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true), "details": {"i": i}
    })
}

/// Runs the whole test; prints a JSON report.
pub(crate) async fn run() -> anyhow::Result<ExitCode> {
    for tool in ["etcd", "patroni"] {
        ensure!(
            which(tool),
            "`{tool}` is not installed: `apt-get install patroni etcd-server` (Debian 12) provides both"
        );
    }
    ensure!(Path::new(PG_BIN).join("postgres").exists(), "PostgreSQL 15 server binaries are missing in {PG_BIN}");
    let dir = tempfile::Builder::new().prefix("audit-db-ha-").tempdir()?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    }
    let mut etcd: Option<Child> = None;
    let mut nodes: Vec<Node> = Vec::new();
    let outcome = scenario(dir.path(), &mut etcd, &mut nodes).await;
    for n in &mut nodes {
        n.stop().await;
    }
    if let Some(mut e) = etcd {
        let _ = e.start_kill();
        let _ = e.wait().await;
    }
    match outcome {
        Ok(report) => {
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            for n in &nodes {
                let log = std::fs::read_to_string(&n.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                eprintln!("--- last lines of {}'s Patroni log:", n.name);
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
            Err(e)
        }
    }
}

fn which(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

async fn scenario(dir: &Path, etcd: &mut Option<Child>, nodes: &mut Vec<Node>) -> anyhow::Result<serde_json::Value> {
    let started = Instant::now();
    let (etcd_port, peer_port) = (free_port()?, free_port()?);
    let etcd_log = std::fs::File::create(dir.join("etcd.log"))?;
    *etcd = Some(
        Command::new("etcd")
            .arg("--data-dir")
            .arg(dir.join("etcd"))
            .args(["--name", "ha-test"])
            .arg(format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"))
            .arg(format!("--advertise-client-urls=http://127.0.0.1:{etcd_port}"))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"))
            .arg(format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"))
            .arg(format!("--initial-cluster=ha-test=http://127.0.0.1:{peer_port}"))
            .stdout(Stdio::from(etcd_log.try_clone()?))
            .stderr(Stdio::from(etcd_log))
            .kill_on_drop(true)
            .spawn()
            .context("starting etcd")?,
    );
    wait_until("etcd", Duration::from_secs(30), || async { http_status(etcd_port, "/health").await == Some(200) })
        .await?;
    eprintln!("ha-test: etcd on 127.0.0.1:{etcd_port}");

    for name in ["node1", "node2"] {
        let node = Node {
            name: name.to_string(),
            pg_port: free_port()?,
            rest_port: free_port()?,
            data_dir: dir.join(name),
            config: dir.join(format!("{name}.yml")),
            log: dir.join(format!("{name}.log")),
            patroni: None,
        };
        std::fs::write(&node.config, node.yaml(dir, etcd_port))?;
        nodes.push(node);
    }
    chown_postgres(dir)?;
    nodes[0].start(dir).await?;
    let first_leader =
        wait_until("node1 to bootstrap and lead", Duration::from_secs(120), || nodes[0].is("primary")).await?;
    nodes[1].start(dir).await?;
    let standby = wait_until("node2 to stream as the synchronous standby", Duration::from_secs(180), || async {
        nodes[1].is("replica").await && nodes[1].is("sync").await
    })
    .await?;
    eprintln!("ha-test: node1 leads (bootstrap {} s), node2 is the synchronous standby", first_leader.as_secs());

    let leader_admin = format!("postgres://postgres@127.0.0.1:{}/postgres", nodes[0].pg_port);
    let (admin, conn) = tokio_postgres::connect(&leader_admin, tokio_postgres::NoTls).await?;
    let driver = tokio::spawn(conn);
    admin.batch_execute("CREATE DATABASE audit").await?;
    drop(admin);
    let _ = driver.await;

    let url = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/audit?target_session_attrs=read-write",
        nodes[0].pg_port, nodes[1].pg_port
    );
    let mut config = AuditConfig::default();
    config.database.url = Some(url.clone());
    config.ingest.outage_patience_ms = 300_000;
    let app = App::open(config).await?;
    app.migrate().await?;
    let client = app.client().await?;

    // Writers: one bulk ingest in chunks, and single inserts (group commit).
    let bulk_client = client.clone();
    let bulk = tokio::spawn(async move {
        let mut stored = 0usize;
        for chunk in 0..BULK_EVENTS / 500 {
            let events: Vec<serde_json::Value> = (0..500).map(|i| event("ha_bulk", chunk * 500 + i)).collect();
            let report = bulk_client.insert_batch(events).await?;
            anyhow::ensure!(report.rejected() == 0, "a bulk event was rejected");
            stored += report.accepted();
        }
        anyhow::Ok(stored)
    });
    let singles: Vec<_> = (0..SINGLE_WRITERS)
        .map(|w| {
            let c = client.clone();
            tokio::spawn(async move {
                for i in 0..SINGLE_EACH {
                    c.insert(event("ha_single", w * 10_000 + i)).await?;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                anyhow::Ok(SINGLE_EACH)
            })
        })
        .collect();

    let leader_db = format!("postgres://postgres@127.0.0.1:{}/audit", nodes[0].pg_port);
    let (pg, conn) = tokio_postgres::connect(&leader_db, tokio_postgres::NoTls).await?;
    let driver = tokio::spawn(conn);
    let deadline = Instant::now() + Duration::from_secs(120);
    let at_crash = loop {
        let n: i64 = pg.query_one("SELECT count(*) FROM audit_log", &[]).await?.get(0);
        if n >= 3_000 {
            break n;
        }
        ensure!(Instant::now() < deadline, "only {n} rows arrived on the leader within 120 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    drop(pg);
    let _ = driver.await;
    ensure!(!bulk.is_finished(), "the ingest finished before the failover; nothing would be tested");

    let crash = Instant::now();
    nodes[0].crash().await?;
    eprintln!("ha-test: crashed the leader (node1) with {at_crash} rows in; waiting for Patroni to promote node2");
    let promoted = wait_until("node2 to be promoted", Duration::from_secs(120), || nodes[1].is("primary")).await?;
    eprintln!("ha-test: node2 leads {} s after the crash", promoted.as_secs());

    let bulk_stored =
        tokio::time::timeout(Duration::from_secs(300), bulk).await.context("the bulk ingest hung")???;
    let mut singles_stored = 0;
    for s in singles {
        singles_stored += tokio::time::timeout(Duration::from_secs(300), s).await.context("a writer hung")???;
    }
    let writers_done = crash.elapsed();

    // Exactly once, gap-free, on the new leader.
    let new_leader = format!("postgres://postgres@127.0.0.1:{}/audit", nodes[1].pg_port);
    let (pg, conn) = tokio_postgres::connect(&new_leader, tokio_postgres::NoTls).await?;
    let driver = tokio::spawn(conn);
    let expected = (BULK_EVENTS + SINGLE_WRITERS * SINGLE_EACH) as i64;
    let row = pg.query_one("SELECT count(*), count(DISTINCT event_id) FROM audit_log", &[]).await?;
    let (rows, distinct): (i64, i64) = (row.get(0), row.get(1));
    let gaps: i64 = pg
        .query_one(
            "SELECT count(*) FROM (SELECT organization_id, count(*) n, count(DISTINCT seq) d, min(seq) lo, \
             max(seq) hi FROM audit_log GROUP BY organization_id) s WHERE n <> d OR lo <> 0 OR hi <> n - 1",
            &[],
        )
        .await?
        .get(0);
    drop(pg);
    let _ = driver.await;
    ensure!(bulk_stored + singles_stored == expected as usize, "writers acknowledged {bulk_stored} + {singles_stored}");
    ensure!(
        rows == expected && distinct == expected,
        "new leader holds {rows} rows ({distinct} distinct), expected {expected}"
    );
    ensure!(gaps == 0, "{gaps} organisations have a gap or a repeat in seq");
    Ok(json!({
        "result": "every acknowledged event stored exactly once, seq gap-free, on the promoted node",
        "events": expected,
        "rows_on_old_leader_at_crash": at_crash,
        "patroni": {"ttl_s": 20, "loop_wait_s": 2, "synchronous_mode": true},
        "seconds": {
            "standby_in_sync_after_start": standby.as_secs_f64(),
            "crash_to_promotion": promoted.as_secs_f64(),
            "crash_to_all_writers_done": writers_done.as_secs_f64(),
            "whole_test": started.elapsed().as_secs_f64(),
        },
        "url": url,
    }))
}
