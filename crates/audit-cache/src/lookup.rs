//! Lookups: read the generations of a query's scope, serve a valid L1 entry, else fill the slot from L2 or from
//! the loader (single flight), writing the loader's answer to both tiers.
//!
//! Generations are read *before* the database query; `docs/caching.md` proves why that order keeps answers fresh.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use audit_core::{AuditResult, CacheTier, Page, QueryScope, ResiliencePolicy};
use quick_cache::sync::{EntryAction, EntryResult, PlaceholderGuard};
use sha2::{Digest, Sha256};
use tracing::{debug, warn};

use crate::TieredCache;
use crate::codec;
use crate::generation::{Deps, deps_for, hex_lower, new_token};
use crate::l1::{EntryWeighter, EvictionHook, L1Entry, Val};
use crate::remote::{Call, Remote};

/// What one query checks a cached entry against.
pub(crate) struct Check<'a> {
    local: &'a [u64],
    remote: Option<[u8; 16]>,
    /// When the generations were read (ms on the cache clock).
    read_ms: u64,
    /// The L2 value of the slot, read in the same Redis round trip as the generations (when L1 had no entry):
    /// its raw bytes (if any) and PTTL.
    prefetched: Option<(Option<Vec<u8>>, i64)>,
}

type Guard<'a> = PlaceholderGuard<'a, String, Val, EntryWeighter, quick_cache::DefaultHashBuilder, EvictionHook>;

impl<P: ResiliencePolicy> TieredCache<P> {
    /// `QueryCache::get_or_load`.
    pub(crate) async fn lookup<F, Fut>(
        &self,
        scope: &QueryScope,
        key: &str,
        load: F,
    ) -> AuditResult<(Arc<Page>, CacheTier)>
    where
        F: FnOnce() -> Fut + Send,
        Fut: Future<Output = AuditResult<Page>> + Send,
    {
        if !self.enabled {
            return self.load_uncached(load).await;
        }
        let slot = slot_key(scope, key);
        let deps = deps_for(&self.prefix, scope, self.max_scope_months);
        // Generations are read BEFORE the database query (see docs/caching.md for why that order matters).
        let read_ms = self.clock.now_ms();
        let local = self.locals.read(&deps);
        let in_l1 = self.l1.cache.get(&slot);
        // One Redis round trip per lookup: with no L1 entry to check, the L2 value is fetched in the same pipeline
        // as the generations (it carries the fingerprint it was stored under and is served only if that matches).
        // Not in cluster mode: the value key lives in another slot than the generations, so it is a second call.
        let vkey = self.value_key(&slot);
        let (remote, prefetched) = match &self.remote {
            Some(r) => read_generations(r, &deps, (in_l1.is_none() && !r.cluster).then_some(vkey.as_str())).await,
            None => (None, None),
        };
        let check = Check { local: &local, remote, read_ms, prefetched };

        if let Some(e) = in_l1
            && self.valid(&e, &check)
        {
            self.hit(CacheTier::L1);
            return Ok((e.page.clone(), CacheTier::L1));
        }
        let result = self
            .l1
            .cache
            .entry_async(&slot, |_, e| {
                if self.valid(e, &check) { EntryAction::Retain(e.page.clone()) } else { EntryAction::ReplaceWithGuard }
            })
            .await;
        match result {
            EntryResult::Retained(page) => {
                self.hit(CacheTier::L1);
                Ok((page, CacheTier::L1))
            }
            EntryResult::Vacant(guard) | EntryResult::Replaced(guard, _) => self.fill(guard, &slot, &check, load).await,
            // Neither is produced by the callback above; answer from the database without caching.
            EntryResult::Removed(..) | EntryResult::Timeout => self.load_uncached(load).await,
        }
    }

    /// Answers from the loader without caching.
    async fn load_uncached<F, Fut>(&self, load: F) -> AuditResult<(Arc<Page>, CacheTier)>
    where
        F: FnOnce() -> Fut + Send,
        Fut: Future<Output = AuditResult<Page>> + Send,
    {
        let page = load().await?;
        self.hit(CacheTier::Db);
        Ok((Arc::new(page), CacheTier::Db))
    }

    /// Whether `e` may answer a query that read `c`: not expired, same local counters, and either the same Redis
    /// fingerprint (which proves it fresh now) or, when Redis is absent or unreachable, proven fresh less than
    /// `localStalenessMs` ago.
    fn valid(&self, e: &L1Entry, c: &Check<'_>) -> bool {
        let now = self.clock.now_ms();
        if now >= e.expires_ms || *e.local != *c.local {
            return false;
        }
        match (self.remote.is_some(), c.remote) {
            (true, Some(fp)) => {
                if e.remote == Some(fp) {
                    e.verified_ms.fetch_max(c.read_ms, Ordering::AcqRel);
                    true
                } else {
                    false
                }
            }
            // No Redis, or Redis unreachable now: only what was proven fresh less than `localStalenessMs` ago.
            _ => now.saturating_sub(e.verified_ms.load(Ordering::Acquire)) < self.staleness_ms,
        }
    }

    /// Fills a vacant (or invalid) slot, holding its placeholder so that concurrent identical misses wait for this
    /// one: from L2 when a value stored under the same generations exists, else from the loader.
    async fn fill<F, Fut>(
        &self,
        guard: Guard<'_>,
        slot: &str,
        c: &Check<'_>,
        load: F,
    ) -> AuditResult<(Arc<Page>, CacheTier)>
    where
        F: FnOnce() -> Fut + Send,
        Fut: Future<Output = AuditResult<Page>> + Send,
    {
        let l2 = match (c.remote, &c.prefetched) {
            (Some(fp), Some((bytes, pttl))) => self.decode_l2(bytes.as_deref(), *pttl, slot, &fp),
            // L1 had an entry that turned out stale: the value was not fetched with the generations.
            (Some(fp), None) => self.read_l2(&self.value_key(slot), slot, &fp).await,
            (None, _) => None,
        };
        if let Some((page, left_ms)) = l2 {
            let _ = guard.insert(self.entry(slot, page.clone(), c, self.clock.now_ms() + left_ms));
            self.publish_gauges();
            self.hit(CacheTier::L2);
            return Ok((page, CacheTier::L2));
        }
        // On a loader error the guard drops uninserted and each waiter retries on its own.
        let page = Arc::new(load().await?);
        self.hit(CacheTier::Db);
        if self.ttl_ms > 0 {
            let _ = guard.insert(self.entry(slot, page.clone(), c, self.clock.now_ms() + self.ttl_ms));
            self.publish_gauges();
            if let Some(fp) = c.remote {
                self.write_l2(&self.value_key(slot), slot, &fp, &page).await;
            }
        }
        Ok((page, CacheTier::Db))
    }

    /// The value at `vkey` if it was stored under fingerprint `fp` and answers exactly `slot`, with the ms it has
    /// left (capped by the TTL).
    async fn read_l2(&self, vkey: &str, slot: &str, fp: &[u8; 16]) -> Option<(Arc<Page>, u64)> {
        let remote = self.remote.as_ref()?;
        let mut p = redis::pipe();
        p.cmd("GET").arg(vkey).cmd("PTTL").arg(vkey);
        let (bytes, pttl) = remote.call::<(Option<Vec<u8>>, i64)>("get", Call::pipe(p)).await.ok()?;
        self.decode_l2(bytes.as_deref(), pttl, slot, fp)
    }

    /// An L2 value (`fingerprint ‖ codec bytes`) if it was stored under `fp` — the generations this query read,
    /// which is what makes it fresh — and answers exactly `slot`.
    fn decode_l2(&self, bytes: Option<&[u8]>, pttl: i64, slot: &str, fp: &[u8; 16]) -> Option<(Arc<Page>, u64)> {
        let bytes = bytes?;
        if bytes.len() < 16 || bytes[..16] != fp[..] {
            // Stored under other generations (older, or newer than what this query read): not an answer for it.
            return None;
        }
        match codec::decode(&bytes[16..]) {
            Ok((stored_slot, page)) if stored_slot == slot => {
                let left = u64::try_from(pttl).ok().filter(|l| *l > 0).map_or(self.ttl_ms, |l| l.min(self.ttl_ms));
                Some((Arc::new(page), left))
            }
            Ok(_) => {
                warn!(slot, "L2 value answers another query; ignored");
                None
            }
            Err(e) => {
                warn!(slot, error = %e, "L2 value undecodable; ignored");
                None
            }
        }
    }

    /// Stores the loader's answer in L2 (`SET … PX ttl`) prefixed with the fingerprint of the generations it was
    /// computed under, unless it is too large.
    async fn write_l2(&self, vkey: &str, slot: &str, fp: &[u8; 16], page: &Page) {
        let Some(remote) = &self.remote else { return };
        let mut bytes = fp.to_vec();
        bytes.extend_from_slice(&codec::encode(slot, page));
        if bytes.len() > self.max_l2_value_bytes {
            debug!(bytes = bytes.len(), "answer too large for L2");
            return;
        }
        let mut set = redis::cmd("SET");
        set.arg(vkey).arg(bytes).arg("PX").arg(self.ttl_ms);
        // A failed write only costs a later L2 miss; `Remote` has logged and counted it.
        let _ = remote.call::<()>("set", Call::cmd(set)).await;
    }

    /// An L1 entry for `page`, recording what it was computed under.
    fn entry(&self, slot: &str, page: Arc<Page>, c: &Check<'_>, expires_ms: u64) -> Val {
        let weight = self.l1.weigh(slot, &page, c.local.len());
        Arc::new(L1Entry {
            page,
            local: c.local.into(),
            remote: c.remote,
            verified_ms: AtomicU64::new(c.read_ms),
            expires_ms,
            weight,
        })
    }

    /// The L2 key of `slot`. One key per query, whatever the generations: the value carries the fingerprint it
    /// was stored under, so that it can be fetched in the same round trip as the generations (a newer answer
    /// overwrites an older one; an older one written late only costs the next reader a miss).
    fn value_key(&self, slot: &str) -> String {
        let mut h = Sha256::new();
        h.update(slot.as_bytes());
        format!("{}v:{}", self.prefix, hex_lower(&h.finalize()[..16]))
    }
}

/// Reads the generation tokens of `deps` (creating missing ones) and returns their fingerprint, or `None` if Redis
/// cannot be read now; with `value`, also that key's bytes and PTTL, in the same pipeline (one round trip).
async fn read_generations<P: ResiliencePolicy>(
    remote: &Remote<P>,
    deps: &Deps,
    value: Option<&str>,
) -> (Option<[u8; 16]>, Option<(Option<Vec<u8>>, i64)>) {
    let mut p = redis::pipe();
    p.cmd("MGET").arg(&deps.keys);
    let (mut tokens, prefetched) = match value {
        Some(vkey) => {
            p.cmd("GET").arg(vkey).cmd("PTTL").arg(vkey);
            match remote.call::<(Vec<Option<String>>, Option<Vec<u8>>, i64)>("mget", Call::pipe(p)).await {
                Ok((t, bytes, pttl)) => (t, Some((bytes, pttl))),
                Err(_) => return (None, None),
            }
        }
        None => match remote.call::<(Vec<Option<String>>,)>("mget", Call::pipe(p)).await {
            Ok((t,)) => (t, None),
            Err(_) => return (None, None),
        },
    };
    (fingerprint(remote, deps, &mut tokens).await, prefetched)
}

/// The fingerprint of `tokens` (the values of `deps.keys`), creating the missing ones first.
async fn fingerprint<P: ResiliencePolicy>(
    remote: &Remote<P>,
    deps: &Deps,
    tokens: &mut Vec<Option<String>>,
) -> Option<[u8; 16]> {
    if tokens.iter().any(Option::is_none) {
        // First reader of a period (or the token expired or was evicted): create a fresh random token unless a
        // writer got there first, then read again so that we hold whatever is current.
        let ttl_ms = u64::try_from(remote.generation_ttl.as_millis()).unwrap_or(u64::MAX);
        let mut p = redis::pipe();
        for (k, t) in deps.keys.iter().zip(tokens.iter()) {
            if t.is_none() {
                p.cmd("SET").arg(k).arg(new_token()).arg("PX").arg(ttl_ms).arg("NX").ignore();
            }
        }
        p.cmd("MGET").arg(&deps.keys);
        let (again,): (Vec<Option<String>>,) = remote.call("mget", Call::pipe(p)).await.ok()?;
        *tokens = again;
        if tokens.iter().any(Option::is_none) {
            return None;
        }
    }
    let mut h = Sha256::new();
    for (k, t) in deps.keys.iter().zip(tokens.iter()) {
        h.update(k.as_bytes());
        h.update([0]);
        h.update(t.as_deref().unwrap_or("").as_bytes());
        h.update([0]);
    }
    let d = h.finalize();
    let mut fp = [0u8; 16];
    fp.copy_from_slice(&d[..16]);
    Some(fp)
}

/// The L1 key of a query: organisation (length-prefixed), time bounds and the canonical filter, unambiguous.
pub(crate) fn slot_key(scope: &QueryScope, key: &str) -> String {
    let org = match &scope.organization_id {
        Some(o) => format!("o{}:{o}", o.len()),
        None => "*".to_string(),
    };
    let b = |v: Option<i64>| v.map_or_else(|| "-".to_string(), |x| x.to_string());
    format!("{org}|{}|{}|{key}", b(scope.from_micros), b(scope.to_micros))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_keys_separate_orgs_windows_and_filters() {
        let s = |o: Option<&str>, f: Option<i64>| QueryScope {
            organization_id: o.map(str::to_string),
            from_micros: f,
            to_micros: None,
        };
        let keys = [
            slot_key(&s(Some("a"), None), "k"),
            slot_key(&s(Some("a|1"), None), "k"),
            slot_key(&s(Some("a"), Some(1)), "k"),
            slot_key(&s(None, None), "k"),
            slot_key(&s(Some("a"), None), "k2"),
        ];
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }
}
