//! `audit-db ingest`: NDJSON in, one summary line out, every rejected line named by number.

use std::io::{BufRead, BufReader, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use audit_client::BatchItem;
use audit_core::{NewEvent, ValidationError};
use chrono::Utc;
use indicatif::{ProgressBar, ProgressStyle};

use audit_server::app::App;

/// Arguments of `audit-db ingest`.
#[derive(Debug, clap::Args)]
pub(crate) struct IngestArgs {
    /// NDJSON file; `-` or nothing reads standard input.
    pub file: Option<PathBuf>,
    /// Events per database transaction.
    #[arg(long, default_value_t = 5_000)]
    pub chunk: usize,
    /// Input format: `ndjson` (one event per line, the seed's field names) or `fhir` (a FHIR R4 AuditEvent, a
    /// Bundle of them, or FHIR bulk NDJSON; mapped as docs/fhir.md describes).
    #[arg(long, value_enum, default_value = "ndjson")]
    pub format: InputFormat,
}

/// What `audit-db ingest` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum InputFormat {
    /// One event per line.
    Ndjson,
    /// FHIR R4 AuditEvent resources.
    Fhir,
}

/// A run of validated lines handed from the reader thread to the writer.
struct Chunk {
    line_numbers: Vec<u64>,
    results: Vec<Result<NewEvent, ValidationError>>,
    bytes: u64,
}

/// Runs the command.
pub(crate) async fn run(app: App, args: IngestArgs) -> anyhow::Result<ExitCode> {
    if args.format == InputFormat::Fhir {
        let input: Box<dyn BufRead + Send> = match &args.file {
            Some(p) if p.as_os_str() != "-" => {
                Box::new(BufReader::new(std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?))
            }
            _ => Box::new(BufReader::new(std::io::stdin())),
        };
        return crate::cli_fhir::ingest(app, input).await;
    }
    let client = app.client().await?;
    let validator = client.validator().clone();
    let (input, total_bytes): (Box<dyn BufRead + Send>, Option<u64>) = match &args.file {
        None => (Box::new(BufReader::new(std::io::stdin())), None),
        Some(p) if p.as_os_str() == "-" => (Box::new(BufReader::new(std::io::stdin())), None),
        Some(p) => {
            let f = std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
            let len = f.metadata().map(|m| m.len()).ok();
            (Box::new(BufReader::with_capacity(1 << 20, f)), len)
        }
    };

    // Reading and validating is CPU work: do it on a thread, overlapping the database writes.
    let chunk_size = args.chunk.max(1);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<Chunk>>(2);
    let reader = std::thread::spawn(move || {
        let mut chunk = Chunk { line_numbers: Vec::new(), results: Vec::new(), bytes: 0 };
        for (i, line) in input.lines().enumerate() {
            let line = match line {
                Ok(l) => l,
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            };
            chunk.bytes += line.len() as u64 + 1;
            if line.trim().is_empty() {
                continue;
            }
            chunk.line_numbers.push(i as u64 + 1);
            chunk.results.push(validator.validate_str(&line, Utc::now()));
            if chunk.results.len() >= chunk_size {
                let full =
                    std::mem::replace(&mut chunk, Chunk { line_numbers: Vec::new(), results: Vec::new(), bytes: 0 });
                if tx.blocking_send(Ok(full)).is_err() {
                    return;
                }
            }
        }
        if !chunk.results.is_empty() || chunk.bytes > 0 {
            let _ = tx.blocking_send(Ok(chunk));
        }
    });

    let progress = Progress::new(total_bytes);
    // Two chunks in flight: while one commits, the next is hashed and sent (their transactions serialise on the
    // organisations' log heads, so order and gap-free sequences are kept).
    let mut in_flight: std::collections::VecDeque<Pending> = std::collections::VecDeque::new();
    let mut counts = Counts::default();
    while let Some(chunk) = rx.recv().await {
        let chunk = chunk.context("reading input")?;
        let mut invalid = vec![false; chunk.results.len()];
        for (k, (n, r)) in chunk.line_numbers.iter().zip(&chunk.results).enumerate() {
            if let Err(e) = r {
                invalid[k] = true;
                progress.println(&format!("line {n}: {e}"));
            }
        }
        let c = client.clone();
        let results = chunk.results;
        let task = tokio::spawn(async move { c.insert_validated(results).await });
        in_flight.push_back(Pending { line_numbers: chunk.line_numbers, invalid, bytes: chunk.bytes, task });
        if in_flight.len() >= 2 {
            let done = in_flight.pop_front().expect("two in flight");
            settle(done, &mut counts, &progress).await?;
        }
    }
    while let Some(done) = in_flight.pop_front() {
        settle(done, &mut counts, &progress).await?;
    }
    let Counts { accepted, rejected, duplicates, commit_lsn } = counts;
    reader.join().map_err(|_| anyhow::anyhow!("the input reader thread panicked"))?;
    progress.finish(accepted + duplicates + rejected);
    // `commit_lsn`: a read at this WAL position sees every line stored here (`audit-db query --min-lsn`).
    println!(
        "{}",
        serde_json::json!({
            "accepted": accepted, "rejected": rejected, "duplicates": duplicates, "commit_lsn": commit_lsn,
        })
    );
    Ok(if rejected > 0 { ExitCode::from(2) } else { ExitCode::SUCCESS })
}

/// A chunk whose transaction is under way.
struct Pending {
    line_numbers: Vec<u64>,
    invalid: Vec<bool>,
    bytes: u64,
    task: tokio::task::JoinHandle<audit_core::AuditResult<audit_client::BatchReport>>,
}

#[derive(Default)]
struct Counts {
    accepted: u64,
    rejected: u64,
    duplicates: u64,
    /// The latest commit's WAL position.
    commit_lsn: Option<audit_client::CommitLsn>,
}

/// Waits for a chunk's transaction and accounts for every line of it.
async fn settle(p: Pending, counts: &mut Counts, progress: &Progress) -> anyhow::Result<()> {
    let report = p.task.await.context("the storing task failed")?.context("storing events")?;
    counts.commit_lsn = counts.commit_lsn.max(report.commit_lsn);
    for (k, (n, item)) in p.line_numbers.iter().zip(&report.items).enumerate() {
        match item {
            BatchItem::Ok(audit_client::Ack::Stored { .. }) => counts.accepted += 1,
            BatchItem::Ok(audit_client::Ack::Duplicate { .. }) => counts.duplicates += 1,
            BatchItem::Rejected(reason) => {
                counts.rejected += 1;
                // Validation rejections were printed when read; the database's own are printed here.
                if !p.invalid[k] {
                    progress.println(&format!("line {n}: {reason}"));
                }
            }
        }
    }
    progress.advance(p.bytes, counts.accepted + counts.duplicates + counts.rejected);
    Ok(())
}

/// A progress bar on a terminal; plain periodic lines otherwise (indicatif hides bars when not a terminal).
struct Progress {
    bar: Option<ProgressBar>,
    started: Instant,
    last_line: std::cell::Cell<Instant>,
}

impl Progress {
    fn new(total_bytes: Option<u64>) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = match total_bytes {
                Some(n) => ProgressBar::new(n),
                None => ProgressBar::new_spinner(),
            };
            bar.set_style(
                ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Self { bar, started: Instant::now(), last_line: std::cell::Cell::new(Instant::now()) }
    }

    fn println(&self, line: &str) {
        match &self.bar {
            Some(b) => b.println(line),
            None => eprintln!("{line}"),
        }
    }

    fn advance(&self, bytes: u64, events: u64) {
        let rate = events as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
        match &self.bar {
            Some(b) => {
                b.inc(bytes);
                b.set_message(format!("{events} events, {rate:.0}/s"));
            }
            None => {
                if self.last_line.get().elapsed() >= Duration::from_secs(5) {
                    self.last_line.set(Instant::now());
                    eprintln!("progress: {events} events processed ({rate:.0}/s)");
                }
            }
        }
    }

    fn finish(&self, events: u64) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
        let secs = self.started.elapsed().as_secs_f64();
        eprintln!("ingested {events} lines in {secs:.1} s ({:.0} events/s)", events as f64 / secs.max(1e-9));
    }
}
