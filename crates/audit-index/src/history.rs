//! Usage history from snapshots of cumulative counters, robust to statistics resets.
//!
//! PostgreSQL's `idx_scan` is cumulative per partition index and goes back to 0 on `pg_stat_reset()`, after a
//! crash, or for a partition index created anew. Between two snapshots of the same partition index, the use is
//! the difference — or, when the counter went down (a reset), the whole new value. A partition index that first
//! appears after the index's first snapshot contributes its whole counter (all its use is new); the very first
//! snapshot of an index is only the baseline.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};

/// One stored reading.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Reading {
    pub(crate) taken_at: DateTime<Utc>,
    pub(crate) index: String,
    pub(crate) leaf: String,
    pub(crate) scans: i64,
}

/// What the history says about one parent index.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct History {
    pub(crate) first_seen: Option<DateTime<Utc>>,
    pub(crate) first_used: Option<DateTime<Utc>>,
    pub(crate) last_used: Option<DateTime<Utc>>,
    pub(crate) scans: i64,
}

/// Time-ordered `(taken_at, idx_scan)` readings of one partition index.
type Series = Vec<(DateTime<Utc>, i64)>;

/// Folds readings (any order) into a history per parent index.
pub(crate) fn fold(readings: &[Reading]) -> BTreeMap<String, History> {
    // index -> leaf -> time-ordered readings.
    let mut series: BTreeMap<&str, BTreeMap<&str, Series>> = BTreeMap::new();
    for r in readings {
        series.entry(&r.index).or_default().entry(&r.leaf).or_default().push((r.taken_at, r.scans));
    }
    let mut out = BTreeMap::new();
    for (index, leaves) in series {
        let first_seen = leaves.values().flat_map(|s| s.iter().map(|(t, _)| *t)).min();
        let mut used_at: BTreeSet<DateTime<Utc>> = BTreeSet::new();
        let mut total = 0i64;
        for mut s in leaves.into_values() {
            s.sort_by_key(|(t, _)| *t);
            let mut prev: Option<i64> = None;
            for (t, v) in s {
                let delta = match prev {
                    None if Some(t) == first_seen => 0,
                    None => v,
                    Some(p) if v >= p => v - p,
                    Some(_) => v,
                };
                if delta > 0 {
                    used_at.insert(t);
                    total += delta;
                }
                prev = Some(v);
            }
        }
        out.insert(
            index.to_string(),
            History {
                first_seen,
                first_used: used_at.first().copied(),
                last_used: used_at.last().copied(),
                scans: total,
            },
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn r(day: u32, leaf: &str, scans: i64) -> Reading {
        Reading {
            taken_at: Utc.with_ymd_and_hms(2026, 1, day, 0, 0, 0).unwrap(),
            index: "i".into(),
            leaf: leaf.into(),
            scans,
        }
    }

    #[test]
    fn first_reading_is_a_baseline_and_growth_is_use() {
        let h = &fold(&[r(1, "a", 100), r(2, "a", 100), r(3, "a", 105)])["i"];
        assert_eq!(h.scans, 5);
        assert_eq!(h.first_seen, Some(Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()));
        assert_eq!(h.last_used, Some(Utc.with_ymd_and_hms(2026, 1, 3, 0, 0, 0).unwrap()));
    }

    #[test]
    fn a_reset_counts_the_new_value_and_does_not_erase_earlier_use() {
        let h = &fold(&[r(1, "a", 10), r(2, "a", 20), r(3, "a", 0), r(4, "a", 3), r(5, "a", 3)])["i"];
        assert_eq!(h.scans, 13);
        assert_eq!(h.first_used, Some(Utc.with_ymd_and_hms(2026, 1, 2, 0, 0, 0).unwrap()));
        assert_eq!(h.last_used, Some(Utc.with_ymd_and_hms(2026, 1, 4, 0, 0, 0).unwrap()));
        // A reset to zero with no use after it is no use.
        let h = &fold(&[r(1, "a", 10), r(2, "a", 0), r(3, "a", 0)])["i"];
        assert_eq!((h.scans, h.last_used), (0, None));
    }

    #[test]
    fn a_new_partition_counts_whole_and_a_dropped_one_is_ignored() {
        let h = &fold(&[r(1, "a", 10), r(1, "b", 7), r(2, "a", 10), r(3, "c", 4)])["i"];
        assert_eq!(h.scans, 4);
        assert_eq!(h.last_used, Some(Utc.with_ymd_and_hms(2026, 1, 3, 0, 0, 0).unwrap()));
    }
}
