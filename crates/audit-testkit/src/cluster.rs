//! Private PostgreSQL clusters for tests that must stop, crash, restart or replicate a database — things a test
//! may never do to the shared base server.
//!
//! Each cluster lives in its own temporary directory (readable by the `postgres` OS user, which runs PostgreSQL
//! when the tests run as root) and is stopped, then deleted, when its [`TestCluster`] is dropped.

use std::ops::Deref;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::Context as _;
use tempfile::TempDir;

pub use audit_embedded::{ClusterOptions, EmbeddedError, PgBinaries, PrivateCluster};

/// A private cluster plus the temporary directory that holds it. Derefs to [`PrivateCluster`].
#[derive(Debug)]
pub struct TestCluster {
    // Field order matters: the cluster stops (its Drop) before the directory is removed.
    cluster: PrivateCluster,
    dir: TempDir,
}

impl Deref for TestCluster {
    type Target = PrivateCluster;
    fn deref(&self) -> &PrivateCluster {
        &self.cluster
    }
}

impl TestCluster {
    /// The temporary directory holding the data directory (`<dir>/data`).
    pub fn temp_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts a streaming replica of this cluster in its own temporary directory, on a free port.
    pub async fn create_replica(&self) -> anyhow::Result<TestCluster> {
        let dir = cluster_tempdir()?;
        let cluster =
            self.cluster.create_replica(dir.path().join("data"), None).await.context("creating a streaming replica")?;
        Ok(TestCluster { cluster, dir })
    }
}

/// Options tests use: stop on drop, small shared memory (several clusters may run at once on a small machine).
pub fn test_options() -> ClusterOptions {
    ClusterOptions {
        stop_on_drop: true,
        settings: vec![("shared_buffers".to_string(), "32MB".to_string())],
        ..ClusterOptions::default()
    }
}

/// A temporary directory the `postgres` OS user can traverse (mode 0755), under the system temp dir.
pub fn cluster_tempdir() -> anyhow::Result<TempDir> {
    let dir = tempfile::Builder::new().prefix("audit-db-cluster-").tempdir().context("creating a temp dir")?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod 0755 {}", dir.path().display()))?;
    Ok(dir)
}

/// Starts a fresh private cluster (database `audit`, free port) with [`test_options`].
pub async fn start_private_cluster() -> anyhow::Result<TestCluster> {
    start_private_cluster_with(test_options()).await
}

/// A fresh private cluster with `pg_stat_statements` preloaded: the index manager's tests need real statement
/// statistics, which the shared server may not collect.
pub async fn start_private_cluster_with_statements() -> anyhow::Result<TestCluster> {
    let mut options = test_options();
    options.settings.push(("shared_preload_libraries".into(), "pg_stat_statements".into()));
    start_private_cluster_with(options).await
}

/// Starts a fresh private cluster with the given options (set `stop_on_drop` unless the test stops it itself).
pub async fn start_private_cluster_with(options: ClusterOptions) -> anyhow::Result<TestCluster> {
    let dir = cluster_tempdir()?;
    let cluster = PrivateCluster::open(dir.path().join("data"), options).await.context("starting a private cluster")?;
    Ok(TestCluster { cluster, dir })
}

/// Kills `cluster`'s postmaster with SIGKILL — a crash no shutdown code of PostgreSQL sees (unlike `pg_ctl stop -m
/// immediate`, which signals it): its backends notice the dead postmaster and exit on their own. Returns the pid.
pub fn kill_postmaster(cluster: &PrivateCluster) -> anyhow::Result<i32> {
    let pid_file = cluster.data_dir().join("postmaster.pid");
    let text = std::fs::read_to_string(&pid_file).with_context(|| format!("reading {}", pid_file.display()))?;
    let pid: i32 = text
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .with_context(|| format!("{}: no pid on its first line", pid_file.display()))?;
    let out = std::process::Command::new("kill").args(["-9", &pid.to_string()]).output().context("running kill")?;
    anyhow::ensure!(out.status.success(), "kill -9 {pid}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(pid)
}

/// Starts `cluster` after a crash, retrying while the dead postmaster's children still hold its shared memory
/// ("pre-existing shared memory block is still in use"), for at most `limit`.
pub async fn start_after_crash(cluster: &PrivateCluster, limit: std::time::Duration) -> anyhow::Result<u32> {
    let started = std::time::Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        match cluster.start().await {
            Ok(()) => return Ok(attempts),
            Err(e) if started.elapsed() < limit => {
                tracing::info!(error = %e, attempts, "PostgreSQL does not start yet after the crash; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!("starting after a crash ({attempts} attempts)")));
            }
        }
    }
}
