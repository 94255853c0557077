//! `audit-db query`: a flag per filter, NDJSON/table/CSV output, keyset paging through `next_cursor`.

use std::io::Write;
use std::process::ExitCode;

use anyhow::bail;
use audit_core::event::format_timestamp;
use audit_core::{CommitLsn, Consistency, StoredEvent};
use chrono::Utc;

use audit_server::app::App;
use audit_server::filter_params::{FilterParams, ParamNames};

/// Output formats.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum Format {
    /// One JSON object per line (the ingest field names plus stored extras).
    Ndjson,
    /// Aligned columns for people.
    Table,
    /// RFC 4180 CSV with a header row; `details` as JSON text.
    Csv,
}

/// Arguments of `audit-db query`.
#[derive(Debug, clap::Args)]
pub(crate) struct QueryArgs {
    /// The filters (shared with `GET /v1/events`).
    #[command(flatten)]
    pub filter: FilterParams,
    /// Print only the number of matching events.
    #[arg(long)]
    pub count: bool,
    /// Output format.
    #[arg(long, value_enum, default_value = "ndjson")]
    pub format: Format,
    /// How fresh the answer must be: `strong` (the primary), `read-your-writes` (a replica that has replayed
    /// `--min-lsn`, else the primary), `eventual` (any replica within its lag bound), `bounded-staleness:<ms>`.
    #[arg(long, default_value = "read-your-writes", value_parser = parse_consistency)]
    pub consistency: Consistency,
    /// WAL position the answer must include (the `commit_lsn` that `ingest` printed): implies read-your-writes.
    #[arg(long, value_name = "LSN", value_parser = parse_lsn)]
    pub min_lsn: Option<CommitLsn>,
}

fn parse_consistency(s: &str) -> Result<Consistency, String> {
    s.parse()
}

fn parse_lsn(s: &str) -> Result<CommitLsn, String> {
    s.parse()
}

impl QueryArgs {
    /// The consistency of this query: `--min-lsn` is a read-your-writes position and goes with no other.
    pub(crate) fn effective_consistency(&self) -> anyhow::Result<Consistency> {
        match (self.consistency, self.min_lsn) {
            (c, None) => Ok(c),
            (Consistency::ReadYourWrites(_), Some(lsn)) => Ok(Consistency::ReadYourWrites(Some(lsn))),
            (c, Some(_)) => {
                bail!("--min-lsn is a read-your-writes position; it cannot be combined with --consistency {c}")
            }
        }
    }
}

/// Runs the command.
pub(crate) async fn run(app: App, args: QueryArgs) -> anyhow::Result<ExitCode> {
    let filter = args.filter.to_filter(Utc::now(), ParamNames::Cli)?;
    let consistency = args.effective_consistency()?;
    let client = app.client().await?;
    if args.count {
        println!("{}", client.count_with(&filter, consistency).await?);
        return Ok(ExitCode::SUCCESS);
    }
    let answer = client.query_with(&filter, consistency).await?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    write_events(&mut out, args.format, &answer.page.events)?;
    out.flush()?;
    if let Some(c) = answer.page.next_cursor {
        eprintln!("next_cursor={}", c.encode());
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes events in the chosen format.
pub(crate) fn write_events(out: &mut impl Write, format: Format, events: &[StoredEvent]) -> std::io::Result<()> {
    match format {
        Format::Ndjson => {
            for e in events {
                writeln!(out, "{}", e.to_json())?;
            }
        }
        Format::Csv => {
            const COLS: [&str; 20] = audit_core::event::STORED_FIELDS;
            writeln!(out, "{}", COLS.join(","))?;
            for e in events {
                let j = e.to_json();
                let cells: Vec<String> = COLS
                    .iter()
                    .map(|c| match &j[*c] {
                        serde_json::Value::Null => String::new(),
                        serde_json::Value::String(s) => csv_cell(s),
                        other => csv_cell(&other.to_string()),
                    })
                    .collect();
                writeln!(out, "{}", cells.join(","))?;
            }
        }
        Format::Table => {
            writeln!(
                out,
                "{:<27} {:<16} {:<14} {:<22} {:<8} {:<13} {:<24}",
                "timestamp", "organization", "principal", "action", "status", "class", "resource"
            )?;
            for e in events {
                let ev = &e.event;
                let resource = match (&ev.target_resource_type, &ev.target_resource_id) {
                    (Some(t), Some(i)) => format!("{t}/{i}"),
                    (Some(t), None) => t.clone(),
                    (None, Some(i)) => i.clone(),
                    (None, None) => String::new(),
                };
                writeln!(
                    out,
                    "{:<27} {:<16} {:<14} {:<22} {:<8} {:<13} {:<24}",
                    format_timestamp(ev.timestamp),
                    ev.organization_id.as_deref().unwrap_or("-"),
                    ev.principal_id.as_deref().unwrap_or("-"),
                    ev.action,
                    ev.status.as_str(),
                    ev.data_classification.as_str(),
                    resource
                )?;
            }
        }
    }
    Ok(())
}

fn csv_cell(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
}
