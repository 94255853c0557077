//! Integrity: full `verify` throughput, inclusion-proof size and latency, on the ingest data set.
//!
//! Every organisation's log is sealed (`IntegrityStore::checkpoint`), then a full (non-incremental)
//! `IntegrityStore::verify` recomputes every leaf from the stored rows (binary COPY out, canonical form written from
//! the fields) and checks every signed root. Its throughput is compared with the same work in memory on one core
//! (parsing the same binary COPY bytes, canonical leaf hash of each event, Merkle root), measured on a sample of the
//! same rows; the previous `serde_json::Value` path is reported beside it as information.
//!
//! Proof latency: `IntegrityStore::inclusion_proof` (stored nodes + at most two tiles of leaves) against the
//! whole-tree method it replaced (read every row of the log, recompute, build a `MerkleTree`), same run, same log.

use std::time::Instant;

use anyhow::Context as _;
use audit_core::event::StoredEvent;
use audit_integrity::{MerkleTree, NoteSigner, canonical_bytes, hash_leaf, leaf_hash, leaf_hash_raw};
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
            Measure::unmeasured("proof_p50_ms", "ms", None, why),
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

    // The in-memory floor: the same per-leaf work as verify (binary COPY tuples → canonical form → leaf hash, and the
    // Merkle root) on one core, on a sample of the same rows already in memory.
    let c = env::connect(url).await?;
    let limit = if ctx.sizes.rows >= 5_000_000 { FLOOR_ROWS_FULL } else { 200_000 };
    let copy = {
        let stream = c
            .copy_out(&format!(
                "COPY (SELECT {} FROM audit_log ORDER BY organization_id, seq LIMIT {limit}) TO STDOUT (FORMAT binary)",
                audit_pg::EVENT_COLUMNS
            ))
            .await?;
        let mut stream = std::pin::pin!(stream);
        let mut buf = Vec::new();
        while let Some(chunk) = futures::StreamExt::next(&mut stream).await {
            buf.extend_from_slice(&chunk?);
        }
        buf
    };
    let t = Instant::now();
    let mut mismatches = 0usize;
    let mut leaves = Vec::new();
    {
        let mut tuples = audit_pg::BinaryTuples::new(&copy)?;
        let (mut fields, mut buf) = (Vec::with_capacity(20), Vec::with_capacity(1024));
        while tuples.next_tuple(&mut fields)? {
            let row = audit_pg::RawEventRow::from_fields(&fields)?;
            let h = leaf_hash_raw(&row, &mut buf)?;
            if h != row.leaf_hash {
                mismatches += 1;
            }
            leaves.push(h);
        }
    }
    let root = MerkleTree::new(&leaves).root();
    let floor_s = t.elapsed().as_secs_f64();
    let floor_rows = leaves.len();
    let floor_rate = floor_rows as f64 / floor_s;
    drop(copy);
    progress(format!(
        "in-memory floor (binary COPY bytes → leaf): {floor_rows} leaves in {floor_s:.3} s = {floor_rate:.0} leaves/s on one core"
    ));

    // The previous path, for information: rows decoded into `StoredEvent` (details as a `serde_json::Value`), leaf
    // hash through the `Value`, Merkle root.
    let rows = c
        .query(
            &format!("SELECT {} FROM audit_log ORDER BY organization_id, seq LIMIT $1", super::rows::COLUMNS),
            &[&limit],
        )
        .await?;
    let t = Instant::now();
    let events: Vec<StoredEvent> = rows.iter().map(stored_event).collect::<anyhow::Result<_>>()?;
    let decode_s = t.elapsed().as_secs_f64();
    drop(rows);
    let t = Instant::now();
    let value_leaves: Vec<_> = events.iter().map(leaf_hash).collect();
    std::hint::black_box(MerkleTree::new(&value_leaves).root());
    let value_hash_s = t.elapsed().as_secs_f64();
    let value_rate = events.len() as f64 / value_hash_s;
    let value_rate_with_decode = events.len() as f64 / (value_hash_s + decode_s);
    progress(format!(
        "old Value path (info): {value_rate:.0} leaves/s hashing StoredEvents, {value_rate_with_decode:.0} leaves/s \
         including Row → StoredEvent"
    ));
    // Where the old floor went: building the canonical bytes versus hashing them.
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

    let mut verify =
        Measure::new("verify_leaves_per_sec_per_core", rate, "leaves/s/core", rate, floor_rate, verify_target)
            .note("baseline = the same binary COPY tuples → canonical form → leaf hash + Merkle root, of a sample of the same rows in memory on one core (no database)")
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
                "floor_rows": floor_rows,
                "value_path_leaves_per_s": value_rate,
                "value_path_leaves_per_s_with_row_decode": value_rate_with_decode,
                "value_path_canonical_bytes_per_s": events.len() as f64 / canon_s,
                "sha256_leaves_per_s": events.len() as f64 / hash_s,
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
    let latency = proof_latency(&store, &verifier, &c, &log_id, proof.tree_size).await?;
    let ratio = Measure::ratio(
        "verify_ratio_vs_in_memory",
        rate,
        floor_rate,
        "leaves/s/core",
        Some(Target::at_least(0.8)),
    )
    .note("verify_leaves_per_sec_per_core ÷ the in-memory recompute (binary COPY tuples → leaf hash + Merkle root) of the same rows on one core");
    let value_info = Measure::new(
        "verify_in_memory_value_path_leaves_per_sec",
        value_rate,
        "leaves/s",
        value_rate,
        floor_rate,
        None,
    )
    .note("info: the previous in-memory floor (StoredEvent with details as serde_json::Value → canonical → leaf hash + root), one core; baseline column = the new floor");
    Ok(vec![verify, ratio, proof_m, latency, value_info])
}

/// Proofs timed per method at the largest log: `IntegrityStore::inclusion_proof` (stored nodes + tiles) at spread
/// positions, and the whole-tree method it replaced (every row of the log read and decoded, leaves recomputed, a
/// `MerkleTree` built) at fewer positions, since each costs O(n).
async fn proof_latency(
    store: &audit_integrity::store::IntegrityStore<impl audit_core::ResiliencePolicy>,
    verifier: &audit_integrity::NoteVerifier,
    c: &tokio_postgres::Client,
    log_id: &str,
    size: i64,
) -> anyhow::Result<Measure> {
    let (pred, params): (&str, Vec<String>) = if log_id.is_empty() {
        ("organization_id IS NULL", vec![])
    } else {
        ("organization_id = $2", vec![log_id.into()])
    };
    let id_at = |seq: i64| {
        let sql = format!("SELECT event_id FROM audit_log WHERE {pred} AND seq = $1");
        let params = params.clone();
        async move {
            let mut p: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&seq];
            p.extend(params.iter().map(|s| s as &(dyn tokio_postgres::types::ToSql + Sync)));
            anyhow::Ok(c.query_one(&sql, &p).await?.get::<_, uuid::Uuid>(0))
        }
    };
    let positions: Vec<i64> = (0..40).map(|k| (k * 7_919) % size.max(1)).collect();
    let mut new_ms = Vec::new();
    let rows_before = store.rows_read();
    for &m in &positions {
        let id = id_at(m).await?;
        let t = Instant::now();
        store.inclusion_proof(verifier, id).await.context("inclusion proof")?;
        new_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let rows_per_proof = (store.rows_read() - rows_before) as f64 / positions.len() as f64;
    let mut old_ms = Vec::new();
    let mut same = true;
    for &m in positions.iter().take(5) {
        let t = Instant::now();
        let rows = c
            .query(
                &format!("SELECT {} FROM audit_log WHERE {pred} AND seq < $1 ORDER BY seq", audit_pg::EVENT_COLUMNS),
                &{
                    let mut p: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&size];
                    p.extend(params.iter().map(|s| s as &(dyn tokio_postgres::types::ToSql + Sync)));
                    p
                },
            )
            .await?;
        let leaves: Vec<_> =
            rows.iter().map(|r| stored_event(r).map(|e| leaf_hash(&e))).collect::<anyhow::Result<_>>()?;
        let tree = MerkleTree::new(&leaves);
        let proof = tree.inclusion_proof(m as u64);
        old_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let new = store.inclusion_proof(verifier, id_at(m).await?).await?;
        same &= new.proof == proof.iter().map(hex::encode).collect::<Vec<_>>();
    }
    let p50 = super::measure::percentile(&new_ms, 0.5);
    let old_p50 = super::measure::percentile(&old_ms, 0.5);
    progress(format!(
        "inclusion proof at a log of {size} leaves: p50 {p50:.2} ms (stored nodes, {rows_per_proof:.0} rows read per \
         proof) vs {old_p50:.1} ms whole tree; same proofs: {same}"
    ));
    let mut m = Measure::new("proof_p50_ms", p50, "ms", p50, old_p50, None)
        .raw_unit("ms")
        .note("info: baseline column = the whole-tree method (every row of the log read, leaves recomputed, MerkleTree built), same log, same run")
        .details(json!({
            "log_id": log_id,
            "tree_size": size,
            "proofs": new_ms.len(),
            "p99_ms": super::measure::percentile(&new_ms, 0.99),
            "rows_read_per_proof": rows_per_proof,
            "whole_tree_proofs": old_ms.len(),
            "speedup_p50": old_p50 / p50,
            "same_proofs": same,
        }));
    if !same {
        m = m.note("the two methods gave different proofs: investigate");
    }
    Ok(m)
}
