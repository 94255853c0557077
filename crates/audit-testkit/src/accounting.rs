//! Jepsen-style accounting for crash tests: every acknowledgement a load generator receives is appended to a file
//! (event id, organisation, seq, commit LSN) the moment it arrives, and a checker compares those records with what
//! the database holds afterwards:
//!
//! - every acknowledged event is stored (`lost` is empty),
//! - every stored event is stored once (`duplicates` is empty),
//! - every organisation's `seq` is exactly `0..n` (no gap, no repeat),
//! - an acknowledged `seq` is the stored one (an acknowledgement never names a position the event does not have),
//! - nothing is stored that was never sent (`unexpected` is empty, when the sent ids are known).
//!
//! The generator drives any writer through a closure, so the kit stays free of product crates: tests and
//! `cargo xtask chaos` hand it the client call (library insert, `audit-db ingest`, HTTP).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context as _;
use uuid::Uuid;

/// One acknowledgement, as the writer returned it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckRecord {
    /// The acknowledged event.
    pub event_id: Uuid,
    /// Its organisation (`None`: the shared log).
    pub org: Option<String>,
    /// The position the writer said it holds in its organisation's log, when the writer says.
    pub seq: Option<i64>,
    /// The commit's WAL position (`16/B374D848`), when the writer says.
    pub commit_lsn: Option<String>,
}

impl AckRecord {
    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({"event_id": self.event_id, "org": self.org, "seq": self.seq, "commit_lsn": self.commit_lsn})
    }

    fn from_json(v: &serde_json::Value) -> anyhow::Result<Self> {
        let event_id = v["event_id"].as_str().context("event_id")?.parse().context("event_id is a UUID")?;
        Ok(AckRecord {
            event_id,
            org: v["org"].as_str().map(str::to_string),
            seq: v["seq"].as_i64(),
            commit_lsn: v["commit_lsn"].as_str().map(str::to_string),
        })
    }
}

/// An append-only file of acknowledgements, one JSON line each, flushed per record: what a generator has written
/// survives the generator's own crash.
#[derive(Debug)]
pub struct AckLog {
    path: PathBuf,
    file: Mutex<std::fs::File>,
}

impl AckLog {
    /// Creates (or appends to) the log at `path`.
    pub fn open(path: impl AsRef<Path>) -> anyhow::Result<AckLog> {
        let path = path.as_ref().to_path_buf();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(AckLog { path, file: Mutex::new(file) })
    }

    /// Where the log is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends acknowledgements (one write, then flushed to the OS).
    pub fn record(&self, acks: &[AckRecord]) -> anyhow::Result<()> {
        let mut text = String::new();
        for a in acks {
            text.push_str(&a.to_json().to_string());
            text.push('\n');
        }
        let mut f = self.file.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        f.write_all(text.as_bytes())
            .and_then(|()| f.flush())
            .with_context(|| format!("writing {}", self.path.display()))
    }

    /// Every acknowledgement in the file at `path`. A torn last line (the writer died mid-write) is ignored; any
    /// other bad line is an error naming its number.
    pub fn read(path: impl AsRef<Path>) -> anyhow::Result<Vec<AckRecord>> {
        let path = path.as_ref();
        let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let lines: Vec<String> = std::io::BufReader::new(f).lines().collect::<Result<_, _>>()?;
        let mut out = Vec::with_capacity(lines.len());
        for (i, line) in lines.iter().enumerate() {
            let parsed = serde_json::from_str::<serde_json::Value>(line)
                .map_err(anyhow::Error::from)
                .and_then(|v| AckRecord::from_json(&v));
            match parsed {
                Ok(a) => out.push(a),
                Err(_) if i + 1 == lines.len() => {}
                Err(e) => return Err(e.context(format!("{} line {}", path.display(), i + 1))),
            }
        }
        Ok(out)
    }
}

/// What the checker found. [`Accounting::problems`] is empty when the run is clean.
#[derive(Debug, Default, Clone)]
pub struct Accounting {
    /// Distinct events acknowledged.
    pub acknowledged: usize,
    /// Rows in `audit_log`.
    pub stored_rows: usize,
    /// Distinct event ids in `audit_log`.
    pub stored_events: usize,
    /// Stored events that were never acknowledged (allowed: the writer died before the answer reached it).
    pub stored_unacknowledged: usize,
    /// Acknowledged but not stored.
    pub lost: Vec<Uuid>,
    /// Stored more than once.
    pub duplicates: Vec<Uuid>,
    /// Acknowledged with a `seq` other than the stored one: (event, acknowledged, stored).
    pub seq_mismatches: Vec<(Uuid, i64, i64)>,
    /// Organisations whose `seq` is not exactly `0..n`: (org, rows, distinct seqs, min, max).
    pub seq_gaps: Vec<(String, i64, i64, i64, i64)>,
    /// Stored but never sent (only checked when the sent ids are given).
    pub unexpected: Vec<Uuid>,
    /// Acknowledged twice with different seqs.
    pub conflicting_acks: Vec<Uuid>,
}

impl Accounting {
    /// Every violation, one line each.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let show = |v: &[Uuid]| v.iter().take(5).map(Uuid::to_string).collect::<Vec<_>>().join(", ");
        if !self.lost.is_empty() {
            p.push(format!("{} acknowledged events lost: {}", self.lost.len(), show(&self.lost)));
        }
        if !self.duplicates.is_empty() {
            p.push(format!("{} events stored more than once: {}", self.duplicates.len(), show(&self.duplicates)));
        }
        for (id, acked, stored) in self.seq_mismatches.iter().take(5) {
            p.push(format!("event {id} acknowledged at seq {acked}, stored at seq {stored}"));
        }
        for (org, n, d, lo, hi) in &self.seq_gaps {
            p.push(format!("organisation {org}: {n} rows, {d} distinct seqs, seq {lo}..={hi} (want 0..{n})"));
        }
        if !self.unexpected.is_empty() {
            p.push(format!("{} stored events were never sent: {}", self.unexpected.len(), show(&self.unexpected)));
        }
        if !self.conflicting_acks.is_empty() {
            p.push(format!(
                "{} events acknowledged with two seqs: {}",
                self.conflicting_acks.len(),
                show(&self.conflicting_acks)
            ));
        }
        p
    }

    /// Panics naming every violation.
    pub fn assert_clean(&self, what: &str) {
        let p = self.problems();
        assert!(p.is_empty(), "{what}: accounting failed:\n  {}", p.join("\n  "));
    }
}

/// Compares `acks` (and, when known, the ids that were `sent`) with `audit_log` on `pg`.
pub async fn check(
    pg: &tokio_postgres::Client,
    acks: &[AckRecord],
    sent: Option<&BTreeSet<Uuid>>,
) -> anyhow::Result<Accounting> {
    let rows = pg.query("SELECT event_id, seq FROM audit_log", &[]).await.context("reading audit_log")?;
    let mut stored: BTreeMap<Uuid, Vec<i64>> = BTreeMap::new();
    for r in &rows {
        stored.entry(r.get(0)).or_default().push(r.get(1));
    }
    let mut acked: BTreeMap<Uuid, Option<i64>> = BTreeMap::new();
    let mut a = Accounting { stored_rows: rows.len(), stored_events: stored.len(), ..Accounting::default() };
    for ack in acks {
        match acked.insert(ack.event_id, ack.seq) {
            Some(Some(prev)) if ack.seq.is_some_and(|s| s != prev) => a.conflicting_acks.push(ack.event_id),
            _ => {}
        }
    }
    a.acknowledged = acked.len();
    for (id, seq) in &acked {
        match stored.get(id) {
            None => a.lost.push(*id),
            Some(seqs) => {
                if let Some(s) = seq
                    && seqs.len() == 1
                    && seqs[0] != *s
                {
                    a.seq_mismatches.push((*id, *s, seqs[0]));
                }
            }
        }
    }
    for (id, seqs) in &stored {
        if seqs.len() > 1 {
            a.duplicates.push(*id);
        }
        if !acked.contains_key(id) {
            a.stored_unacknowledged += 1;
        }
        if let Some(sent) = sent
            && !sent.contains(id)
        {
            a.unexpected.push(*id);
        }
    }
    let gaps = pg
        .query(
            "SELECT coalesce(organization_id::text, '(shared)'), count(*), count(DISTINCT seq), min(seq), max(seq) \
             FROM audit_log GROUP BY organization_id",
            &[],
        )
        .await
        .context("reading seq per organisation")?;
    for r in gaps {
        let (org, n, d, lo, hi): (String, i64, i64, i64, i64) = (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        if n != d || lo != 0 || hi != n - 1 {
            a.seq_gaps.push((org, n, d, lo, hi));
        }
    }
    Ok(a)
}

/// A small deterministic random source (SplitMix64) for fault schedules: a seed printed by a run replays it.
#[derive(Debug, Clone)]
pub struct Seeded(u64);

impl Seeded {
    /// From a seed.
    pub fn new(seed: u64) -> Self {
        Seeded(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi` (`lo` when the range is empty).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo { lo } else { lo + self.next_u64() % (hi - lo) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_survives_a_torn_last_line_and_names_a_bad_middle_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acks.ndjson");
        let log = AckLog::open(&path).unwrap();
        let a =
            AckRecord { event_id: Uuid::new_v4(), org: Some("o".into()), seq: Some(3), commit_lsn: Some("0/1".into()) };
        let b = AckRecord { event_id: Uuid::new_v4(), org: None, seq: None, commit_lsn: None };
        log.record(&[a.clone(), b.clone()]).unwrap();
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"{\"event_id\": \"12").unwrap();
        assert_eq!(AckLog::read(&path).unwrap(), [a.clone(), b]);
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"\n{}\n").unwrap();
        let e = format!("{:#}", AckLog::read(&path).unwrap_err());
        assert!(e.contains("line 3"), "{e}");
    }

    #[test]
    fn seeded_is_replayable() {
        let (mut x, mut y) = (Seeded::new(42), Seeded::new(42));
        let xs: Vec<u64> = (0..5).map(|_| x.range(10, 20)).collect();
        assert_eq!(xs, (0..5).map(|_| y.range(10, 20)).collect::<Vec<_>>());
        assert!(xs.iter().all(|v| (10..20).contains(v)));
        assert_ne!(Seeded::new(1).next_u64(), Seeded::new(2).next_u64());
    }
}
