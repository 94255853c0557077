//! `audit-db partitions …`: status, analysis, maintenance, creation, retention, legal holds.

use std::process::ExitCode;

use audit_core::DataClassification;
use audit_partition::{HoldTarget, PartitionStatus, RetentionReport};
use chrono::Utc;

use audit_server::app::App;
use audit_server::filter_params::parse_time;

/// Output format of reports.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum ReportFormat {
    /// One JSON document.
    Json,
    /// Aligned columns.
    Table,
}

/// `audit-db partitions` subcommands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum PartitionsCommand {
    /// Every partition: name, bounds, estimated rows, size, indexes, state.
    Status {
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: ReportFormat,
    },
    /// Missing future periods, oversized partitions, partitions past retention, held partitions.
    Analyze {
        /// Output format.
        #[arg(long, value_enum, default_value = "json")]
        format: ReportFormat,
    },
    /// Premake + retention + sealing + analysis, under an advisory lock (other instances skip and say so).
    Maintain,
    /// Seal partitions no longer written: build the sealed indexes (GIN on details) concurrently on each leaf,
    /// then VACUUM (FREEZE, ANALYZE). Without a name: every partition whose period ended over an hour ago.
    Seal {
        /// One partition to seal now (e.g. audit_log_2026_11), whether or not its period is over.
        partition: Option<String>,
    },
    /// Create the partitions covering a time range.
    Create {
        /// Start (RFC 3339 or now-N[smhd]).
        #[arg(long)]
        from: String,
        /// End (RFC 3339 or now-N[smhd]).
        #[arg(long)]
        to: String,
    },
    /// Archive, detach and drop partitions past their retention (`AUDIT_DB_ARCHIVE_DIR` is required).
    DropExpired {
        /// Print the plan and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Legal holds: block the drop of partitions holding an organisation's or a classification's rows.
    Hold {
        #[command(subcommand)]
        action: HoldAction,
    },
}

/// Legal hold actions.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum HoldAction {
    /// Place a hold.
    Place {
        /// Organisation to hold.
        #[arg(long, conflicts_with = "classification")]
        org: Option<String>,
        /// Classification to hold (PHI, FINANCIAL, …).
        #[arg(long)]
        classification: Option<String>,
        /// Why (recorded).
        #[arg(long)]
        reason: String,
    },
    /// Release a hold by id.
    Release {
        /// Hold id.
        id: i64,
    },
    /// List holds.
    List {
        /// Include released holds.
        #[arg(long)]
        all: bool,
    },
}

fn actor() -> String {
    std::env::var("USER").map(|u| format!("audit-db cli ({u})")).unwrap_or_else(|_| "audit-db cli".into())
}

fn print_status(parts: &[PartitionStatus]) {
    println!(
        "{:<28} {:<26} {:<26} {:>12} {:>12} {:>4} {:<10}",
        "name", "from", "to", "est. rows", "bytes", "idx", "state"
    );
    for p in parts {
        let t = |v: Option<chrono::DateTime<Utc>>| v.map(|t| t.to_rfc3339()).unwrap_or_else(|| "-".into());
        println!(
            "{:<28} {:<26} {:<26} {:>12} {:>12} {:>4} {:<10}",
            p.name,
            t(p.range_from),
            t(p.range_to),
            p.estimated_rows.map(|r| r.to_string()).unwrap_or_else(|| "-".into()),
            p.total_bytes,
            p.index_count,
            format!("{:?}", p.state).to_lowercase()
        );
    }
}

fn print_retention(r: &RetentionReport) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(r)?);
    Ok(())
}

/// Runs a partitions subcommand.
pub(crate) async fn run(app: App, cmd: PartitionsCommand) -> anyhow::Result<ExitCode> {
    let pm = app.partitions().await?.with_actor(actor());
    match cmd {
        PartitionsCommand::Status { format } => {
            let parts = pm.status().await?;
            match format {
                ReportFormat::Json => println!("{}", serde_json::to_string_pretty(&parts)?),
                ReportFormat::Table => print_status(&parts),
            }
        }
        PartitionsCommand::Analyze { format } => {
            let a = pm.analyze().await?;
            match format {
                ReportFormat::Json => println!("{}", serde_json::to_string_pretty(&a)?),
                ReportFormat::Table => {
                    println!("strategy {} / interval {} / {} partitions", a.strategy, a.interval, a.partitions);
                    println!("missing future periods: {}", a.missing_future.join(", "));
                    println!("past retention:         {}", a.past_retention.join(", "));
                    let held: Vec<String> = a.held.iter().map(|(p, ids)| format!("{p} (holds {ids:?})")).collect();
                    println!("held:                   {}", held.join(", "));
                    let big: Vec<String> =
                        a.oversized.iter().map(|o| format!("{} ({} bytes)", o.name, o.total_bytes)).collect();
                    println!("oversized:              {}", big.join(", "));
                }
            }
        }
        PartitionsCommand::Seal { partition } => {
            let reports = match partition {
                Some(name) => vec![pm.seal(&name).await?],
                None => pm.seal_due(Utc::now()).await?,
            };
            println!("{}", serde_json::to_string_pretty(&reports)?);
        }
        PartitionsCommand::Maintain => {
            let report = pm.maintain().await?;
            if !report.ran {
                eprintln!(
                    "maintenance skipped: {}",
                    report.skipped_reason.as_deref().unwrap_or("another instance holds the maintenance lock")
                );
            }
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        PartitionsCommand::Create { from, to } => {
            let now = Utc::now();
            let created = pm.ensure_range(parse_time("--from", &from, now)?, parse_time("--to", &to, now)?).await?;
            println!("{}", serde_json::json!({"created": created}));
        }
        PartitionsCommand::DropExpired { dry_run } => {
            let report = pm.retention(dry_run).await?;
            print_retention(&report)?;
        }
        PartitionsCommand::Hold { action } => match action {
            HoldAction::Place { org, classification, reason } => {
                let target = match (org, classification) {
                    (Some(o), None) => HoldTarget::Organization(o),
                    (None, Some(c)) => HoldTarget::Classification(
                        c.to_ascii_uppercase()
                            .parse::<DataClassification>()
                            .map_err(|_| anyhow::anyhow!("--classification: `{c}` is not a classification"))?,
                    ),
                    _ => anyhow::bail!("give exactly one of --org or --classification"),
                };
                let id = pm.place_legal_hold(&target, &reason, &actor()).await?;
                println!("{}", serde_json::json!({"hold_id": id}));
            }
            HoldAction::Release { id } => {
                let released = pm.release_legal_hold(id, &actor()).await?;
                println!("{}", serde_json::json!({"hold_id": id, "released": released}));
            }
            HoldAction::List { all } => {
                println!("{}", serde_json::to_string_pretty(&pm.legal_holds(all).await?)?);
            }
        },
    }
    Ok(ExitCode::SUCCESS)
}
