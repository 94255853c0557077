//! `audit-db erase`: crypto-shredding of one data subject.

use std::process::ExitCode;

use anyhow::Context as _;
use audit_server::app::App;
use audit_server::privacy::{ErasureStatus, erase_subject};

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
