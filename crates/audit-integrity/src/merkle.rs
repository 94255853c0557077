//! RFC 6962 / RFC 9162 Merkle trees over SHA-256: tree heads, compact ranges, inclusion and consistency proofs.
//!
//! Leaves are given as *leaf hashes* (`hash_leaf(data)`), so the tree never needs the events themselves. Proof
//! generation computes each sibling subtree root once, which is O(n) hashing for a tree of n leaves.

use sha2::{Digest, Sha256};

use super::IntegrityError;

/// A SHA-256 output: a leaf hash, an interior node hash or a tree head.
pub type Hash = [u8; 32];

/// Root of the empty tree: SHA-256 of the empty string (RFC 9162 §2.1.1).
pub const EMPTY_ROOT: Hash = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24, 0x27, 0xae, 0x41,
    0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

/// Domain-separated leaf hash, SHA-256(0x00 || data): the 0x00 prefix keeps a leaf from ever equalling a node.
pub fn hash_leaf(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(data);
    h.finalize().into()
}

/// Interior node hash, SHA-256(0x01 || left || right).
pub fn hash_children(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0x01]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// Largest power of two strictly below `n` (`n >= 2`): where RFC 9162 splits a tree of `n` leaves.
pub(crate) fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1u64 << (63 - (n - 1).leading_zeros())
}

/// The Merkle tree hash (tree head) of a list of leaf hashes, as RFC 9162 §2.1.1 defines it.
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => EMPTY_ROOT,
        1 => leaves[0],
        n => {
            let k = split_point(n as u64) as usize;
            hash_children(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// Root of the subtree over `leaves[start..end]`; a helper for callers that hold more leaves than one subtree.
///
/// Panics if the range is out of bounds, like slice indexing.
pub fn subtree_root(leaves: &[Hash], start: u64, end: u64) -> Hash {
    root(&leaves[start as usize..end as usize])
}

/// Inclusion proof (audit path) of leaf `index` in the tree formed by all of `leaves` (RFC 9162 §2.1.3.1).
///
/// Panics if `index >= leaves.len()`: asking for a leaf the tree does not have is a caller bug.
pub fn inclusion_proof(leaves: &[Hash], index: u64) -> Vec<Hash> {
    assert!((index as usize) < leaves.len(), "inclusion_proof: index {index} outside tree of {}", leaves.len());
    let mut proof = Vec::new();
    path(leaves, index as usize, &mut proof);
    proof
}

fn path(leaves: &[Hash], m: usize, out: &mut Vec<Hash>) {
    let n = leaves.len();
    if n <= 1 {
        return;
    }
    let k = split_point(n as u64) as usize;
    if m < k {
        path(&leaves[..k], m, out);
        out.push(root(&leaves[k..]));
    } else {
        path(&leaves[k..], m - k, out);
        out.push(root(&leaves[..k]));
    }
}

/// Checks an inclusion proof with the algorithm of RFC 9162 §2.1.3.2.
///
/// Note: the proof binds the leaf's index, but for some shapes the same path also fits a different tree size; the
/// tree size is bound by the signed checkpoint that carries `root`, never by the proof alone.
pub fn verify_inclusion(leaf: &Hash, index: u64, size: u64, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut fn_, mut sn) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if sn == 0 {
            return false;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = hash_children(p, &r);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            r = hash_children(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    sn == 0 && r == *root
}

/// Consistency proof from the tree of the first `old_size` leaves to the tree of all `leaves` (RFC 9162
/// §2.1.4.1). Empty when `old_size` is 0 or equals `leaves.len()`.
///
/// Panics if `old_size > leaves.len()`.
pub fn consistency_proof(leaves: &[Hash], old_size: u64) -> Vec<Hash> {
    let n = leaves.len() as u64;
    assert!(old_size <= n, "consistency_proof: old size {old_size} beyond tree of {n}");
    let mut proof = Vec::new();
    if old_size > 0 && old_size < n {
        subproof(leaves, old_size as usize, true, &mut proof);
    }
    proof
}

fn subproof(leaves: &[Hash], m: usize, whole: bool, out: &mut Vec<Hash>) {
    let n = leaves.len();
    if m == n {
        if !whole {
            out.push(root(leaves));
        }
        return;
    }
    let k = split_point(n as u64) as usize;
    if m <= k {
        subproof(&leaves[..k], m, whole, out);
        out.push(root(&leaves[k..]));
    } else {
        subproof(&leaves[k..], m - k, false, out);
        out.push(root(&leaves[..k]));
    }
}

/// Checks a consistency proof with the algorithm of RFC 9162 §2.1.4.2: the tree of `new_size` leaves with head
/// `new_root` extends the tree of `old_size` leaves with head `old_root`.
///
/// Edge cases: equal sizes need an empty proof and equal roots; an `old_size` of 0 needs an empty proof and the
/// empty-tree root as `old_root` (every tree extends the empty one).
pub fn verify_consistency(old_size: u64, new_size: u64, old_root: &Hash, new_root: &Hash, proof: &[Hash]) -> bool {
    if old_size > new_size {
        return false;
    }
    if old_size == new_size {
        return proof.is_empty() && old_root == new_root;
    }
    if old_size == 0 {
        return proof.is_empty() && *old_root == EMPTY_ROOT;
    }
    if proof.is_empty() {
        return false;
    }
    let mut path: Vec<&Hash> = Vec::with_capacity(proof.len() + 1);
    if old_size.is_power_of_two() {
        path.push(old_root);
    }
    path.extend(proof.iter());
    let (mut fn_, mut sn) = (old_size - 1, new_size - 1);
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let (mut fr, mut sr) = (*path[0], *path[0]);
    for c in &path[1..] {
        if sn == 0 {
            return false;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = hash_children(c, &fr);
            sr = hash_children(c, &sr);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            sr = hash_children(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    fr == *old_root && sr == *new_root && sn == 0
}

/// The right edge of a tree: the roots of the perfect subtrees that make up `[0, size)`, largest first (one per
/// set bit of `size`). Enough to append leaves and compute the head without the earlier leaves, which is why the
/// checkpointer stores it (`audit_checkpoints.frontier`) and why incremental verification can start from it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CompactRange {
    size: u64,
    hashes: Vec<Hash>,
}

/// Format byte that opens [`CompactRange::to_bytes`].
const FRONTIER_VERSION: u8 = 1;

impl CompactRange {
    /// The empty range (tree of size 0).
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds the range over `leaves` (O(n) hashing).
    pub fn from_leaves(leaves: &[Hash]) -> Self {
        let mut r = Self::new();
        r.extend(leaves);
        r
    }

    /// Rebuilds a range from its parts; fails unless there is exactly one hash per set bit of `size`.
    pub fn from_parts(size: u64, hashes: Vec<Hash>) -> Result<Self, IntegrityError> {
        if hashes.len() != size.count_ones() as usize {
            return Err(IntegrityError::MalformedFrontier(format!(
                "size {size} needs {} subtree hashes, got {}",
                size.count_ones(),
                hashes.len()
            )));
        }
        Ok(Self { size, hashes })
    }

    /// Number of leaves covered.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The perfect-subtree roots, largest (leftmost) first.
    pub fn hashes(&self) -> &[Hash] {
        &self.hashes
    }

    /// The perfect subtrees as `(start, end, hash)` leaf ranges, leftmost first.
    pub fn nodes(&self) -> Vec<(u64, u64, Hash)> {
        let mut start = 0u64;
        let mut out = Vec::with_capacity(self.hashes.len());
        let mut bits = self.size;
        for h in &self.hashes {
            let width = 1u64 << (63 - bits.leading_zeros());
            out.push((start, start + width, *h));
            start += width;
            bits &= !width;
        }
        out
    }

    /// Appends one leaf hash (amortised O(1) hashing).
    pub fn append(&mut self, leaf: Hash) {
        self.append_with(leaf, &mut |_, _, _| {});
    }

    /// Appends one leaf hash and reports every perfect aligned subtree it completes as `(level, index, root)`
    /// (what the checkpointer stores in `audit_log_nodes`).
    pub fn append_with(&mut self, leaf: Hash, completed: &mut dyn FnMut(u32, u64, &Hash)) {
        let mut h = leaf;
        let mut s = self.size;
        let mut level = 0u32;
        while s & 1 == 1 {
            let left = self.hashes.pop().expect("one hash per set bit");
            h = hash_children(&left, &h);
            s >>= 1;
            level += 1;
            completed(level, s, &h);
        }
        self.hashes.push(h);
        self.size += 1;
    }

    /// Appends several leaf hashes in order.
    pub fn extend<'a>(&mut self, leaves: impl IntoIterator<Item = &'a Hash>) {
        for l in leaves {
            self.append(*l);
        }
    }

    /// The tree head of `[0, size)`; equals [`root`] over the same leaves.
    pub fn root(&self) -> Hash {
        let mut it = self.hashes.iter().rev();
        match it.next() {
            None => EMPTY_ROOT,
            Some(last) => it.fold(*last, |acc, h| hash_children(h, &acc)),
        }
    }

    /// Serialized form for the `frontier` bytea: `0x01 || size (u64 big-endian) || hashes (32 bytes each)`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(9 + 32 * self.hashes.len());
        out.push(FRONTIER_VERSION);
        out.extend_from_slice(&self.size.to_be_bytes());
        for h in &self.hashes {
            out.extend_from_slice(h);
        }
        out
    }

    /// Parses [`CompactRange::to_bytes`], refusing a wrong version, size or length.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, IntegrityError> {
        let bad = |why: String| IntegrityError::MalformedFrontier(why);
        let (&version, rest) = bytes.split_first().ok_or_else(|| bad("empty".into()))?;
        if version != FRONTIER_VERSION {
            return Err(bad(format!("unknown version byte {version:#04x}")));
        }
        if rest.len() < 8 {
            return Err(bad(format!("{} bytes is too short for the size field", bytes.len())));
        }
        let size = u64::from_be_bytes(rest[..8].try_into().expect("8 bytes"));
        if size > i64::MAX as u64 {
            return Err(bad(format!("size {size} exceeds the largest sequence number")));
        }
        let body = &rest[8..];
        let want = size.count_ones() as usize;
        if body.len() != want * 32 {
            return Err(bad(format!("size {size} needs {} hash bytes, got {}", want * 32, body.len())));
        }
        let hashes = body.chunks_exact(32).map(|c| c.try_into().expect("32 bytes")).collect();
        Ok(Self { size, hashes })
    }
}

/// All complete aligned subtrees of a tree, built once in O(n) so that many proofs cost O(log² n) each instead of
/// O(n) each: what an evidence pack with thousands of events, or a proof server, needs.
#[derive(Debug, Clone)]
pub struct MerkleTree {
    /// `levels[h][i]` is the root of leaves `[i·2^h, (i+1)·2^h)`; `levels[0]` are the leaves.
    levels: Vec<Vec<Hash>>,
}

impl MerkleTree {
    /// Builds every complete aligned subtree over `leaves`.
    pub fn new(leaves: &[Hash]) -> Self {
        let mut levels = vec![leaves.to_vec()];
        while levels.last().expect("one level").len() >= 2 {
            let below = levels.last().expect("one level");
            let up = below.chunks_exact(2).map(|p| hash_children(&p[0], &p[1])).collect();
            levels.push(up);
        }
        Self { levels }
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.levels[0].len() as u64
    }

    /// The tree head.
    pub fn root(&self) -> Hash {
        root_by(self.size(), &mut |l, i| self.node(l, i))
    }

    /// The perfect aligned subtree `levels[level][index]`.
    fn node(&self, level: u32, index: u64) -> Hash {
        self.levels[level as usize][index as usize]
    }

    /// Same result as [`inclusion_proof`] over the same leaves.
    pub fn inclusion_proof(&self, index: u64) -> Vec<Hash> {
        assert!(index < self.size(), "inclusion_proof: index {index} outside tree of {}", self.size());
        inclusion_proof_by(self.size(), index, &mut |l, i| self.node(l, i))
    }

    /// Same result as [`consistency_proof`] over the same leaves.
    pub fn consistency_proof(&self, old_size: u64) -> Vec<Hash> {
        let n = self.size();
        assert!(old_size <= n, "consistency_proof: old size {old_size} beyond tree of {n}");
        consistency_proof_by(n, old_size, &mut |l, i| self.node(l, i))
    }
}

/// Height of a tile: 2^8 = 256 leaves. The store keeps every complete aligned subtree at or above this height
/// (`audit_log_nodes`), so a proof reads stored nodes plus the leaves of at most two tiles (the leaf's own and the
/// partial one at the right edge) instead of the whole log.
pub const TILE_HEIGHT: u32 = 8;

/// A source of perfect aligned subtree roots: `node(level, index)` is the root of leaves
/// `[index·2^level, (index+1)·2^level)`. The proof functions below read a tree only through it, so the same code
/// serves a tree held in memory ([`MerkleTree`]) and one held as stored nodes plus a few tiles of leaves.
pub type NodeSource<'a> = dyn FnMut(u32, u64) -> Hash + 'a;

/// Root of `[start, end)`, a node of the RFC 9162 tree (a perfect aligned subtree or a right edge), from `node`.
fn range_root_by(start: u64, end: u64, node: &mut NodeSource<'_>) -> Hash {
    let n = end - start;
    if n == 0 {
        return EMPTY_ROOT;
    }
    if n.is_power_of_two() && start.is_multiple_of(n) {
        let h = n.trailing_zeros();
        return node(h, start >> h);
    }
    let k = split_point(n);
    let left = range_root_by(start, start + k, node);
    let right = range_root_by(start + k, end, node);
    hash_children(&left, &right)
}

/// The tree head of a tree of `size` leaves, from `node`.
pub fn root_by(size: u64, node: &mut NodeSource<'_>) -> Hash {
    range_root_by(0, size, node)
}

/// Inclusion proof of leaf `index` in a tree of `size` leaves (RFC 9162 §2.1.3.1), reading the tree through `node`:
/// O(log n) node reads, each a perfect aligned subtree or part of the right edge.
pub fn inclusion_proof_by(size: u64, index: u64, node: &mut NodeSource<'_>) -> Vec<Hash> {
    assert!(index < size, "inclusion_proof: index {index} outside tree of {size}");
    let (mut start, mut end) = (0u64, size);
    let mut stack = Vec::new();
    while end - start > 1 {
        let k = split_point(end - start);
        if index < start + k {
            stack.push((start + k, end));
            end = start + k;
        } else {
            stack.push((start, start + k));
            start += k;
        }
    }
    stack.iter().rev().map(|&(s, e)| range_root_by(s, e, node)).collect()
}

/// Consistency proof from `old_size` to `size` leaves (RFC 9162 §2.1.4.1), reading the tree through `node`.
pub fn consistency_proof_by(size: u64, old_size: u64, node: &mut NodeSource<'_>) -> Vec<Hash> {
    assert!(old_size <= size, "consistency_proof: old size {old_size} beyond tree of {size}");
    let mut out = Vec::new();
    if old_size == 0 || old_size == size {
        return out;
    }
    let (mut start, mut end, mut m, mut whole) = (0u64, size, old_size, true);
    let mut stack = Vec::new();
    loop {
        if m == end - start {
            if !whole {
                out.push(range_root_by(start, end, node));
            }
            break;
        }
        let k = split_point(end - start);
        if m <= k {
            stack.push((start + k, end));
            end = start + k;
        } else {
            stack.push((start, start + k));
            start += k;
            m -= k;
            whole = false;
        }
    }
    while let Some((s, e)) = stack.pop() {
        out.push(range_root_by(s, e, node));
    }
    out
}

/// The perfect aligned subtrees `(level, index)` that `read` asks its node source for: run a proof function once
/// with this recorder to learn what to fetch, then again over the fetched nodes.
pub fn nodes_read_by(read: impl FnOnce(&mut NodeSource<'_>)) -> std::collections::BTreeSet<(u32, u64)> {
    let mut seen = std::collections::BTreeSet::new();
    read(&mut |l, i| {
        seen.insert((l, i));
        EMPTY_ROOT
    });
    seen
}

/// A tree known only in part: stored nodes at or above [`TILE_HEIGHT`] and the leaves of a few tiles, enough for
/// the proofs that [`nodes_read_by`] planned. Lower nodes are hashed from the tile's leaves on demand.
#[derive(Debug, Clone, Default)]
pub struct TiledTree {
    /// Stored nodes `(level, index) → root`, `level >= TILE_HEIGHT`.
    pub nodes: std::collections::HashMap<(u32, u64), Hash>,
    /// Leaves of tile `t` (positions `[t·256, t·256 + len)`); the last tile of a tree may be partial.
    pub tiles: std::collections::HashMap<u64, Vec<Hash>>,
}

impl TiledTree {
    /// Which stored nodes and which tiles of leaves a set of planned node reads needs.
    pub fn needs(planned: &std::collections::BTreeSet<(u32, u64)>) -> (Vec<(u32, u64)>, Vec<u64>) {
        let nodes = planned.iter().copied().filter(|(l, _)| *l >= TILE_HEIGHT).collect();
        let mut tiles: Vec<u64> =
            planned.iter().filter(|(l, _)| *l < TILE_HEIGHT).map(|&(l, i)| (i << l) >> TILE_HEIGHT).collect();
        tiles.dedup();
        tiles.sort_unstable();
        tiles.dedup();
        (nodes, tiles)
    }

    /// The node `(level, index)`, or `None` when neither a stored node nor a loaded tile holds it.
    pub fn node(&self, level: u32, index: u64) -> Option<Hash> {
        if level >= TILE_HEIGHT {
            return self.nodes.get(&(level, index)).copied();
        }
        let first = index << level;
        let leaves = self.tiles.get(&(first >> TILE_HEIGHT))?;
        let offset = (first & ((1 << TILE_HEIGHT) - 1)) as usize;
        leaves.get(offset..offset + (1usize << level)).map(root)
    }

    /// Runs a proof function over this tree; a node it lacks reads as the empty root (so the result cannot verify)
    /// and is reported in the second value.
    pub fn run<T>(&self, f: impl FnOnce(&mut NodeSource<'_>) -> T) -> (T, Option<(u32, u64)>) {
        let mut missing = None;
        let out = f(&mut |l, i| {
            self.node(l, i).unwrap_or_else(|| {
                missing.get_or_insert((l, i));
                EMPTY_ROOT
            })
        });
        (out, missing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn leaves(n: usize, salt: u8) -> Vec<Hash> {
        (0..n).map(|i| hash_leaf(&[salt, (i >> 8) as u8, i as u8])).collect()
    }

    /// The RFC 6962 / certificate-transparency test inputs (`merkle_tree_test.go`).
    fn rfc_leaves() -> Vec<Hash> {
        let inputs: [&[u8]; 8] = [
            b"",
            &[0x00],
            &[0x10],
            &[0x20, 0x21],
            &[0x30, 0x31],
            &[0x40, 0x41, 0x42, 0x43],
            &[0x50, 0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x57],
            &[0x60, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x6b, 0x6c, 0x6d, 0x6e, 0x6f],
        ];
        inputs.iter().map(|d| hash_leaf(d)).collect()
    }

    fn h(s: &str) -> Hash {
        hex::decode(s).unwrap().try_into().unwrap()
    }

    #[test]
    fn known_answers_from_the_ct_test_vectors() {
        use sha2::Digest;
        assert_eq!(EMPTY_ROOT, <[u8; 32]>::from(Sha256::digest(b"")));
        assert_eq!(root(&[]), h("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"));
        let l = rfc_leaves();
        let roots = [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
        ];
        for (i, want) in roots.iter().enumerate() {
            assert_eq!(hex::encode(root(&l[..=i])), *want, "root of {} leaves", i + 1);
            assert_eq!(hex::encode(CompactRange::from_leaves(&l[..=i]).root()), *want);
        }
        // Inclusion proofs of the CT test suite (0-based indices).
        let hx = |v: &[&str]| v.iter().map(|s| h(s)).collect::<Vec<_>>();
        let inclusion: [(u64, usize, Vec<Hash>); 4] = [
            (
                0,
                8,
                hx(&[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ]),
            ),
            (
                5,
                8,
                hx(&[
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ]),
            ),
            (2, 3, hx(&["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"])),
            (
                1,
                5,
                hx(&[
                    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ]),
            ),
        ];
        for (index, size, want) in inclusion {
            assert_eq!(inclusion_proof(&l[..size], index), want, "inclusion {index} in {size}");
            assert!(verify_inclusion(&l[index as usize], index, size as u64, &want, &root(&l[..size])));
        }
        // Consistency proofs of the CT test suite.
        let consistency: [(u64, usize, Vec<Hash>); 4] = [
            (1, 1, vec![]),
            (
                1,
                8,
                hx(&[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ]),
            ),
            (
                6,
                8,
                hx(&[
                    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ]),
            ),
            (
                2,
                5,
                hx(&[
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ]),
            ),
        ];
        for (old, size, want) in consistency {
            assert_eq!(consistency_proof(&l[..size], old), want, "consistency {old} -> {size}");
            let old_root = root(&l[..old as usize]);
            assert!(verify_consistency(old, size as u64, &old_root, &root(&l[..size]), &want));
        }
    }

    #[test]
    fn frontier_bytes_round_trip_and_refuse_garbage() {
        for n in [0usize, 1, 2, 3, 7, 8, 255, 256, 300] {
            let r = CompactRange::from_leaves(&leaves(n, 1));
            let b = r.to_bytes();
            assert_eq!(CompactRange::from_bytes(&b).unwrap(), r);
            assert!(CompactRange::from_bytes(&b[..b.len() - 1]).is_err(), "truncated {n}");
            let mut longer = b.clone();
            longer.extend_from_slice(&[0; 32]);
            assert!(CompactRange::from_bytes(&longer).is_err(), "extended {n}");
            let mut wrong_size = b.clone();
            wrong_size[8] ^= 1;
            assert!(CompactRange::from_bytes(&wrong_size).is_err() || n.count_ones() == (n ^ 1).count_ones());
            let mut wrong_version = b.clone();
            wrong_version[0] = 2;
            assert!(CompactRange::from_bytes(&wrong_version).is_err());
        }
        assert!(CompactRange::from_bytes(&[]).is_err());
        assert!(CompactRange::from_bytes(b"garbage").is_err());
        let mut huge = vec![1u8];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        assert!(CompactRange::from_bytes(&huge).is_err());
    }

    #[test]
    fn frontier_nodes_partition_the_range() {
        let l = leaves(300, 2);
        let r = CompactRange::from_leaves(&l);
        let nodes = r.nodes();
        assert_eq!(
            nodes.iter().map(|n| (n.0, n.1)).collect::<Vec<_>>(),
            vec![(0, 256), (256, 288), (288, 296), (296, 300)]
        );
        for (s, e, hash) in nodes {
            assert_eq!(subtree_root(&l, s, e), hash);
        }
    }

    /// Length of the audit path of leaf `i` in a tree of `n` leaves, without hashing.
    fn inclusion_len(mut i: u64, mut n: u64) -> usize {
        let mut len = 0;
        while n > 1 {
            let k = split_point(n);
            if i < k {
                n = k;
            } else {
                i -= k;
                n -= k;
            }
            len += 1;
        }
        len
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

        #[test]
        fn inclusion_proofs_verify_and_bind(n in 1usize..=300, salt in any::<u8>()) {
            let l = leaves(n, salt);
            let r = root(&l);
            prop_assert_eq!(CompactRange::from_leaves(&l).root(), r);
            let tree = MerkleTree::new(&l);
            prop_assert_eq!(tree.root(), r);
            for i in 0..n as u64 {
                let p = inclusion_proof(&l, i);
                prop_assert_eq!(&tree.inclusion_proof(i), &p);
                prop_assert!(verify_inclusion(&l[i as usize], i, n as u64, &p, &r));
                // Any single bit flip of leaf, proof or root breaks it.
                let bit = (i as usize * 7) % 256;
                let mut leaf = l[i as usize];
                leaf[bit / 8] ^= 1 << (bit % 8);
                prop_assert!(!verify_inclusion(&leaf, i, n as u64, &p, &r));
                let mut rr = r;
                rr[bit / 8] ^= 1 << (bit % 8);
                prop_assert!(!verify_inclusion(&l[i as usize], i, n as u64, &p, &rr));
                for j in 0..p.len() {
                    let mut q = p.clone();
                    q[j][bit / 8] ^= 1 << (bit % 8);
                    prop_assert!(!verify_inclusion(&l[i as usize], i, n as u64, &q, &r));
                }
                // Another index never verifies.
                for other in [i.wrapping_sub(1), i + 1, i ^ 2, n as u64] {
                    if other != i {
                        prop_assert!(!verify_inclusion(&l[i as usize], other, n as u64, &p, &r));
                    }
                }
                // Another size verifies only where the audit path has the very same shape (RFC 9162 proofs do
                // not bind the size; the signed checkpoint does): a path of another length never verifies.
                for other in [n as u64 - 1, n as u64 + 1, 2 * n as u64] {
                    if other > i && other != n as u64 && inclusion_len(i, other) != p.len() {
                        prop_assert!(!verify_inclusion(&l[i as usize], i, other, &p, &r));
                    }
                }
                prop_assert!(!verify_inclusion(&l[i as usize], i, 0, &p, &r));
                let mut longer = p.clone();
                longer.push(r);
                prop_assert!(!verify_inclusion(&l[i as usize], i, n as u64, &longer, &r));
            }
        }

        #[test]
        fn consistency_proofs_verify_and_bind(n in 1usize..=300, salt in any::<u8>()) {
            let l = leaves(n, salt);
            let new_root = root(&l);
            let mut cr = CompactRange::new();
            let tree = MerkleTree::new(&l);
            prop_assert_eq!(cr.root(), EMPTY_ROOT);
            for m in 0..=n as u64 {
                let old_root = cr.root();
                prop_assert_eq!(old_root, root(&l[..m as usize]));
                let p = consistency_proof(&l, m);
                prop_assert_eq!(&tree.consistency_proof(m), &p);
                prop_assert!(verify_consistency(m, n as u64, &old_root, &new_root, &p), "m={} n={}", m, n);
                let bit = (m as usize * 13) % 256;
                let flip = |x: &Hash| { let mut y = *x; y[bit / 8] ^= 1 << (bit % 8); y };
                if m < n as u64 {
                    prop_assert!(!verify_consistency(m, n as u64, &flip(&old_root), &new_root, &p));
                    // Every tree extends the empty one, whatever its root: only m > 0 binds the new root.
                    prop_assert!(m == 0 || !verify_consistency(m, n as u64, &old_root, &flip(&new_root), &p));
                    for j in 0..p.len() {
                        let mut q = p.clone();
                        q[j] = flip(&q[j]);
                        prop_assert!(!verify_consistency(m, n as u64, &old_root, &new_root, &q));
                    }
                    if m > 0 {
                        prop_assert!(!verify_consistency(m + 1, n as u64, &old_root, &new_root, &p));
                        prop_assert!(!verify_consistency(m - 1, n as u64, &old_root, &new_root, &p));
                        // As with inclusion, the proof binds the new size only through its shape.
                        if consistency_proof(&vec![EMPTY_ROOT; n + 1], m).len() != p.len() {
                            prop_assert!(!verify_consistency(m, n as u64 + 1, &old_root, &new_root, &p));
                        }
                        prop_assert!(!verify_consistency(m, n as u64, &old_root, &new_root, &[]));
                    }
                }
                if m < n as u64 {
                    cr.append(l[m as usize]);
                }
            }
            prop_assert!(!verify_consistency(n as u64 + 1, n as u64, &new_root, &new_root, &[]));
        }
    }

    /// A tiled tree built the way the store builds it (nodes completed by `append_with`, at or above the tile
    /// height, plus the tiles a plan names) over the first `size` of `l`.
    fn tiled(l: &[Hash], planned: &std::collections::BTreeSet<(u32, u64)>) -> TiledTree {
        let mut t = TiledTree::default();
        let mut cr = CompactRange::new();
        for leaf in l {
            cr.append_with(*leaf, &mut |lv, i, h| {
                if lv >= TILE_HEIGHT {
                    t.nodes.insert((lv, i), *h);
                }
            });
        }
        let (nodes, tiles) = TiledTree::needs(planned);
        assert!(nodes.iter().all(|k| t.nodes.contains_key(k)), "every planned stored node was completed");
        assert!(tiles.len() <= 2, "at most two tiles of leaves: {tiles:?}");
        for tile in tiles {
            let s = (tile << TILE_HEIGHT) as usize;
            t.tiles.insert(tile, l[s..l.len().min(s + (1 << TILE_HEIGHT))].to_vec());
        }
        t
    }

    /// `read` run twice: once to plan which nodes it needs, then over a [`TiledTree`] holding exactly those (stored
    /// nodes and at most two tiles), which must have every node it asks for.
    fn via_tiles<T>(l: &[Hash], read: impl Fn(&mut NodeSource<'_>) -> T) -> T {
        let planned = nodes_read_by(|src| {
            read(src);
        });
        let (out, missing) = tiled(l, &planned).run(read);
        assert_eq!(missing, None);
        out
    }

    #[test]
    fn append_with_reports_exactly_the_complete_aligned_subtrees() {
        let l = leaves(1000, 9);
        let tree = MerkleTree::new(&l);
        let mut cr = CompactRange::new();
        let mut seen = 0usize;
        for leaf in &l {
            cr.append_with(*leaf, &mut |lv, i, h| {
                assert_eq!(*h, tree.node(lv, i), "level {lv} index {i}");
                seen += 1;
            });
        }
        // Every interior node of the complete levels: 500 + 250 + 125 + 62 + 31 + 15 + 7 + 3 + 1.
        assert_eq!(seen, 994);
    }

    #[test]
    fn proofs_from_stored_nodes_and_two_tiles_equal_the_whole_tree() {
        for n in [1usize, 2, 255, 256, 257, 511, 512, 513, 1000, 1024, 1025, 2049, 3000] {
            let l = leaves(n, 3);
            let tree = MerkleTree::new(&l);
            for m in [0, 1, n / 3, n / 2, 255, 256, n.saturating_sub(2), n - 1] {
                if m >= n {
                    continue;
                }
                let p = via_tiles(&l, |src| inclusion_proof_by(n as u64, m as u64, src));
                assert_eq!(p, tree.inclusion_proof(m as u64), "n={n} m={m}");
                let c = via_tiles(&l, |src| consistency_proof_by(n as u64, m as u64, src));
                assert_eq!(c, tree.consistency_proof(m as u64), "n={n} old={m}");
            }
            assert_eq!(via_tiles(&l, |src| root_by(n as u64, src)), tree.root());
        }
        // A node nobody fetched is reported, not invented.
        let (_, missing) = TiledTree::default().run(|src| inclusion_proof_by(600, 3, src));
        assert!(missing.is_some());
    }
}
