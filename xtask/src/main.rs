//! `cargo xtask`: developer tasks of the audit-db workspace.
//!
//! * `cargo xtask migrate [--database-url URL]` — applies the migrations and premakes partitions through
//!   `audit_server::app::App`, the same code path as `audit-db migrate`.
//! * `cargo xtask bench [--quick] [--database-url URL] [--only NAME,...]` — the benchmark suite of
//!   `docs/benchmarks.md`. It re-executes itself as `cargo run --release -p xtask -- bench-run …`, because the numbers
//!   of an unoptimised build say nothing about the product; `bench-run` refuses to run in a debug build.
//! * `cargo xtask openapi` — writes the HTTP service's OpenAPI document to `docs/openapi.json`.
//! * `cargo xtask ha-test` — a failover driven by Patroni and etcd while audit-db writes through a multi-host URL
//!   (needs Debian's `patroni` and `etcd-server`; see `docs/replicas.md`).
//! * `cargo xtask chaos --trials N --seconds S [--seed X]` — crash tests with acknowledged-event accounting, fault
//!   kinds and timings from a printed, replayable seed; `cargo xtask fuzz --cases N` — the fuzz properties, longer.
//! * `cargo xtask soak --minutes M [--rate R]` — `audit-db serve` under a mixed HTTP load: latency per minute, errors,
//!   RSS growth after warm-up, and the acknowledged-event accounting at the end.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

mod bench;
mod ha;
mod reliability;
mod soak;

/// Developer tasks of audit-db.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply pending migrations and premake partitions; print what was applied.
    Migrate {
        /// Database to migrate (default: `DATABASE_URL`, else the embedded private cluster in `.audit-db/`).
        #[arg(long)]
        database_url: Option<String>,
    },
    /// Run the benchmark suite with an optimised build (re-executes `cargo run --release -p xtask -- bench-run`).
    Bench(bench::BenchArgs),
    /// Run the benchmark suite in this process (what `bench` re-executes; refuses an unoptimised build).
    BenchRun(bench::BenchArgs),
    /// Crash the leader of a Patroni + etcd pair of PostgreSQL nodes while audit-db writes through a multi-host URL;
    /// check every event is on the new leader exactly once (needs `apt-get install patroni etcd-server`).
    HaTest,
    /// Crash tests with acknowledged-event accounting, fault kinds and timings drawn from a printed seed (replay one
    /// with `--seed`): kill -9 of ingest, PostgreSQL crash, Redis killed, archive unwritable.
    Chaos(reliability::ChaosArgs),
    /// Every fuzz property of the input surfaces with `--cases N` cases each.
    Fuzz(reliability::FuzzArgs),
    /// `audit-db serve` under a mixed HTTP load for M minutes: latency per minute, errors, RSS growth, accounting.
    Soak(soak::SoakArgs),
    /// Write the service's OpenAPI 3.1 document to docs/openapi.json (a test fails when it is stale).
    Openapi,
    /// Internal: fill an L1 cache in a fresh process and print its resident-memory growth as JSON.
    #[command(hide = true)]
    L1RssProbe(ProbeArgs),
}

/// Arguments of the hidden L1 memory probe.
#[derive(Debug, Args)]
struct ProbeArgs {
    /// Configured L1 budget (`maxSizeMB`).
    #[arg(long, default_value_t = 64)]
    size_mb: u64,
    /// Workload seed.
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = std::env::var("XTASK_LOG").unwrap_or_else(|_| "warn".to_string());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
    let result = match cli.command {
        Command::Bench(args) => bench::reexec_release(&args),
        Command::L1RssProbe(args) => current_thread().and_then(|rt| {
            rt.block_on(async {
                let report = bench::cache_rss::probe(args.size_mb, args.seed).await?;
                println!("{}", serde_json::to_string(&report)?);
                Ok(ExitCode::SUCCESS)
            })
        }),
        Command::BenchRun(args) => multi_thread().and_then(|rt| rt.block_on(bench::run(args))),
        Command::Chaos(args) => reliability::chaos(&args),
        Command::Fuzz(args) => reliability::fuzz(&args),
        Command::Soak(args) => soak::soak(&args),
        Command::Openapi => write_openapi(),
        Command::HaTest => multi_thread().and_then(|rt| rt.block_on(ha::run())),
        Command::Migrate { database_url } => multi_thread().and_then(|rt| rt.block_on(migrate(database_url))),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

pub(crate) fn multi_thread() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the tokio runtime")
}

fn current_thread() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the tokio runtime")
}

/// `cargo xtask openapi`: the document `/openapi.json` serves, written where the docs link it.
fn write_openapi() -> anyhow::Result<ExitCode> {
    let path = workspace_root().join("docs/openapi.json");
    let doc = audit_server::http::openapi::document();
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    std::fs::write(&path, doc).with_context(|| format!("writing {}", path.display()))?;
    println!("{} {}", if old == doc { "unchanged" } else { "wrote" }, path.display());
    Ok(ExitCode::SUCCESS)
}

/// The workspace root (xtask lives one level below it).
pub(crate) fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// `cargo xtask migrate`: `App::open` then `App::migrate`, then every migration with the ones applied by this
/// command marked. The database is resolved first (`DATABASE_URL` or the embedded cluster, started if needed) so that
/// the applied list can be read before migrating — `App::open` migrates an embedded cluster by itself.
async fn migrate(database_url: Option<String>) -> anyhow::Result<ExitCode> {
    let mut config = audit_server::app::load_config(None)?;
    if let Some(url) = database_url {
        config.database.url = Some(url);
    }
    let (url, _embedded) = audit_server::app::resolve_database(&config).await?;
    let before = applied_migrations(&url).await.unwrap_or_default();
    config.database.url = Some(url);
    let app = audit_server::app::App::open(config).await?;
    let applied_now = app.migrate().await?;
    println!("database: {}", app.connector().target());
    let rows = applied_migrations(&app.url).await?;
    let mut fresh = 0;
    for (version, run_on) in &rows {
        let now = !before.iter().any(|(v, _)| v == version) || applied_now.contains(version);
        if now {
            fresh += 1;
        }
        println!("  {version}  {run_on}  {}", if now { "applied now" } else { "" });
    }
    if fresh == 0 {
        println!("schema is current ({} migrations)", rows.len());
    }
    let partitions = app.partitions().await?.status().await?;
    println!("partitions of audit_log: {}", partitions.len());
    for p in partitions {
        println!("  {}  {}", p.name, p.bound);
    }
    Ok(ExitCode::SUCCESS)
}

/// `(version, run_on)` of every applied migration (an error when the migrations table does not exist yet).
async fn applied_migrations(url: &str) -> anyhow::Result<Vec<(String, String)>> {
    let client = bench::env::connect(url).await?;
    let rows = client
        .query(
            "SELECT version::text, to_char(run_on, 'YYYY-MM-DD HH24:MI:SS') FROM __diesel_schema_migrations \
             ORDER BY version",
            &[],
        )
        .await
        .context("reading the applied migrations")?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}
