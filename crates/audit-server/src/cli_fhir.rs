//! FHIR R4 AuditEvent on the command line: `audit-db export --format fhir|fhir-ndjson` and
//! `audit-db ingest --format fhir` (the mapping is audit-fhir's; see docs/fhir.md).

use std::io::{BufRead, Read as _, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use audit_client::{Ack, BatchItem};
use audit_core::{NewEvent, ValidationError};
use audit_fhir::{BundleWriter, ExportContext, to_audit_event_model};
use chrono::Utc;

use audit_server::app::App;
use audit_server::filter_params::{FilterParams, ParamNames};

/// Export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ExportFormat {
    /// A FHIR `Bundle` of type `collection`, one `AuditEvent` entry per event (`application/fhir+json`).
    Fhir,
    /// FHIR bulk NDJSON: one `AuditEvent` per line (`application/fhir+ndjson`).
    FhirNdjson,
}

/// Arguments of `audit-db export`.
#[derive(Debug, clap::Args)]
pub(crate) struct ExportArgs {
    /// The events to export (every filter of `query`; `--org`, `--from`, `--to` are the usual ones).
    #[command(flatten)]
    pub filter: FilterParams,
    /// Output format.
    #[arg(long, value_enum, default_value = "fhir")]
    pub format: ExportFormat,
    /// Write here instead of standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The reporting service's name (`AuditEvent.source.observer`).
    #[arg(long, default_value = "audit-db")]
    pub service: String,
}

/// Events read per query page while exporting (the export streams: it never holds more).
const PAGE: u32 = 1_000;

/// Runs `audit-db export`: pages through the matching events (newest first) and streams them out as FHIR.
/// Personal values are shown as an authorised read shows them (decrypted, or `[erased]`).
pub(crate) async fn export(app: App, args: ExportArgs) -> anyhow::Result<ExitCode> {
    let mut filter = args.filter.to_filter(Utc::now(), ParamNames::Cli)?;
    if filter.limit.is_some() {
        anyhow::bail!("--limit: export writes every matching event; narrow it with --from/--to instead");
    }
    filter.limit = Some(PAGE);
    let client = app.client().await?;
    let ctx = ExportContext { service: args.service.clone(), bundle_timestamp: Some(Utc::now()) };
    let sink: Box<dyn Write> = match &args.out {
        Some(p) => Box::new(std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?),
        None => Box::new(std::io::stdout().lock()),
    };
    let out = std::io::BufWriter::new(sink);
    let mut written = 0u64;
    match args.format {
        ExportFormat::Fhir => {
            let mut bundle = BundleWriter::new(out, &ctx)?;
            loop {
                let page = client.query(&filter).await?.page;
                for e in &page.events {
                    bundle.push(e)?;
                }
                written += page.events.len() as u64;
                match page.next_cursor {
                    Some(c) => filter.after = Some(c),
                    None => break,
                }
            }
            bundle.finish()?.flush()?;
        }
        ExportFormat::FhirNdjson => {
            let mut out = out;
            loop {
                let page = client.query(&filter).await?.page;
                for e in &page.events {
                    serde_json::to_writer(&mut out, &to_audit_event_model(e, &ctx))?;
                    out.write_all(b"\n")?;
                }
                written += page.events.len() as u64;
                match page.next_cursor {
                    Some(c) => filter.after = Some(c),
                    None => break,
                }
            }
            out.flush()?;
        }
    }
    eprintln!("exported {written} AuditEvent resources");
    Ok(ExitCode::SUCCESS)
}

/// Runs `audit-db ingest --format fhir`: maps every AuditEvent, validates it as any event, stores the valid ones
/// (the rest named on stderr by position and FHIR path), prints the same summary line as NDJSON ingest.
pub(crate) async fn ingest(app: App, input: Box<dyn BufRead + Send>) -> anyhow::Result<ExitCode> {
    let mut text = String::new();
    let mut input = input;
    input.read_to_string(&mut text).context("reading input")?;
    let client = app.client().await?;
    let now = Utc::now();
    let mut labels = Vec::new();
    let mut results: Vec<Result<NewEvent, ValidationError>> = Vec::new();
    let mut fhir_rejected = 0u64;
    for (at, mapped) in audit_server::fhir::fhir_events(&text) {
        match mapped {
            Ok(v) => {
                labels.push(at);
                results.push(client.validator().validate_value(v, now));
            }
            Err(e) => {
                fhir_rejected += 1;
                eprintln!("{at}: {e}");
            }
        }
    }
    let (mut accepted, mut duplicates, mut rejected) = (0u64, 0u64, fhir_rejected);
    let mut commit_lsn = None;
    let mut labels = labels.into_iter();
    let mut rest = results.into_iter().peekable();
    while rest.peek().is_some() {
        let chunk: Vec<_> = rest.by_ref().take(5_000).collect();
        let report = client.insert_validated(chunk).await.context("storing events")?;
        commit_lsn = commit_lsn.max(report.commit_lsn);
        for item in report.items {
            let at = labels.next().unwrap_or_default();
            match item {
                BatchItem::Ok(Ack::Stored { .. }) => accepted += 1,
                BatchItem::Ok(Ack::Duplicate { .. }) => duplicates += 1,
                BatchItem::Rejected(reason) => {
                    rejected += 1;
                    eprintln!("{at}: {reason}");
                }
            }
        }
    }
    println!(
        "{}",
        serde_json::json!({"accepted": accepted, "rejected": rejected, "duplicates": duplicates, "commit_lsn": commit_lsn})
    );
    Ok(if rejected > 0 { ExitCode::from(2) } else { ExitCode::SUCCESS })
}
