//! Evidence packs: a self-contained set of files proving that some events are in a signed log, checkable by an
//! auditor with no database and no private key (layout and manual procedure in `docs/integrity.md`).
//!
//! Files: `manifest.json` (every other file's SHA-256 and size, the origin, the key id), `manifest.sig` (detached
//! Ed25519 signature of `manifest.json` by the log key), `signing.pub` (the log's public key text),
//! `checkpoint.note` (the signed checkpoint), `events.ndjson` (the events, one `StoredEvent::to_json()` per line)
//! and `proofs.json` (an inclusion proof per event against the checkpoint). Any other file must be listed in the
//! manifest.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::IntegrityError;
use super::canonical::leaf_hash;
use super::checkpoint::{Checkpoint, NoteSigner, NoteVerifier, origin_for};
use super::merkle::{Hash, MerkleTree, verify_inclusion};
use audit_core::event::{StoredEvent, format_timestamp};

/// The `format` value of a version-1 manifest.
pub const PACK_FORMAT: &str = "audit-db-evidence-pack/v1";
/// Manifest file name.
pub const MANIFEST: &str = "manifest.json";
/// Detached manifest signature file name.
pub const MANIFEST_SIG: &str = "manifest.sig";
/// Public key file name.
pub const SIGNING_PUB: &str = "signing.pub";
/// Signed checkpoint file name.
pub const CHECKPOINT_NOTE: &str = "checkpoint.note";
/// Events file name.
pub const EVENTS: &str = "events.ndjson";
/// Proofs file name.
pub const PROOFS: &str = "proofs.json";

/// `manifest.json`: what the pack holds, signed as a whole by `manifest.sig`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackManifest {
    /// Always [`PACK_FORMAT`].
    pub format: String,
    /// The log's origin (`audit-db/org/<id>` or `audit-db/shared`).
    pub origin: String,
    /// The organisation every event belongs to (`null` for the shared log).
    pub organization_id: Option<String>,
    /// Key id (8 hex digits) of the key that signed the manifest and the checkpoint.
    pub key_id: String,
    /// When the pack was made.
    pub created_at: String,
    /// Every file except `manifest.json` and `manifest.sig`, sorted by path.
    pub files: Vec<PackFileEntry>,
}

/// One file of the pack as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackFileEntry {
    /// File name inside the pack.
    pub path: String,
    /// Lowercase hex SHA-256 of the file's bytes.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

/// `proofs.json`: one inclusion proof per event, all against the checkpoint's tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProofsFile {
    /// Tree size of the checkpoint the proofs are for.
    pub tree_size: u64,
    /// Lowercase hex root of that tree.
    pub root: String,
    /// One entry per event, in the order of `events.ndjson`.
    pub proofs: Vec<ProofEntry>,
}

/// One event's inclusion proof (the JSON form, also served by the proof API).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProofEntry {
    /// The leaf's position.
    pub seq: u64,
    /// The event, to match the proof with its line.
    pub event_id: Uuid,
    /// Lowercase hex leaf hash.
    pub leaf: String,
    /// The audit path, lowercase hex, leaf side first (RFC 9162 order).
    pub hashes: Vec<String>,
}

impl ProofsFile {
    /// Builds the proofs of `events` in the tree over `leaves` (all leaves of the log up to the checkpoint; O(n)
    /// once, then O(log² n) per event). Fails if an event is not at its seq in `leaves`.
    pub fn build(leaves: &[Hash], events: &[StoredEvent]) -> Result<Self, IntegrityError> {
        let tree = MerkleTree::new(leaves);
        let mut proofs = Vec::with_capacity(events.len());
        for e in events {
            let leaf = leaf_hash(e);
            let seq = u64::try_from(e.seq).map_err(|_| IntegrityError::Mismatch(format!("negative seq {}", e.seq)))?;
            if leaves.get(seq as usize) != Some(&leaf) {
                return Err(IntegrityError::Mismatch(format!(
                    "event {} is not the leaf at seq {seq} of the {}-leaf tree",
                    e.event.event_id,
                    leaves.len()
                )));
            }
            proofs.push(ProofEntry {
                seq,
                event_id: e.event.event_id,
                leaf: hex::encode(leaf),
                hashes: tree.inclusion_proof(seq).iter().map(hex::encode).collect(),
            });
        }
        Ok(Self { tree_size: tree.size(), root: hex::encode(tree.root()), proofs })
    }
}

/// What a successfully verified pack proves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PackReport {
    /// The log.
    pub origin: String,
    /// The organisation.
    pub organization_id: Option<String>,
    /// The signing key id; compare it with the key you trust (e.g. from `audit-db key show`).
    pub key_id: String,
    /// The full public key text from `signing.pub`.
    pub public_key: String,
    /// Checkpoint tree size.
    pub tree_size: u64,
    /// Checkpoint root, lowercase hex.
    pub root: String,
    /// Checkpoint time.
    pub checkpoint_time: DateTime<Utc>,
    /// Number of events proven.
    pub events: usize,
    /// Number of files checked (manifest and signature included).
    pub files: usize,
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Assembles a pack: writes `events.ndjson`, `proofs.json`, `signing.pub`, the given checkpoint note and extra
/// files, then the manifest and its signature. Pure; the caller writes the files (directory or archive).
pub fn build_pack(
    signer: &NoteSigner,
    organization_id: Option<&str>,
    checkpoint_note: &str,
    events: &[StoredEvent],
    proofs: &ProofsFile,
    created_at: DateTime<Utc>,
    extra_files: &BTreeMap<String, Vec<u8>>,
) -> Result<BTreeMap<String, Vec<u8>>, IntegrityError> {
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut ndjson = String::new();
    for e in events {
        ndjson.push_str(&serde_json::to_string(&e.to_json()).expect("JSON values serialize"));
        ndjson.push('\n');
    }
    files.insert(EVENTS.into(), ndjson.into_bytes());
    let mut proofs_json = serde_json::to_vec_pretty(proofs).expect("proofs serialize");
    proofs_json.push(b'\n');
    files.insert(PROOFS.into(), proofs_json);
    files.insert(SIGNING_PUB.into(), format!("{}\n", signer.public_text()).into_bytes());
    files.insert(CHECKPOINT_NOTE.into(), checkpoint_note.as_bytes().to_vec());
    for (path, bytes) in extra_files {
        if files.contains_key(path) || path == MANIFEST || path == MANIFEST_SIG {
            return Err(IntegrityError::Mismatch(format!("extra file `{path}` would replace a pack file")));
        }
        files.insert(path.clone(), bytes.clone());
    }
    let manifest = PackManifest {
        format: PACK_FORMAT.into(),
        origin: origin_for(organization_id.unwrap_or("")),
        organization_id: organization_id.map(str::to_string),
        key_id: signer.key_id(),
        created_at: format_timestamp(created_at),
        files: files
            .iter()
            .map(|(p, b)| PackFileEntry { path: p.clone(), sha256: sha256_hex(b), size: b.len() as u64 })
            .collect(),
    };
    let mut manifest_json = serde_json::to_vec_pretty(&manifest).expect("manifest serializes");
    manifest_json.push(b'\n');
    files.insert(MANIFEST_SIG.into(), signer.sign_detached(&manifest_json).into_bytes());
    files.insert(MANIFEST.into(), manifest_json);
    Ok(files)
}

/// Verifies a pack with nothing but its files. `trusted_key`, when given, must equal the pack's `signing.pub`
/// (otherwise the report's `key_id` must be compared with a trusted key by hand). Returns every problem found.
pub fn verify_pack(
    files: &BTreeMap<String, Vec<u8>>,
    trusted_key: Option<&NoteVerifier>,
) -> Result<PackReport, Vec<String>> {
    // Stages run cheapest first; each returns the problems that stop the next one from meaning anything.
    let (manifest, manifest_bytes) = read_manifest(files)?;
    check_listing(files, &manifest)?;
    let key = check_key(files, &manifest, manifest_bytes, trusted_key)?;
    let checkpoint = read_checkpoint(files, &key, &manifest)?;
    let events = check_events(files, &manifest, &checkpoint)?;
    Ok(PackReport {
        origin: checkpoint.origin,
        organization_id: manifest.organization_id,
        key_id: key.key_id(),
        public_key: key.to_text(),
        tree_size: checkpoint.tree_size,
        root: hex::encode(checkpoint.root_hash),
        checkpoint_time: checkpoint.time,
        events,
        files: files.len(),
    })
}

/// A pack file as UTF-8 text, or the problem naming it.
fn pack_text<'a>(files: &'a BTreeMap<String, Vec<u8>>, name: &str) -> Result<&'a str, String> {
    let b = files.get(name).ok_or_else(|| format!("{name}: missing from the pack"))?;
    std::str::from_utf8(b).map_err(|_| format!("{name}: not UTF-8"))
}

/// Stops when `problems` holds any.
fn stop_if_any(problems: Vec<String>) -> Result<(), Vec<String>> {
    if problems.is_empty() { Ok(()) } else { Err(problems) }
}

/// Stage 1: the manifest, parsed before its signature is checked (so the cheap hash comparisons come first; nothing
/// is reported as verified unless the signature checks too).
fn read_manifest(files: &BTreeMap<String, Vec<u8>>) -> Result<(PackManifest, &[u8]), Vec<String>> {
    let Some(manifest_bytes) = files.get(MANIFEST) else {
        return Err(vec![format!("{MANIFEST}: missing from the pack")]);
    };
    let manifest: PackManifest =
        serde_json::from_slice(manifest_bytes).map_err(|e| vec![format!("{MANIFEST}: {e}")])?;
    let mut problems = Vec::new();
    if manifest.format != PACK_FORMAT {
        problems.push(format!("{MANIFEST}: format `{}` is not `{PACK_FORMAT}`", manifest.format));
    }
    let expected_origin = origin_for(manifest.organization_id.as_deref().unwrap_or(""));
    if manifest.origin != expected_origin {
        problems.push(format!("{MANIFEST}: origin `{}` is not `{expected_origin}`", manifest.origin));
    }
    stop_if_any(problems)?;
    Ok((manifest, manifest_bytes))
}

/// Stage 2: every listed file's hash and size, no unlisted file, every required file listed.
fn check_listing(files: &BTreeMap<String, Vec<u8>>, manifest: &PackManifest) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    let mut listed = BTreeSet::new();
    for f in &manifest.files {
        if !listed.insert(f.path.as_str()) {
            problems.push(format!("{MANIFEST}: `{}` listed twice", f.path));
        }
        match files.get(&f.path) {
            None => problems.push(format!("{}: listed in the manifest but missing", f.path)),
            Some(b) if b.len() as u64 != f.size || sha256_hex(b) != f.sha256 => {
                problems.push(format!("{}: SHA-256 or size differs from the manifest", f.path))
            }
            Some(_) => {}
        }
    }
    for name in files.keys() {
        if name != MANIFEST && name != MANIFEST_SIG && !listed.contains(name.as_str()) {
            problems.push(format!("{name}: not listed in the manifest"));
        }
    }
    for required in [SIGNING_PUB, CHECKPOINT_NOTE, EVENTS, PROOFS] {
        if !listed.contains(required) {
            problems.push(format!("{required}: not listed in the manifest"));
        }
    }
    stop_if_any(problems)
}

/// Stage 3: the pack's key (parsing it is a curve operation, so after the cheap checks), against the trusted key
/// when one is given, and the manifest's signature by it.
fn check_key(
    files: &BTreeMap<String, Vec<u8>>,
    manifest: &PackManifest,
    manifest_bytes: &[u8],
    trusted_key: Option<&NoteVerifier>,
) -> Result<NoteVerifier, Vec<String>> {
    let key = pack_text(files, SIGNING_PUB)
        .and_then(|t| {
            let line =
                t.strip_suffix('\n').filter(|l| !l.contains(['\n', '\r'])).ok_or("signing.pub: must be one line")?;
            if line.trim() != line {
                return Err("signing.pub: surrounding whitespace".to_string());
            }
            NoteVerifier::parse(line).map_err(|e| format!("signing.pub: {e}"))
        })
        .map_err(|e| vec![e])?;
    if let Some(t) = trusted_key
        && *t != key
    {
        return Err(vec![format!("signing.pub is key {}, not the trusted key {}", key.to_text(), t.to_text())]);
    }
    let mut problems = Vec::new();
    if manifest.key_id != key.key_id() {
        problems.push(format!("{MANIFEST}: key id {} is not that of signing.pub ({})", manifest.key_id, key.key_id()));
    }
    match pack_text(files, MANIFEST_SIG) {
        Ok(sig) => {
            if let Err(e) = key.verify_detached(manifest_bytes, sig) {
                problems.push(format!("{MANIFEST_SIG}: {e}"));
            }
        }
        Err(e) => problems.push(e),
    }
    stop_if_any(problems)?;
    Ok(key)
}

/// Stage 4: the signed checkpoint, for the manifest's origin.
fn read_checkpoint(
    files: &BTreeMap<String, Vec<u8>>,
    key: &NoteVerifier,
    manifest: &PackManifest,
) -> Result<Checkpoint, Vec<String>> {
    let checkpoint = pack_text(files, CHECKPOINT_NOTE)
        .and_then(|t| key.verify(t).map_err(|e| format!("{CHECKPOINT_NOTE}: {e}")))
        .map_err(|e| vec![e])?;
    if checkpoint.origin != manifest.origin {
        return Err(vec![format!("{CHECKPOINT_NOTE}: origin `{}` is not the manifest's", checkpoint.origin)]);
    }
    Ok(checkpoint)
}

/// Stage 5: every event line against its proof and the signed root; returns how many events the pack holds.
fn check_events(
    files: &BTreeMap<String, Vec<u8>>,
    manifest: &PackManifest,
    checkpoint: &Checkpoint,
) -> Result<usize, Vec<String>> {
    let mut problems = Vec::new();
    let proofs: ProofsFile = pack_text(files, PROOFS)
        .and_then(|t| serde_json::from_str(t).map_err(|e| format!("{PROOFS}: {e}")))
        .map_err(|e| vec![e])?;
    if proofs.tree_size != checkpoint.tree_size || proofs.root != hex::encode(checkpoint.root_hash) {
        problems.push(format!("{PROOFS}: tree size or root differs from the signed checkpoint"));
    }
    let events_text = pack_text(files, EVENTS).map_err(|e| {
        problems.push(e);
        std::mem::take(&mut problems)
    })?;
    let lines: Vec<&str> = if events_text.is_empty() {
        Vec::new()
    } else {
        match events_text.strip_suffix('\n') {
            Some(t) => t.split('\n').collect(),
            None => {
                problems.push(format!("{EVENTS}: does not end with a newline"));
                events_text.split('\n').collect()
            }
        }
    };
    if lines.len() != proofs.proofs.len() {
        problems.push(format!("{EVENTS} has {} lines but {PROOFS} has {} proofs", lines.len(), proofs.proofs.len()));
    }
    for (n, (line, proof)) in lines.iter().zip(&proofs.proofs).enumerate() {
        let at = format!("{EVENTS} line {}", n + 1);
        if let Err(p) = check_event_line(line, proof, n, manifest, checkpoint) {
            problems.extend(p.into_iter().map(|p| format!("{at}: {p}")));
        }
    }
    stop_if_any(problems)?;
    Ok(lines.len())
}

/// One event line: its organisation, its leaf hash, and its proof to the signed root.
fn check_event_line(
    line: &str,
    proof: &ProofEntry,
    n: usize,
    manifest: &PackManifest,
    checkpoint: &Checkpoint,
) -> Result<(), Vec<String>> {
    let event = serde_json::from_str::<Value>(line)
        .map_err(|e| IntegrityError::MalformedEvent(e.to_string()))
        .and_then(|v| event_from_json(&v))
        .map_err(|e| vec![e.to_string()])?;
    let mut problems = Vec::new();
    if event.event.organization_id != manifest.organization_id {
        problems.push(format!("event {} belongs to another organisation", event.event.event_id));
    }
    let leaf = leaf_hash(&event);
    if leaf != event.leaf_hash {
        problems.push("recomputed leaf hash differs from the event's leaf_hash".to_string());
    }
    if proof.event_id != event.event.event_id || i64::try_from(proof.seq).ok() != Some(event.seq) {
        problems.push(format!("proof {} is for another event or seq", n + 1));
    }
    if proof.leaf != hex::encode(leaf) {
        problems.push("proof leaf differs from the recomputed leaf hash".to_string());
    }
    let hashes: Result<Vec<Hash>, _> = proof.hashes.iter().map(|h| parse_hash(h)).collect();
    match hashes {
        Ok(path) if verify_inclusion(&leaf, proof.seq, checkpoint.tree_size, &path, &checkpoint.root_hash) => {}
        Ok(_) => problems.push("inclusion proof does not lead to the signed root".to_string()),
        Err(e) => problems.push(e.to_string()),
    }
    stop_if_any(problems)
}

fn parse_hash(h: &str) -> Result<Hash, IntegrityError> {
    let bytes = hex::decode(h).map_err(|_| IntegrityError::MalformedEvent(format!("`{h}` is not hex")))?;
    if hex::encode(&bytes) != h {
        return Err(IntegrityError::MalformedEvent(format!("`{h}` is not lowercase hex")));
    }
    bytes.try_into().map_err(|_| IntegrityError::MalformedEvent(format!("`{h}` is not 32 bytes")))
}

/// Rebuilds a stored event from its JSON form (the NDJSON of packs and `audit-db query`), so that its leaf hash
/// can be recomputed without a database. Strict (see `StoredEvent`'s `Deserialize`): every field present with its
/// type, nothing unknown; `event_id_supplied` is not part of the JSON and comes back as `true`.
pub fn event_from_json(v: &Value) -> Result<StoredEvent, IntegrityError> {
    StoredEvent::deserialize(v).map_err(|e| IntegrityError::MalformedEvent(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canonical::tests::full_example;
    use crate::checkpoint::Checkpoint;
    use crate::checkpoint::tests::test_signer;
    use crate::merkle::{hash_leaf, root};

    /// A log of 40 leaves where seqs 3, 17 and 38 are events of `hospital-1`; the pack proves those three.
    fn fixture() -> (BTreeMap<String, Vec<u8>>, Vec<StoredEvent>) {
        let mut leaves: Vec<Hash> = (0..40).map(|i| hash_leaf(format!("other {i}").as_bytes())).collect();
        let mut events = Vec::new();
        for (k, seq) in [3i64, 17, 38].into_iter().enumerate() {
            let mut e = full_example();
            e.seq = seq;
            e.id = 100 + k as i64;
            e.event.event_id = Uuid::from_u128(0x0190_a5c4_7b1e_7c3a_9f00_0000_0000_0000 + k as u128);
            e.event.details.insert("n".into(), serde_json::json!(k));
            e.leaf_hash = leaf_hash(&e);
            leaves[seq as usize] = e.leaf_hash;
            events.push(e);
        }
        let signer = test_signer();
        let time = DateTime::parse_from_rfc3339("2026-02-01T00:00:00Z").unwrap().with_timezone(&Utc);
        let cp = Checkpoint { origin: origin_for("hospital-1"), tree_size: 40, root_hash: root(&leaves), time };
        let proofs = ProofsFile::build(&leaves, &events).unwrap();
        let mut extra = BTreeMap::new();
        extra.insert("README.txt".to_string(), b"Evidence pack; see docs/integrity.md.\n".to_vec());
        let files = build_pack(&signer, Some("hospital-1"), &signer.sign(&cp), &events, &proofs, time, &extra).unwrap();
        (files, events)
    }

    #[test]
    fn events_round_trip_through_json() {
        let mut e = full_example();
        e.leaf_hash = leaf_hash(&e);
        let back = event_from_json(&e.to_json()).unwrap();
        assert_eq!(back, e);
        let mut j = e.to_json();
        j["extra"] = Value::from(1);
        assert!(event_from_json(&j).is_err());
        let mut j = e.to_json();
        j.as_object_mut().unwrap().remove("ttl");
        assert!(event_from_json(&j).unwrap_err().to_string().contains("ttl"));
        let mut j = e.to_json();
        j["timestamp"] = Value::from("2026-01-31T12:00:00.123456+00:00");
        assert!(event_from_json(&j).is_err());
    }

    #[test]
    fn a_built_pack_verifies() {
        let (files, events) = fixture();
        let report = verify_pack(&files, None).unwrap();
        assert_eq!(report.events, 3);
        assert_eq!(report.tree_size, 40);
        assert_eq!(report.organization_id.as_deref(), Some("hospital-1"));
        assert_eq!(report.key_id, test_signer().key_id());
        assert_eq!(report.files, 7);
        assert!(verify_pack(&files, Some(&test_signer().verifier())).is_ok());
        let other = NoteSigner::from_seed("audit-db-test", [9; 32]).unwrap();
        assert!(verify_pack(&files, Some(&other.verifier())).is_err());
        // The proofs are the standard ones.
        let proofs: ProofsFile = serde_json::from_slice(&files[PROOFS]).unwrap();
        assert_eq!(proofs.proofs[0].leaf, hex::encode(events[0].leaf_hash));
    }

    #[test]
    fn any_changed_byte_of_any_file_fails() {
        let (files, _) = fixture();
        for (name, bytes) in &files {
            for i in 0..bytes.len() {
                // Signature checks are slow in unoptimised test builds: one flip per byte of the signed manifest
                // and its signature, two for the files the manifest hashes.
                let flips: &[u8] = if name == MANIFEST || name == MANIFEST_SIG { &[0x01] } else { &[0x01, 0x20] };
                for &flip in flips {
                    let mut changed = files.clone();
                    changed.get_mut(name).unwrap()[i] ^= flip;
                    assert!(verify_pack(&changed, None).is_err(), "{name} byte {i} ^ {flip:#x} still verifies");
                }
            }
            let mut removed = files.clone();
            removed.remove(name);
            assert!(verify_pack(&removed, None).is_err(), "{name} removed");
            let mut appended = files.clone();
            appended.get_mut(name).unwrap().push(b'\n');
            assert!(verify_pack(&appended, None).is_err(), "{name} extended");
        }
        let mut extra = files.clone();
        extra.insert("smuggled.txt".into(), b"x".to_vec());
        assert!(verify_pack(&extra, None).unwrap_err().iter().any(|p| p.contains("not listed")));
    }

    #[test]
    fn a_re_signed_pack_with_a_foreign_event_is_refused() {
        // Even with the key (so every signature is valid), an event of another organisation is refused.
        let signer = test_signer();
        let mut e = full_example();
        e.event.organization_id = Some("hospital-2".into());
        e.seq = 0;
        e.leaf_hash = leaf_hash(&e);
        let leaves = vec![e.leaf_hash];
        let time = DateTime::parse_from_rfc3339("2026-02-01T00:00:00Z").unwrap().with_timezone(&Utc);
        let cp = Checkpoint { origin: origin_for("hospital-1"), tree_size: 1, root_hash: root(&leaves), time };
        let proofs = ProofsFile::build(&leaves, std::slice::from_ref(&e)).unwrap();
        let files =
            build_pack(&signer, Some("hospital-1"), &signer.sign(&cp), &[e], &proofs, time, &BTreeMap::new()).unwrap();
        let err = verify_pack(&files, None).unwrap_err();
        assert!(err.iter().any(|p| p.contains("another organisation")), "{err:?}");
    }
}
