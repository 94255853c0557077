//! Private `redis-server` processes for tests and benchmarks that stop, restart or cluster Redis (the machine's
//! shared Redis is [`crate::redis_url`]).
//!
//! A [`RedisServer`] runs on a free port of 127.0.0.1 without persistence, in a directory of its own (or one the
//! caller names), logging to `redis-<port>.log` there; it can be killed (SIGKILL, by its own pid) and restarted on
//! the same port, and it is killed when dropped — also when the test panics. [`RedisCluster`] is three such
//! servers joined into a Redis Cluster. Needs the `redis-server` and `redis-cli` binaries (Debian: `redis-server`,
//! which pulls in `redis-tools`).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tempfile::TempDir;

/// How long a server may take to answer `PING` after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// How a [`RedisServer`] is started.
#[derive(Debug, Clone, Default)]
pub struct RedisOptions {
    /// Port to listen on; `None`: a free one.
    pub port: Option<u16>,
    /// Working directory (log, cluster node file); `None`: a temporary directory removed with the server.
    pub dir: Option<PathBuf>,
    /// Further `redis-server` arguments, e.g. `["--maxmemory", "10mb"]`.
    pub args: Vec<String>,
}

/// A `redis-server` process this test owns. Stopped when dropped.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    args: Vec<String>,
    child: Mutex<Option<Child>>,
    _temp: Option<TempDir>,
}

impl RedisServer {
    /// Starts a private server on a free port and waits until it answers. Panics with the cause (and the server's
    /// log) if it cannot: the tests that need one cannot run without it.
    pub async fn start() -> RedisServer {
        Self::try_start(RedisOptions::default()).await.unwrap_or_else(|e| panic!("cannot start redis-server: {e:#}"))
    }

    /// Starts a server as `options` say and waits until it answers `PING`. On a port picked here, a server that
    /// exits at once (another process took the port meanwhile) is started again on another port.
    pub async fn try_start(options: RedisOptions) -> anyhow::Result<RedisServer> {
        let (dir, temp) = match options.dir {
            Some(d) => (d, None),
            None => {
                let t =
                    tempfile::Builder::new().prefix("audit-redis-").tempdir().context("creating a temporary dir")?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        let port = match options.port {
            Some(p) => p,
            None => free_port(false)?,
        };
        let mut server = RedisServer { port, dir, args: options.args, child: Mutex::new(None), _temp: temp };
        let mut tries_left = if options.port.is_some() { 0 } else { 4 };
        loop {
            match server.launch().await {
                Ok(()) => return Ok(server),
                Err(e) if tries_left == 0 => return Err(e),
                Err(e) => {
                    tries_left -= 1;
                    tracing::debug!(port = server.port, error = %format!("{e:#}"), "redis-server did not start");
                    server.port = free_port(false)?;
                }
            }
        }
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Its working directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Pid of the running process (`None` once killed).
    pub fn pid(&self) -> Option<u32> {
        self.child.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(Child::id)
    }

    /// Whether the process is alive (it may still be starting or shutting down).
    pub fn is_running(&self) -> bool {
        let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
        child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Kills the server (SIGKILL, by its own pid: no shutdown, no save) and reaps it. Does nothing if it is not
    /// running.
    pub fn kill(&self) {
        let child = self.child.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(mut c) = child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port, directory and arguments (killing it first if it runs), and waits
    /// until it answers. It starts empty (no persistence). Panics with the cause if it cannot.
    pub async fn restart(&self) {
        if let Err(e) = self.try_restart().await {
            panic!("cannot restart redis-server on port {}: {e:#}", self.port);
        }
    }

    /// Like [`RedisServer::restart`] but returns the error.
    pub async fn try_restart(&self) -> anyhow::Result<()> {
        self.kill();
        self.launch().await
    }

    /// Spawns the process and waits for `PING`; on failure the process is killed and the error carries its log.
    async fn launch(&self) -> anyhow::Result<()> {
        let log = self.dir.join(format!("redis-{}.log", self.port));
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(&log)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawning redis-server (is it installed?)")?;
        *self.child.lock().unwrap_or_else(|p| p.into_inner()) = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if command(self.port, &["PING"]).await.is_ok_and(|r| r == "PONG") {
                return Ok(());
            }
            let exited = {
                let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
                child.as_mut().map(|c| c.try_wait())
            };
            let why = match exited {
                Some(Ok(Some(status))) => Some(format!("exited with {status}")),
                Some(Err(e)) => Some(format!("cannot be waited for: {e}")),
                None => Some("was killed while starting".to_string()),
                Some(Ok(None)) if Instant::now() >= deadline => {
                    Some(format!("did not answer PING within {} s", START_TIMEOUT.as_secs()))
                }
                Some(Ok(None)) => None,
            };
            if let Some(why) = why {
                self.kill();
                let tail = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = tail.lines().rev().take(10).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                bail!("redis-server on port {} {why}; its log ends:\n{}", self.port, tail.join("\n"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Three `redis-server`s joined into a Redis Cluster (all slots covered, no replicas). Stopped when dropped.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    _dir: TempDir,
}

impl RedisCluster {
    /// Starts three cluster-enabled servers, joins them with `redis-cli --cluster create` and waits until every
    /// node reports `cluster_state:ok`. Panics with the cause if it cannot.
    pub async fn start() -> RedisCluster {
        Self::try_start().await.unwrap_or_else(|e| panic!("cannot start a redis cluster: {e:#}"))
    }

    /// Like [`RedisCluster::start`] but returns the error.
    pub async fn try_start() -> anyhow::Result<RedisCluster> {
        let dir = tempfile::Builder::new().prefix("audit-redis-cluster-").tempdir().context("creating a temp dir")?;
        let mut nodes = Vec::new();
        let mut tries_left = 5;
        while nodes.len() < 3 {
            // A node also listens on `port + 10000` (the cluster bus), so both must be free.
            let port = free_port(true)?;
            let conf = dir.path().join(format!("nodes-{port}.conf"));
            let args = ["--cluster-enabled", "yes", "--cluster-node-timeout", "5000", "--cluster-config-file"]
                .into_iter()
                .map(String::from)
                .chain([conf.to_string_lossy().into_owned()])
                .collect();
            let options = RedisOptions { port: Some(port), dir: Some(dir.path().to_path_buf()), args };
            match RedisServer::try_start(options).await {
                Ok(node) => nodes.push(node),
                // The port was taken between the check and the start: pick another (a few times).
                Err(e) if tries_left > 0 => {
                    tries_left -= 1;
                    tracing::debug!(port, error = %format!("{e:#}"), "cluster node did not start; another port");
                }
                Err(e) => return Err(e),
            }
        }
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port())).collect();
        let out = tokio::process::Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .arg("--cluster-yes")
            .stdin(Stdio::null())
            .output()
            .await
            .context("running redis-cli --cluster create (is redis-tools installed?)")?;
        if !out.status.success() {
            bail!(
                "redis-cli --cluster create failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        for n in &nodes {
            while !command(n.port(), &["CLUSTER", "INFO"]).await.is_ok_and(|i| i.contains("cluster_state:ok")) {
                if Instant::now() >= deadline {
                    bail!("the cluster did not reach cluster_state:ok within 30 s (node {})", n.port());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(RedisCluster { nodes, _dir: dir })
    }

    /// The nodes (each a primary).
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// The nodes' URLs joined by commas: the seed list a cluster client takes as `REDIS_URL`.
    pub fn seeds(&self) -> String {
        self.nodes.iter().map(RedisServer::url).collect::<Vec<_>>().join(",")
    }
}

/// A port of 127.0.0.1 nobody listens on now (and, for a cluster node, whose bus port `port + 10000` is free too).
fn free_port(with_bus: bool) -> anyhow::Result<u16> {
    if !with_bus {
        return Ok(TcpListener::bind(("127.0.0.1", 0)).context("finding a free port")?.local_addr()?.port());
    }
    for _ in 0..1000 {
        let p = 20_000 + rand::random::<u16>() % 20_000;
        if TcpListener::bind(("127.0.0.1", p)).is_ok() && TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
            return Ok(p);
        }
    }
    bail!("no free port pair (port, port + 10000) found between 20000 and 40000")
}

/// Sends one command to the server on `port` and returns its reply as text; each step bounded by 500 ms.
async fn command(port: u16, args: &[&str]) -> anyhow::Result<String> {
    let bound = Duration::from_millis(500);
    let client = ::redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    let mut conn = tokio::time::timeout(bound, client.get_multiplexed_async_connection()).await??;
    let mut cmd = ::redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    Ok(tokio::time::timeout(bound, cmd.query_async::<String>(&mut conn)).await??)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_server_can_be_killed_and_restarted_on_its_port() {
        let server = RedisServer::start().await;
        let port = server.port();
        assert!(server.is_running());
        assert_eq!(command(port, &["PING"]).await.unwrap(), "PONG");
        assert_eq!(command(port, &["SET", "k", "v"]).await.unwrap(), "OK");

        server.kill();
        assert!(!server.is_running());
        assert!(server.pid().is_none());
        assert!(command(port, &["PING"]).await.is_err(), "a killed server does not answer");

        server.restart().await;
        assert!(server.is_running());
        assert_eq!(server.port(), port);
        assert!(server.url().ends_with(&format!(":{port}")));
        assert_eq!(command(port, &["DBSIZE"]).await.unwrap(), "0", "restarted empty");
        assert!(server.dir().join(format!("redis-{port}.log")).exists());

        drop(server);
        assert!(command(port, &["PING"]).await.is_err(), "dropping the server stops it");
    }

    #[tokio::test]
    async fn a_server_that_cannot_start_says_why() {
        let taken = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = taken.local_addr().unwrap().port();
        let err =
            RedisServer::try_start(RedisOptions { port: Some(port), ..RedisOptions::default() }).await.unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains(&port.to_string()) && text.contains("log ends"), "{text}");
    }
}
