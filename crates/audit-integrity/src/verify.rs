//! The pure core of `audit-db verify`: given one log's rows as the database shows them and that log's signed
//! checkpoints, say which rows were altered, deleted, injected or reordered (algorithm in `docs/integrity.md`).
//!
//! Two kinds of evidence are combined:
//! * local evidence, valid whatever else happened: a row whose content no longer hashes to its stored leaf, a
//!   gap in the seq numbers, two rows at one seq, a row beyond the log's head;
//! * signed evidence: the stored leaves of `[0, size)` must hash to each checkpoint's signed root. Where they do,
//!   every position has an *authenticated* leaf and each row is judged against it. Where they do not (an attacker
//!   also rewrote `leaf_hash`), the failure is localised as far as checkpoints and their frontiers allow and
//!   reported per 256-leaf tile.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::merkle::{CompactRange, Hash, hash_children};

/// Leaves per tile: the unit in which unauthenticated ranges are reported (as in tiled transparency logs).
pub const TILE_SIZE: u64 = 256;

/// Largest number of assignments tried when resolving missing or duplicated leaves against a signed root.
const MAX_COMBINATIONS: u64 = 4096;
/// Largest number of transpositions tried in one unauthenticated range (all pairs of up to ~360 positions); each
/// trial costs O(log n) hashes.
const MAX_SWAP_TRIALS: u64 = 1 << 16;
/// Largest number of single substitutions (position × candidate leaf) tried in one unauthenticated range.
const MAX_SUBSTITUTIONS: u64 = 1 << 14;
/// Runs of missing seqs longer than this are reported as one finding instead of one per seq.
const MAX_MISSING_PER_SEQ: u64 = 16;

/// One row of a log as read from the database: where it claims to be, and the two leaf hashes that matter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowView {
    /// The row's `seq` column.
    pub seq: i64,
    /// The row's `event_id`, to name it in findings.
    pub event_id: Uuid,
    /// Leaf hash recomputed from the row's content now ([`super::leaf_hash`]).
    pub recomputed_leaf: Hash,
    /// The row's `leaf_hash` column.
    pub stored_leaf: Hash,
}

/// What kind of tampering a finding reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FindingKind {
    /// The row's content is not what was signed at its position.
    Altered,
    /// A position of the log has no row.
    Missing,
    /// A row that was never part of the log (duplicate seq, or beyond the head).
    Injected,
    /// A signed event sits at another position than the one it was signed at.
    Reordered,
    /// A checkpoint's signature does not verify (reported by the caller, which checks notes).
    BadSignature,
}

impl FindingKind {
    /// The serialized name (`altered`, `missing`, `injected`, `reordered`, `bad-signature`).
    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::Altered => "altered",
            FindingKind::Missing => "missing",
            FindingKind::Injected => "injected",
            FindingKind::Reordered => "reordered",
            FindingKind::BadSignature => "bad-signature",
        }
    }
}

impl std::fmt::Display for FindingKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One piece of tamper evidence, as `audit-db verify` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// The log (`organization_id`, `""` for the shared log).
    pub log_id: String,
    /// The position concerned, when there is one.
    pub seq: Option<i64>,
    /// The row concerned, when there is one.
    pub event_id: Option<Uuid>,
    /// What was found.
    pub kind: FindingKind,
    /// Human-readable explanation naming the evidence.
    pub detail: String,
}

impl Finding {
    /// A checkpoint whose signature does not verify; built by the caller that checks the notes.
    pub fn bad_signature(log_id: &str, detail: impl Into<String>) -> Self {
        Self {
            log_id: log_id.to_string(),
            seq: None,
            event_id: None,
            kind: FindingKind::BadSignature,
            detail: detail.into(),
        }
    }
}

/// A checkpoint whose signature the caller has verified, with the stored frontier if there is one. The frontier
/// is not signed; it is used only when its root equals the signed root (then it is as good as signed) and lets
/// verify restart after a damaged range and localise damage to subtrees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedCheckpoint {
    /// Signed tree size.
    pub tree_size: u64,
    /// Signed root.
    pub root_hash: Hash,
    /// The `frontier` column, parsed.
    pub frontier: Option<CompactRange>,
}

impl From<(u64, Hash)> for TrustedCheckpoint {
    fn from((tree_size, root_hash): (u64, Hash)) -> Self {
        Self { tree_size, root_hash, frontier: None }
    }
}

impl TrustedCheckpoint {
    fn verified_frontier(&self) -> Option<&CompactRange> {
        self.frontier.as_ref().filter(|f| f.size() == self.tree_size && f.root() == self.root_hash)
    }
}

/// Verifies a whole log: `rows` in any order (gaps, duplicates and rows beyond the checkpoints allowed),
/// `checkpoints` verified by the caller (any order; sorted here), `head_size` from `audit_log_heads`.
pub fn verify_log(log_id: &str, rows: &[RowView], checkpoints: &[TrustedCheckpoint], head_size: u64) -> Vec<Finding> {
    verify_incremental(log_id, rows, &CompactRange::new(), checkpoints, head_size)
}

/// Verifies only positions `[base.size(), …)`: `base` is a trusted compact range at an earlier checkpoint (its root
/// was checked against that signed checkpoint); rows below it are ignored and checkpoints at or below it are
/// skipped. With an empty `base` this is [`verify_log`].
pub fn verify_incremental(
    log_id: &str,
    rows: &[RowView],
    base: &CompactRange,
    checkpoints: &[TrustedCheckpoint],
    head_size: u64,
) -> Vec<Finding> {
    Verifier::new(log_id, rows, base, checkpoints, head_size).run()
}

struct Verifier<'a> {
    log_id: &'a str,
    rows: &'a [RowView],
    base: &'a CompactRange,
    checkpoints: Vec<&'a TrustedCheckpoint>,
    /// First position checked.
    a0: u64,
    /// Largest signed size (end of the authenticated range).
    s_max: u64,
    /// End of the positions that must have rows: max(head, s_max).
    end: u64,
    head_size: u64,
    /// Row indices per position in `[a0, end)`.
    at: BTreeMap<u64, Vec<usize>>,
    /// Rows outside `[a0, end)` that are not below `a0` (negative seq or beyond the head).
    outside: Vec<usize>,
    /// Authenticated leaf per position in `[a0, s_max)`.
    auth: Vec<Option<Hash>>,
    /// Unauthenticated ranges with the reason.
    damaged: Vec<(u64, u64, String)>,
    findings: Vec<Finding>,
}

impl<'a> Verifier<'a> {
    fn new(
        log_id: &'a str,
        rows: &'a [RowView],
        base: &'a CompactRange,
        checkpoints: &'a [TrustedCheckpoint],
        head_size: u64,
    ) -> Self {
        let a0 = base.size();
        let mut cps: Vec<&TrustedCheckpoint> = checkpoints.iter().filter(|c| c.tree_size > a0).collect();
        cps.sort_by_key(|c| c.tree_size);
        cps.dedup_by(|x, y| x.tree_size == y.tree_size && x.root_hash == y.root_hash);
        let s_max = cps.last().map_or(a0, |c| c.tree_size);
        let end = head_size.max(s_max);
        let mut at: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        let mut outside = Vec::new();
        for (i, r) in rows.iter().enumerate() {
            match u64::try_from(r.seq) {
                Ok(s) if s < a0 => {}
                Ok(s) if s < end => at.entry(s).or_default().push(i),
                _ => outside.push(i),
            }
        }
        Self {
            log_id,
            rows,
            base,
            checkpoints: cps,
            a0,
            s_max,
            end,
            head_size,
            at,
            outside,
            auth: vec![None; (s_max - a0) as usize],
            damaged: Vec::new(),
            findings: Vec::new(),
        }
    }

    fn finding(&mut self, seq: Option<u64>, event_id: Option<Uuid>, kind: FindingKind, detail: String) {
        self.findings.push(Finding {
            log_id: self.log_id.to_string(),
            seq: seq.map(|s| s as i64),
            event_id,
            kind,
            detail,
        });
    }

    /// The leaf verify assumes at a position before authentication: the stored leaf of its row, preferring among
    /// duplicates a row whose content still matches its stored leaf.
    fn default_leaf(&self, pos: u64) -> Option<Hash> {
        let idx = self.at.get(&pos)?;
        let pick = idx.iter().find(|&&i| self.rows[i].recomputed_leaf == self.rows[i].stored_leaf).unwrap_or(&idx[0]);
        Some(self.rows[*pick].stored_leaf)
    }

    /// Leaves of rows that are not the default at their position: where a moved or deleted row may have gone.
    fn pool(&self) -> Vec<Hash> {
        let mut pool: Vec<Hash> = Vec::new();
        for &i in &self.outside {
            pool.push(self.rows[i].stored_leaf);
            pool.push(self.rows[i].recomputed_leaf);
        }
        for idx in self.at.values().filter(|v| v.len() > 1) {
            for &i in idx {
                pool.push(self.rows[i].stored_leaf);
                pool.push(self.rows[i].recomputed_leaf);
            }
        }
        pool.sort();
        pool.dedup();
        pool
    }

    fn run(mut self) -> Vec<Finding> {
        self.authenticate();
        self.classify();
        self.findings
    }

    /// Walks the checkpoints in order; each segment between two sizes is checked from a trusted compact range.
    fn authenticate(&mut self) {
        let verified_nodes = self.verified_frontier_nodes();
        let pool = self.pool();
        let mut trusted: Option<CompactRange> = Some(self.base.clone());
        let mut prev = self.a0;
        // Stored leaves that a repair replaced: the leaf a later damaged segment may be missing (cross-segment swap).
        let mut displaced: Vec<Hash> = Vec::new();
        let cps = self.checkpoints.clone();
        for cp in cps {
            let (a, n) = (prev, cp.tree_size);
            let leaves: Vec<Option<Hash>> = (a..n).map(|p| self.default_leaf(p)).collect();
            let mut tree = SegTree::new(trusted.as_ref(), a, n, &leaves);
            let mut ok = trusted.is_some() && tree.root() == Some(cp.root_hash);
            if !ok && trusted.is_some() {
                ok = self.repair_variables(&mut tree, cp.root_hash, &pool);
            }
            // Localise with verified frontier nodes inside the segment.
            let mut covered = vec![ok; (n - a) as usize];
            if !ok {
                for &(s, e, h) in &verified_nodes {
                    if e <= n && e > a && tree.node_range(s, e) == Some(h) {
                        for p in s.max(a)..e {
                            covered[(p - a) as usize] = true;
                        }
                    }
                }
                if trusted.is_some() && !covered.iter().all(|c| *c) {
                    if tree.leaves_present() {
                        ok = self.repair_swaps(&mut tree, cp.root_hash, &covered);
                    }
                    if !ok {
                        let budget = MAX_SUBSTITUTIONS / covered.iter().filter(|c| !**c).count().max(1) as u64;
                        let cands = self.substitutes(n, &displaced, &pool, budget as usize);
                        if let Some(old) = self.repair_substitution(&mut tree, cp.root_hash, &covered, &cands) {
                            displaced.extend(old);
                            ok = true;
                        }
                    }
                    if ok {
                        covered.iter_mut().for_each(|c| *c = true);
                    }
                }
            }
            for (k, c) in covered.iter().enumerate() {
                if *c {
                    self.auth[(a - self.a0) as usize + k] = tree.leaf(a + k as u64);
                }
            }
            if ok {
                let mut t = trusted.take().expect("ok implies a trusted range");
                for p in a..n {
                    t.append(tree.leaf(p).expect("authenticated leaves are present"));
                }
                trusted = Some(t);
            } else {
                let why = if trusted.is_none() {
                    format!(
                        "no trusted tree state at size {a} (an earlier range is damaged and checkpoint {a} has no \
                         verified frontier), so leaves [{a}, {n}) cannot be checked against the signed root at size {n}"
                    )
                } else {
                    format!(
                        "the stored leaf hashes of [{a}, {n}) do not hash to the signed root {} of checkpoint size {n}",
                        hex::encode(cp.root_hash)
                    )
                };
                let mut k = 0usize;
                while k < covered.len() {
                    if covered[k] {
                        k += 1;
                        continue;
                    }
                    let start = k;
                    while k < covered.len() && !covered[k] {
                        k += 1;
                    }
                    self.damaged.push((a + start as u64, a + k as u64, why.clone()));
                }
                trusted = cp.verified_frontier().cloned();
            }
            prev = n;
        }
    }

    fn verified_frontier_nodes(&self) -> Vec<(u64, u64, Hash)> {
        let mut nodes: BTreeMap<(u64, u64), Hash> = BTreeMap::new();
        for cp in &self.checkpoints {
            if let Some(f) = cp.verified_frontier() {
                for (s, e, h) in f.nodes() {
                    if e > self.a0 {
                        nodes.entry((s, e)).or_insert(h);
                    }
                }
            }
        }
        // Smallest first, so that nested nodes are tried from the finest.
        let mut v: Vec<(u64, u64, Hash)> = nodes.into_iter().map(|((s, e), h)| (s, e, h)).collect();
        v.sort_by_key(|(s, e, _)| (e - s, *s));
        v
    }

    /// Tries assignments for missing positions (from the pool of displaced rows) and duplicated positions (their
    /// distinct stored leaves) until the segment hashes to the signed root.
    fn repair_variables(&self, tree: &mut SegTree, want: Hash, pool: &[Hash]) -> bool {
        let mut vars: Vec<(u64, Vec<Hash>)> = Vec::new();
        for p in tree.a..tree.n {
            match self.at.get(&p) {
                None => vars.push((p, pool.to_vec())),
                Some(idx) if idx.len() > 1 => {
                    let mut c: Vec<Hash> = idx.iter().map(|&i| self.rows[i].stored_leaf).collect();
                    c.sort();
                    c.dedup();
                    if c.len() > 1 {
                        vars.push((p, c));
                    }
                }
                Some(_) => {}
            }
        }
        if vars.is_empty() || vars.iter().any(|(_, c)| c.is_empty()) {
            return false;
        }
        let total = vars.iter().try_fold(1u64, |acc, (_, c)| acc.checked_mul(c.len() as u64));
        if total.is_none_or(|t| t > MAX_COMBINATIONS) {
            return false;
        }
        let original: Vec<Option<Hash>> = vars.iter().map(|(p, _)| tree.leaf(*p)).collect();
        let mut digits = vec![0usize; vars.len()];
        loop {
            for (k, (p, c)) in vars.iter().enumerate() {
                tree.set_leaf(*p, Some(c[digits[k]]));
            }
            if tree.root() == Some(want) {
                return true;
            }
            let mut k = 0;
            loop {
                if k == digits.len() {
                    for ((p, _), o) in vars.iter().zip(original) {
                        tree.set_leaf(*p, o);
                    }
                    return false;
                }
                digits[k] += 1;
                if digits[k] < vars[k].1.len() {
                    break;
                }
                digits[k] = 0;
                k += 1;
            }
        }
    }

    /// Candidate leaves for a single substitution in segment `[.., n)`: leaves displaced by earlier repairs, the
    /// pool of displaced rows, then stored leaves of rows at later positions (nearest first), at most `limit`.
    fn substitutes(&self, n: u64, displaced: &[Hash], pool: &[Hash], limit: usize) -> Vec<Hash> {
        let mut out: Vec<Hash> = displaced.iter().chain(pool).copied().collect();
        for idx in self.at.range(n..).map(|(_, v)| v) {
            if out.len() >= limit {
                break;
            }
            out.extend(idx.iter().map(|&i| self.rows[i].stored_leaf));
        }
        out.truncate(limit);
        out
    }

    /// Looks for one position whose leaf, replaced by one candidate, makes the segment hash to the signed root
    /// (a row swapped with one in a later segment, or a deleted row that reappeared elsewhere). Returns the
    /// stored leaf that was replaced (None for a missing position).
    fn repair_substitution(
        &self,
        tree: &mut SegTree,
        want: Hash,
        covered: &[bool],
        cands: &[Hash],
    ) -> Option<Option<Hash>> {
        let missing = tree.levels[0].iter().filter(|l| l.is_none()).count();
        for k in (0..covered.len()).filter(|&k| !covered[k]) {
            let p = tree.a + k as u64;
            let old = tree.leaf(p);
            // With a missing leaf elsewhere the root cannot be computed: only that position is worth trying.
            if missing > usize::from(old.is_none()) {
                continue;
            }
            for c in cands {
                if Some(*c) == old {
                    continue;
                }
                tree.set_leaf(p, Some(*c));
                if tree.root() == Some(want) {
                    return Some(old);
                }
            }
            tree.set_leaf(p, old);
        }
        None
    }

    /// Looks for one pair of swapped leaves among the positions not yet authenticated.
    fn repair_swaps(&self, tree: &mut SegTree, want: Hash, covered: &[bool]) -> bool {
        let cand: Vec<u64> = (0..covered.len()).filter(|&k| !covered[k]).map(|k| tree.a + k as u64).collect();
        let m = cand.len() as u64;
        if m < 2 || m * (m - 1) / 2 > MAX_SWAP_TRIALS {
            return false;
        }
        for (x, &p) in cand.iter().enumerate() {
            for &q in &cand[x + 1..] {
                let (lp, lq) = (tree.leaf(p), tree.leaf(q));
                if lp == lq {
                    continue;
                }
                tree.set_leaf(p, lq);
                tree.set_leaf(q, lp);
                if tree.root() == Some(want) {
                    return true;
                }
                tree.set_leaf(p, lp);
                tree.set_leaf(q, lq);
            }
        }
        false
    }

    /// Turns the authenticated leaves and the local evidence into findings.
    /// Names what is wrong, once the authenticated leaves are known: each position's rows, rows outside the log's
    /// positions, missing positions, and ranges that could not be authenticated. Findings come out sorted by
    /// position, then kind.
    fn classify(&mut self) {
        let mut c = Classifier::new(self);
        c.positions(self);
        c.outside(self);
        c.missing(self);
        let damaged = std::mem::take(&mut self.damaged);
        c.damaged(self, damaged);
        let mut drafts = c.drafts;
        drafts.sort_by(|x, y| (x.seq.unwrap_or(u64::MAX), x.kind).cmp(&(y.seq.unwrap_or(u64::MAX), y.kind)));
        for d in drafts {
            self.finding(d.seq, d.event_id, d.kind, d.detail);
        }
    }
}

/// A finding before it is tied to its log.
struct Draft {
    seq: Option<u64>,
    event_id: Option<Uuid>,
    kind: FindingKind,
    detail: String,
}

/// The stages of [`Verifier::classify`], sharing what they learn: where each signed leaf was authenticated, and
/// which signed positions turned up elsewhere (relocated, so not also missing).
struct Classifier {
    auth_pos: HashMap<Hash, u64>,
    relocated: Vec<u64>,
    drafts: Vec<Draft>,
}

impl Classifier {
    fn new(v: &Verifier<'_>) -> Self {
        let mut auth_pos: HashMap<Hash, u64> = HashMap::new();
        for (k, h) in v.auth.iter().enumerate() {
            if let Some(h) = h {
                auth_pos.entry(*h).or_insert(v.a0 + k as u64);
            }
        }
        Self { auth_pos, relocated: Vec::new(), drafts: Vec::new() }
    }

    fn push(&mut self, seq: Option<u64>, event_id: Option<Uuid>, kind: FindingKind, detail: String) {
        self.drafts.push(Draft { seq, event_id, kind, detail });
    }

    /// Whether the signed event of `pos` still sits there with its content intact.
    fn intact(v: &Verifier<'_>, pos: u64) -> bool {
        let Some(Some(a)) = v.auth.get((pos - v.a0) as usize) else { return false };
        v.at.get(&pos).is_some_and(|idx| idx.iter().any(|&i| v.rows[i].recomputed_leaf == *a))
    }

    /// A row carrying the signed content of another position: that position, and whether its own event is intact.
    fn moved_from(&self, v: &Verifier<'_>, row: &RowView, pos: Option<u64>) -> Option<(u64, bool)> {
        let j = *self.auth_pos.get(&row.recomputed_leaf)?;
        (Some(j) != pos).then(|| (j, Self::intact(v, j)))
    }

    /// Rows at the log's positions: the genuine row stays unnamed; copies, moves, alterations and extra rows are
    /// named.
    fn positions(&mut self, v: &Verifier<'_>) {
        for (&pos, idx) in &v.at {
            let auth = if pos < v.s_max { v.auth[(pos - v.a0) as usize] } else { None };
            let rows: Vec<&RowView> = idx.iter().map(|&i| &v.rows[i]).collect();
            let keeper = match auth {
                Some(a) => rows
                    .iter()
                    .position(|r| r.recomputed_leaf == a)
                    .or_else(|| rows.iter().position(|r| r.stored_leaf == a))
                    .unwrap_or(0),
                None => rows.iter().position(|r| r.recomputed_leaf == r.stored_leaf).unwrap_or(0),
            };
            for (k, r) in rows.iter().enumerate() {
                let fine = match auth {
                    Some(a) => r.recomputed_leaf == a,
                    None => r.recomputed_leaf == r.stored_leaf,
                };
                if k == keeper && fine {
                    continue;
                }
                if let Some((j, j_intact)) = self.moved_from(v, r, Some(pos)) {
                    self.moved_row(pos, r, j, j_intact, auth);
                } else if k == keeper {
                    self.push(Some(pos), Some(r.event_id), FindingKind::Altered, altered_detail(pos, r, auth));
                } else {
                    let detail = extra_row_detail(pos, rows[keeper], auth);
                    self.push(Some(pos), Some(r.event_id), FindingKind::Injected, detail);
                }
            }
        }
    }

    /// A row at `pos` holding the event signed at `j`: a copy when that event is still in place, a move otherwise.
    fn moved_row(&mut self, pos: u64, r: &RowView, j: u64, j_intact: bool, auth: Option<Hash>) {
        if j_intact {
            let detail = format!("row at seq {pos} is a copy of the event signed at seq {j}, which is still in place");
            self.push(Some(pos), Some(r.event_id), FindingKind::Injected, detail);
        } else {
            self.relocated.push(j);
            let signed_here = auth
                .map(|a| format!("; the event signed at seq {pos} has leaf {}", hex::encode(a)))
                .unwrap_or_default();
            let detail = format!("row at seq {pos} holds the event signed at seq {j}{signed_here}");
            self.push(Some(pos), Some(r.event_id), FindingKind::Reordered, detail);
        }
    }

    /// Rows whose seq is outside the log's positions: moved there, or injected.
    fn outside(&mut self, v: &Verifier<'_>) {
        for &i in &v.outside {
            let r = &v.rows[i];
            if let Some((j, false)) = self.moved_from(v, r, None) {
                self.relocated.push(j);
                let detail = format!(
                    "row with seq {} (outside the log's positions [0, {})) holds the event signed at seq {j}",
                    r.seq, v.end
                );
                self.push(None, Some(r.event_id), FindingKind::Reordered, detail);
                continue;
            }
            let detail = if r.seq < 0 {
                format!("row has a negative seq {}", r.seq)
            } else {
                format!("row at seq {} is beyond the log head {} (and every signed checkpoint)", r.seq, v.head_size)
            };
            self.push(u64::try_from(r.seq).ok(), Some(r.event_id), FindingKind::Injected, detail);
        }
    }

    /// Positions without a row (and not relocated), one finding each, or one per run when a run is long.
    fn missing(&mut self, v: &Verifier<'_>) {
        self.relocated.sort_unstable();
        let mut pos = v.a0;
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for k in v.at.keys().copied().chain(std::iter::once(v.end)) {
            if k > pos {
                runs.push((pos, k));
            }
            pos = k + 1;
        }
        for (s, e) in runs {
            if e - s > MAX_MISSING_PER_SEQ {
                let detail =
                    format!("no rows at seqs [{s}, {e}) ({} positions) of a log whose head is {}", e - s, v.end);
                self.push(Some(s), None, FindingKind::Missing, detail);
                continue;
            }
            for p in s..e {
                if self.relocated.binary_search(&p).is_ok() {
                    continue;
                }
                let signed = if p < v.s_max { v.auth[(p - v.a0) as usize] } else { None };
                let detail = match signed {
                    Some(a) => format!("no row at seq {p}; the signed leaf there is {}", hex::encode(a)),
                    None => format!("no row at seq {p} (the log head is {})", v.end),
                };
                self.push(Some(p), None, FindingKind::Missing, detail);
            }
        }
    }

    /// Ranges that could not be authenticated: one finding per range, naming its first position.
    fn damaged(&mut self, v: &Verifier<'_>, damaged: Vec<(u64, u64, String)>) {
        for (s, e, why) in damaged {
            let event_id = v.at.get(&s).map(|idx| v.rows[idx[0]].event_id);
            let detail = format!(
                "leaves [{s}, {e}) (tiles {}–{}) cannot be authenticated: {why}; the tampering lies in this range and, \
                 where content and leaf_hash were rewritten together, cannot be pinned to a row",
                s / TILE_SIZE,
                (e - 1) / TILE_SIZE
            );
            self.push(Some(s), event_id, FindingKind::Altered, detail);
        }
    }
}

/// Why the genuine row of `pos` (the one kept) is named altered.
fn altered_detail(pos: u64, r: &RowView, auth: Option<Hash>) -> String {
    match auth {
        Some(a) if r.stored_leaf == a => format!(
            "content of the row at seq {pos} no longer matches its leaf hash, which the signed root authenticates ({})",
            hex::encode(a)
        ),
        Some(a) => format!(
            "row at seq {pos} matches neither the signed leaf {} nor, with its content, its own stored leaf hash{}",
            hex::encode(a),
            if r.recomputed_leaf == r.stored_leaf { " (content and leaf hash rewritten together)" } else { "" }
        ),
        None => format!(
            "content of the row at seq {pos} no longer matches its stored leaf hash (position not covered by a \
             verified checkpoint)"
        ),
    }
}

/// Why a second row at `pos` (beside the genuine one) is named injected.
fn extra_row_detail(pos: u64, genuine: &RowView, auth: Option<Hash>) -> String {
    match auth {
        Some(a) => format!(
            "second row at seq {pos}; the signed leaf there ({}) is that of event {}",
            hex::encode(a),
            genuine.event_id
        ),
        None => format!(
            "second row at seq {pos} (next to event {}); the position is not covered by a verified checkpoint, so \
             which row is genuine is decided only by which still matches its stored leaf hash",
            genuine.event_id
        ),
    }
}

/// The part of an RFC 6962 tree over `[0, n)` needed to check a segment `[a, n)`: nodes entirely inside the
/// segment (recomputed from its leaves, updatable one leaf at a time in O(log n)) and the trusted frontier at `a`.
struct SegTree {
    a: u64,
    n: u64,
    /// The trusted perfect subtrees below `a`, keyed by (level, index).
    base: HashMap<(u32, u64), Hash>,
    /// `levels[h][j]` is node (h, first[h] + j), for nodes fully inside `[a, n)`.
    levels: Vec<Vec<Option<Hash>>>,
    first: Vec<u64>,
}

impl SegTree {
    fn new(trusted: Option<&CompactRange>, a: u64, n: u64, leaves: &[Option<Hash>]) -> Self {
        let mut base = HashMap::new();
        if let Some(t) = trusted {
            for (s, e, h) in t.nodes() {
                let level = (e - s).trailing_zeros();
                base.insert((level, s >> level), h);
            }
        }
        let mut levels = vec![leaves.to_vec()];
        let mut first = vec![a];
        let mut h = 1u32;
        while h < 64 {
            let f = a.div_ceil(1u64 << h);
            let last = n >> h; // exclusive: nodes i with (i + 1) << h <= n
            if f >= last {
                break;
            }
            let below = &levels[(h - 1) as usize];
            let fb = first[(h - 1) as usize];
            let level: Vec<Option<Hash>> = (f..last)
                .map(|i| {
                    let l = below[(2 * i - fb) as usize];
                    let r = below[(2 * i + 1 - fb) as usize];
                    Some(hash_children(&l?, &r?))
                })
                .collect();
            levels.push(level);
            first.push(f);
            h += 1;
        }
        Self { a, n, base, levels, first }
    }

    fn leaf(&self, p: u64) -> Option<Hash> {
        self.levels[0][(p - self.a) as usize]
    }

    fn leaves_present(&self) -> bool {
        self.levels[0].iter().all(Option::is_some)
    }

    fn inside(&self, h: u32, i: u64) -> Option<Option<Hash>> {
        let level = self.levels.get(h as usize)?;
        let f = self.first[h as usize];
        if i < f {
            return None;
        }
        level.get((i - f) as usize).copied()
    }

    fn set_leaf(&mut self, p: u64, v: Option<Hash>) {
        self.levels[0][(p - self.a) as usize] = v;
        let mut h = 1u32;
        while (h as usize) < self.levels.len() {
            let i = p >> h;
            let f = self.first[h as usize];
            if i < f || (i - f) as usize >= self.levels[h as usize].len() {
                break;
            }
            let fb = self.first[(h - 1) as usize];
            let below = &self.levels[(h - 1) as usize];
            let (l, r) = (below[(2 * i - fb) as usize], below[(2 * i + 1 - fb) as usize]);
            self.levels[h as usize][(i - f) as usize] = l.zip(r).map(|(l, r)| hash_children(&l, &r));
            h += 1;
        }
    }

    /// Hash of the aligned node (level h, index i), if computable from the segment and the trusted frontier.
    fn node(&self, h: u32, i: u64) -> Option<Hash> {
        if let Some(v) = self.inside(h, i) {
            return v;
        }
        if let Some(v) = self.base.get(&(h, i)) {
            return Some(*v);
        }
        let (s, e) = (i << h, (i + 1) << h);
        if h == 0 || e <= self.a || e > self.n || s >= self.a {
            return None;
        }
        Some(hash_children(&self.node(h - 1, 2 * i)?, &self.node(h - 1, 2 * i + 1)?))
    }

    /// Hash of a perfect aligned subtree `[s, e)`.
    fn node_range(&self, s: u64, e: u64) -> Option<Hash> {
        let w = e - s;
        if !w.is_power_of_two() || !s.is_multiple_of(w) {
            return None;
        }
        let h = w.trailing_zeros();
        self.node(h, s >> h)
    }

    /// Tree head of `[0, n)`.
    fn root(&self) -> Option<Hash> {
        let mut parts = Vec::new();
        let mut start = 0u64;
        let mut rest = self.n;
        while rest > 0 {
            let h = 63 - rest.leading_zeros();
            parts.push(self.node(h, start >> h)?);
            start += 1u64 << h;
            rest &= !(1u64 << h);
        }
        let mut it = parts.iter().rev();
        let last = it.next()?;
        Some(it.fold(*last, |acc, h| hash_children(h, &acc)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::{hash_leaf, root};

    const LOG: &str = "acme";

    struct Log {
        rows: Vec<RowView>,
        leaves: Vec<Hash>,
    }

    fn log(n: usize) -> Log {
        let leaves: Vec<Hash> = (0..n).map(|i| hash_leaf(format!("event {i}").as_bytes())).collect();
        let rows = leaves
            .iter()
            .enumerate()
            .map(|(i, l)| RowView {
                seq: i as i64,
                event_id: Uuid::from_u128(i as u128 + 1),
                recomputed_leaf: *l,
                stored_leaf: *l,
            })
            .collect();
        Log { rows, leaves }
    }

    fn cps(l: &Log, sizes: &[usize], frontiers: bool) -> Vec<TrustedCheckpoint> {
        sizes
            .iter()
            .map(|&s| TrustedCheckpoint {
                tree_size: s as u64,
                root_hash: root(&l.leaves[..s]),
                frontier: frontiers.then(|| CompactRange::from_leaves(&l.leaves[..s])),
            })
            .collect()
    }

    fn kinds(f: &[Finding]) -> Vec<(Option<i64>, FindingKind)> {
        f.iter().map(|f| (f.seq, f.kind)).collect()
    }

    fn forged(tag: &str) -> Hash {
        hash_leaf(tag.as_bytes())
    }

    #[test]
    fn an_untouched_log_has_no_findings() {
        for frontiers in [false, true] {
            let l = log(600);
            let c = cps(&l, &[1, 100, 256, 599, 600], frontiers);
            assert_eq!(verify_log(LOG, &l.rows, &c, 600), vec![]);
            // Rows beyond the last checkpoint (not yet sealed) are fine too.
            assert_eq!(verify_log(LOG, &l.rows, &c[..2], 600), vec![]);
            assert_eq!(verify_log(LOG, &l.rows, &[], 600), vec![]);
        }
        let l = log(0);
        assert_eq!(verify_log(LOG, &l.rows, &[], 0), vec![]);
    }

    #[test]
    fn altered_detail_is_altered() {
        let mut l = log(300);
        l.rows[17].recomputed_leaf = forged("changed detail");
        let f = verify_log(LOG, &l.rows, &cps(&l, &[300], false), 300);
        assert_eq!(kinds(&f), vec![(Some(17), FindingKind::Altered)]);
        assert_eq!(f[0].event_id, Some(Uuid::from_u128(18)));
        assert!(f[0].detail.contains("signed root"), "{}", f[0].detail);
        let json = serde_json::to_value(&f[0]).unwrap();
        assert_eq!(json["kind"], "altered");
        assert_eq!(serde_json::to_value(FindingKind::BadSignature).unwrap(), "bad-signature");
    }

    #[test]
    fn a_deleted_row_is_missing() {
        let mut l = log(300);
        l.rows.remove(120);
        let f = verify_log(LOG, &l.rows, &cps(&l, &[100, 300], true), 300);
        assert!(f.iter().any(|x| x.seq == Some(120) && x.kind == FindingKind::Missing), "{f:#?}");
        // The signed range around it cannot be authenticated without the deleted leaf; frontiers narrow it down.
        let damage: Vec<&Finding> = f.iter().filter(|x| x.kind == FindingKind::Altered).collect();
        assert_eq!(damage.len(), 1, "{f:#?}");
        assert!(damage[0].seq.unwrap() >= 100 && damage[0].seq.unwrap() <= 120, "{f:#?}");
        // Deleting the newest row (beyond every checkpoint) is missing too.
        let mut l = log(10);
        l.rows.pop();
        assert_eq!(kinds(&verify_log(LOG, &l.rows, &cps(&l, &[5], false), 10)), vec![(Some(9), FindingKind::Missing)]);
    }

    #[test]
    fn injected_rows_with_plausible_seqs() {
        // A forged row at an existing seq, with a self-consistent leaf hash (the canonical form is public).
        let mut l = log(300);
        let fake = forged("forged");
        l.rows.insert(0, RowView { seq: 42, event_id: Uuid::from_u128(999), recomputed_leaf: fake, stored_leaf: fake });
        let f = verify_log(LOG, &l.rows, &cps(&l, &[300], false), 300);
        assert_eq!(kinds(&f), vec![(Some(42), FindingKind::Injected)], "{f:#?}");
        assert_eq!(f[0].event_id, Some(Uuid::from_u128(999)));
        // A forged row at seq = head, head not advanced.
        let mut l = log(300);
        l.rows.push(RowView { seq: 300, event_id: Uuid::from_u128(1000), recomputed_leaf: fake, stored_leaf: fake });
        let f = verify_log(LOG, &l.rows, &cps(&l, &[300], false), 300);
        assert_eq!(kinds(&f), vec![(Some(300), FindingKind::Injected)]);
        // A forged row at seq = head with the head advanced but no checkpoint covering it is only visible once a
        // checkpoint is made — but a negative seq always is.
        let mut l = log(3);
        l.rows.push(RowView { seq: -1, event_id: Uuid::from_u128(7), recomputed_leaf: fake, stored_leaf: fake });
        assert_eq!(
            kinds(&verify_log(LOG, &l.rows, &cps(&l, &[3], false), 3)),
            vec![(Some(-1), FindingKind::Injected)].into_iter().map(|(_, k)| (None, k)).collect::<Vec<_>>()
        );
    }

    #[test]
    fn swapped_seqs_are_reordered() {
        // The attacker swaps the seq columns of two rows (leaf hashes travel with the rows).
        for (p, q, sizes) in [(3usize, 250usize, vec![300usize]), (10, 11, vec![20, 300]), (5, 290, vec![260, 300])] {
            let mut l = log(300);
            l.rows[p].seq = q as i64;
            l.rows[q].seq = p as i64;
            let f = verify_log(LOG, &l.rows, &cps(&l, &sizes, false), 300);
            assert_eq!(
                kinds(&f),
                vec![(Some(p as i64), FindingKind::Reordered), (Some(q as i64), FindingKind::Reordered)],
                "{f:#?}"
            );
            assert!(f[0].detail.contains(&format!("signed at seq {q}")), "{}", f[0].detail);
        }
        // The attacker swaps the contents but leaves seq and leaf_hash in place.
        let mut l = log(300);
        let (a, b) = (l.rows[8].recomputed_leaf, l.rows[9].recomputed_leaf);
        l.rows[8].recomputed_leaf = b;
        l.rows[9].recomputed_leaf = a;
        let f = verify_log(LOG, &l.rows, &cps(&l, &[300], false), 300);
        assert_eq!(kinds(&f), vec![(Some(8), FindingKind::Reordered), (Some(9), FindingKind::Reordered)]);
        // A row moved beyond the head leaves no gap unexplained.
        let mut l = log(50);
        l.rows[20].seq = 77;
        let f = verify_log(LOG, &l.rows, &cps(&l, &[50], false), 50);
        assert_eq!(kinds(&f), vec![(None, FindingKind::Reordered)], "{f:#?}");
        assert!(f[0].detail.contains("signed at seq 20"));
    }

    #[test]
    fn rewritten_content_and_leaf_hash_is_localised_to_tiles() {
        let mut l = log(1000);
        let fake = forged("rewritten");
        l.rows[700].recomputed_leaf = fake;
        l.rows[700].stored_leaf = fake;
        // One checkpoint, no frontier: the whole signed range is unauthenticated, the finding names its start.
        let f = verify_log(LOG, &l.rows, &cps(&l, &[1000], false), 1000);
        assert_eq!(kinds(&f), vec![(Some(0), FindingKind::Altered)], "{f:#?}");
        assert!(f[0].detail.contains("tiles 0–3"), "{}", f[0].detail);
        // With more checkpoints the range shrinks to the segment between them…
        let f = verify_log(LOG, &l.rows, &cps(&l, &[512, 768, 1000], false), 1000);
        assert_eq!(kinds(&f), vec![(Some(512), FindingKind::Altered), (Some(768), FindingKind::Altered)], "{f:#?}");
        assert!(f[0].detail.contains("[512, 768)"), "{}", f[0].detail);
        assert!(f[1].detail.contains("no trusted tree state"), "{}", f[1].detail);
        // …and verified frontiers let verify restart after it and narrow it to one subtree.
        let f = verify_log(LOG, &l.rows, &cps(&l, &[600, 1000], true), 1000);
        // Frontier nodes: [512, 768) (of size 1000) fails, every other node matches.
        assert_eq!(kinds(&f), vec![(Some(600), FindingKind::Altered)], "{f:#?}");
        assert!(f[0].detail.contains("[600, 768)"), "{}", f[0].detail);
        // Content altered in a damaged range is still reported per row.
        let mut l2 = log(1000);
        l2.rows[700].stored_leaf = fake;
        l2.rows[705].recomputed_leaf = forged("x");
        let f = verify_log(LOG, &l2.rows, &cps(&l2, &[1000], false), 1000);
        assert!(f.iter().any(|x| x.seq == Some(705) && x.kind == FindingKind::Altered));
        assert!(f.iter().any(|x| x.seq == Some(700) && x.kind == FindingKind::Altered));
    }

    #[test]
    fn incremental_verification_starts_from_a_trusted_frontier() {
        let mut l = log(700);
        let base = CompactRange::from_leaves(&l.leaves[..400]);
        let c = cps(&l, &[300, 400, 550, 700], false);
        assert_eq!(verify_incremental(LOG, &l.rows[400..], &base, &c, 700), vec![]);
        // Rows below the base are not looked at; damage above it is found.
        l.rows[10].recomputed_leaf = forged("old");
        l.rows[600].recomputed_leaf = forged("new");
        let f = verify_incremental(LOG, &l.rows, &base, &c, 700);
        assert_eq!(kinds(&f), vec![(Some(600), FindingKind::Altered)]);
        // A base that does not match the signed tree makes the next checkpoint fail.
        let wrong = CompactRange::from_leaves(&l.leaves[1..401]);
        let f = verify_incremental(LOG, &l.rows[400..], &wrong, &c, 700);
        assert!(f.iter().any(|x| x.seq == Some(400) && x.kind == FindingKind::Altered), "{f:#?}");
    }

    #[test]
    fn seg_tree_matches_the_reference_root() {
        let l = log(300);
        for a in [0usize, 1, 5, 64, 255, 256, 299] {
            for n in [a + 1, a + 2, 257.max(a + 1), 300] {
                if n > 300 {
                    continue;
                }
                let base = CompactRange::from_leaves(&l.leaves[..a]);
                let leaves: Vec<Option<Hash>> = l.leaves[a..n].iter().copied().map(Some).collect();
                let t = SegTree::new(Some(&base), a as u64, n as u64, &leaves);
                assert_eq!(t.root(), Some(root(&l.leaves[..n])), "a={a} n={n}");
            }
        }
    }
}
