//! Measures, their targets, the results file and the tables printed from them.
//!
//! Every measure carries its candidate figure and the same-run baseline it is compared with, so that a reader never
//! has to trust an absolute number taken on a noisy shared machine: ratios are the point.

use std::fmt::Write as _;

use serde::Serialize;
use serde_json::Value;

/// Which way a target points.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) enum Op {
    /// The value must be at least the target.
    #[serde(rename = ">=")]
    AtLeast,
    /// The value must be at most the target.
    #[serde(rename = "<=")]
    AtMost,
}

/// A target from the issue: `value op threshold`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct Target {
    /// Direction.
    pub op: Op,
    /// Threshold.
    pub value: f64,
}

impl Target {
    /// `value >= threshold`.
    pub(crate) fn at_least(value: f64) -> Self {
        Self { op: Op::AtLeast, value }
    }

    /// `value <= threshold`.
    pub(crate) fn at_most(value: f64) -> Self {
        Self { op: Op::AtMost, value }
    }

    /// Whether `v` meets the target.
    pub(crate) fn met_by(&self, v: f64) -> bool {
        match self.op {
            Op::AtLeast => v >= self.value,
            Op::AtMost => v <= self.value,
        }
    }

    fn text(&self) -> String {
        let sym = match self.op {
            Op::AtLeast => "≥",
            Op::AtMost => "≤",
        };
        format!("{sym} {}", fmt_num(self.value))
    }
}

/// One line of `results.json`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Measure {
    /// Stable name (the names for targeted measures).
    pub name: String,
    /// The figure compared with the target; `null` when it could not be measured.
    pub value: Option<f64>,
    /// Unit of `value` (`ratio`, `ms`, `us`, …).
    pub unit: String,
    /// The candidate's raw figure (for ratios: the candidate's rate).
    pub candidate: Option<f64>,
    /// The same-run baseline's raw figure.
    pub baseline: Option<f64>,
    /// Unit of `candidate` and `baseline` when it differs from `unit`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw_unit: Option<String>,
    /// The target; `null` for informational measures.
    pub target: Option<Target>,
    /// Whether the target is met; `null` for informational measures, `false` when unmeasured.
    pub pass: Option<bool>,
    /// Why a value is missing, or what to keep in mind when reading it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Extra figures (per-query breakdowns, counts, EXPLAIN summaries).
    #[serde(skip_serializing_if = "Value::is_null")]
    pub details: Value,
}

impl Measure {
    /// A measured figure with its baseline; `pass` is computed from the target.
    pub(crate) fn new(
        name: &str,
        value: f64,
        unit: &str,
        candidate: f64,
        baseline: f64,
        target: Option<Target>,
    ) -> Self {
        let value = finite(value);
        Self {
            name: name.to_string(),
            value,
            unit: unit.to_string(),
            candidate: finite(candidate),
            baseline: finite(baseline),
            raw_unit: None,
            pass: target.map(|t| value.is_some_and(|v| t.met_by(v))),
            target,
            note: None,
            details: Value::Null,
        }
    }

    /// A throughput ratio: `value = candidate ÷ baseline`.
    pub(crate) fn ratio(name: &str, candidate: f64, baseline: f64, raw_unit: &str, target: Option<Target>) -> Self {
        let v = if baseline > 0.0 { candidate / baseline } else { f64::NAN };
        Self::new(name, v, "ratio", candidate, baseline, target).raw_unit(raw_unit)
    }

    /// A measure that could not be taken: `value` null, `pass` false (or null when it has no target), and why.
    pub(crate) fn unmeasured(name: &str, unit: &str, target: Option<Target>, why: impl Into<String>) -> Self {
        Self {
            name: name.to_string(),
            value: None,
            unit: unit.to_string(),
            candidate: None,
            baseline: None,
            raw_unit: None,
            pass: target.map(|_| false),
            target,
            note: Some(why.into()),
            details: Value::Null,
        }
    }

    /// Sets the unit of the raw figures.
    pub(crate) fn raw_unit(mut self, unit: &str) -> Self {
        self.raw_unit = Some(unit.to_string());
        self
    }

    /// Adds a note.
    pub(crate) fn note(mut self, note: impl Into<String>) -> Self {
        self.note = Some(note.into());
        self
    }

    /// Adds details.
    pub(crate) fn details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }
}

fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

/// The whole results file.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Results {
    /// `quick` or `full`.
    pub mode: String,
    /// Machine, server and build description.
    pub machine: Value,
    /// Every measure taken (or explicitly not taken).
    pub measures: Vec<Measure>,
}

/// A number with a sensible number of digits for a table.
pub(crate) fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".to_string()
    } else if (v.fract() == 0.0 && a < 1e15) || a >= 100_000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "—".to_string(), fmt_num)
}

fn pass_text(p: Option<bool>) -> &'static str {
    match p {
        Some(true) => "PASS",
        Some(false) => "MISS",
        None => "info",
    }
}

fn rows(measures: &[Measure]) -> Vec<[String; 7]> {
    measures
        .iter()
        .map(|m| {
            let raw = m.raw_unit.as_deref().unwrap_or(&m.unit);
            [
                m.name.clone(),
                format!("{} {}", opt(m.value), m.unit),
                format!("{} {raw}", opt(m.candidate)),
                format!("{} {raw}", opt(m.baseline)),
                m.target.map_or_else(|| "—".to_string(), |t| t.text()),
                pass_text(m.pass).to_string(),
                m.note.clone().unwrap_or_default(),
            ]
        })
        .collect()
}

const HEADERS: [&str; 7] = ["measure", "value", "candidate", "baseline", "target", "result", "note"];

/// A plain-text table for stdout (notes are printed below the table, numbered, to keep lines short).
pub(crate) fn text_table(measures: &[Measure]) -> String {
    let rows = rows(measures);
    let mut widths = [0usize; 6];
    for (i, h) in HEADERS.iter().take(6).enumerate() {
        widths[i] = h.chars().count();
    }
    for r in &rows {
        for i in 0..6 {
            widths[i] = widths[i].max(r[i].chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: [&str; 6], mark: &str| {
        for (i, c) in cells.iter().enumerate() {
            let pad = widths[i] - c.chars().count();
            if i == 0 || i == 4 || i == 5 {
                let _ = write!(out, "{c}{} ", " ".repeat(pad));
            } else {
                let _ = write!(out, "{}{c} ", " ".repeat(pad));
            }
        }
        let _ = writeln!(out, "{mark}");
    };
    line(&mut out, [HEADERS[0], HEADERS[1], HEADERS[2], HEADERS[3], HEADERS[4], HEADERS[5]], "");
    let total: usize = widths.iter().sum::<usize>() + 6;
    let _ = writeln!(out, "{}", "-".repeat(total));
    let mut notes = Vec::new();
    for r in &rows {
        let mark = if r[6].is_empty() {
            String::new()
        } else {
            notes.push(format!("[{}] {}: {}", notes.len() + 1, r[0], r[6]));
            format!("[{}]", notes.len())
        };
        line(&mut out, [&r[0], &r[1], &r[2], &r[3], &r[4], &r[5]], &mark);
    }
    if !notes.is_empty() {
        out.push('\n');
        for n in notes {
            let _ = writeln!(out, "{n}");
        }
    }
    out
}

/// A Markdown table (for `docs/benchmarks.md` and `results.md`).
pub(crate) fn markdown_table(measures: &[Measure]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "| {} |", HEADERS.join(" | "));
    let _ = writeln!(out, "|{}", "---|".repeat(HEADERS.len()));
    for r in rows(measures) {
        let cells: Vec<String> = r.iter().map(|c| c.replace('|', "\\|").replace('\n', " ")).collect();
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
    out
}

/// Nearest-rank percentile (`q` in 0–100) of unsorted samples; `NaN` when there are none.
pub(crate) fn percentile(samples: &[f64], q: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut s: Vec<f64> = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((q / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let v: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[3.0], 50.0), 3.0);
        assert!(percentile(&[], 50.0).is_nan());
    }

    #[test]
    fn ratios_divide_candidate_by_baseline_and_targets_decide_pass() {
        let m = Measure::ratio("x", 80.0, 100.0, "events/s", Some(Target::at_least(0.8)));
        assert_eq!(m.value, Some(0.8));
        assert_eq!(m.pass, Some(true));
        let m = Measure::ratio("x", 79.0, 100.0, "events/s", Some(Target::at_least(0.8)));
        assert_eq!(m.pass, Some(false));
        let m = Measure::new("lat", 6.0, "ms", 6.0, 1.0, Some(Target::at_most(5.0)));
        assert_eq!(m.pass, Some(false));
        let m = Measure::ratio("zero", 5.0, 0.0, "events/s", Some(Target::at_least(1.0)));
        assert_eq!((m.value, m.pass), (None, Some(false)));
        let info = Measure::new("info", 1.0, "x", 1.0, 1.0, None);
        assert_eq!(info.pass, None);
    }

    #[test]
    fn unmeasured_measures_serialise_with_null_value_false_pass_and_a_note() {
        let m = Measure::unmeasured("verify", "leaves/s", Some(Target::at_least(1e6)), "no verify yet");
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["value"], Value::Null);
        assert_eq!(v["pass"], Value::Bool(false));
        assert_eq!(v["note"], "no verify yet");
        assert_eq!(v["target"]["op"], ">=");
        for key in ["name", "value", "unit", "candidate", "baseline", "target", "pass"] {
            assert!(v.get(key).is_some(), "{key} missing");
        }
    }

    #[test]
    fn tables_show_every_measure_and_number_notes() {
        let ms = vec![
            Measure::ratio("a_ratio", 1.0, 2.0, "events/s", Some(Target::at_least(0.8))).note("slow"),
            Measure::new("b_ms", 0.5, "ms", 0.5, 0.4, Some(Target::at_most(1.0))),
        ];
        let t = text_table(&ms);
        assert!(t.contains("a_ratio") && t.contains("MISS") && t.contains("[1] a_ratio: slow"), "{t}");
        assert!(t.contains("b_ms") && t.contains("PASS"), "{t}");
        let md = markdown_table(&ms);
        assert_eq!(md.lines().count(), 4, "{md}");
    }
}
