//! audit-embedded: private PostgreSQL clusters (the product's embedded default, and the clusters tests stop, crash
//! and replicate).
//!
//! audit-db needs a real PostgreSQL: when `DATABASE_URL` is unset the product runs its own private cluster from the
//! system's PostgreSQL binaries (data directory `.audit-db/` by default), and tests that must stop, crash or
//! replicate a database use the same code on a temporary directory. Durability is the product, so the cluster keeps
//! `fsync` on; it listens on 127.0.0.1 only, with its Unix socket inside its data directory so that it never collides
//! with a system cluster.
//!
//! PostgreSQL refuses to run as root: when this process is root, every PostgreSQL program runs as the `postgres`
//! OS user through `runuser -u postgres --` and the data directory belongs to that user.

#![warn(missing_docs, clippy::print_stdout, clippy::print_stderr)]

use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::process::Command;

/// Environment variable naming the directory that holds `initdb`, `pg_ctl`, `pg_basebackup`.
pub const PG_BIN_ENV: &str = "AUDIT_DB_PG_BIN";

/// Data directory used when the configuration names none (relative to the working directory).
pub const DEFAULT_DATA_DIR: &str = ".audit-db";

/// Database created in every private cluster and named by [`PrivateCluster::url`].
pub const DEFAULT_DATABASE: &str = "audit";

/// File in the data directory that remembers the chosen port, so the next run serves the same URL.
pub const PORT_FILE: &str = "audit-db-port";

/// Settings file (included from `postgresql.conf`) that this module owns and rewrites on every start.
pub const SETTINGS_FILE: &str = "audit-db.conf";

/// Server log written by `pg_ctl -l`, inside the data directory.
pub const LOG_FILE: &str = "postgres.log";

/// What to tell an operator whose machine lacks the PostgreSQL server programs.
pub const INSTALL_HINT: &str = "install the PostgreSQL 15 server: `apt-get install postgresql-15` (or \
`apt-get install postgresql`) on Debian/Ubuntu, `brew install postgresql@15` on macOS (Homebrew); or set \
AUDIT_DB_PG_BIN to the directory holding initdb and pg_ctl; or set DATABASE_URL to use an existing server";

const OS_USER: &str = "postgres";
/// Unix socket paths are limited to 107 bytes; `/.s.PGSQL.NNNNN` takes 15 of them.
const MAX_SOCKET_DIR_LEN: usize = 90;
const PORT_ATTEMPTS: usize = 5;

/// Why a private cluster could not be found, created, started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    /// No usable PostgreSQL server binaries; the message names what to install.
    #[error("PostgreSQL server binaries (initdb, pg_ctl) not found (looked in: {searched}); {hint}", hint = INSTALL_HINT)]
    BinariesNotFound {
        /// Every place that was tried, in order.
        searched: String,
    },
    /// The data directory was created by another PostgreSQL major version than the binaries found.
    #[error(
        "data directory {data_dir} holds a PostgreSQL {data_version} cluster but the binaries in {bin_dir} are \
         PostgreSQL {bin_version}; point AUDIT_DB_PG_BIN at PostgreSQL {data_version} binaries or use another data \
         directory"
    )]
    VersionMismatch {
        /// The cluster's directory.
        data_dir: PathBuf,
        /// Content of its `PG_VERSION`.
        data_version: String,
        /// Directory of the binaries found.
        bin_dir: PathBuf,
        /// Major version of those binaries.
        bin_version: String,
    },
    /// The `postgres` OS user cannot reach the data directory (running as root).
    #[error(
        "the `postgres` OS user cannot access {path} (needed for {data_dir}); make every parent directory \
         traversable by it (e.g. `chmod o+x`) or choose a data directory under /tmp"
    )]
    NotAccessible {
        /// First directory on the way that the user cannot traverse.
        path: PathBuf,
        /// The data directory that was requested.
        data_dir: PathBuf,
    },
    /// A file-system operation failed.
    #[error("{action}: {source}")]
    Io {
        /// What was being done, naming the path.
        action: String,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// A PostgreSQL program exited with a failure.
    #[error("`{command}` failed ({status}): {detail}")]
    Command {
        /// The command line, for reproduction by an operator.
        command: String,
        /// Exit status.
        status: String,
        /// Its stderr/stdout, and the tail of the server log when the server was involved.
        detail: String,
    },
    /// The cluster runs (or was started) but does not answer SQL.
    #[error("cannot use the embedded cluster at {url}: {source}")]
    Sql {
        /// The URL tried.
        url: String,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The cluster did not come up in time.
    #[error("the embedded cluster at {data_dir} did not accept connections within {seconds} s")]
    Timeout {
        /// The cluster's directory.
        data_dir: PathBuf,
        /// How long it was given.
        seconds: u64,
    },
}

impl EmbeddedError {
    fn io(action: impl Into<String>, source: io::Error) -> Self {
        Self::Io { action: action.into(), source }
    }
}

/// Result alias of this module.
pub type Result<T, E = EmbeddedError> = std::result::Result<T, E>;

/// Server settings recommended for audit-db's write path, written into every private cluster (and listed in
/// docs/operations.md for operators of their own server). Why: bulk ingest writes WAL fast; with the default 1 GB
/// `max_wal_size` a checkpoint was forced every ~400k rows, and every page first touched after a checkpoint is
/// written to WAL whole again (full-page writes). Spacing checkpoints out and compressing those full-page images
/// (lz4: cheap on CPU) cuts WAL volume without weakening durability (`fsync`, `synchronous_commit` and
/// `full_page_writes` stay on).
pub const WRITE_PATH_SETTINGS: &[(&str, &str)] = &[
    ("max_wal_size", "8GB"),
    ("min_wal_size", "1GB"),
    ("checkpoint_timeout", "15min"),
    ("checkpoint_completion_target", "0.9"),
    ("wal_compression", "lz4"),
];

/// How a private cluster is set up. `Default` gives the product's embedded settings.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// TCP port; `None` reuses the port remembered in the data directory, or picks a free one.
    pub port: Option<u16>,
    /// Directory of the PostgreSQL binaries; `None` → `$AUDIT_DB_PG_BIN`, `pg_config --bindir`, newest
    /// `/usr/lib/postgresql/*/bin`.
    pub bin_dir: Option<PathBuf>,
    /// Database created if absent and named by [`PrivateCluster::url`].
    pub database: String,
    /// Extra `name = value` server settings, written after the built-in ones (so they win).
    pub settings: Vec<(String, String)>,
    /// Stop the server (fast mode) when the handle is dropped, if this handle started it. Tests want this; a
    /// long-lived embedded server may prefer to leave it running for the next process to reuse.
    pub stop_on_drop: bool,
    /// How long to wait for start, stop and connectability.
    pub timeout: Duration,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            port: None,
            bin_dir: None,
            database: DEFAULT_DATABASE.to_string(),
            settings: Vec::new(),
            stop_on_drop: false,
            timeout: Duration::from_secs(60),
        }
    }
}

/// Located PostgreSQL server binaries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgBinaries {
    /// Directory holding `initdb`, `pg_ctl`, `pg_basebackup`.
    pub dir: PathBuf,
}

impl PgBinaries {
    /// Finds the binaries: `explicit` (a configured directory) if given, else `$AUDIT_DB_PG_BIN`, else
    /// `pg_config --bindir`, else the newest `/usr/lib/postgresql/*/bin` and a few well-known locations. An explicitly
    /// named directory that lacks the programs is an error (never silently replaced by another version).
    pub async fn find(explicit: Option<&Path>) -> Result<Self> {
        let env = std::env::var_os(PG_BIN_ENV).filter(|v| !v.is_empty()).map(PathBuf::from);
        if let Some(dir) = explicit.map(Path::to_path_buf).or(env) {
            return if has_server_programs(&dir) {
                Ok(Self { dir })
            } else {
                Err(EmbeddedError::BinariesNotFound { searched: dir.display().to_string() })
            };
        }
        let mut searched = Vec::new();
        match Command::new("pg_config").arg("--bindir").stdin(Stdio::null()).output().await {
            Ok(out) if out.status.success() => {
                let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
                if has_server_programs(&dir) {
                    return Ok(Self { dir });
                }
                searched.push(format!("pg_config --bindir ({})", dir.display()));
            }
            _ => searched.push("pg_config --bindir (not available)".to_string()),
        }
        let mut versioned: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let version: u32 = e.file_name().to_str()?.parse().ok()?;
                Some((version, e.path().join("bin")))
            })
            .collect();
        versioned.sort();
        searched.push("/usr/lib/postgresql/*/bin".to_string());
        if let Some((_, dir)) = versioned.into_iter().rev().find(|(_, d)| has_server_programs(d)) {
            return Ok(Self { dir });
        }
        for dir in ["/opt/homebrew/opt/postgresql@15/bin", "/usr/local/opt/postgresql@15/bin", "/usr/pgsql-15/bin"] {
            let dir = PathBuf::from(dir);
            if has_server_programs(&dir) {
                return Ok(Self { dir });
            }
            searched.push(dir.display().to_string());
        }
        Err(EmbeddedError::BinariesNotFound { searched: searched.join(", ") })
    }

    /// Path of one program in the directory.
    pub fn program(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Major version of the binaries (`15`), from `pg_ctl --version`.
    pub async fn major_version(&self) -> Result<String> {
        let out = Command::new(self.program("pg_ctl"))
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| EmbeddedError::io(format!("running {}", self.program("pg_ctl").display()), e))?;
        let text = String::from_utf8_lossy(&out.stdout);
        parse_major_version(&text).ok_or_else(|| EmbeddedError::Command {
            command: format!("{} --version", self.program("pg_ctl").display()),
            status: out.status.to_string(),
            detail: format!("unexpected output {text:?}"),
        })
    }
}

fn has_server_programs(dir: &Path) -> bool {
    ["initdb", "pg_ctl", "postgres"].iter().all(|p| dir.join(p).is_file())
}

fn parse_major_version(text: &str) -> Option<String> {
    let rest = &text[text.find("(PostgreSQL)")? + "(PostgreSQL)".len()..];
    let version = rest.split_whitespace().next()?;
    let major: String = version.chars().take_while(char::is_ascii_digit).collect();
    (!major.is_empty()).then_some(major)
}

/// Who PostgreSQL programs run as: this process, or the `postgres` OS user when this process is root.
#[derive(Debug, Clone, Copy)]
struct RunAs {
    /// `(uid, gid)` of the `postgres` user when we are root.
    postgres: Option<(u32, u32)>,
}

impl RunAs {
    async fn detect() -> Result<Self> {
        if effective_uid().await != Some(0) {
            return Ok(Self { postgres: None });
        }
        let uid = id_of(&["-u", OS_USER]).await;
        let gid = id_of(&["-g", OS_USER]).await;
        match (uid, gid) {
            (Some(uid), Some(gid)) => Ok(Self { postgres: Some((uid, gid)) }),
            _ => Err(EmbeddedError::Command {
                command: format!("id -u {OS_USER}"),
                status: "failed".to_string(),
                detail: format!(
                    "running as root needs the `{OS_USER}` OS user (PostgreSQL refuses to run as root); {INSTALL_HINT}"
                ),
            }),
        }
    }

    fn command(&self, program: &Path) -> Command {
        let mut cmd = match self.postgres {
            Some(_) => {
                let mut c = Command::new("runuser");
                c.args(["-u", OS_USER, "--"]).arg(program);
                c
            }
            None => Command::new(program),
        };
        // Absolute paths everywhere; "/" is a working directory every user can enter.
        cmd.current_dir("/").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        for var in ["PGDATA", "PGPORT", "PGHOST", "PGHOSTADDR", "PGUSER", "PGDATABASE", "PGOPTIONS", "PGSERVICE"] {
            cmd.env_remove(var);
        }
        cmd
    }

    fn std_command(&self, program: &Path) -> std::process::Command {
        let mut cmd = match self.postgres {
            Some(_) => {
                let mut c = std::process::Command::new("runuser");
                c.args(["-u", OS_USER, "--"]).arg(program);
                c
            }
            None => std::process::Command::new(program),
        };
        cmd.current_dir("/").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        cmd
    }

    /// Gives a file or directory we created to the `postgres` user (no-op when not root).
    fn chown(&self, path: &Path) -> Result<()> {
        if let Some((uid, gid)) = self.postgres {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .map_err(|e| EmbeddedError::io(format!("chown {} to {OS_USER}", path.display()), e))?;
        }
        Ok(())
    }

    /// Checks, as root, that the `postgres` user can write into `dir`; names the first blocking ancestor otherwise.
    async fn check_access(&self, dir: &Path) -> Result<()> {
        if self.postgres.is_none() {
            return Ok(());
        }
        let test = Path::new("test");
        let ok = |out: io::Result<Output>| out.map(|o| o.status.success()).unwrap_or(false);
        if ok(self.command(test).arg("-w").arg(dir).arg("-a").arg("-x").arg(dir).output().await) {
            return Ok(());
        }
        let mut blocking = dir.to_path_buf();
        for ancestor in dir.ancestors().collect::<Vec<_>>().into_iter().rev() {
            if !ok(self.command(test).arg("-x").arg(ancestor).output().await) {
                blocking = ancestor.to_path_buf();
                break;
            }
        }
        Err(EmbeddedError::NotAccessible { path: blocking, data_dir: dir.to_path_buf() })
    }
}

async fn effective_uid() -> Option<u32> {
    if let Ok(status) = tokio::fs::read_to_string("/proc/self/status").await {
        let line = status.lines().find(|l| l.starts_with("Uid:"))?;
        return line.split_whitespace().nth(2)?.parse().ok();
    }
    id_of(&["-u"]).await
}

async fn id_of(args: &[&str]) -> Option<u32> {
    let out = Command::new("id").args(args).stdin(Stdio::null()).output().await.ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

fn command_line(cmd: &Command) -> String {
    let std = cmd.as_std();
    let mut line = std.get_program().to_string_lossy().into_owned();
    for arg in std.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

async fn run(mut cmd: Command) -> Result<Output> {
    let line = command_line(&cmd);
    let out = cmd.output().await.map_err(|e| EmbeddedError::io(format!("running `{line}`"), e))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(EmbeddedError::Command { command: line, status: out.status.to_string(), detail: output_text(&out) })
    }
}

fn output_text(out: &Output) -> String {
    let mut text = String::from_utf8_lossy(&out.stderr).trim().to_string();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !stdout.trim().is_empty() {
        if !text.is_empty() {
            text.push_str(" | ");
        }
        text.push_str(stdout.trim());
    }
    text
}

/// Reads the port of a running server from `postmaster.pid` (line 4), if the file exists.
fn pid_file_port(data_dir: &Path) -> Option<u16> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    text.lines().nth(3)?.trim().parse().ok()
}

fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))
        .map_err(|e| EmbeddedError::io("finding a free TCP port on 127.0.0.1", e))?;
    listener.local_addr().map(|a| a.port()).map_err(|e| EmbeddedError::io("reading a bound port", e))
}

/// A name usable as a replication slot (`[a-z0-9_]`, ≤ 63 bytes), stable for a given replica directory.
fn slot_name_for(dir: &Path) -> String {
    // FNV-1a: stable across Rust versions, unlike `DefaultHasher`.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in dir.as_os_str().as_encoded_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let base: String = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(24)
        .collect();
    format!("audit_replica_{base}_{hash:016x}")
}

fn quote_setting(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn absolute(path: &Path) -> Result<PathBuf> {
    if path.is_absolute() {
        Ok(path.to_path_buf())
    } else {
        let cwd = std::env::current_dir().map_err(|e| EmbeddedError::io("reading the working directory", e))?;
        Ok(cwd.join(path))
    }
}

/// A PostgreSQL cluster private to this application (or test), run from the system's binaries.
///
/// Created with [`PrivateCluster::open`]; a replica of it with [`PrivateCluster::create_replica`]. The handle does
/// not stop the server on drop unless [`ClusterOptions::stop_on_drop`] is set.
#[derive(Debug)]
pub struct PrivateCluster {
    data_dir: PathBuf,
    port: u16,
    bins: PgBinaries,
    run_as: RunAs,
    options: ClusterOptions,
    /// Whether this handle started the server (only then does `stop_on_drop` stop it).
    started_here: AtomicBool,
}

impl PrivateCluster {
    /// The product's default data directory, `.audit-db/` under the working directory.
    pub fn default_data_dir() -> PathBuf {
        PathBuf::from(DEFAULT_DATA_DIR)
    }

    /// Opens the cluster in `data_dir`: creates it with `initdb` if needed, writes its settings, reuses the server
    /// if one already runs on that directory, otherwise starts it; then creates the database if absent.
    pub async fn open(data_dir: impl AsRef<Path>, options: ClusterOptions) -> Result<Self> {
        let data_dir = absolute(data_dir.as_ref())?;
        let bins = PgBinaries::find(options.bin_dir.as_deref()).await?;
        let run_as = RunAs::detect().await?;
        let fresh = !data_dir.join("PG_VERSION").is_file();
        if fresh {
            create_owned_dir(&run_as, &data_dir).await?;
            let mut initdb = run_as.command(&bins.program("initdb"));
            initdb.arg("-D").arg(&data_dir).args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C"]);
            run(initdb).await?;
        } else {
            run_as.check_access(&data_dir).await?;
            let data_version = std::fs::read_to_string(data_dir.join("PG_VERSION"))
                .map_err(|e| EmbeddedError::io(format!("reading {}/PG_VERSION", data_dir.display()), e))?
                .trim()
                .to_string();
            let bin_version = bins.major_version().await?;
            if data_version != bin_version {
                return Err(EmbeddedError::VersionMismatch {
                    data_dir,
                    data_version,
                    bin_dir: bins.dir.clone(),
                    bin_version,
                });
            }
        }
        ensure_base_config(&data_dir)?;

        let mut cluster = Self { data_dir, port: 0, bins, run_as, options, started_here: AtomicBool::new(false) };

        if let (true, Some(port)) = (cluster.postmaster_alive().await, pid_file_port(&cluster.data_dir)) {
            if cluster.options.port.is_some_and(|p| p != port) {
                tracing::warn!(
                    data_dir = %cluster.data_dir.display(),
                    requested = ?cluster.options.port,
                    running = port,
                    "embedded PostgreSQL already runs on another port; reusing it"
                );
            }
            cluster.port = port;
            cluster.wait_connectable().await?;
            cluster.write_port_file()?;
            tracing::info!(
                "using embedded PostgreSQL at {} (port {}, already running)",
                cluster.data_dir.display(),
                port
            );
        } else {
            let (mut port, explicit) = match cluster.options.port {
                Some(p) => (p, true),
                None => match cluster.remembered_port() {
                    Some(p) => (p, false),
                    None => (free_port()?, false),
                },
            };
            let mut attempt = 1;
            loop {
                cluster.port = port;
                match cluster.start_server().await {
                    Ok(()) => break,
                    Err(StartFailure::PortInUse(_)) if !explicit && attempt < PORT_ATTEMPTS => {
                        tracing::warn!(port, "port taken; trying another one for the embedded PostgreSQL");
                        port = free_port()?;
                        attempt += 1;
                    }
                    Err(StartFailure::PortInUse(e) | StartFailure::Other(e)) => return Err(e),
                }
            }
            cluster.write_port_file()?;
        }
        cluster.ensure_database().await?;
        Ok(cluster)
    }

    /// URL of the cluster's database (`postgres://postgres@127.0.0.1:<port>/audit`).
    pub fn url(&self) -> String {
        self.url_for(&self.options.database)
    }

    /// URL of another database of the same server (e.g. `postgres` for administration).
    pub fn url_for(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{}", self.port, database)
    }

    /// TCP port the server listens on (127.0.0.1 only).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Absolute path of the data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Path of the server log, for diagnostics.
    pub fn log_path(&self) -> PathBuf {
        self.data_dir.join(LOG_FILE)
    }

    /// Directory of the PostgreSQL binaries in use.
    pub fn bin_dir(&self) -> &Path {
        &self.bins.dir
    }

    /// The options this cluster was opened with.
    pub fn options(&self) -> &ClusterOptions {
        &self.options
    }

    /// Starts the server on its port if it is not running (no-op otherwise).
    pub async fn start(&self) -> Result<()> {
        if self.postmaster_alive().await {
            return self.wait_connectable().await;
        }
        self.start_server().await.map_err(|(StartFailure::PortInUse(e) | StartFailure::Other(e))| e)
    }

    /// Stops the server cleanly (`pg_ctl stop -m fast`: disconnects clients, checkpoints). No-op when stopped.
    pub async fn stop(&self) -> Result<()> {
        self.stop_mode("fast").await
    }

    /// Stops the server like a crash (`-m immediate`: no checkpoint; the next start runs crash recovery).
    pub async fn stop_immediate(&self) -> Result<()> {
        self.stop_mode("immediate").await
    }

    /// Fast stop, then start.
    pub async fn restart(&self) -> Result<()> {
        self.stop().await?;
        self.start().await
    }

    /// Whether the server process runs on this data directory and accepts connections.
    pub async fn is_running(&self) -> bool {
        self.postmaster_alive().await && self.try_connect().await.is_ok()
    }

    /// Promotes a standby to a primary (`pg_ctl promote`, waits until it accepts writes).
    pub async fn promote(&self) -> Result<()> {
        let mut cmd = self.pg_ctl();
        cmd.args(["-w", "-t"]).arg(self.timeout_secs().to_string()).arg("promote");
        run(cmd).await.map(drop)
    }

    /// Creates a streaming replica of this (running) cluster in `data_dir` with `pg_basebackup -R -X stream -C -S
    /// <slot>` and starts it on `port` (or a free port). A directory that already holds a cluster is just opened.
    pub async fn create_replica(&self, data_dir: impl AsRef<Path>, port: Option<u16>) -> Result<PrivateCluster> {
        let dir = absolute(data_dir.as_ref())?;
        let options = ClusterOptions { port, ..self.options.clone() };
        if dir.join("PG_VERSION").is_file() {
            return PrivateCluster::open(&dir, options).await;
        }
        create_owned_dir(&self.run_as, &dir).await?;
        let slot = slot_name_for(&dir);
        // A slot left by an earlier replica at the same path (since deleted) would make `-C` fail.
        let (client, conn) = self.connect_db("postgres").await?;
        let conn = tokio::spawn(conn);
        let dropped = client
            .execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                 WHERE slot_name = $1 AND NOT active",
                &[&slot],
            )
            .await;
        drop(client);
        let _ = conn.await;
        dropped.map_err(|source| EmbeddedError::Sql { url: self.url_for("postgres"), source })?;

        let mut cmd = self.run_as.command(&self.bins.program("pg_basebackup"));
        cmd.args(["-h", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .args(["-U", "postgres", "-D"])
            .arg(&dir)
            .args(["-R", "-X", "stream", "-c", "fast", "-C", "-S"])
            .arg(&slot);
        run(cmd).await?;
        // Files copied from the primary that describe the primary, not the replica.
        for file in [PORT_FILE, LOG_FILE] {
            match std::fs::remove_file(dir.join(file)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(EmbeddedError::io(format!("removing {}", dir.join(file).display()), e));
                }
                _ => {}
            }
        }
        tracing::info!(primary_port = self.port, slot = %slot, "created streaming replica at {}", dir.display());
        PrivateCluster::open(&dir, options).await
    }

    fn timeout_secs(&self) -> u64 {
        self.options.timeout.as_secs().max(1)
    }

    fn pg_ctl(&self) -> Command {
        let mut cmd = self.run_as.command(&self.bins.program("pg_ctl"));
        cmd.arg("-D").arg(&self.data_dir);
        cmd
    }

    /// `pg_ctl status`: 0 = running, 3 = not running — unless the postmaster it names is a zombie. A postmaster that
    /// died (`kill -9`, OOM killer) stays a zombie until its parent reaps it, and where nothing does (an init that does
    /// not reap orphans, a container whose PID 1 is not an init) `pg_ctl status` still answers "running", so
    /// [`Self::start`] would wait for a dead server instead of starting it (found by the postmaster-kill fault).
    async fn postmaster_alive(&self) -> bool {
        let mut cmd = self.pg_ctl();
        cmd.arg("status");
        matches!(cmd.output().await, Ok(out) if out.status.success()) && !self.postmaster_is_zombie()
    }

    /// Whether the pid of `postmaster.pid` is a zombie (Linux `/proc`; elsewhere: never).
    fn postmaster_is_zombie(&self) -> bool {
        let Some(pid) = std::fs::read_to_string(self.data_dir.join("postmaster.pid"))
            .ok()
            .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<u32>().ok()))
        else {
            return false;
        };
        // `/proc/<pid>/stat`: `pid (comm) state …`; comm may hold spaces and parentheses, the state follows the last `)`.
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')))
            .unwrap_or(false)
    }

    fn remembered_port(&self) -> Option<u16> {
        std::fs::read_to_string(self.data_dir.join(PORT_FILE)).ok()?.trim().parse().ok()
    }

    fn write_port_file(&self) -> Result<()> {
        write_owned(&self.run_as, &self.data_dir.join(PORT_FILE), &format!("{}\n", self.port))
    }

    fn write_settings(&self) -> Result<()> {
        let dir = self.data_dir.display().to_string();
        let socket_dir = if dir.len() <= MAX_SOCKET_DIR_LEN { dir.as_str() } else { "" };
        let mut text = String::from(
            "# Written by audit-db on every start; edit ClusterOptions::settings instead.\n\
             listen_addresses = '127.0.0.1'\n",
        );
        let _ = writeln!(text, "port = {}", self.port);
        let _ = writeln!(text, "unix_socket_directories = {}", quote_setting(socket_dir));
        text.push_str(
            "max_connections = 200\n\
             fsync = on\n\
             synchronous_commit = on\n\
             full_page_writes = on\n\
             wal_level = replica\n\
             max_wal_senders = 10\n\
             max_replication_slots = 10\n\
             hot_standby = on\n\
             logging_collector = off\n\
             log_line_prefix = '%m [%p] '\n",
        );
        for (name, value) in WRITE_PATH_SETTINGS {
            let _ = writeln!(text, "{name} = {}", quote_setting(value));
        }
        for (name, value) in &self.options.settings {
            let _ = writeln!(text, "{name} = {}", quote_setting(value));
        }
        write_owned(&self.run_as, &self.data_dir.join(SETTINGS_FILE), &text)
    }

    async fn start_server(&self) -> std::result::Result<(), StartFailure> {
        self.write_settings().map_err(StartFailure::Other)?;
        let log = self.log_path();
        let log_start = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        tracing::info!("using embedded PostgreSQL at {} (port {})", self.data_dir.display(), self.port);
        let mut cmd = self.pg_ctl();
        cmd.args(["-w", "-t"]).arg(self.timeout_secs().to_string()).arg("-l").arg(&log).arg("start");
        match run(cmd).await {
            Ok(_) => {
                self.started_here.store(true, Ordering::SeqCst);
                self.wait_connectable().await.map_err(StartFailure::Other)
            }
            Err(EmbeddedError::Command { command, status, detail }) => {
                let new_log = read_from(&log, log_start);
                let tail: Vec<&str> = new_log.lines().rev().take(20).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                let err = EmbeddedError::Command {
                    command,
                    status,
                    detail: format!("{detail}\n--- {} ---\n{}", log.display(), tail.join("\n")),
                };
                if new_log.contains("could not create any TCP/IP sockets") || new_log.contains("Address already in use")
                {
                    Err(StartFailure::PortInUse(err))
                } else {
                    Err(StartFailure::Other(err))
                }
            }
            Err(e) => Err(StartFailure::Other(e)),
        }
    }

    async fn stop_mode(&self, mode: &str) -> Result<()> {
        if !self.postmaster_alive().await {
            return Ok(());
        }
        let mut cmd = self.pg_ctl();
        cmd.args(["-m", mode, "-w", "-t"]).arg(self.timeout_secs().to_string()).arg("stop");
        match run(cmd).await {
            Ok(_) => Ok(()),
            // Stopped in between (e.g. by another handle).
            Err(_) if !self.postmaster_alive().await => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn connect_db(
        &self,
        database: &str,
    ) -> std::result::Result<
        (tokio_postgres::Client, tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>),
        EmbeddedError,
    > {
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(self.port)
            .user("postgres")
            .dbname(database)
            .connect_timeout(Duration::from_secs(5))
            .application_name("audit-db-embedded");
        config
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|source| EmbeddedError::Sql { url: self.url_for(database), source })
    }

    async fn try_connect(&self) -> Result<()> {
        let (client, conn) = self.connect_db("postgres").await?;
        let conn = tokio::spawn(conn);
        let res = client.simple_query("SELECT 1").await;
        drop(client);
        let _ = conn.await;
        res.map(drop).map_err(|source| EmbeddedError::Sql { url: self.url_for("postgres"), source })
    }

    async fn wait_connectable(&self) -> Result<()> {
        let deadline = Instant::now() + self.options.timeout;
        loop {
            match self.try_connect().await {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() >= deadline => {
                    tracing::warn!(error = %e, "embedded PostgreSQL does not accept connections");
                    return Err(EmbeddedError::Timeout {
                        data_dir: self.data_dir.clone(),
                        seconds: self.options.timeout.as_secs(),
                    });
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Creates the configured database unless it exists or the server is a standby (which receives it by WAL).
    async fn ensure_database(&self) -> Result<()> {
        let (client, conn) = self.connect_db("postgres").await?;
        let conn = tokio::spawn(conn);
        let res = async {
            let row = client
                .query_one(
                    "SELECT pg_is_in_recovery(), EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)",
                    &[&self.options.database],
                )
                .await?;
            let (in_recovery, exists): (bool, bool) = (row.get(0), row.get(1));
            if !in_recovery && !exists {
                let sql = format!(
                    "CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8'",
                    quote_ident(&self.options.database)
                );
                match client.batch_execute(&sql).await {
                    // Created concurrently by another process.
                    Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE) => {}
                    other => other?,
                }
            }
            Ok::<_, tokio_postgres::Error>(())
        }
        .await;
        drop(client);
        let _ = conn.await;
        res.map_err(|source| EmbeddedError::Sql { url: self.url(), source })
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        if !self.options.stop_on_drop || !self.started_here.load(Ordering::SeqCst) {
            return;
        }
        let mut cmd = self.run_as.std_command(&self.bins.program("pg_ctl"));
        cmd.arg("-D").arg(&self.data_dir).args(["-m", "fast", "-w", "-t"]).arg(self.timeout_secs().to_string());
        cmd.arg("stop");
        match cmd.status() {
            Ok(status) if status.success() => {}
            // pg_ctl exits 1 when the server was already stopped; nothing to report then.
            Ok(status) => tracing::debug!(%status, data_dir = %self.data_dir.display(), "pg_ctl stop on drop"),
            Err(e) => {
                tracing::warn!(error = %e, data_dir = %self.data_dir.display(), "cannot stop embedded PostgreSQL")
            }
        }
    }
}

enum StartFailure {
    PortInUse(EmbeddedError),
    Other(EmbeddedError),
}

fn read_from(path: &Path, offset: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(path)
        && f.seek(SeekFrom::Start(offset)).is_ok()
    {
        let mut bytes = Vec::new();
        let _ = f.read_to_end(&mut bytes);
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    text
}

/// Creates `dir` (and parents) and, as root, hands it to the `postgres` user with mode 0700.
async fn create_owned_dir(run_as: &RunAs, dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    // Never chmod/chown a directory that holds someone's files.
    if let Ok(mut entries) = std::fs::read_dir(dir)
        && entries.next().is_some()
    {
        return Err(EmbeddedError::io(
            format!("preparing {}", dir.display()),
            io::Error::other("the directory is not empty and holds no PostgreSQL cluster (no PG_VERSION)"),
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| EmbeddedError::io(format!("creating {}", dir.display()), e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| EmbeddedError::io(format!("chmod 0700 {}", dir.display()), e))?;
    run_as.chown(dir)?;
    run_as.check_access(dir).await
}

/// Writes a small file atomically enough for our purpose and makes it readable by the server (base backups copy it).
fn write_owned(run_as: &RunAs, path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let action = || format!("writing {}", path.display());
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| EmbeddedError::io(action(), e))?;
    f.write_all(text.as_bytes()).and_then(|()| f.sync_all()).map_err(|e| EmbeddedError::io(action(), e))?;
    drop(f);
    run_as.chown(&tmp)?;
    std::fs::rename(&tmp, path).map_err(|e| EmbeddedError::io(action(), e))
}

/// Makes `postgresql.conf` include our settings file and `pg_hba.conf` allow local replication (idempotent).
fn ensure_base_config(data_dir: &Path) -> Result<()> {
    let conf = data_dir.join("postgresql.conf");
    let include = format!("include_if_exists = '{SETTINGS_FILE}'");
    append_unless_present(&conf, &include, &format!("\n# audit-db settings (rewritten on every start)\n{include}\n"))?;
    let hba = data_dir.join("pg_hba.conf");
    let marker = "# audit-db: local replication";
    append_unless_present(
        &hba,
        marker,
        &format!(
            "\n{marker}\nlocal   replication     all                                     trust\n\
             host    replication     all             127.0.0.1/32            trust\n"
        ),
    )
}

fn append_unless_present(path: &Path, needle: &str, addition: &str) -> Result<()> {
    let text =
        std::fs::read_to_string(path).map_err(|e| EmbeddedError::io(format!("reading {}", path.display()), e))?;
    if text.lines().any(|l| l.trim() == needle.trim()) {
        return Ok(());
    }
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| EmbeddedError::io(format!("opening {}", path.display()), e))?;
    f.write_all(addition.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| EmbeddedError::io(format!("writing {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn major_version_is_parsed_from_pg_ctl_output() {
        assert_eq!(
            parse_major_version("pg_ctl (PostgreSQL) 15.18 (Debian 15.18-1.pgdg120+1)\n").as_deref(),
            Some("15")
        );
        assert_eq!(parse_major_version("pg_ctl (PostgreSQL) 16beta2\n").as_deref(), Some("16"));
        assert_eq!(parse_major_version("something else"), None);
    }

    #[test]
    fn slot_names_are_valid_and_distinct_per_directory() {
        let a = slot_name_for(Path::new("/tmp/x/Replica-1"));
        let b = slot_name_for(Path::new("/tmp/y/Replica-1"));
        assert_ne!(a, b);
        for s in [&a, &b] {
            assert!(s.len() <= 63, "{s}");
            assert!(s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'), "{s}");
        }
        assert_eq!(a, slot_name_for(Path::new("/tmp/x/Replica-1")));
    }

    #[test]
    fn settings_values_are_quoted() {
        assert_eq!(quote_setting("it's"), "'it''s'");
        assert_eq!(quote_setting(r"a\b"), r"'a\\b'");
        assert_eq!(quote_ident(r#"a"b"#), r#""a""b""#);
    }

    #[test]
    fn pid_file_port_reads_the_fourth_line() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(pid_file_port(dir.path()), None);
        std::fs::write(dir.path().join("postmaster.pid"), "123\n/data\n1700000000\n54321\n/data\n127.0.0.1\n").unwrap();
        assert_eq!(pid_file_port(dir.path()), Some(54321));
    }

    #[test]
    fn missing_binaries_error_names_the_packages() {
        let msg = EmbeddedError::BinariesNotFound { searched: "/nowhere".into() }.to_string();
        assert!(msg.contains("postgresql-15") && msg.contains("postgresql@15") && msg.contains("/nowhere"), "{msg}");
    }
}
