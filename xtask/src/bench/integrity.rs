//! Integrity: full `verify` throughput and inclusion-proof size, on the ingest data set.
//!
//! Every organisation's log is sealed (`IntegrityStore::checkpoint`), then a full (non-incremental)
//! `IntegrityStore::verify` recomputes every leaf from the stored rows and checks every signed root. Its
//! throughput is compared with the hashing floor of the same work in memory on one core (canonical leaf hash of each
//! event plus the Merkle root), measured on a sample of the same rows.

use std::time::Instant;

use anyhow::Context as _;
use audit_core::event::StoredEvent;
use audit_integrity::{MerkleTree, NoteSigner, canonical_bytes, hash_leaf, leaf_hash};
use chrono::Utc;
use serde_json::json;

use super::ingest::Dataset;
use super::measure::{Measure, Target};
use super::{Ctx, env, progress};

/// Rows of the in-memory hashing baseline (quick mode uses fewer).
const FLOOR_ROWS_FULL: i64 = 500_000;

fn stored_event(r: &tokio_postgres::Row) -> anyhow::Result<StoredEvent> {
    Ok(audit_pg::stored_event_from_row(r)?)
}

/// The integrity group (needs the ingest data set).
pub(crate) async fn run(ctx: &Ctx, ds: Option<&Dataset>) -> anyhow::Result<Vec<Measure>> {
    let verify_target = Some(Target::at_least(1_000_000.0));
    let proof_target = Some(Target::at_most(2048.0));
    let Some(ds) = ds else {
        let why = "the integrity group runs on the ingest data set: run it together with `ingest` or `query`";
        return Ok(vec![
            Measure::unmeasured("verify_leaves_per_sec_per_core", "leaves/s/core", verify_target, why),
            Measure::unmeasured("verify_ratio_vs_in_memory", "ratio", Some(Target::at_least(0.8)), why),
            Measure::unmeasured("proof_bytes", "bytes", proof_target, why),
        ]);
    };
    let url = &ds.app.url;
    let store = ds.app.integrity()?;
    let signer = NoteSigner::from_seed("xtask-bench", [7u8; 32])?;
    let verifier = signer.verifier();

    let t = Instant::now();
    let sealed = store.checkpoint(&signer, None, Utc::now()).await.context("sealing every log")?;
    let seal_s = t.elapsed().as_secs_f64();
    let sealed_leaves: i64 = sealed.iter().map(|s| s.tree_size).sum();
    progress(format!("sealed {} logs ({sealed_leaves} leaves) in {seal_s:.2} s", sealed.len()));

    ctx.env.checkpoint().await;
    let cpu0 = env::process_cpu_seconds();
    let t = Instant::now();
    let report = store.verify(&verifier, None, false, &|_| {}).await.context("full verify")?;
    let wall = t.elapsed().as_secs_f64();
    let cpu = env::process_cpu_seconds() - cpu0;
    let cores = (cpu / wall).max(1.0);
    let rate = report.leaves as f64 / wall / cores;
    progress(format!(
        "full verify: {} leaves of {} logs in {wall:.2} s ({:.0} leaves/s, {:.2} cores of this process), {} findings",
        report.leaves,
        report.logs,
        report.leaves as f64 / wall,
        cpu / wall,
        report.findings.len()
    ));

    // The hashing floor: the same per-leaf work in memory, one core, on a sample of the same rows.
    let c = env::connect(url).await?;
    let limit = if ctx.sizes.rows >= 5_000_000 { FLOOR_ROWS_FULL } else { 200_000 };
    let rows = c
        .query(
            &format!("SELECT {} FROM audit_log ORDER BY organization_id, seq LIMIT $1", super::rows::COLUMNS),
            &[&limit],
        )
        .await?;
    let events: Vec<StoredEvent> = rows.iter().map(stored_event).collect::<anyhow::Result<_>>()?;
    drop(rows);
    let t = Instant::now();
    let mut mismatches = 0usize;
    let mut leaves = Vec::with_capacity(events.len());
    for e in &events {
        let h = leaf_hash(e);
        if h != e.leaf_hash {
            mismatches += 1;
        }
        leaves.push(h);
    }
    let root = MerkleTree::new(&leaves).root();
    let floor_s = t.elapsed().as_secs_f64();
    let floor_rate = events.len() as f64 / floor_s;
    // Where the floor goes: building the canonical bytes versus hashing them.
    let t = Instant::now();
    let canon: Vec<Vec<u8>> = events.iter().map(canonical_bytes).collect();
    let canon_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut acc = 0u8;
    for b in &canon {
        acc ^= hash_leaf(b)[0];
    }
    std::hint::black_box(acc);
    let hash_s = t.elapsed().as_secs_f64();
    let canon_bytes_avg = canon.iter().map(Vec::len).sum::<usize>() as f64 / canon.len().max(1) as f64;
    drop(canon);
    progress(format!(
        "in-memory hashing floor: {} leaves in {floor_s:.3} s = {floor_rate:.0} leaves/s on one core",
        events.len()
    ));

    let mut verify =
        Measure::new("verify_leaves_per_sec_per_core", rate, "leaves/s/core", rate, floor_rate, verify_target)
            .note("baseline = leaf hash + Merkle root of a sample of the same rows in memory on one core (no database)")
            .details(json!({
                "leaves": report.leaves,
                "logs": report.logs,
                "findings": report.findings.len(),
                "wall_s": wall,
                "process_cpu_s": cpu,
                "cores_used_by_verifier_process": cpu / wall,
                "leaves_per_wall_second": report.leaves as f64 / wall,
                "seal_s": seal_s,
                "sealed_leaves": sealed_leaves,
                "floor_rows": events.len(),
            "floor_canonical_bytes_per_s": events.len() as f64 / canon_s,
            "floor_sha256_leaves_per_s": events.len() as f64 / hash_s,
            "canonical_bytes_per_leaf": canon_bytes_avg,
                "floor_leaf_mismatches": mismatches,
                "floor_root_prefix": format!("{:02x}{:02x}{:02x}{:02x}", root[0], root[1], root[2], root[3]),
                "definition": "leaves ÷ wall seconds ÷ max(1, CPU cores used by the verifying process); the \
                               PostgreSQL backend's CPU is not counted",
            }));
    if !report.findings.is_empty() {
        verify = verify.note(format!(
            "verify reported {} findings on an untouched database: investigate before trusting this figure",
            report.findings.len()
        ));
    }

    // Inclusion proof at the largest log: position 0 has the longest audit path (ceil(log2 n) hashes).
    let logs = store.logs(None).await?;
    let (log_id, size) = logs.iter().max_by_key(|(_, s)| *s).cloned().context("no integrity log")?;
    let row = if log_id.is_empty() {
        c.query_one("SELECT event_id FROM audit_log WHERE organization_id IS NULL AND seq = 0", &[]).await?
    } else {
        c.query_one("SELECT event_id FROM audit_log WHERE organization_id = $1 AND seq = 0", &[&log_id]).await?
    };
    let event_id: uuid::Uuid = row.get(0);
    let proof = store.inclusion_proof(&verifier, event_id).await.context("inclusion proof")?;
    let binary = 32 * proof.proof.len();
    let json_bytes = serde_json::to_vec(&proof)?.len();
    let depth_10m = (10_000_000f64).log2().ceil() as usize;
    progress(format!(
        "inclusion proof at a log of {size} leaves: {} hashes = {binary} bytes ({json_bytes} bytes as JSON)",
        proof.proof.len()
    ));
    let proof_m = Measure::new(
        "proof_bytes",
        binary as f64,
        "bytes",
        binary as f64,
        json_bytes as f64,
        proof_target,
    )
    .raw_unit("bytes")
    .note("value = audit path (32-byte hashes); baseline column = the whole `audit-db proof` JSON incl. the signed checkpoint")
    .details(json!({
        "log_id": log_id,
        "log_size": size,
        "tree_size": proof.tree_size,
        "hashes": proof.proof.len(),
        "json_bytes": json_bytes,
        "audit_path_bytes_at_10m_leaves": 32 * depth_10m,
    }));
    let ratio = Measure::ratio(
        "verify_ratio_vs_in_memory",
        rate,
        floor_rate,
        "leaves/s/core",
        Some(Target::at_least(0.8)),
    )
    .note("verify_leaves_per_sec_per_core ÷ the in-memory recompute (leaf hash + Merkle root) of the same rows on one core");
    Ok(vec![verify, ratio, proof_m])
}
