//! UTC calendar periods: which time partition a timestamp belongs to, its bounds, and its table name.
//!
//! Pure functions only, so the naming and bound rules are unit-tested without a database.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};

use crate::config::PartitionInterval;
use chrono::{DateTime, Datelike, TimeZone, Utc};
use serde::Serialize;

/// The name of the partitioned parent table every period partition hangs off.
pub const PARENT_TABLE: &str = "audit_log";

/// One UTC calendar period (a month, quarter or year): the unit of one time partition.
///
/// `index` is the month (1–12), the quarter (1–4) or 1 for a year.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Period {
    /// The period length.
    pub interval: PartitionInterval,
    /// Calendar year (UTC).
    pub year: i32,
    /// Month 1–12, quarter 1–4, or 1 for a yearly period.
    pub index: u32,
}

fn interval_rank(i: PartitionInterval) -> u8 {
    match i {
        PartitionInterval::Monthly => 0,
        PartitionInterval::Quarterly => 1,
        PartitionInterval::Yearly => 2,
    }
}

fn periods_per_year(i: PartitionInterval) -> u32 {
    match i {
        PartitionInterval::Monthly => 12,
        PartitionInterval::Quarterly => 4,
        PartitionInterval::Yearly => 1,
    }
}

impl PartialEq for Period {
    fn eq(&self, other: &Self) -> bool {
        self.interval == other.interval && self.year == other.year && self.index == other.index
    }
}
impl Eq for Period {}

impl Hash for Period {
    fn hash<H: Hasher>(&self, state: &mut H) {
        interval_rank(self.interval).hash(state);
        self.year.hash(state);
        self.index.hash(state);
    }
}

impl PartialOrd for Period {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Period {
    /// Chronological by start, then by interval (only meaningful within one interval, which is the only use).
    fn cmp(&self, other: &Self) -> Ordering {
        self.start().cmp(&other.start()).then_with(|| interval_rank(self.interval).cmp(&interval_rank(other.interval)))
    }
}

impl Period {
    /// The period of `interval` that contains `ts` (UTC calendar).
    pub fn of(interval: PartitionInterval, ts: DateTime<Utc>) -> Period {
        let index = match interval {
            PartitionInterval::Monthly => ts.month(),
            PartitionInterval::Quarterly => (ts.month() - 1) / 3 + 1,
            PartitionInterval::Yearly => 1,
        };
        Period { interval, year: ts.year(), index }
    }

    /// The first month (1–12) of the period.
    fn first_month(&self) -> u32 {
        match self.interval {
            PartitionInterval::Monthly => self.index,
            PartitionInterval::Quarterly => (self.index - 1) * 3 + 1,
            PartitionInterval::Yearly => 1,
        }
    }

    /// Inclusive lower bound: midnight UTC on the first day of the period.
    pub fn start(&self) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(self.year, self.first_month(), 1, 0, 0, 0)
            .single()
            .expect("the first day of a month at midnight UTC always exists")
    }

    /// Exclusive upper bound: the start of the next period.
    pub fn end(&self) -> DateTime<Utc> {
        self.next().start()
    }

    /// The period right after this one.
    pub fn next(&self) -> Period {
        self.offset(1)
    }

    /// The period right before this one.
    pub fn prev(&self) -> Period {
        self.offset(-1)
    }

    /// The period `n` periods later (or earlier when negative).
    pub fn offset(&self, n: i64) -> Period {
        let per = i64::from(periods_per_year(self.interval));
        let linear = i64::from(self.year) * per + i64::from(self.index - 1) + n;
        let year = linear.div_euclid(per);
        let index = linear.rem_euclid(per) + 1;
        Period {
            interval: self.interval,
            year: i32::try_from(year).expect("period year out of range"),
            index: u32::try_from(index).expect("index is in 1..=12"),
        }
    }

    /// Table name that sorts chronologically: `audit_log_2026_11`, `audit_log_2026_q4`, `audit_log_2026`.
    pub fn table_name(&self) -> String {
        match self.interval {
            PartitionInterval::Monthly => format!("{PARENT_TABLE}_{:04}_{:02}", self.year, self.index),
            PartitionInterval::Quarterly => format!("{PARENT_TABLE}_{:04}_q{}", self.year, self.index),
            PartitionInterval::Yearly => format!("{PARENT_TABLE}_{:04}", self.year),
        }
    }

    /// The period a table name denotes, if it is one of ours for `interval`.
    pub fn parse_name(interval: PartitionInterval, name: &str) -> Option<Period> {
        let rest = name.strip_prefix(PARENT_TABLE)?.strip_prefix('_')?;
        let (year_txt, tail) = match rest.split_once('_') {
            Some((y, t)) => (y, Some(t)),
            None => (rest, None),
        };
        if year_txt.len() != 4 || !year_txt.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let year: i32 = year_txt.parse().ok()?;
        let index = match (interval, tail) {
            (PartitionInterval::Yearly, None) => 1,
            (PartitionInterval::Monthly, Some(m)) if m.len() == 2 && m.bytes().all(|b| b.is_ascii_digit()) => {
                m.parse().ok().filter(|m| (1..=12).contains(m))?
            }
            (PartitionInterval::Quarterly, Some(q)) => {
                let n = q.strip_prefix('q')?;
                if n.len() != 1 {
                    return None;
                }
                n.parse().ok().filter(|q| (1..=4).contains(q))?
            }
            _ => return None,
        };
        Some(Period { interval, year, index })
    }

    /// The period whose bounds are exactly `[from, to)`, if any.
    pub fn from_bounds(interval: PartitionInterval, from: DateTime<Utc>, to: DateTime<Utc>) -> Option<Period> {
        let p = Period::of(interval, from);
        (p.start() == from && p.end() == to).then_some(p)
    }

    /// Every period of `interval` from the one containing `from` to the one containing `to`, inclusive.
    pub fn span(interval: PartitionInterval, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<Period> {
        let mut out = Vec::new();
        let last = Period::of(interval, to);
        let mut p = Period::of(interval, from);
        while p <= last {
            out.push(p);
            p = p.next();
        }
        out
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}, {})", self.table_name(), self.start().to_rfc3339(), self.end().to_rfc3339())
    }
}

/// A timestamp as a PostgreSQL timestamptz literal in UTC, e.g. `'2026-11-01 00:00:00+00'`.
pub fn ts_literal(t: DateTime<Utc>) -> String {
    format!("'{}'", t.format("%Y-%m-%d %H:%M:%S%.6f+00"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use PartitionInterval::*;

    fn ts(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn names_follow_the_interval_and_sort_chronologically() {
        let t = ts("2026-11-15T10:00:00Z");
        assert_eq!(Period::of(Monthly, t).table_name(), "audit_log_2026_11");
        assert_eq!(Period::of(Quarterly, t).table_name(), "audit_log_2026_q4");
        assert_eq!(Period::of(Yearly, t).table_name(), "audit_log_2026");
        let mut p = Period::of(Monthly, ts("2019-01-01T00:00:00Z"));
        let mut names = Vec::new();
        for _ in 0..40 {
            names.push(p.table_name());
            p = p.next();
        }
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        assert_eq!(names[12], "audit_log_2020_01");
    }

    #[test]
    fn quarterly_bounds_are_calendar_quarters() {
        let q = Period::of(Quarterly, ts("2026-05-31T23:59:59Z"));
        assert_eq!((q.year, q.index), (2026, 2));
        assert_eq!(q.start(), ts("2026-04-01T00:00:00Z"));
        assert_eq!(q.end(), ts("2026-07-01T00:00:00Z"));
        let q4 = Period::of(Quarterly, ts("2026-12-31T23:59:59.999999Z"));
        assert_eq!(q4.start(), ts("2026-10-01T00:00:00Z"));
        assert_eq!(q4.end(), ts("2027-01-01T00:00:00Z"));
        assert_eq!(q4.next().table_name(), "audit_log_2027_q1");
        assert_eq!(Period::of(Quarterly, ts("2027-01-01T00:00:00Z")).prev(), q4);
        for m in 1..=12u32 {
            let t = Utc.with_ymd_and_hms(2025, m, 10, 0, 0, 0).unwrap();
            let q = Period::of(Quarterly, t);
            assert!(q.start() <= t && t < q.end(), "{t} not in {q}");
            assert_eq!(q.index, (m - 1) / 3 + 1);
        }
    }

    #[test]
    fn bounds_are_half_open_and_contiguous() {
        for interval in [Monthly, Quarterly, Yearly] {
            let mut p = Period::of(interval, ts("2019-03-04T05:06:07Z"));
            for _ in 0..30 {
                let n = p.next();
                assert_eq!(p.end(), n.start());
                assert_eq!(Period::of(interval, p.end()), n, "upper bound belongs to the next period");
                assert_eq!(Period::of(interval, p.start()), p);
                assert_eq!(n.prev(), p);
                assert_eq!(Period::from_bounds(interval, p.start(), p.end()), Some(p));
                assert_eq!(Period::parse_name(interval, &p.table_name()), Some(p));
                p = n;
            }
        }
        let feb = Period::of(Monthly, ts("2024-02-29T12:00:00Z"));
        assert_eq!(feb.end(), ts("2024-03-01T00:00:00Z"));
        assert_eq!(Period::of(Monthly, ts("2026-12-31T23:59:59.999999Z")).end(), ts("2027-01-01T00:00:00Z"));
        assert_eq!(Period::of(Monthly, ts("2026-01-15T00:00:00Z")).offset(-13).table_name(), "audit_log_2024_12");
    }

    #[test]
    fn parse_rejects_foreign_names_and_wrong_bounds() {
        assert_eq!(Period::parse_name(Monthly, "audit_log_2026_q4"), None);
        assert_eq!(Period::parse_name(Monthly, "audit_log_2026_13"), None);
        assert_eq!(Period::parse_name(Quarterly, "audit_log_2026_q5"), None);
        assert_eq!(Period::parse_name(Yearly, "audit_log_2026_11"), None);
        assert_eq!(Period::parse_name(Yearly, "audit_log_heads"), None);
        assert_eq!(Period::parse_name(Monthly, "audit_log_2026_11_h0"), None);
        assert_eq!(Period::from_bounds(Monthly, ts("2026-11-01T00:00:00Z"), ts("2027-01-01T00:00:00Z")), None);
        assert_eq!(
            Period::span(Quarterly, ts("2026-02-01T00:00:00Z"), ts("2026-08-01T00:00:00Z"))
                .iter()
                .map(Period::table_name)
                .collect::<Vec<_>>(),
            ["audit_log_2026_q1", "audit_log_2026_q2", "audit_log_2026_q3"]
        );
        assert_eq!(ts_literal(ts("2026-11-01T00:00:00Z")), "'2026-11-01 00:00:00.000000+00'");
    }
}
