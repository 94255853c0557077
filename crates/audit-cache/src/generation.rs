//! Which generation counters a query depends on and which ones a write bumps (see `docs/caching.md`).
//!
//! Keys live in hash-tag groups so that every key one query reads, or one write bumps for one organisation, sits
//! in one Redis Cluster slot: `{o:<hash of org>}` for an organisation, `{g}` for the global generation.

use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

use audit_core::{QueryScope, WriteMark};
use chrono::{DateTime, Datelike};
use sha2::{Digest, Sha256};

/// A set of generation keys in one hash-tag group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Deps {
    /// Full Redis keys (prefix included), in a fixed order.
    pub keys: Vec<String>,
}

/// The hash tag of an organisation's keys. Hashed, so that braces or any other byte in an organisation id cannot
/// break the tag, and short, so keys stay small.
fn org_tag(org: &str) -> String {
    let d = Sha256::digest(org.as_bytes());
    format!("o:{}", hex_lower(&d[..8]))
}

pub(crate) fn hex_lower(b: &[u8]) -> String {
    const H: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(H[(x >> 4) as usize] as char);
        s.push(H[(x & 15) as usize] as char);
    }
    s
}

/// A fresh generation token: random, so a token is never reused (the freshness proof relies on it).
pub(crate) fn new_token() -> String {
    format!("{:016x}", rand::random::<u64>())
}

fn key(prefix: &str, tag: &str, name: &str) -> String {
    format!("{prefix}{{{tag}}}:gen:{name}")
}

/// The global generation key (bumped by every write; read by queries across organisations).
pub(crate) fn global_key(prefix: &str) -> String {
    key(prefix, "g", "all")
}

/// Months since year 0 of a microsecond timestamp (UTC), if chrono can represent it.
fn month_index(micros: i64) -> Option<i64> {
    let t = DateTime::from_timestamp_micros(micros)?;
    Some(i64::from(t.year()) * 12 + i64::from(t.month0()))
}

fn month_name(index: i64) -> String {
    format!("m:{:04}-{:02}", index.div_euclid(12), index.rem_euclid(12) + 1)
}

/// The generation keys a query in `scope` depends on.
///
/// * No organisation: the global generation.
/// * An organisation and a time window of at most `max_months` calendar months (UTC): one key per month.
/// * An organisation and a wider or open window: the organisation's generation.
pub(crate) fn deps_for(prefix: &str, scope: &QueryScope, max_months: u32) -> Deps {
    let Some(org) = &scope.organization_id else {
        return Deps { keys: vec![global_key(prefix)] };
    };
    let tag = org_tag(org);
    let months = match (scope.from_micros, scope.to_micros) {
        (Some(from), Some(to)) => {
            // `to` is exclusive; an empty window still depends on the month of `from` (cheap and safe).
            let last = if to > from { to - 1 } else { from };
            match (month_index(from), month_index(last)) {
                (Some(a), Some(b)) if b - a < i64::from(max_months) => Some(a..=b),
                _ => None,
            }
        }
        _ => None,
    };
    let keys = match months {
        Some(range) => range.map(|m| key(prefix, &tag, &month_name(m))).collect(),
        None => vec![key(prefix, &tag, "all")],
    };
    Deps { keys }
}

/// The keys that `writes` bump, grouped by hash tag (one group per organisation, plus the global key in its own
/// group). Every write bumps its organisation's month and whole-organisation keys and the global key.
pub(crate) fn bumps_for(prefix: &str, writes: &[WriteMark]) -> Vec<Vec<String>> {
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    if writes.is_empty() {
        return Vec::new();
    }
    groups.insert("g".into(), vec![global_key(prefix)]);
    for w in writes {
        let Some(org) = &w.organization_id else { continue };
        let tag = org_tag(org);
        let group = groups.entry(tag.clone()).or_default();
        let all = key(prefix, &tag, "all");
        if !group.contains(&all) {
            group.push(all);
        }
        // A timestamp chrono cannot represent lies outside every window a bounded query can name, so the
        // whole-organisation key (bumped above) covers it.
        if let Some(m) = month_index(w.timestamp_micros) {
            let k = key(prefix, &tag, &month_name(m));
            if !group.contains(&k) {
                group.push(k);
            }
        }
    }
    groups.into_values().collect()
}

/// In-process generation counters: a fixed array indexed by a hash of the key. Two keys sharing a counter only
/// cause extra invalidation, never a stale answer, and the memory is bounded whatever the number of periods.
#[derive(Debug)]
pub(crate) struct LocalGenerations {
    slots: Box<[AtomicU64]>,
    hasher: std::collections::hash_map::RandomState,
}

impl LocalGenerations {
    /// `n` counters (rounded up to a power of two).
    pub(crate) fn new(n: usize) -> Self {
        let n = n.max(1).next_power_of_two();
        Self { slots: (0..n).map(|_| AtomicU64::new(0)).collect(), hasher: Default::default() }
    }

    fn slot(&self, key: &str) -> &AtomicU64 {
        &self.slots[(self.hasher.hash_one(key) as usize) & (self.slots.len() - 1)]
    }

    /// Current values of the counters of `deps`.
    pub(crate) fn read(&self, deps: &Deps) -> Box<[u64]> {
        deps.keys.iter().map(|k| self.slot(k).load(Ordering::Acquire)).collect()
    }

    /// Bumps the counters of `keys`.
    pub(crate) fn bump<'a>(&self, keys: impl IntoIterator<Item = &'a String>) {
        for k in keys {
            self.slot(k).fetch_add(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn micros(y: i32, m: u32, d: u32) -> i64 {
        chrono::NaiveDate::from_ymd_opt(y, m, d).unwrap().and_hms_opt(0, 0, 0).unwrap().and_utc().timestamp_micros()
    }

    fn scope(org: Option<&str>, from: Option<i64>, to: Option<i64>) -> QueryScope {
        QueryScope { organization_id: org.map(str::to_string), from_micros: from, to_micros: to }
    }

    #[test]
    fn scopes_map_to_month_org_or_global_keys() {
        let d = deps_for("p:", &scope(Some("a"), Some(micros(2024, 11, 5)), Some(micros(2025, 2, 1))), 24);
        let names: Vec<&str> = d.keys.iter().map(|k| k.rsplit(':').next().unwrap()).collect();
        assert_eq!(names, ["2024-11", "2024-12", "2025-01"], "exclusive end on a month boundary: {:?}", d.keys);
        assert!(d.keys.iter().all(|k| k.starts_with("p:{o:")));
        let tag = |k: &str| k[..k.find('}').unwrap()].to_string();
        assert!(d.keys.iter().all(|k| tag(k) == tag(&d.keys[0])), "one hash tag per query");

        let wide = deps_for("p:", &scope(Some("a"), Some(micros(2020, 1, 1)), Some(micros(2024, 1, 1))), 24);
        assert_eq!(wide.keys.len(), 1);
        assert!(wide.keys[0].ends_with(":gen:all"));
        let open = deps_for("p:", &scope(Some("a"), None, Some(micros(2024, 1, 1))), 24);
        assert_eq!(open.keys, wide.keys);
        let global = deps_for("p:", &scope(None, Some(1), Some(2)), 24);
        assert_eq!(global.keys, vec![global_key("p:")]);
        let other = deps_for("p:", &scope(Some("b"), None, None), 24);
        assert_ne!(other.keys, open.keys, "organisations do not share generations");
        let braces = deps_for("p:", &scope(Some("}{x"), None, None), 24);
        assert_eq!(braces.keys[0].matches('{').count(), 1, "the org id never reaches the hash tag");
    }

    #[test]
    fn a_write_bumps_exactly_what_readers_of_its_scope_read() {
        let ts = micros(2024, 12, 31) + 86_399_999_999;
        let groups = bumps_for("p:", &[WriteMark { organization_id: Some("a".into()), timestamp_micros: ts }]);
        let all: Vec<&String> = groups.iter().flatten().collect();
        let month = deps_for("p:", &scope(Some("a"), Some(micros(2024, 12, 1)), Some(micros(2025, 1, 1))), 24);
        let next_month = deps_for("p:", &scope(Some("a"), Some(micros(2025, 1, 1)), Some(micros(2025, 2, 1))), 24);
        let open = deps_for("p:", &scope(Some("a"), None, None), 24);
        let global = deps_for("p:", &scope(None, None, None), 24);
        for d in [&month, &open, &global] {
            assert!(d.keys.iter().any(|k| all.contains(&k)), "{d:?} not bumped by {all:?}");
        }
        assert!(!next_month.keys.iter().any(|k| all.contains(&k)), "other months keep their generation");
        let none = bumps_for("p:", &[WriteMark { organization_id: None, timestamp_micros: ts }]);
        assert_eq!(none, vec![vec![global_key("p:")]]);
        assert!(bumps_for("p:", &[]).is_empty());
    }

    #[test]
    fn local_counters_change_only_for_bumped_keys() {
        let l = LocalGenerations::new(1024);
        let a = Deps { keys: vec!["x".into(), "y".into()] };
        let before = l.read(&a);
        l.bump([&"y".to_string()]);
        assert_ne!(l.read(&a), before);
    }
}
