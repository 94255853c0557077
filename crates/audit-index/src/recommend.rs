//! Recommendations from the real workload: the statements on `audit_log` that pg_stat_statements saw, the
//! columns their predicates and ordering use, and for each candidate index the planner's cost of each statement
//! with and without it.
//!
//! Costing: pg_stat_statements keeps statements normalised (`$1`), so each is `PREPARE`d and planned as a generic
//! plan (`plan_cache_mode = force_generic_plan`, `EXPLAIN EXECUTE q(NULL, …)`: the planner does not look at the
//! values, it uses the column statistics). With HypoPG the candidate is created as a hypothetical index on every
//! partition and the statement planned again; without it the saving is a labelled guess (a sequential scan of
//! audit_log partitions is assumed to become 20 times cheaper).

use std::collections::BTreeMap;

use audit_core::AuditResult;
use audit_core::indexes::{Costing, IndexAction, IndexRecommendation, StatementEvidence};
use audit_pg::{pg_error, quote_ident};
use chrono::{DateTime, Utc};
use tokio_postgres::Client;

use crate::{AUTO_PREFIX, Catalog, IndexManager, sql};

/// What the workload analysis produced.
#[derive(Debug)]
pub(crate) struct Workload {
    pub(crate) available: bool,
    pub(crate) costing: Costing,
    pub(crate) recommendations: Vec<IndexRecommendation>,
}

/// Cost ratio assumed by the heuristic when a statement scans audit_log partitions sequentially.
const HEURISTIC_AFTER_RATIO: f64 = 0.05;

/// Whether HypoPG can be used in this database (installs it when the server has it).
pub(crate) async fn hypopg_ready(c: &Client) -> AuditResult<bool> {
    let r = c.query_one(sql::HYPOPG_EXTENSION, &[]).await.map_err(|e| pg_error(e, "checking for HypoPG"))?;
    let (available, installed): (bool, bool) = (r.get("available"), r.get("installed"));
    if installed {
        return Ok(true);
    }
    if !available {
        return Ok(false);
    }
    match c.batch_execute(sql::CREATE_HYPOPG).await {
        Ok(()) => Ok(true),
        Err(e) => {
            tracing::info!(error = %pg_error(e, "installing HypoPG"), "HypoPG not usable; costing heuristically");
            Ok(false)
        }
    }
}

/// Whether pg_stat_statements can be read (creates the extension when the server preloads it).
async fn statements_ready(c: &Client) -> AuditResult<bool> {
    let r =
        c.query_one(sql::STATEMENTS_EXTENSION, &[]).await.map_err(|e| pg_error(e, "checking pg_stat_statements"))?;
    let (installed, available, loaded): (bool, bool, bool) = (r.get("installed"), r.get("available"), r.get("loaded"));
    if !loaded {
        tracing::info!("pg_stat_statements is not in shared_preload_libraries: no workload-driven recommendations");
        return Ok(false);
    }
    if !installed && available {
        if let Err(e) = c.batch_execute(sql::CREATE_STATEMENTS_EXTENSION).await {
            tracing::info!(error = %pg_error(e, "installing pg_stat_statements"), "no workload-driven recommendations");
            return Ok(false);
        }
        return Ok(true);
    }
    Ok(installed)
}

/// One token of a statement.
#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Value,
    Op(String),
    Open,
    Close,
    Comma,
    Dot,
}

fn tokenize(sql: &str) -> Vec<Tok> {
    let b: Vec<char> = sql.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let ch = b[i];
        if ch.is_whitespace() {
            i += 1;
        } else if ch.is_ascii_alphabetic() || ch == '_' {
            let s = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == '_' || b[i] == '$') {
                i += 1;
            }
            out.push(Tok::Ident(b[s..i].iter().collect::<String>().to_ascii_lowercase()));
        } else if ch == '"' {
            let mut s = String::new();
            i += 1;
            while i < b.len() {
                if b[i] == '"' && b.get(i + 1) == Some(&'"') {
                    s.push('"');
                    i += 2;
                } else if b[i] == '"' {
                    i += 1;
                    break;
                } else {
                    s.push(b[i]);
                    i += 1;
                }
            }
            out.push(Tok::Ident(s));
        } else if ch == '\'' {
            i += 1;
            while i < b.len() {
                if b[i] == '\'' && b.get(i + 1) == Some(&'\'') {
                    i += 2;
                } else if b[i] == '\'' {
                    i += 1;
                    break;
                } else {
                    i += 1;
                }
            }
            out.push(Tok::Value);
        } else if ch == '$' || ch.is_ascii_digit() {
            i += 1;
            while i < b.len() && (b[i].is_ascii_digit() || b[i] == '.') {
                i += 1;
            }
            out.push(Tok::Value);
        } else if ch == '(' {
            out.push(Tok::Open);
            i += 1;
        } else if ch == ')' {
            out.push(Tok::Close);
            i += 1;
        } else if ch == ',' {
            out.push(Tok::Comma);
            i += 1;
        } else if ch == '.' {
            out.push(Tok::Dot);
            i += 1;
        } else if ch == ':' && b.get(i + 1) == Some(&':') {
            // A cast: skip it and the type name.
            i += 2;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == '_') {
                i += 1;
            }
        } else if "<>=!~@&|#-+*/%^".contains(ch) {
            let s = i;
            while i < b.len() && "<>=!~@&|#".contains(b[i]) {
                i += 1;
            }
            if i == s {
                i += 1;
            }
            out.push(Tok::Op(b[s..i].iter().collect()));
        } else {
            i += 1;
        }
    }
    // `table.column` → `column`.
    let mut merged: Vec<Tok> = Vec::with_capacity(out.len());
    let mut k = 0;
    while k < out.len() {
        if let (Tok::Ident(_), Some(Tok::Dot), Some(Tok::Ident(col))) = (&out[k], out.get(k + 1), out.get(k + 2)) {
            merged.push(Tok::Ident(col.clone()));
            k += 3;
        } else {
            merged.push(out[k].clone());
            k += 1;
        }
    }
    merged
}

/// The columns a statement filters on with equality, with a range, and orders by (first ORDER BY key).
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Predicates {
    pub(crate) equality: Vec<String>,
    pub(crate) range: Vec<String>,
    pub(crate) order: Option<String>,
}

/// Reads the predicate columns of a statement on audit_log (`columns`: audit_log's columns).
pub(crate) fn predicates(sql: &str, columns: &[String]) -> Predicates {
    let t = tokenize(sql);
    let is_col =
        |k: usize| matches!(t.get(k), Some(Tok::Ident(c)) if columns.contains(c)) && t.get(k + 1) != Some(&Tok::Open);
    let col = |k: usize| match &t[k] {
        Tok::Ident(c) => c.clone(),
        _ => unreachable!("checked by is_col"),
    };
    let mut p = Predicates::default();
    let push = |v: &mut Vec<String>, c: String| {
        if !v.contains(&c) {
            v.push(c);
        }
    };
    let kind = |tok: Option<&Tok>| -> Option<bool> {
        match tok {
            Some(Tok::Op(o)) if o == "=" => Some(true),
            Some(Tok::Op(o)) if ["<", "<=", ">", ">="].contains(&o.as_str()) => Some(false),
            Some(Tok::Ident(w)) if w == "in" => Some(true),
            Some(Tok::Ident(w)) if w == "between" => Some(false),
            _ => None,
        }
    };
    let mut k = 0;
    while k < t.len() {
        if is_col(k) {
            match kind(t.get(k + 1)) {
                Some(true) => push(&mut p.equality, col(k)),
                Some(false) => push(&mut p.range, col(k)),
                None => {}
            }
        } else if t[k] == Tok::Value
            && let Some(eq) = kind(t.get(k + 1))
            && is_col(k + 2)
        {
            if eq {
                push(&mut p.equality, col(k + 2));
            } else {
                push(&mut p.range, col(k + 2));
            }
        } else if t[k] == Tok::Ident("order".into()) && t.get(k + 1) == Some(&Tok::Ident("by".into())) && is_col(k + 2)
        {
            p.order.get_or_insert_with(|| col(k + 2));
        }
        k += 1;
    }
    p.range.retain(|c| !p.equality.contains(c));
    p
}

/// Candidate key column lists for a statement: equality columns, most selective first, then the first range
/// or ordering column; and the equality columns alone.
pub(crate) fn candidates(p: &Predicates, distinct: &BTreeMap<String, f64>) -> Vec<Vec<String>> {
    let mut eq = p.equality.clone();
    eq.sort_by(|a, b| {
        let (da, db) = (distinct.get(a).copied().unwrap_or(0.0), distinct.get(b).copied().unwrap_or(0.0));
        db.total_cmp(&da).then_with(|| a.cmp(b))
    });
    let tail = p.range.first().cloned().or_else(|| p.order.clone().filter(|o| !eq.contains(o)));
    let mut out = Vec::new();
    if let Some(t) = tail {
        let mut full = eq.clone();
        full.push(t);
        out.push(full);
    }
    if !eq.is_empty() {
        out.push(eq);
    }
    out
}

fn index_name(columns: &[String]) -> String {
    let mut body: String = columns.join("_").chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    body.truncate(52 - AUTO_PREFIX.len() - 4);
    format!("{AUTO_PREFIX}{body}_idx")
}

fn param_count(sql: &str) -> usize {
    let b = sql.as_bytes();
    let mut max = 0;
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' {
            let s = i + 1;
            let mut e = s;
            while e < b.len() && b[e].is_ascii_digit() {
                e += 1;
            }
            if let Ok(n) = sql[s..e].parse::<usize>() {
                max = max.max(n);
            }
            i = e.max(i + 1);
        } else {
            i += 1;
        }
    }
    max
}

/// A statement's generic plan: total cost and whether it scans audit_log partitions sequentially.
async fn plan(c: &Client, query: &str) -> AuditResult<(f64, bool)> {
    let n = param_count(query);
    let _ = c.batch_execute("DEALLOCATE audit_ix_q").await;
    c.batch_execute(&format!("PREPARE audit_ix_q AS {query}"))
        .await
        .map_err(|e| pg_error(e, "preparing a statement to cost it"))?;
    let args = vec!["NULL"; n].join(", ");
    let explain = if n == 0 {
        "EXPLAIN (FORMAT JSON) EXECUTE audit_ix_q".to_string()
    } else {
        format!("EXPLAIN (FORMAT JSON) EXECUTE audit_ix_q({args})")
    };
    let rows = c.query(explain.as_str(), &[]).await.map_err(|e| pg_error(e, "planning a statement"));
    let _ = c.batch_execute("DEALLOCATE audit_ix_q").await;
    let json: serde_json::Value = rows?.first().map(|r| r.get(0)).unwrap_or_default();
    let root = &json[0]["Plan"];
    let cost = root["Total Cost"].as_f64().unwrap_or(0.0);
    fn seq(node: &serde_json::Value) -> bool {
        (node["Node Type"] == "Seq Scan" && node["Relation Name"].as_str().is_some_and(|r| r.starts_with("audit_log")))
            || node["Plans"].as_array().is_some_and(|ps| ps.iter().any(seq))
    }
    Ok((cost, seq(root)))
}

/// Plans `query` with hypothetical `columns` indexes on every leaf partition.
async fn plan_with(c: &Client, query: &str, leaves: &[String], columns: &[String]) -> AuditResult<f64> {
    let cols: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
    for leaf in leaves {
        let ddl = format!("CREATE INDEX ON {} ({})", quote_ident(leaf), cols.join(", "));
        c.query(sql::HYPO_CREATE, &[&ddl]).await.map_err(|e| pg_error(e, "creating a hypothetical index"))?;
    }
    let result = plan(c, query).await;
    c.batch_execute(sql::HYPO_RESET).await.map_err(|e| pg_error(e, "removing hypothetical indexes"))?;
    Ok(result?.0)
}

/// One statement's best candidate.
struct Scored {
    columns: Vec<String>,
    evidence: StatementEvidence,
}

/// Workload-driven creations.
pub(crate) async fn recommend(m: &IndexManager, c: &Client, catalog: &Catalog) -> AuditResult<Workload> {
    if !statements_ready(c).await? {
        return Ok(Workload { available: false, costing: Costing::Heuristic, recommendations: Vec::new() });
    }
    let hypo = hypopg_ready(c).await?;
    let costing = if hypo { Costing::Hypopg } else { Costing::Heuristic };
    let since: Option<DateTime<Utc>> = c
        .query_one(sql::STATEMENTS_SINCE, &[])
        .await
        .map_err(|e| pg_error(e, "reading pg_stat_statements_info"))?
        .get(0);
    let days = since.map(|s| (catalog.now - s).num_seconds().max(60) as f64 / 86_400.0).unwrap_or(1.0);
    let statements = c
        .query(sql::STATEMENTS, &[&m.config.min_calls])
        .await
        .map_err(|e| pg_error(e, "reading pg_stat_statements"))?;
    let stats = c.query(sql::COLUMN_STATS, &[]).await.map_err(|e| pg_error(e, "reading column statistics"))?;
    let columns: Vec<String> = stats.iter().map(|r| r.get("name")).collect();
    let mut distinct = BTreeMap::new();
    let mut width = BTreeMap::new();
    for r in &stats {
        let name: String = r.get("name");
        let nd: Option<f64> = r.get("n_distinct");
        let nd = nd.map(|d| if d < 0.0 { -d * catalog.rows.max(1.0) } else { d }).unwrap_or(0.0);
        distinct.insert(name.clone(), nd);
        width.insert(name, r.get::<_, Option<i32>>("avg_width").unwrap_or(16));
    }
    // Column lists already served by a valid btree index (as its leading columns).
    let existing: Vec<Vec<String>> = catalog
        .indexes
        .iter()
        .filter(|i| i.usage.valid && i.usage.method == "btree" && i.usage.predicate.is_none())
        .map(|i| i.usage.columns.iter().map(|c| c.trim_matches('"').to_string()).collect())
        .collect();
    let covered = |cand: &[String]| existing.iter().any(|e| e.len() >= cand.len() && e[..cand.len()] == *cand);

    c.batch_execute(sql::GENERIC_PLANS).await.map_err(|e| pg_error(e, "choosing generic plans"))?;
    let mut scored: Vec<Scored> = Vec::new();
    for s in &statements {
        let query: String = s.get("query");
        let p = predicates(&query, &columns);
        let cands: Vec<Vec<String>> = candidates(&p, &distinct).into_iter().filter(|c| !covered(c)).collect();
        if cands.is_empty() {
            continue;
        }
        let (before, seq) = match plan(c, &query).await {
            Ok(v) => v,
            Err(e) => {
                tracing::info!(error = %e, "statement could not be planned; skipped");
                continue;
            }
        };
        if before <= 0.0 {
            continue;
        }
        let mut best: Option<(Vec<String>, f64)> = None;
        for cand in cands {
            let after = if hypo {
                plan_with(c, &query, &catalog.leaves, &cand).await?
            } else if seq {
                before * HEURISTIC_AFTER_RATIO
            } else {
                before
            };
            if best.as_ref().is_none_or(|(_, b)| after < *b) {
                best = Some((cand, after));
            }
            if !hypo {
                break;
            }
        }
        let Some((cols, after)) = best else { continue };
        if 1.0 - after / before < m.config.min_saving_ratio {
            continue;
        }
        scored.push(Scored {
            columns: cols,
            evidence: StatementEvidence {
                queryid: s.get("queryid"),
                query,
                calls: s.get("calls"),
                mean_ms: s.get("mean_exec_time"),
                cost_before: before,
                cost_after: after,
            },
        });
    }
    let _ = c.batch_execute("RESET plan_cache_mode").await;

    // One recommendation per column list.
    let mut by_cols: BTreeMap<Vec<String>, Vec<StatementEvidence>> = BTreeMap::new();
    for s in scored {
        by_cols.entry(s.columns).or_default().push(s.evidence);
    }
    let mut recs: Vec<IndexRecommendation> = by_cols
        .into_iter()
        .map(|(cols, statements)| {
            let time: f64 = statements.iter().map(|s| s.calls as f64 * s.mean_ms).sum();
            let saved: f64 =
                statements.iter().map(|s| s.calls as f64 * s.mean_ms * (1.0 - s.cost_after / s.cost_before)).sum();
            let calls: i64 = statements.iter().map(|s| s.calls).sum();
            let w: i32 = cols.iter().map(|c| width.get(c).copied().unwrap_or(16)).sum();
            IndexRecommendation {
                action: IndexAction::Create { name: index_name(&cols), columns: cols.clone() },
                why: format!(
                    "{} statement(s) on audit_log filter or sort by ({}); {calls} calls took {:.0} ms; the planner \
                     estimates {:.0}% less with this index ({})",
                    statements.len(),
                    cols.join(", "),
                    time,
                    100.0 * saved / time.max(f64::MIN_POSITIVE),
                    if hypo {
                        "HypoPG hypothetical index on every partition"
                    } else {
                        "heuristic: HypoPG not installed"
                    }
                ),
                estimated_saving_ms_per_day: saved / days,
                estimated_saving_ratio: if time > 0.0 { saved / time } else { 0.0 },
                costing: Some(costing),
                write_entries_per_day: catalog.inserts_per_day,
                size_bytes: (catalog.rows * f64::from(w + 16) / 0.9) as i64,
                statements,
            }
        })
        .collect();
    recs.sort_by(|a, b| b.estimated_saving_ms_per_day.total_cmp(&a.estimated_saving_ms_per_day));
    Ok(Workload { available: true, costing, recommendations: recs })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols() -> Vec<String> {
        ["id", "timestamp", "action", "status", "principal_id", "organization_id"].map(String::from).to_vec()
    }

    #[test]
    fn reads_diesel_shaped_and_hand_written_predicates() {
        let q = r#"SELECT "audit_log"."id" FROM "audit_log" WHERE (("audit_log"."principal_id" = $1) AND ("audit_log"."action" = $2)) ORDER BY "audit_log"."timestamp" DESC LIMIT $3"#;
        let p = predicates(q, &cols());
        assert_eq!(p.equality, ["principal_id", "action"]);
        assert_eq!(p.order.as_deref(), Some("timestamp"));
        let q = "select count(*) from audit_log where $1 = organization_id and timestamp >= $2::timestamptz and lower(action) = $3";
        let p = predicates(q, &cols());
        assert_eq!((p.equality, p.range), (vec!["organization_id".to_string()], vec!["timestamp".to_string()]));
    }

    #[test]
    fn candidates_put_selective_equality_first_then_the_range() {
        let p = Predicates {
            equality: vec!["action".into(), "principal_id".into()],
            range: vec![],
            order: Some("timestamp".into()),
        };
        let d = BTreeMap::from([("action".to_string(), 20.0), ("principal_id".to_string(), 5000.0)]);
        assert_eq!(
            candidates(&p, &d),
            [vec!["principal_id", "action", "timestamp"], vec!["principal_id", "action"]]
                .map(|v| v.into_iter().map(String::from).collect::<Vec<_>>())
        );
        assert_eq!(param_count("select $1, $12, $3"), 12);
        assert!(index_name(&["principal_id".into(), "action".into(), "timestamp".into()]).len() <= 52);
    }
}
