//! Tamper-evidence commands: keygen, checkpoint, verify, proof, consistency, export-pack, verify-pack.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use audit_integrity::store::IntegrityStore;
use audit_integrity::{NoteSigner, NoteVerifier, verify_pack};
use audit_resilience::Policy;
use audit_server::config::AuditConfig;
use chrono::Utc;
use indicatif::{ProgressBar, ProgressStyle};

use audit_server::app::App;
use audit_server::filter_params::parse_time;

/// Key options shared by the commands that sign or verify.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct KeyArgs {
    /// Private signing key (default: `AUDIT_DB_SIGNING_KEY_FILE` / `integrity.signingKeyFile`).
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Public key to verify with (default: derived from the private key, or `signing.pub` beside it).
    #[arg(long)]
    pub public_key: Option<PathBuf>,
}

/// Tamper-evidence subcommands (flattened into the top level).
#[derive(Debug, clap::Subcommand)]
pub(crate) enum IntegrityCommand {
    /// Write a new Ed25519 signing key: DIR/signing.key (private, mode 0600) and DIR/signing.pub; with `--master`,
    /// a new master key for personal data instead: DIR/master.key (mode 0600; set AUDIT_DB_MASTER_KEY_FILE to it).
    Keygen {
        /// Directory to write into.
        #[arg(long)]
        out: PathBuf,
        /// Write the personal-data master key (`master.key`) instead of a signing key. Losing it makes every
        /// personal value unreadable; keep a copy as carefully as the database's backups.
        #[arg(long)]
        master: bool,
        /// Key name (appears in signed notes).
        #[arg(long, default_value = "audit-db")]
        name: String,
        /// Replace an existing key.
        #[arg(long)]
        force: bool,
    },
    /// Seal every organisation's log now in a signed checkpoint.
    Checkpoint {
        /// Only this organisation's log.
        #[arg(long)]
        org: Option<String>,
        #[command(flatten)]
        key: KeyArgs,
    },
    /// Recompute leaves and roots and check them against the signed checkpoints; one JSON line per finding.
    /// Exit 0 when clean, 1 when anything is found.
    Verify {
        /// Only this organisation's log.
        #[arg(long)]
        org: Option<String>,
        /// Only what is new since the last checkpoint a clean run verified.
        #[arg(long)]
        incremental: bool,
        #[command(flatten)]
        key: KeyArgs,
    },
    /// Print an event's inclusion proof against the latest checkpoint, as JSON.
    Proof {
        /// The event.
        #[arg(long)]
        event_id: uuid::Uuid,
        #[command(flatten)]
        key: KeyArgs,
    },
    /// Print a consistency proof between two checkpoints of a log (default: the two latest), as JSON.
    Consistency {
        /// The organisation (omit for the shared log).
        #[arg(long)]
        org: Option<String>,
        /// Older tree size.
        #[arg(long)]
        old: Option<i64>,
        /// Newer tree size.
        #[arg(long)]
        new: Option<i64>,
        #[command(flatten)]
        key: KeyArgs,
    },
    /// Write an offline evidence pack of one organisation: events, checkpoint, proofs, public key, signed manifest.
    ExportPack {
        /// The organisation.
        #[arg(long)]
        org: String,
        /// Earliest event time (inclusive).
        #[arg(long)]
        from: Option<String>,
        /// Latest event time (inclusive).
        #[arg(long)]
        to: Option<String>,
        /// Output directory (created; must be empty).
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        key: KeyArgs,
    },
    /// Verify an evidence pack with no database and no private key. Exit 0 when it verifies, 1 otherwise.
    VerifyPack {
        /// The pack directory.
        dir: PathBuf,
        /// Require the pack to be signed by this public key.
        #[arg(long)]
        public_key: Option<PathBuf>,
    },
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn signer(config: &AuditConfig, key: &KeyArgs) -> anyhow::Result<NoteSigner> {
    let path = key.key.clone().or_else(|| config.integrity.signing_key_file.clone()).context(
        "no signing key: run `audit-db keygen --out DIR` and set AUDIT_DB_SIGNING_KEY_FILE=DIR/signing.key (or --key)",
    )?;
    NoteSigner::parse(read(&path)?.trim()).with_context(|| format!("parsing {}", path.display()))
}

fn verifier(config: &AuditConfig, key: &KeyArgs) -> anyhow::Result<NoteVerifier> {
    if let Some(p) = &key.public_key {
        return NoteVerifier::parse(read(p)?.trim()).with_context(|| format!("parsing {}", p.display()));
    }
    let private = key.key.clone().or_else(|| config.integrity.signing_key_file.clone());
    if let Some(path) = private {
        if let Ok(text) = read(&path)
            && let Ok(s) = NoteSigner::parse(text.trim())
        {
            return Ok(s.verifier());
        }
        let public = path.with_file_name("signing.pub");
        if public.exists() {
            return Ok(NoteVerifier::parse(read(&public)?.trim())?);
        }
    }
    bail!("no key to verify with: pass --public-key FILE or set AUDIT_DB_SIGNING_KEY_FILE")
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).with_context(|| format!("writing {}", path.display()))?;
    writeln!(f, "{text}")?;
    Ok(())
}

/// Runs an integrity subcommand. `verify-pack` and `keygen` need no database.
pub(crate) async fn run(config: AuditConfig, cmd: IntegrityCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        IntegrityCommand::Keygen { out, master: true, force, .. } => {
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            let key_path = out.join(audit_privacy::MASTER_KEY_FILE_NAME);
            if key_path.exists() && !force {
                bail!(
                    "{} exists; refusing to replace a master key (every personal value sealed under it would become \
                     unreadable; use --force)",
                    key_path.display()
                );
            }
            let text = audit_privacy::FileMasterKey::generate_text()?;
            let id = audit_core::KeyManager::master_key_id(&audit_privacy::FileMasterKey::parse(&text)?);
            write_private(&key_path, &text)?;
            println!("{}", serde_json::json!({"master_key": key_path, "master_key_id": id}));
            Ok(ExitCode::SUCCESS)
        }
        IntegrityCommand::Keygen { out, name, force, master: false } => {
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            let key_path = out.join("signing.key");
            if key_path.exists() && !force {
                bail!("{} exists; refusing to replace a signing key (use --force)", key_path.display());
            }
            let s = NoteSigner::generate(&name)?;
            write_private(&key_path, &s.to_private_text())?;
            std::fs::write(out.join("signing.pub"), format!("{}\n", s.public_text()))?;
            println!(
                "{}",
                serde_json::json!({"private_key": key_path, "public_key": out.join("signing.pub"), "key_id": s.key_id(), "name": name})
            );
            Ok(ExitCode::SUCCESS)
        }
        IntegrityCommand::VerifyPack { dir, public_key } => {
            let mut files = BTreeMap::new();
            for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
                let entry = entry?;
                if entry.file_type()?.is_file() {
                    files.insert(entry.file_name().to_string_lossy().into_owned(), std::fs::read(entry.path())?);
                }
            }
            let trusted = public_key
                .map(|p| -> anyhow::Result<NoteVerifier> { Ok(NoteVerifier::parse(read(&p)?.trim())?) })
                .transpose()?;
            match verify_pack(&files, trusted.as_ref()) {
                Ok(report) => {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                    eprintln!("pack verifies: {} events proven against the signed checkpoint", report.events);
                    Ok(ExitCode::SUCCESS)
                }
                Err(problems) => {
                    for p in &problems {
                        println!("{}", serde_json::json!({"problem": p}));
                    }
                    eprintln!("pack does NOT verify: {} problem(s)", problems.len());
                    Ok(ExitCode::from(1))
                }
            }
        }
        other => {
            let app = App::open(config).await?;
            let store = app.integrity()?;
            run_with_db(&app.config, &store, other).await
        }
    }
}

async fn run_with_db(
    config: &AuditConfig,
    store: &IntegrityStore<Policy>,
    cmd: IntegrityCommand,
) -> anyhow::Result<ExitCode> {
    match cmd {
        IntegrityCommand::Checkpoint { org, key } => {
            let s = signer(config, &key)?;
            let sealed = store.checkpoint(&s, org.as_deref(), Utc::now()).await?;
            for o in &sealed {
                println!("{}", serde_json::to_string(o)?);
            }
            let new = sealed.iter().filter(|o| o.new_checkpoint).count();
            eprintln!("sealed {new} log(s) in new checkpoints; {} unchanged", sealed.len() - new);
            Ok(ExitCode::SUCCESS)
        }
        IntegrityCommand::Verify { org, incremental, key } => {
            let v = verifier(config, &key)?;
            let done = AtomicU64::new(0);
            let bar = std::io::stderr().is_terminal().then(|| {
                let b = ProgressBar::new_spinner();
                b.set_style(
                    ProgressStyle::with_template("{spinner} verifying: {pos} leaves ({per_sec})")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                b.enable_steady_tick(Duration::from_millis(200));
                b
            });
            let progress = |n: u64| {
                let total = done.fetch_add(n, Ordering::Relaxed) + n;
                match &bar {
                    Some(b) => b.set_position(total),
                    None if total > 0 && total % 1_048_576 < n => eprintln!("verified {total} leaves"),
                    None => {}
                }
            };
            let report = store.verify(&v, org.as_deref(), incremental, &progress).await?;
            if let Some(o) = &org
                && report.logs == 0
            {
                bail!("organisation `{o}` has no log here (no events, no head, no checkpoint): nothing to verify");
            }
            if let Some(b) = bar {
                b.finish_and_clear();
            }
            for f in &report.findings {
                println!(
                    "{}",
                    serde_json::json!({
                        "organization_id": if f.log_id.is_empty() { None } else { Some(&f.log_id) },
                        "seq": f.seq,
                        "event_id": f.event_id,
                        "kind": f.kind,
                        "detail": f.detail,
                    })
                );
            }
            eprintln!(
                "verified {} log(s), {} leaves in {:.2} s ({:.0} leaves/s): {}",
                report.logs,
                report.leaves,
                report.seconds,
                report.leaves as f64 / report.seconds.max(1e-9),
                if report.findings.is_empty() {
                    "clean".to_string()
                } else {
                    format!("{} finding(s)", report.findings.len())
                }
            );
            Ok(if report.findings.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        IntegrityCommand::Proof { event_id, key } => {
            let v = verifier(config, &key)?;
            println!("{}", serde_json::to_string_pretty(&store.inclusion_proof(&v, event_id).await?)?);
            Ok(ExitCode::SUCCESS)
        }
        IntegrityCommand::Consistency { org, old, new, key } => {
            let v = verifier(config, &key)?;
            let log = org.unwrap_or_default();
            println!("{}", serde_json::to_string_pretty(&store.consistency_proof(&v, &log, old, new).await?)?);
            Ok(ExitCode::SUCCESS)
        }
        IntegrityCommand::ExportPack { org, from, to, out, key } => {
            let s = signer(config, &key)?;
            let now = Utc::now();
            let from = from.as_deref().map(|t| parse_time("--from", t, now)).transpose()?;
            let to = to.as_deref().map(|t| parse_time("--to", t, now)).transpose()?;
            if out.exists() && std::fs::read_dir(&out)?.next().is_some() {
                bail!("{} is not empty; choose a new directory for the pack", out.display());
            }
            let files = store.export_pack(&s, &org, from, to, now).await?;
            std::fs::create_dir_all(&out)?;
            for (name, bytes) in &files {
                std::fs::write(out.join(name), bytes)?;
            }
            let events = files.get("events.ndjson").map(|b| b.iter().filter(|c| **c == b'\n').count()).unwrap_or(0);
            println!(
                "{}",
                serde_json::json!({"pack": out, "organization_id": org, "events": events, "files": files.len()})
            );
            Ok(ExitCode::SUCCESS)
        }
        IntegrityCommand::Keygen { .. } | IntegrityCommand::VerifyPack { .. } => {
            unreachable!("handled without a database")
        }
    }
}
