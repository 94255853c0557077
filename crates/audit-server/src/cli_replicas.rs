//! `audit-db replicas status`: what the read-replica router knows of each replica — the operator's view of
//! `[[replicas]]` / `AUDIT_DB_READ_REPLICA_N` (the same entries as `replica:<id>` in `audit-db health`).

use std::io::Write;
use std::process::ExitCode;

use audit_replica::{ReplicaStatus, RouterStatus};
use audit_server::app::App;

/// `audit-db replicas …`
#[derive(Debug, clap::Subcommand)]
pub(crate) enum ReplicasCommand {
    /// Probe every replica once and print id, URL (no password), healthy, in_recovery, lag in bytes and seconds,
    /// latency, reads in flight, and why a replica is excluded. Exit 0 when every replica is eligible for reads,
    /// 2 when some is excluded, 1 on error.
    Status {
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
}

/// Output formats.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum Format {
    /// The router's state as one JSON document.
    Json,
    /// Aligned columns for people.
    Table,
}

/// Runs the command.
pub(crate) async fn run(app: App, command: ReplicasCommand) -> anyhow::Result<ExitCode> {
    match command {
        ReplicasCommand::Status { format } => {
            let router = app.router().await?;
            let status = router.status();
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            match format {
                Format::Json => writeln!(out, "{}", serde_json::to_string_pretty(&status)?)?,
                Format::Table => write_table(&mut out, &status)?,
            }
            out.flush()?;
            Ok(if status.replicas.iter().all(|r| r.healthy) { ExitCode::SUCCESS } else { ExitCode::from(2) })
        }
    }
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

fn write_table(out: &mut impl Write, status: &RouterStatus) -> std::io::Result<()> {
    writeln!(
        out,
        "strategy={} fallback_to_master={} primary_lsn={}",
        status.strategy,
        status.fallback_to_master,
        opt(status.primary_lsn)
    )?;
    if status.replicas.is_empty() {
        writeln!(out, "no read replicas configured ([[replicas]] or AUDIT_DB_READ_REPLICA_1..N)")?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<14} {:<7} {:<11} {:>12} {:>9} {:>10} {:>9}  {:<40} excluded",
        "id", "healthy", "in_recovery", "lag_bytes", "lag_s", "latency_ms", "in_flight", "url"
    )?;
    for r in &status.replicas {
        write_row(out, r)?;
    }
    Ok(())
}

fn write_row(out: &mut impl Write, r: &ReplicaStatus) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<14} {:<7} {:<11} {:>12} {:>9} {:>10} {:>9}  {:<40} {}",
        r.id,
        if r.healthy { "yes" } else { "no" },
        opt(r.in_recovery),
        opt(r.lag_bytes),
        opt(r.lag_seconds.map(|s| format!("{s:.3}"))),
        opt(r.latency_ms.map(|s| format!("{s:.2}"))),
        r.in_flight,
        r.url,
        r.excluded.as_ref().map_or_else(|| "-".to_string(), ToString::to_string)
    )
}
