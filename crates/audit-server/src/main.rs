//! `audit-db`: the operator binary.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli_api_keys;
mod cli_fhir;
mod cli_health;
mod cli_indexes;
mod cli_ingest;
mod cli_integrity;
mod cli_partitions;
mod cli_privacy;
mod cli_query;
mod cli_replicas;
mod demo;
mod serve;

use audit_server::app::{App, load_config};
use audit_server::config::{AuditConfig, LogFormat};

/// audit-db: a tamper-evident, partitioned PostgreSQL audit log.
///
/// With no DATABASE_URL, commands use an embedded private PostgreSQL cluster in `.audit-db/` (started or reused).
#[derive(Debug, Parser)]
#[command(name = "audit-db", version, about, long_about = None)]
struct Cli {
    /// Optional TOML configuration file (sections: database, partition, cache, circuitBreaker, monitoring, ingest,
    /// integrity); environment variables override it.
    #[arg(long, global = true, env = "AUDIT_DB_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply pending schema migrations and create the current and upcoming partitions (idempotent).
    Migrate {
        /// Revert the most recent migration instead.
        #[arg(long)]
        down: bool,
    },
    /// Store events from an NDJSON file (or `-` for stdin), one event per line in the seed's field names.
    ///
    /// Prints `{"accepted":N,"rejected":M,"duplicates":D,"commit_lsn":"0/16B3F28"}` on stdout (a read at
    /// `commit_lsn` sees every stored line: `query --min-lsn`) and `line N: <reason>` on stderr for each rejected
    /// line. Exit 0 when every line was stored or a duplicate, 2 when some were rejected (the valid ones are
    /// stored), 1 on a fatal error.
    Ingest(cli_ingest::IngestArgs),
    /// Export events as FHIR R4 AuditEvent resources: a Bundle of type `collection` (`--format fhir`) or FHIR bulk
    /// NDJSON (`--format fhir-ndjson`), with the filters of `query` (`--org`, `--from`, `--to`, …).
    Export(Box<cli_fhir::ExportArgs>),
    /// Query stored events (newest first); prints `next_cursor=TOKEN` on stderr when more rows match.
    Query(Box<cli_query::QueryArgs>),
    /// Print the health report as JSON (exit 1 when unhealthy); with `--service URL`, ask a running service's
    /// `/health` instead (the container HEALTHCHECK).
    Health(cli_health::HealthArgs),
    /// The newcomer's tour: generate realistic events, ingest them, run the seed's example queries, print health.
    Demo(demo::DemoArgs),
    /// Run the HTTP service (/v1 API with API keys, /health, /ready, /metrics, /openapi.json).
    Serve(serve::ServeArgs),
    /// API keys of the HTTP service: create (printed once), list, revoke.
    ApiKeys {
        #[command(subcommand)]
        command: cli_api_keys::ApiKeysCommand,
    },
    #[command(flatten)]
    Integrity(cli_integrity::IntegrityCommand),
    /// Partition maintenance: status, analyze, maintain, create, drop-expired, legal holds.
    Partitions {
        #[command(subcommand)]
        command: cli_partitions::PartitionsCommand,
    },
    /// Indexes of audit_log: `status` (usage over partitions), `recommend` (findings and workload-driven
    /// recommendations), `apply [--dry-run]` (non-blocking builds, repairs), `drop NAME`.
    Indexes {
        #[command(subcommand)]
        command: cli_indexes::IndexesCommand,
    },
    /// Read replicas: `status` shows each one's health, lag, latency and why it is excluded.
    Replicas {
        #[command(subcommand)]
        command: cli_replicas::ReplicasCommand,
    },
    /// Erase a data subject (GDPR Art. 17) by destroying its key: its personal values read as `[erased]`, every
    /// proof stays valid. Refused while a legal hold covers any of its events. Prints a JSON report; exit 0 erased
    /// (or dry run, or nothing to erase), 3 refused by a legal hold, 1 on error.
    Erase(cli_privacy::EraseArgs),
    /// The master key of personal data: `rotate-master --old FILE --new FILE` re-wraps every subject key.
    Keys {
        #[command(subcommand)]
        command: cli_privacy::KeysCommand,
    },
    /// Manage the embedded private PostgreSQL cluster.
    Embedded {
        #[command(subcommand)]
        action: EmbeddedAction,
    },
}

#[derive(Debug, Subcommand)]
enum EmbeddedAction {
    /// Show where the embedded cluster lives and whether it runs.
    Status,
    /// Stop the embedded cluster.
    Stop,
}

/// Logs to stderr: text for people, or JSON lines (timestamp, level, target, span fields, message) for log
/// pipelines (`LOG_FORMAT=json`, 12-factor style).
fn init_tracing(monitoring: &audit_server::config::MonitoringConfig) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&monitoring.log_level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match monitoring.log_format {
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(true).init(),
        LogFormat::Text => {
            builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).with_target(false).init()
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match load_config(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(1);
        }
    };
    init_tracing(&config.monitoring);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli.command, config)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(command: Command, config: AuditConfig) -> anyhow::Result<ExitCode> {
    match command {
        Command::Migrate { down } => {
            let app = App::open(config).await?;
            if down {
                match audit_pg::revert_last(app.connector()).await? {
                    Some(v) => println!("{}", serde_json::json!({"reverted": v})),
                    None => println!("{}", serde_json::json!({"reverted": null})),
                }
            } else {
                let applied = app.migrate().await?;
                println!("{}", serde_json::json!({"applied": applied}));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Ingest(args) => {
            // An ingest waits out a database restart (up to 10 minutes) instead of failing.
            let mut config = config;
            config.ingest.outage_patience_ms = config.ingest.outage_patience_ms.max(600_000);
            cli_ingest::run(App::open(config).await?, args).await
        }
        Command::Query(args) => cli_query::run(App::open(config).await?, *args).await,
        Command::Export(args) => cli_fhir::export(App::open(config).await?, *args).await,
        Command::Health(cli_health::HealthArgs { service: Some(url), timeout }) => {
            cli_health::run_service(&url, std::time::Duration::from_secs(timeout.max(1))).await
        }
        Command::Health(_) => {
            let app = App::open(config).await?;
            let client = app.client().await?;
            let report = client.health().await;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(if report.overall == audit_core::HealthState::Unhealthy { ExitCode::from(1) } else { ExitCode::SUCCESS })
        }
        Command::Integrity(cmd) => cli_integrity::run(config, cmd).await,
        Command::Partitions { command } => cli_partitions::run(App::open(config).await?, command).await,
        Command::Demo(args) => demo::run(App::open(config).await?, args).await,
        Command::Serve(args) => serve::run(App::open(config).await?, args).await,
        Command::Indexes { command } => cli_indexes::run(App::open(config).await?, command).await,
        Command::ApiKeys { command } => cli_api_keys::run(App::open(config).await?, command).await,
        Command::Replicas { command } => cli_replicas::run(App::open(config).await?, command).await,
        Command::Erase(args) => cli_privacy::run(App::open(config).await?, args).await,
        Command::Keys { command } => cli_privacy::keys(config, command).await,
        Command::Embedded { action } => {
            let dir = config.database.data_dir.clone();
            match action {
                EmbeddedAction::Status => {
                    let exists = dir.join("PG_VERSION").exists();
                    let running = dir.join("postmaster.pid").exists();
                    println!("{}", serde_json::json!({"data_dir": dir, "initialized": exists, "running": running}));
                }
                EmbeddedAction::Stop => {
                    if dir.join("PG_VERSION").exists() {
                        let (_, cluster) = audit_server::app::resolve_database(&AuditConfig {
                            database: audit_pg::DatabaseConfig { url: None, ..config.database.clone() },
                            ..config
                        })
                        .await?;
                        if let Some(c) = cluster {
                            c.stop().await?;
                        }
                    }
                    println!("{}", serde_json::json!({"data_dir": dir, "running": false}));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
