//! `audit-db query`: a flag per filter, NDJSON/table/CSV output, keyset paging through `next_cursor`.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use audit_core::event::format_timestamp;
use audit_core::{Cursor, DataClassification, EventFilter, Status, StoredEvent};
use chrono::{DateTime, Duration, Utc};

use audit_server::app::App;

/// Output formats.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Format {
    /// One JSON object per line (the ingest field names plus stored extras).
    Ndjson,
    /// Aligned columns for people.
    Table,
    /// RFC 4180 CSV with a header row; `details` as JSON text.
    Csv,
}

/// Arguments of `audit-db query`.
#[derive(Debug, clap::Args)]
pub struct QueryArgs {
    /// Organisation.
    #[arg(long)]
    pub org: Option<String>,
    /// Principal.
    #[arg(long)]
    pub principal: Option<String>,
    /// Action; repeat or comma-separate for any of several.
    #[arg(long, value_delimiter = ',')]
    pub action: Vec<String>,
    /// Status (attempt, success, failure); repeat or comma-separate.
    #[arg(long, value_delimiter = ',')]
    pub status: Vec<String>,
    /// Target resource type.
    #[arg(long)]
    pub resource_type: Option<String>,
    /// Target resource id.
    #[arg(long)]
    pub resource_id: Option<String>,
    /// Data classification (PUBLIC, INTERNAL, CONFIDENTIAL, PHI, FINANCIAL).
    #[arg(long)]
    pub classification: Option<String>,
    /// Correlation id.
    #[arg(long)]
    pub correlation_id: Option<String>,
    /// Retention policy.
    #[arg(long)]
    pub retention_policy: Option<String>,
    /// Exact event id.
    #[arg(long)]
    pub event_id: Option<uuid::Uuid>,
    /// Earliest timestamp, inclusive: RFC 3339, or `now`, `now-30d`, `now-1h`, `now-15m` (counted from the start of
    /// the current minute, so repeated questions share cache entries).
    #[arg(long)]
    pub from: Option<String>,
    /// Latest timestamp, inclusive (same forms as --from).
    #[arg(long)]
    pub to: Option<String>,
    /// JSON object that `details` must contain (`@>`), e.g. '{"access_reason":"treatment"}'.
    #[arg(long)]
    pub details: Option<String>,
    /// Rows per page (default 100, at most 10000).
    #[arg(long)]
    pub limit: Option<u32>,
    /// Continue after this cursor (from a previous `next_cursor=`).
    #[arg(long)]
    pub after: Option<String>,
    /// Print only the number of matching events.
    #[arg(long)]
    pub count: bool,
    /// Output format.
    #[arg(long, value_enum, default_value = "ndjson")]
    pub format: Format,
}

/// Parses an RFC 3339 time or a `now[-N{s,m,h,d}]` expression. `now-N…` is counted from the start of the current
/// minute, so the same question asked by different processes within a minute is the same query (and can be answered
/// from the shared cache); a bare `now` is exact.
pub fn parse_time(flag: &str, s: &str, now: DateTime<Utc>) -> anyhow::Result<DateTime<Utc>> {
    let t = s.trim();
    if let Some(rest) = t.strip_prefix("now") {
        if rest.is_empty() {
            return Ok(now);
        }
        let now = DateTime::from_timestamp(now.timestamp() - now.timestamp().rem_euclid(60), 0).unwrap_or(now);
        let Some(amount) = rest.strip_prefix('-') else { bail!("{flag}: `{s}` should look like now-30d") };
        let (num, unit) = amount.split_at(amount.len().saturating_sub(1));
        let n: i64 = num.parse().with_context(|| format!("{flag}: `{s}` should look like now-30d"))?;
        let d = match unit {
            "s" => Duration::seconds(n),
            "m" => Duration::minutes(n),
            "h" => Duration::hours(n),
            "d" => Duration::days(n),
            _ => bail!("{flag}: unit of `{s}` must be s, m, h or d"),
        };
        return Ok(now - d);
    }
    Ok(DateTime::parse_from_rfc3339(t)
        .with_context(|| format!("{flag}: `{s}` is not an RFC 3339 time with an offset nor now-N[smhd]"))?
        .with_timezone(&Utc))
}

impl QueryArgs {
    /// Builds the filter, naming the flag of any bad value.
    pub fn to_filter(&self) -> anyhow::Result<EventFilter> {
        let now = Utc::now();
        let statuses = self
            .status
            .iter()
            .map(|s| Status::parse(s).with_context(|| format!("--status: `{s}` is not attempt, success or failure")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let data_classification = self
            .classification
            .as_deref()
            .map(|c| {
                DataClassification::parse(&c.to_ascii_uppercase()).with_context(|| {
                    format!("--classification: `{c}` is not PUBLIC, INTERNAL, CONFIDENTIAL, PHI or FINANCIAL")
                })
            })
            .transpose()?;
        let details_contains = match &self.details {
            None => None,
            Some(text) => {
                let v: serde_json::Value =
                    serde_json::from_str(text).with_context(|| format!("--details: `{text}` is not JSON"))?;
                if !v.is_object() {
                    bail!("--details: must be a JSON object");
                }
                Some(v)
            }
        };
        let mut f = EventFilter {
            event_id: self.event_id,
            actions: self.action.clone(),
            statuses,
            principal_id: self.principal.clone(),
            organization_id: self.org.clone(),
            target_resource_type: self.resource_type.clone(),
            target_resource_id: self.resource_id.clone(),
            correlation_id: self.correlation_id.clone(),
            data_classification,
            retention_policy: self.retention_policy.clone(),
            details_contains,
            limit: self.limit,
            after: self.after.as_deref().map(Cursor::decode).transpose()?,
            ..Default::default()
        };
        f.time.gte = self.from.as_deref().map(|s| parse_time("--from", s, now)).transpose()?;
        f.time.lte = self.to.as_deref().map(|s| parse_time("--to", s, now)).transpose()?;
        f.effective_limit()?;
        Ok(f)
    }
}

/// Runs the command.
pub async fn run(app: App, args: QueryArgs) -> anyhow::Result<ExitCode> {
    let filter = args.to_filter()?;
    let client = app.client().await?;
    if args.count {
        println!("{}", client.count(&filter).await?);
        return Ok(ExitCode::SUCCESS);
    }
    let answer = client.query(&filter).await?;
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
pub fn write_events(out: &mut impl Write, format: Format, events: &[StoredEvent]) -> std::io::Result<()> {
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
