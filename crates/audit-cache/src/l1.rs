//! L1: the in-process tier on `quick_cache`, bounded by bytes and by entry count through one weigher.
//!
//! Every entry is charged `max(real bytes, budget / maxKeys)`. The byte budget is a hard bound of quick_cache, so
//! the real bytes held never exceed it, and since every entry weighs at least `budget / maxKeys`, no more than
//! `maxKeys` entries fit either.

use std::mem::size_of;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use audit_core::{Page, StoredEvent};
use quick_cache::sync::Cache;
use quick_cache::{DefaultHashBuilder, Lifecycle, OptionsBuilder, Weighter};
use serde_json::Value;

/// Fixed cost charged per entry for the table slot, the ghost entry and the `Arc` header.
pub(crate) const ENTRY_OVERHEAD: u64 = 160;

/// One cached answer and what it was computed under.
#[derive(Debug)]
pub(crate) struct L1Entry {
    /// The answer.
    pub page: Arc<Page>,
    /// Local generation counters read before the answer was loaded.
    pub local: Box<[u64]>,
    /// Fingerprint of the Redis generations read before the answer was loaded (`None`: Redis unreachable then).
    pub remote: Option<[u8; 16]>,
    /// When the answer was last proven fresh (ms on the cache's clock): the generation read before it was loaded,
    /// moved forward by every later successful Redis check.
    pub verified_ms: AtomicU64,
    /// When the entry dies (ms on the cache's clock).
    pub expires_ms: u64,
    /// What the weigher charges.
    pub weight: u64,
}

pub(crate) type Val = Arc<L1Entry>;

#[derive(Debug, Clone, Copy)]
pub(crate) struct EntryWeighter;

impl Weighter<String, Val> for EntryWeighter {
    fn weight(&self, _key: &String, val: &Val) -> u64 {
        val.weight
    }
}

/// Counts evictions (and entries too large to be admitted at all).
#[derive(Debug, Clone)]
pub(crate) struct EvictionHook {
    pub evictions: Arc<AtomicU64>,
    pub rejected: Arc<AtomicU64>,
    pub max_item: Arc<AtomicU64>,
}

impl Lifecycle<String, Val> for EvictionHook {
    type RequestState = ();

    fn on_evict(&self, _state: &mut (), _key: String, val: Val) {
        if val.weight > self.max_item.load(Ordering::Relaxed) {
            self.rejected.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(audit_core::metrics::CACHE_REJECTED).increment(1);
        } else {
            self.evictions.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(audit_core::metrics::CACHE_EVICTIONS).increment(1);
        }
    }
}

pub(crate) type L1Cache = Cache<String, Val, EntryWeighter, DefaultHashBuilder, EvictionHook>;

/// The L1 store and its accounting.
pub(crate) struct L1 {
    pub cache: L1Cache,
    pub hook: EvictionHook,
    /// The byte budget actually enforced (the configured one rounded down to a multiple of the shard count).
    pub budget: u64,
    /// The least weight of an entry (`budget / maxKeys`).
    pub min_weight: u64,
}

impl std::fmt::Debug for L1 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("L1").field("budget", &self.budget).field("min_weight", &self.min_weight).finish()
    }
}

impl L1 {
    /// A cache of at most `budget_bytes` bytes and `max_keys` entries (0: no entry limit beyond the bytes).
    pub(crate) fn new(budget_bytes: u64, max_keys: u64) -> Self {
        const SHARD_BYTES: u64 = 8 << 20;
        let mut shards = (budget_bytes / SHARD_BYTES).clamp(1, 16);
        if max_keys > 0 {
            shards = shards.min((max_keys / 32).max(1));
        }
        // Power of two, and the budget a multiple of it: quick_cache then gives each shard exactly
        // budget / shards and the sum over shards never passes the budget.
        let shards = 1u64 << (63 - shards.leading_zeros());
        let budget = (budget_bytes / shards) * shards;
        let min_weight = if max_keys == 0 { 0 } else { budget.div_ceil(max_keys) };
        let estimated = if max_keys == 0 { (budget / 4096).max(64) } else { max_keys.min(budget / 256 + 64) };
        let hook = EvictionHook {
            evictions: Arc::default(),
            rejected: Arc::default(),
            max_item: Arc::new(AtomicU64::new(u64::MAX)),
        };
        let options = OptionsBuilder::new()
            .shards(shards as usize)
            .estimated_items_capacity(estimated as usize)
            .weight_capacity(budget)
            .build()
            .expect("the options are in range by construction");
        let cache = Cache::with_options(options, EntryWeighter, DefaultHashBuilder::default(), hook.clone());
        // quick_cache admits an entry only if it fits the hot part of one shard.
        let max_item = (cache.shard_capacity() as f64 * quick_cache_hot_allocation()) as u64;
        hook.max_item.store(max_item, Ordering::Relaxed);
        Self { cache, hook, budget, min_weight }
    }

    /// The weight to charge for an entry of `slot` holding `page`.
    pub(crate) fn weigh(&self, slot: &str, page: &Page, local_len: usize) -> u64 {
        let real = ENTRY_OVERHEAD + slot.len() as u64 + (local_len * 8) as u64 + page_bytes(page);
        real.max(self.min_weight)
    }
}

fn quick_cache_hot_allocation() -> f64 {
    0.97
}

/// What the allocator really hands out for a request of `n` bytes: rounded up to 16 with a 16-byte header (glibc
/// malloc's chunk layout). Counting only capacities undercounted resident memory by ~40% on realistic pages (measured
/// by `cargo xtask bench`, `l1_rss_ratio_vs_max_size`).
fn alloc(n: usize) -> usize {
    if n == 0 { 0 } else { n.div_ceil(16) * 16 + 16 }
}

fn string_heap(capacity: usize) -> usize {
    alloc(capacity)
}

/// Bytes a page holds: its structs and every heap allocation (strings, vectors, `details`), each charged as the
/// allocator charges it.
pub(crate) fn page_bytes(page: &Page) -> u64 {
    let mut n = size_of::<Page>() + alloc(page.events.capacity() * size_of::<StoredEvent>());
    for s in &page.events {
        let e = &s.event;
        n += string_heap(e.action.capacity())
            + string_heap(e.retention_policy.capacity())
            + string_heap(e.event_version.capacity());
        for o in [
            &e.principal_id,
            &e.organization_id,
            &e.target_resource_type,
            &e.target_resource_id,
            &e.outcome_description,
            &e.correlation_id,
            &e.ttl,
        ] {
            n += o.as_ref().map_or(0, |s| alloc(s.capacity()));
        }
        n += map_bytes(&e.details);
    }
    n as u64
}

/// Entries per B-tree node (std's `B = 6`: up to 11 key-value pairs per node).
const BTREE_NODE_CAPACITY: usize = 11;

fn map_bytes(m: &serde_json::Map<String, Value>) -> usize {
    if m.is_empty() {
        return 0;
    }
    // Nodes are allocated whole (11 slots) however few entries they hold; internal nodes also hold 12 edges.
    let leaf = BTREE_NODE_CAPACITY * (size_of::<String>() + size_of::<Value>()) + 16;
    let nodes = m.len().div_ceil(BTREE_NODE_CAPACITY / 2 + 1).max(1);
    let structure = nodes * alloc(leaf) + if nodes > 1 { alloc(leaf + 12 * 8) } else { 0 };
    structure + m.iter().map(|(k, v)| alloc(k.capacity()) + value_heap(v)).sum::<usize>()
}

fn value_heap(v: &Value) -> usize {
    match v {
        Value::Null | Value::Bool(_) => 0,
        // With arbitrary_precision a number is its decimal text, in its own allocation.
        Value::Number(n) => alloc(n.to_string().len()),
        Value::String(s) => alloc(s.capacity()),
        Value::Array(a) => alloc(a.capacity() * size_of::<Value>()) + a.iter().map(value_heap).sum::<usize>(),
        Value::Object(m) => map_bytes(m),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_divide_the_budget_and_keys_bound_the_count() {
        let l1 = L1::new(100 << 20, 10_000);
        assert!(l1.budget <= 100 << 20);
        assert_eq!(l1.budget % l1.cache.num_shards() as u64, 0);
        assert!(l1.budget / l1.min_weight <= 10_000);
        let small = L1::new(1 << 20, 0);
        assert_eq!(small.budget, 1 << 20);
        assert_eq!(small.min_weight, 0);
    }

    #[test]
    fn details_count_towards_the_weight() {
        let mut page = Page::default();
        let small = page_bytes(&page);
        page.events.push(crate::test_support::event_with_details("o", 0, 10_000));
        assert!(page_bytes(&page) > small + 10_000);
    }
}
