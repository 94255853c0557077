//! `audit-db indexes …`: usage, findings and recommendations, applying them, and explicit drops.

use std::process::ExitCode;

use audit_core::IndexAdvisor;
use audit_core::indexes::{ApplyPolicy, IndexAction, IndexRecommendation};
use audit_server::app::App;

use crate::cli_partitions::ReportFormat;

/// `audit-db indexes` subcommands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum IndexesCommand {
    /// Every audit_log index: scans, tuples read and size summed over partitions, partitions covered, state,
    /// first/last use from the history. Records a usage snapshot.
    Status {
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: ReportFormat,
    },
    /// Findings (unused, duplicate, redundant, invalid, missing, bloated) and recommendations from the workload
    /// (pg_stat_statements, costed with HypoPG when installed).
    Recommend {
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: ReportFormat,
    },
    /// Carry out the recommendations: creations (non-blocking, on every partition), drops and repairs of half-done
    /// builds. An explicit command: creations run; drops only with `--drop` or `enableAutoDrop`.
    Apply {
        /// Print what would be done and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Also drop the unused, duplicate and redundant indexes found (never protected ones).
        #[arg(long)]
        drop: bool,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: ReportFormat,
    },
    /// Drop one index of audit_log (refused for the primary key, unique indexes and the integrity index).
    Drop {
        /// The parent index's name.
        name: String,
        /// Print what would be done and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

fn print_recommendations(recs: &[IndexRecommendation]) {
    if recs.is_empty() {
        println!("no recommendations");
    }
    for r in recs {
        match &r.action {
            IndexAction::Create { name, columns } => {
                println!("CREATE {name} ON audit_log ({})", columns.join(", "));
                println!(
                    "  saving ≈ {:.0} ms/day ({:.0}% of the statements' time, {:?}); cost: {:.0} index entries/day, ≈ {} bytes",
                    r.estimated_saving_ms_per_day,
                    100.0 * r.estimated_saving_ratio,
                    r.costing,
                    r.write_entries_per_day,
                    r.size_bytes
                );
                for s in &r.statements {
                    println!(
                        "  - {} calls, {:.2} ms mean, cost {:.1} -> {:.1}: {}",
                        s.calls, s.mean_ms, s.cost_before, s.cost_after, s.query
                    );
                }
            }
            IndexAction::Drop { name } => println!("DROP {name} ({} bytes): {}", r.size_bytes, r.why),
            IndexAction::Repair { name } => println!("REPAIR {name}: {}", r.why),
        }
    }
}

/// Runs an indexes subcommand.
pub(crate) async fn run(app: App, cmd: IndexesCommand) -> anyhow::Result<ExitCode> {
    let im = app.indexes();
    match cmd {
        IndexesCommand::Status { format } => {
            let usage = im.status().await?;
            match format {
                ReportFormat::Json => println!("{}", serde_json::to_string_pretty(&usage)?),
                ReportFormat::Table => {
                    println!(
                        "{:<36} {:>10} {:>12} {:>12} {:>7} {:<6} {:<20} {:<10}",
                        "index", "scans", "tuples read", "bytes", "parts", "valid", "last used", "protected"
                    );
                    for u in &usage {
                        println!(
                            "{:<36} {:>10} {:>12} {:>12} {:>7} {:<6} {:<20} {:<10}",
                            u.name,
                            u.scans,
                            u.tuples_read,
                            u.size_bytes,
                            format!("{}/{}", u.partitions_covered, u.partitions_total),
                            u.valid && u.ready,
                            u.last_used.map(|t| t.format("%Y-%m-%d %H:%M").to_string()).unwrap_or_else(|| "-".into()),
                            if u.protected.is_some() { "yes" } else { "" }
                        );
                    }
                }
            }
        }
        IndexesCommand::Recommend { format } => {
            let report = im.analyze().await?;
            match format {
                ReportFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
                ReportFormat::Table => {
                    if !report.workload_available {
                        println!("(pg_stat_statements is not available: no workload-driven recommendations)");
                    }
                    for f in &report.findings {
                        println!("{:?} {}: {}", f.kind, f.index, f.reason);
                    }
                    print_recommendations(&report.recommendations);
                }
            }
        }
        IndexesCommand::Apply { dry_run, drop, format } => {
            let report = im.analyze().await?;
            let actions: Vec<IndexAction> = report.recommendations.iter().map(|r| r.action.clone()).collect();
            let policy = ApplyPolicy { allow_create: true, allow_drop: drop || im.config().enable_auto_drop, dry_run };
            let done = im.apply(&actions, policy).await?;
            match format {
                ReportFormat::Json => println!("{}", serde_json::to_string_pretty(&done)?),
                ReportFormat::Table => {
                    if done.is_empty() {
                        println!("nothing to do");
                    }
                    for d in &done {
                        println!("{:<8} {:<40} {}", d.outcome, d.action.index_name(), d.detail);
                    }
                }
            }
            if done.iter().any(|d| d.outcome == "failed") {
                return Ok(ExitCode::from(1));
            }
        }
        IndexesCommand::Drop { name, dry_run } => {
            let done = im.drop_index(&name, dry_run).await?;
            println!("{}", serde_json::to_string(&done)?);
            if done.outcome != "done" && done.outcome != "planned" {
                eprintln!("{name}: {}", done.detail);
                return Ok(ExitCode::from(2));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
