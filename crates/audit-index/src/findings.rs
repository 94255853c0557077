//! Findings from the catalog and the usage history: pure functions, unit-tested here and against a real server in
//! `tests/`.

use audit_core::indexes::{FindingKind, IndexFinding, IndexUsage};
use chrono::{DateTime, Duration, Utc};

/// An index as the analysis sees it: the public usage plus what comparing indexes needs.
#[derive(Debug, Clone)]
pub(crate) struct Catalogued {
    pub(crate) usage: IndexUsage,
    /// `indclass` as text (`"3126 3126"`): operator classes of all key columns, in order.
    pub(crate) opclasses: Vec<String>,
    /// Key + INCLUDE columns.
    pub(crate) natts: i32,
    /// Key columns.
    pub(crate) nkeyatts: i32,
    /// Bytes the index should need for its rows (btree estimate), when statistics allow an estimate.
    pub(crate) expected_bytes: Option<i64>,
}

/// A stray partition index (invalid or unready, attached to nothing).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Stray {
    pub(crate) name: String,
    pub(crate) table: String,
    pub(crate) size_bytes: i64,
    pub(crate) valid: bool,
    pub(crate) ready: bool,
}

/// Bloat is reported only above this size (small indexes are not worth a rebuild).
const BLOAT_MIN_BYTES: i64 = 16 * 1024 * 1024;
/// …and when the index is this many times larger than its rows need.
const BLOAT_FACTOR: f64 = 2.0;

fn same_shape(a: &Catalogued, b: &Catalogued) -> bool {
    a.usage.method == b.usage.method && a.usage.predicate == b.usage.predicate
}

/// `a`'s key columns (with their operator classes) are a leading prefix of `b`'s (or equal when `strict` is
/// false).
fn is_prefix(a: &Catalogued, b: &Catalogued, strict: bool) -> bool {
    let (ka, kb) = (a.usage.columns.len(), b.usage.columns.len());
    let longer = if strict { ka < kb } else { ka == kb };
    longer
        && b.usage.columns[..ka] == a.usage.columns[..]
        && a.opclasses.len() >= ka
        && b.opclasses.len() >= ka
        && a.opclasses[..ka] == b.opclasses[..ka]
}

/// Every finding, in a stable order (index name, then kind).
pub(crate) fn findings(
    indexes: &[Catalogued],
    strays: &[Stray],
    now: DateTime<Utc>,
    unused_threshold_days: u32,
) -> Vec<IndexFinding> {
    let threshold = Duration::days(i64::from(unused_threshold_days));
    let mut out = Vec::new();
    for c in indexes {
        let u = &c.usage;
        let droppable = u.protected.is_none();
        let finding = |kind, reason: String, droppable| IndexFinding {
            index: u.name.clone(),
            kind,
            reason,
            droppable,
            size_bytes: u.size_bytes,
        };
        if !u.valid || !u.ready {
            out.push(finding(
                FindingKind::Invalid,
                format!(
                    "parent index is {} (an interrupted or failed build; `indexes apply` finishes it)",
                    if !u.valid { "invalid" } else { "not ready" }
                ),
                false,
            ));
        }
        if u.partitions_covered < u.partitions_total {
            out.push(finding(
                FindingKind::MissingOnPartitions,
                format!("attached on {} of {} partitions", u.partitions_covered, u.partitions_total),
                false,
            ));
        }
        if u.valid && droppable {
            // Unused: a full threshold of history, and no growth of the counters within it.
            if let Some(first) = u.first_seen {
                let window = now - first;
                let idle = u.last_used.is_none_or(|t| now - t >= threshold);
                if window >= threshold && idle {
                    let last = u.last_used.map(|t| t.to_rfc3339()).unwrap_or_else(|| "never in the history".into());
                    out.push(finding(
                        FindingKind::Unused,
                        format!(
                            "no scan in the last {unused_threshold_days} days (history since {}, {} days; last use: {last})",
                            first.to_rfc3339(),
                            window.num_days()
                        ),
                        true,
                    ));
                }
            }
            // Duplicate / redundant against another valid index (the other is kept).
            for other in indexes.iter().filter(|o| o.usage.name != u.name && o.usage.valid && same_shape(c, o)) {
                if is_prefix(c, other, false) && c.natts <= other.natts && c.nkeyatts == other.nkeyatts {
                    // Of two equal indexes report one: the one that is not protected, else the later name.
                    let keep_other = other.usage.protected.is_some()
                        || c.natts < other.natts
                        || (c.natts == other.natts && u.name > other.usage.name);
                    if keep_other {
                        out.push(finding(
                            FindingKind::Duplicate,
                            format!("same method, columns and predicate as {}", other.usage.name),
                            true,
                        ));
                        break;
                    }
                } else if u.method == "btree" && is_prefix(c, other, true) && !u.unique {
                    out.push(finding(
                        FindingKind::Redundant,
                        format!(
                            "its columns ({}) are a leading prefix of {} ({}) with the same predicate",
                            u.columns.join(", "),
                            other.usage.name,
                            other.usage.columns.join(", ")
                        ),
                        true,
                    ));
                    break;
                }
            }
        }
        if let Some(expected) = c.expected_bytes.filter(|e| *e > 0)
            && u.size_bytes >= BLOAT_MIN_BYTES
            && u.size_bytes as f64 > expected as f64 * BLOAT_FACTOR
        {
            out.push(finding(
                FindingKind::Bloated,
                format!(
                    "{} bytes for about {expected} bytes of entries (estimate; REINDEX CONCURRENTLY each partition)",
                    u.size_bytes
                ),
                false,
            ));
        }
    }
    for s in strays {
        out.push(IndexFinding {
            index: s.name.clone(),
            kind: FindingKind::Invalid,
            reason: format!(
                "{} partition index on {}, attached to no audit_log index (leftover of a failed concurrent build)",
                if !s.valid { "invalid" } else { "unready" },
                s.table
            ),
            droppable: true,
            size_bytes: s.size_bytes,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(name: &str, cols: &[&str]) -> Catalogued {
        Catalogued {
            usage: IndexUsage {
                name: name.into(),
                definition: String::new(),
                columns: cols.iter().map(|c| c.to_string()).collect(),
                predicate: None,
                method: "btree".into(),
                unique: false,
                protected: audit_core::indexes::protection_reason(name, false, false).map(str::to_string),
                valid: true,
                ready: true,
                partitions_covered: 2,
                partitions_total: 2,
                scans: 0,
                tuples_read: 0,
                size_bytes: 8192,
                first_seen: None,
                first_used: None,
                last_used: None,
                history_scans: 0,
                write_entries_per_day: 0.0,
            },
            opclasses: cols.iter().map(|_| "3126".to_string()).collect(),
            natts: cols.len() as i32,
            nkeyatts: cols.len() as i32,
            expected_bytes: None,
        }
    }

    #[test]
    fn prefix_is_redundant_equal_is_duplicate_protected_is_kept() {
        let now = Utc::now();
        let all = [
            idx("audit_log_log_seq_idx", &["organization_id", "seq"]),
            idx("dup_of_seq", &["organization_id", "seq"]),
            idx("org_only", &["organization_id"]),
            idx("other", &["action"]),
        ];
        let f = findings(&all, &[], now, 30);
        let got: Vec<(&str, FindingKind)> = f.iter().map(|f| (f.index.as_str(), f.kind)).collect();
        assert_eq!(got, [("dup_of_seq", FindingKind::Duplicate), ("org_only", FindingKind::Redundant)]);
    }

    #[test]
    fn unused_needs_a_full_window_of_history() {
        let now = Utc::now();
        let mut a = idx("a", &["action"]);
        a.usage.first_seen = Some(now - Duration::days(10));
        assert!(findings(std::slice::from_ref(&a), &[], now, 30).is_empty(), "10 days of history is not 30");
        a.usage.first_seen = Some(now - Duration::days(40));
        a.usage.last_used = Some(now - Duration::days(5));
        assert!(findings(std::slice::from_ref(&a), &[], now, 30).is_empty(), "used 5 days ago");
        a.usage.last_used = Some(now - Duration::days(31));
        assert_eq!(findings(std::slice::from_ref(&a), &[], now, 30)[0].kind, FindingKind::Unused);
        let mut p = idx("audit_log_pkey", &["event_id", "timestamp"]);
        p.usage.first_seen = Some(now - Duration::days(400));
        assert!(findings(&[p], &[], now, 30).is_empty(), "protected indexes are never unused");
    }
}
