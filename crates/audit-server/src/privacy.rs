//! Erasure of a data subject (GDPR Art. 17) by crypto-shredding: the one function behind `audit-db erase` and the
//! admin API route. It checks legal holds, destroys the subject's key and records the erasure as an audit event
//! that names the key id and counts, never the subject's personal value.

use audit_core::{AuditError, AuditResult, DataClassification};
use audit_partition::{LegalHold, PartitionManager};
use audit_privacy::SubjectEvents;
use audit_resilience::Policy;
use chrono::Utc;
use serde::Serialize;

use crate::app::{Client, Privacy};

/// The action recorded for an erasure.
pub const ERASURE_ACTION: &str = "personal_data_erasure";

/// The action recorded for a master-key rotation.
pub const ROTATION_ACTION: &str = "master_key_rotation";

/// Rotates the master key: re-wraps every subject key wrapped under `old` under `privacy`'s master key (one
/// transaction; see [`audit_privacy::Shredder::rotate_master_from`]) and records a `master_key_rotation` event in
/// the shared log naming both master-key ids and the count — ids are fingerprints, never key material. `client`
/// must seal with `privacy` (the new key). Returns the rotation and the recorded event's id.
pub async fn rotate_master_key(
    client: &Client,
    privacy: &Privacy,
    old: std::sync::Arc<dyn audit_core::KeyManager>,
    requested_by: &str,
) -> AuditResult<(audit_privacy::MasterRotation, uuid::Uuid)> {
    let rotation = privacy.rotate_master_from(old).await?;
    tracing::info!(
        old = rotation.old_master_key_id,
        new = rotation.new_master_key_id,
        rewrapped = rotation.subject_keys_rewrapped,
        "master key rotated"
    );
    let event = serde_json::json!({
        "event_id": uuid::Uuid::new_v4(),
        "action": ROTATION_ACTION,
        "status": "success",
        "timestamp": audit_core::event::format_timestamp(Utc::now()),
        "principal_id": requested_by,
        "target_resource_type": "master_key",
        "data_classification": DataClassification::Confidential.as_str(),
        "outcome_description": "subject keys re-wrapped under a new master key; no stored value changed",
        "details": {
            "old_master_key_id": rotation.old_master_key_id,
            "new_master_key_id": rotation.new_master_key_id,
            "subject_keys_rewrapped": rotation.subject_keys_rewrapped,
            "already_under_new": rotation.already_under_new,
        },
    });
    let failed = |why: String| {
        AuditError::permanent(format!(
            "the subject keys are re-wrapped under master key {} (the rotation is committed), but recording it \
             failed: {why}; record it by hand",
            rotation.new_master_key_id
        ))
    };
    let batch = client.insert_batch(vec![event]).await.map_err(|e| failed(e.to_string()))?;
    match batch.items.first() {
        Some(audit_client::BatchItem::Ok(ack)) => Ok((rotation.clone(), ack.event_id())),
        Some(audit_client::BatchItem::Rejected(r)) => Err(failed(r.to_string())),
        None => Err(failed("no outcome".into())),
    }
}

/// What happened to an erasure request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErasureStatus {
    /// The key is destroyed and the erasure recorded.
    Erased,
    /// `--dry-run`: nothing changed; the report shows what would be erased.
    DryRun,
    /// A legal hold covers some of the subject's events: nothing changed.
    RefusedLegalHold,
    /// The subject has no key: no encrypted value of theirs is stored.
    NoKey,
}

/// The outcome of [`erase_subject`] (printed by the CLI, returned by the admin route).
#[derive(Debug, Clone, Serialize)]
pub struct ErasureReport {
    /// What happened.
    pub status: ErasureStatus,
    /// The subject key's id (hex), if there is one.
    pub subject_key_id: Option<String>,
    /// Events carrying the subject's encrypted values, per organisation and classification.
    pub events: Vec<SubjectEvents>,
    /// Their total.
    pub total_events: i64,
    /// Events that carry the subject's id in clear (written with the policy off): erasure cannot reach them.
    pub plaintext_events: i64,
    /// Active legal holds that cover some of the subject's events (non-empty only when refused).
    pub legal_holds: Vec<LegalHold>,
    /// Ids of the audit events recording the erasure (one per organisation log touched).
    pub erasure_event_ids: Vec<uuid::Uuid>,
}

fn covers(hold: &LegalHold, e: &SubjectEvents) -> bool {
    match (&hold.organization_id, &hold.data_classification) {
        (Some(org), _) => e.organization_id.as_deref() == Some(org.as_str()),
        (None, Some(class)) => e.data_classification == *class,
        (None, None) => false,
    }
}

/// Erases `subject` (its id as written in `principal_id`/`target_resource_id`): refuses while an active legal hold
/// (by organisation or classification) covers any of its events, otherwise destroys its key and records one
/// `personal_data_erasure` event in each organisation log that held its values (the shared log when none did).
/// `requested_by` is who asked (operator, API principal). `dry_run` changes nothing.
///
/// Afterwards the subject's values read as `[erased]` (here at once; in other processes within the key-cache TTL);
/// rows, sequence numbers, leaf hashes, checkpoints, proofs and evidence packs are unchanged and still verify.
pub async fn erase_subject(
    client: &Client,
    privacy: &Privacy,
    partitions: &PartitionManager<Policy>,
    subject: &str,
    dry_run: bool,
    requested_by: &str,
) -> AuditResult<ErasureReport> {
    let plan = privacy.erasure_plan(subject).await?;
    let holds: Vec<LegalHold> =
        partitions.legal_holds(false).await?.into_iter().filter(|h| plan.events.iter().any(|e| covers(h, e))).collect();
    let mut report = ErasureReport {
        status: ErasureStatus::DryRun,
        subject_key_id: plan.key_id.clone(),
        total_events: plan.total_events(),
        events: plan.events.clone(),
        plaintext_events: plan.plaintext_events,
        legal_holds: Vec::new(),
        erasure_event_ids: Vec::new(),
    };
    let Some(key_id) = plan.key_id.clone() else {
        report.status = ErasureStatus::NoKey;
        return Ok(report);
    };
    if !holds.is_empty() {
        tracing::warn!(key_id, holds = holds.len(), "erasure refused: a legal hold covers the subject's events");
        report.status = ErasureStatus::RefusedLegalHold;
        report.legal_holds = holds;
        return Ok(report);
    }
    if dry_run {
        return Ok(report);
    }
    privacy.destroy_key(&key_id).await?;
    tracing::info!(key_id, events = report.total_events, "subject key destroyed (erasure)");

    let mut orgs: Vec<Option<String>> = plan.events.iter().map(|e| e.organization_id.clone()).collect();
    orgs.dedup();
    if orgs.is_empty() {
        orgs.push(None);
    }
    let now = Utc::now();
    let events: Vec<serde_json::Value> = orgs
        .iter()
        .map(|org| {
            let in_org: i64 = plan.events.iter().filter(|e| &e.organization_id == org).map(|e| e.events).sum();
            serde_json::json!({
                "event_id": uuid::Uuid::new_v4(),
                "action": ERASURE_ACTION,
                "status": "success",
                "timestamp": audit_core::event::format_timestamp(now),
                "organization_id": org,
                "principal_id": requested_by,
                "target_resource_type": "data_subject_key",
                "data_classification": DataClassification::Confidential.as_str(),
                "outcome_description": "subject key destroyed; personal values read as [erased]",
                "details": {
                    "subject_key_id": key_id,
                    "events_affected": in_org,
                    "legal_basis": "GDPR Art. 17",
                    "method": "crypto-shredding",
                },
            })
        })
        .collect();
    let batch = client.insert_batch(events).await.map_err(|e| {
        e.context(format!("subject key {key_id} was destroyed, but recording the erasure failed; record it by hand"))
    })?;
    for item in &batch.items {
        match item {
            audit_client::BatchItem::Ok(ack) => report.erasure_event_ids.push(ack.event_id()),
            audit_client::BatchItem::Rejected(r) => {
                return Err(AuditError::permanent(format!(
                    "subject key {key_id} was destroyed, but the erasure event was refused: {r}"
                )));
            }
        }
    }
    report.status = ErasureStatus::Erased;
    Ok(report)
}
