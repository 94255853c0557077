//! `audit-db erase`: crypto-shredding of one data subject; `audit-db keys rotate-master`: a new master key.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use audit_server::app::App;
use audit_server::config::AuditConfig;
use audit_server::privacy::{ErasureStatus, erase_subject, rotate_master_key};

/// Arguments of `audit-db erase`.
#[derive(Debug, clap::Args)]
pub(crate) struct EraseArgs {
    /// The subject's id, as written in `principal_id` or `target_resource_id` (e.g. `patient_789`).
    #[arg(long)]
    pub subject: String,
    /// Show what would be erased (key id, events per organisation, legal holds) and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Who asks (recorded as the erasure event's principal).
    #[arg(long, default_value = "audit-db-cli")]
    pub by: String,
}

pub(crate) async fn run(app: App, args: EraseArgs) -> anyhow::Result<ExitCode> {
    let privacy = app
        .privacy()?
        .context("no master key: erasure needs AUDIT_DB_MASTER_KEY_FILE (the subjects' keys are wrapped under it)")?;
    let client = app.client_with_privacy(Some(privacy.clone())).await?;
    let partitions = app.partitions().await?;
    let report = erase_subject(&client, &privacy, &partitions, &args.subject, args.dry_run, &args.by).await?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(match report.status {
        ErasureStatus::Erased => {
            eprintln!("erased: {} events now read the subject's values as [erased]", report.total_events);
            ExitCode::SUCCESS
        }
        ErasureStatus::DryRun => ExitCode::SUCCESS,
        ErasureStatus::NoKey => {
            eprintln!("nothing to erase: the subject has no key (no encrypted value of theirs is stored)");
            ExitCode::SUCCESS
        }
        ErasureStatus::RefusedLegalHold => {
            eprintln!(
                "refused: legal hold(s) {:?} cover the subject's events; release them first",
                report.legal_holds.iter().map(|h| h.id).collect::<Vec<_>>()
            );
            ExitCode::from(3)
        }
    })
}

/// `audit-db keys …`: the master key of personal data.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum KeysCommand {
    /// Re-wrap every subject key under a new master key, in one transaction (no stored value, leaf hash or proof
    /// changes), and record the rotation as an audit event (key ids only). Refuses a wrong old key, naming the
    /// master key the subject keys are wrapped under. Afterwards point AUDIT_DB_MASTER_KEY_FILE at the new file and
    /// restart every process; the old file no longer opens anything and can be destroyed.
    RotateMaster {
        /// The current master key file (the one the subject keys are wrapped under).
        #[arg(long)]
        old: PathBuf,
        /// The new master key file (`audit-db keygen --master --out DIR`).
        #[arg(long)]
        new: PathBuf,
        /// Who asks (recorded as the rotation event's principal).
        #[arg(long, default_value = "audit-db-cli")]
        by: String,
    },
}

fn read_master(flag: &str, path: &Path) -> anyhow::Result<audit_privacy::FileMasterKey> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{flag} {}: reading it", path.display()))?;
    audit_privacy::FileMasterKey::parse(&text).with_context(|| format!("{flag} {}", path.display()))
}

pub(crate) async fn keys(mut config: AuditConfig, cmd: KeysCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        KeysCommand::RotateMaster { old, new, by } => {
            let old_key = read_master("--old", &old)?;
            read_master("--new", &new)?;
            // This process seals and reads with the new key from here on, the rotation event included.
            config.privacy.master_key_file = Some(new.clone());
            let app = App::open(config).await?;
            let privacy = app.privacy()?.context("--new: no master key")?;
            let client = app.client_with_privacy(Some(privacy.clone())).await?;
            let (rotation, event_id) = rotate_master_key(&client, &privacy, Arc::new(old_key), &by)
                .await
                .with_context(|| format!("rotating from --old {} to --new {}", old.display(), new.display()))?;
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({"rotation": rotation, "event_id": event_id}))?
            );
            eprintln!(
                "rotated: {} subject keys now wrapped under master key {}; set AUDIT_DB_MASTER_KEY_FILE={} and \
                 restart every process",
                rotation.subject_keys_rewrapped,
                rotation.new_master_key_id,
                new.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
