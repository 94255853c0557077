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

/// Starts a fresh private cluster with the given options (set `stop_on_drop` unless the test stops it itself).
pub async fn start_private_cluster_with(options: ClusterOptions) -> anyhow::Result<TestCluster> {
    let dir = cluster_tempdir()?;
    let cluster = PrivateCluster::open(dir.path().join("data"), options).await.context("starting a private cluster")?;
    Ok(TestCluster { cluster, dir })
}
