//! Readers for the deployment artefacts in `deploy/` (Grafana dashboard, Prometheus rules and scrape config,
//! Kubernetes manifests, compose file, env files, Dockerfile), so tests can check them against what the running
//! service really exports, serves and reads. Pure: text in, names out; no I/O except through a caller's closure.
//!
//! Include it from a test crate with `#[path = "support/deploy_artifacts.rs"] mod deploy_artifacts;`.
#![allow(dead_code)] // Each including test crate uses a different subset.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// Why an artefact could not be read; always names the artefact part and what was wrong.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DeployParseError {
    /// The text is not YAML (or not the JSON the caller expected).
    #[error("{what}: not valid YAML: {message}")]
    Yaml { what: String, message: String },
    /// A PromQL expression the scanner cannot follow (unbalanced brackets, unterminated string, stray character).
    #[error("PromQL `{expr}`, byte {pos}: {reason}")]
    Promql { expr: String, pos: usize, reason: String },
    /// The document parsed but lacks a part the reader needs, or a part has the wrong shape.
    #[error("{what}: {reason}")]
    Shape { what: String, reason: String },
}

type Result<T> = std::result::Result<T, DeployParseError>;

fn shape(what: impl Into<String>, reason: impl Into<String>) -> DeployParseError {
    DeployParseError::Shape { what: what.into(), reason: reason.into() }
}

/// Series Prometheus itself records for every scrape target; never in the service's `/metrics`.
pub(crate) const PROMETHEUS_SYNTHETIC_SERIES: &[&str] = &[
    "up",
    "scrape_duration_seconds",
    "scrape_samples_scraped",
    "scrape_samples_post_metric_relabeling",
    "scrape_series_added",
];

/// Suffixes Prometheus adds to a histogram's or summary's base name.
const SERIES_SUFFIXES: &[&str] = &["_bucket", "_sum", "_count"];

/// Reads every document of a (multi-document) YAML text as JSON values; empty documents are skipped and
/// anchors, aliases and `<<` merge keys are resolved.
pub(crate) fn yaml_documents(what: &str, text: &str) -> Result<Vec<Value>> {
    serde_saphyr::from_multiple::<Value>(text)
        .map(|docs| docs.into_iter().filter(|d| !d.is_null()).collect())
        .map_err(|e| DeployParseError::Yaml { what: what.to_string(), message: e.to_string() })
}

// ---------------------------------------------------------------------------------------------------------------
// PromQL
// ---------------------------------------------------------------------------------------------------------------

/// The base metric name of a series name: `x_bucket`, `x_sum`, `x_count` → `x` (a histogram's or summary's
/// series are exported under one name with one `# TYPE` line).
pub(crate) fn base_metric_name(series: &str) -> &str {
    SERIES_SUFFIXES.iter().find_map(|s| series.strip_suffix(s).filter(|b| !b.is_empty())).unwrap_or(series)
}

/// Words that are PromQL syntax, never metric names (compared case-insensitively, as PromQL does).
const KEYWORDS: &[&str] = &["and", "or", "unless", "atan2", "bool", "offset", "inf", "nan"];
/// Modifiers followed by an optional parenthesised list of label names.
const GROUPING: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];
/// Aggregation operators, which may be followed by `by (...)`/`without (...)` before their parentheses.
const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];

/// Every metric a PromQL expression selects, by base name ([`base_metric_name`]). Function and aggregation
/// names, keywords, label names (in matchers and in `by`/`without`/`on`/`ignoring`/`group_*` lists), strings,
/// numbers, durations, ranges, subqueries, `offset`/`@` modifiers and Grafana variables (`$__rate_interval`,
/// `${x}`) are not metrics; `{__name__="x"}` selects `x`. Includes [`PROMETHEUS_SYNTHETIC_SERIES`] when used.
/// Fails on text it cannot follow, so a broken expression is never read as "names nothing".
pub(crate) fn metric_names_in_promql(expr: &str) -> Result<BTreeSet<String>> {
    let err =
        |pos: usize, reason: &str| DeployParseError::Promql { expr: expr.to_string(), pos, reason: reason.to_string() };
    let b = expr.as_bytes();
    let mut names = BTreeSet::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            c if c.is_ascii_whitespace() => i += 1,
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'"' | b'\'' | b'`' => i = skip_string(b, i).ok_or_else(|| err(i, "unterminated string"))?,
            b'{' => i = scan_matchers(b, i, &mut names).map_err(|(p, r)| err(p, r))?,
            b'[' => {
                let close = b[i..].iter().position(|&x| x == b']').ok_or_else(|| err(i, "unterminated `[`"))?;
                i += close + 1;
            }
            b'(' => {
                depth += 1;
                i += 1;
            }
            b')' => {
                depth = depth.checked_sub(1).ok_or_else(|| err(i, "`)` without `(`"))?;
                i += 1;
            }
            b'$' => i = skip_variable(b, i).ok_or_else(|| err(i, "unterminated `${`"))?,
            c if c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit)) => {
                // Number or duration (`5m`, `1h30m`, `0x1f`, `1.5e3`).
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'.') {
                    i += 1;
                }
            }
            c if is_ident_start(c) => {
                let start = i;
                i = ident_end(b, i);
                let word = &expr[start..i];
                let lower = word.to_ascii_lowercase();
                let next = skip_ws(b, i);
                if GROUPING.contains(&lower.as_str()) {
                    if b.get(next) == Some(&b'(') {
                        let close = b[next..]
                            .iter()
                            .position(|&x| x == b')')
                            .ok_or_else(|| err(next, "unterminated label list"))?;
                        i = next + close + 1;
                    }
                } else if KEYWORDS.contains(&lower.as_str()) || b.get(next) == Some(&b'(') {
                    // Syntax, or a function / aggregation call.
                } else if AGGREGATIONS.contains(&lower.as_str()) && next_word_is_grouping(b, next) {
                    // `sum by (le) (...)`
                } else {
                    names.insert(base_metric_name(word).to_string());
                }
            }
            b'+' | b'-' | b'*' | b'/' | b'%' | b'^' | b'=' | b'!' | b'<' | b'>' | b',' | b'@' | b':' => i += 1,
            _ => return Err(err(i, "unexpected character")),
        }
    }
    if depth != 0 {
        return Err(err(b.len(), "unclosed `(`"));
    }
    Ok(names)
}

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c == b':'
}

fn ident_end(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':') {
        i += 1;
    }
    i
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

fn next_word_is_grouping(b: &[u8], i: usize) -> bool {
    if !b.get(i).copied().is_some_and(is_ident_start) {
        return false;
    }
    let w = String::from_utf8_lossy(&b[i..ident_end(b, i)]).to_ascii_lowercase();
    w == "by" || w == "without"
}

/// Index just past the string literal starting at `i` (`"…"` and `'…'` with backslash escapes, raw `` `…` ``).
fn skip_string(b: &[u8], i: usize) -> Option<usize> {
    let q = b[i];
    let mut j = i + 1;
    while j < b.len() {
        match b[j] {
            b'\\' if q != b'`' => j += 2,
            x if x == q => return Some(j + 1),
            _ => j += 1,
        }
    }
    None
}

/// Index just past a Grafana variable at `i`: `$name`, `${name…}` or `$__macro`.
fn skip_variable(b: &[u8], i: usize) -> Option<usize> {
    if b.get(i + 1) == Some(&b'{') {
        return b[i..].iter().position(|&x| x == b'}').map(|p| i + p + 1);
    }
    Some(ident_end(b, i + 1))
}

/// Scans the label matchers `{…}` at `i`, records a `__name__="x"` selector, and returns the index past `}`.
fn scan_matchers(
    b: &[u8],
    i: usize,
    names: &mut BTreeSet<String>,
) -> std::result::Result<usize, (usize, &'static str)> {
    let mut j = i + 1;
    loop {
        j = skip_ws(b, j);
        match b.get(j) {
            None => return Err((i, "unterminated `{`")),
            Some(b'}') => return Ok(j + 1),
            Some(b',') => {
                j += 1;
                continue;
            }
            _ => {}
        }
        // Label name: an identifier, or a quoted name (PromQL 3: `{"metric.name"}` selects a metric).
        let (label, after) = if b[j] == b'"' || b[j] == b'\'' {
            let end = skip_string(b, j).ok_or((j, "unterminated string"))?;
            (unquote(&b[j..end]), end)
        } else if is_ident_start(b[j]) {
            let end = ident_end(b, j);
            (String::from_utf8_lossy(&b[j..end]).into_owned(), end)
        } else if b[j] == b'$' {
            let end = skip_variable(b, j).ok_or((j, "unterminated `${`"))?;
            (String::new(), end)
        } else {
            return Err((j, "expected a label name in `{…}`"));
        };
        j = skip_ws(b, after);
        let op_start = j;
        while j < b.len() && matches!(b[j], b'=' | b'!' | b'~') {
            j += 1;
        }
        let op = &b[op_start..j];
        if op.is_empty() {
            // A bare quoted metric name.
            if b[after - 1] == b'"' || b[after - 1] == b'\'' {
                names.insert(base_metric_name(&label).to_string());
                continue;
            }
            return Err((j, "expected a matcher operator (=, !=, =~, !~)"));
        }
        j = skip_ws(b, j);
        let value_start = j;
        j = match b.get(j) {
            Some(b'"' | b'\'' | b'`') => skip_string(b, j).ok_or((j, "unterminated string"))?,
            _ => return Err((j, "expected a quoted matcher value")),
        };
        if label == "__name__" && op == b"=" {
            names.insert(base_metric_name(&unquote(&b[value_start..j])).to_string());
        }
    }
}

fn unquote(lit: &[u8]) -> String {
    let inner = &lit[1..lit.len() - 1];
    let mut out = Vec::with_capacity(inner.len());
    let mut k = 0;
    while k < inner.len() {
        if inner[k] == b'\\' && lit[0] != b'`' && k + 1 < inner.len() {
            out.push(inner[k + 1]);
            k += 2;
        } else {
            out.push(inner[k]);
            k += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------------------------------------------
// Grafana
// ---------------------------------------------------------------------------------------------------------------

/// Every query expression (`"expr"` of a target) in a Grafana dashboard, including panels nested in rows and
/// library-panel-free JSON anywhere in the document, in document order.
pub(crate) fn dashboard_expressions(dashboard: &Value) -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                for (k, x) in map {
                    match (k.as_str(), x) {
                        ("expr", Value::String(s)) => out.push(s.clone()),
                        _ => walk(x, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(dashboard, &mut out);
    out
}

// ---------------------------------------------------------------------------------------------------------------
// Prometheus
// ---------------------------------------------------------------------------------------------------------------

/// One alerting or recording rule of a Prometheus rule file.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Rule {
    /// The `alert` name, or the `record` name of a recording rule.
    pub name: String,
    /// True for alerting rules.
    pub is_alert: bool,
    pub expr: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

/// Every rule of a Prometheus rule file (`groups[].rules[]`), in file order.
pub(crate) fn alert_rules(yaml: &str) -> Result<Vec<Rule>> {
    let mut out = Vec::new();
    for doc in yaml_documents("rule file", yaml)? {
        let groups =
            doc.get("groups").and_then(Value::as_array).ok_or_else(|| shape("rule file", "no `groups` list"))?;
        for g in groups {
            let gname = g.get("name").and_then(Value::as_str).unwrap_or("?");
            let rules = g
                .get("rules")
                .and_then(Value::as_array)
                .ok_or_else(|| shape(format!("rule group `{gname}`"), "no `rules` list"))?;
            for r in rules {
                let (name, is_alert) = match (r.get("alert"), r.get("record")) {
                    (Some(Value::String(a)), None) => (a.clone(), true),
                    (None, Some(Value::String(rec))) => (rec.clone(), false),
                    _ => {
                        return Err(shape(
                            format!("rule group `{gname}`"),
                            "a rule needs exactly one of `alert`, `record`",
                        ));
                    }
                };
                let expr = r
                    .get("expr")
                    .and_then(Value::as_str)
                    .ok_or_else(|| shape(format!("rule `{name}`"), "no `expr` string"))?
                    .to_string();
                out.push(Rule {
                    labels: string_map(r.get("labels"), &format!("rule `{name}` labels"))?,
                    annotations: string_map(r.get("annotations"), &format!("rule `{name}` annotations"))?,
                    name,
                    is_alert,
                    expr,
                });
            }
        }
    }
    Ok(out)
}

/// The `expr` of every rule in a Prometheus rule file.
pub(crate) fn alert_expressions(yaml: &str) -> Result<Vec<String>> {
    Ok(alert_rules(yaml)?.into_iter().map(|r| r.expr).collect())
}

fn string_map(v: Option<&Value>, what: &str) -> Result<BTreeMap<String, String>> {
    match v {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, x)| {
                scalar_string(x).map(|s| (k.clone(), s)).ok_or_else(|| shape(what, format!("`{k}` is not a scalar")))
            })
            .collect(),
        Some(_) => Err(shape(what, "not a mapping")),
    }
}

fn scalar_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// One scrape target of a Prometheus configuration's `static_configs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ScrapeTarget {
    pub job: String,
    /// `host:port` as written.
    pub target: String,
    /// `metrics_path`, `/metrics` when not set (Prometheus' default).
    pub metrics_path: String,
}

/// The static scrape targets of a Prometheus configuration file.
pub(crate) fn prometheus_scrape_targets(yaml: &str) -> Result<Vec<ScrapeTarget>> {
    let mut out = Vec::new();
    for doc in yaml_documents("prometheus config", yaml)? {
        for sc in doc.get("scrape_configs").and_then(Value::as_array).into_iter().flatten() {
            let job =
                sc.get("job_name").and_then(Value::as_str).ok_or_else(|| shape("scrape config", "no `job_name`"))?;
            let path = sc.get("metrics_path").and_then(Value::as_str).unwrap_or("/metrics");
            for stc in sc.get("static_configs").and_then(Value::as_array).into_iter().flatten() {
                for t in stc.get("targets").and_then(Value::as_array).into_iter().flatten() {
                    let target = t.as_str().ok_or_else(|| shape(format!("job `{job}`"), "a target is not a string"))?;
                    out.push(ScrapeTarget {
                        job: job.to_string(),
                        target: target.to_string(),
                        metrics_path: path.to_string(),
                    });
                }
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------------------------
// Kubernetes
// ---------------------------------------------------------------------------------------------------------------

/// The files a `kustomization.yaml` lists under `resources`, as written (relative to its directory).
pub(crate) fn kustomization_resources(yaml: &str) -> Result<Vec<String>> {
    let docs = yaml_documents("kustomization", yaml)?;
    let doc = docs.first().ok_or_else(|| shape("kustomization", "empty"))?;
    doc.get("resources")
        .and_then(Value::as_array)
        .ok_or_else(|| shape("kustomization", "no `resources` list"))?
        .iter()
        .map(|r| r.as_str().map(str::to_string).ok_or_else(|| shape("kustomization", "a resource is not a string")))
        .collect()
}

/// `Kind/name` of a manifest, for messages.
fn manifest_id(doc: &Value) -> String {
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or("?");
    let name = doc.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("?");
    format!("{kind}/{name}")
}

/// The pod spec inside a workload manifest, if it is one.
fn pod_spec(doc: &Value) -> Option<&Value> {
    match doc.get("kind").and_then(Value::as_str)? {
        "Pod" => doc.get("spec"),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => doc.pointer("/spec/template/spec"),
        "CronJob" => doc.pointer("/spec/jobTemplate/spec/template/spec"),
        _ => None,
    }
}

/// Containers and init containers of a pod spec.
fn containers(spec: &Value) -> impl Iterator<Item = &Value> {
    ["containers", "initContainers"]
        .into_iter()
        .flat_map(|k| spec.get(k).and_then(Value::as_array).into_iter().flatten())
}

/// Keys of the ConfigMaps (`data`, `binaryData`) or Secrets (`data`, `stringData`) in the documents, by name.
fn data_keys<'a>(docs: &'a [Value], kind: &str) -> BTreeMap<&'a str, Vec<&'a str>> {
    docs.iter()
        .filter(|d| d.get("kind").and_then(Value::as_str) == Some(kind))
        .filter_map(|d| {
            let name = d.pointer("/metadata/name").and_then(Value::as_str)?;
            let keys = ["data", "binaryData", "stringData"]
                .iter()
                .filter_map(|k| d.get(*k).and_then(Value::as_object))
                .flat_map(|m| m.keys().map(String::as_str))
                .collect();
            Some((name, keys))
        })
        .collect()
}

/// Every environment variable name the workloads (Deployment, StatefulSet, DaemonSet, Job, CronJob, Pod) in the
/// manifests set: each container's `env[].name`, plus every key of a ConfigMap or Secret it takes whole through
/// `envFrom` (with the entry's `prefix`). An `envFrom` reference to a ConfigMap or Secret that is not in the
/// given text is an error unless marked `optional: true`, so concatenate all the manifests first.
pub(crate) fn manifest_env_vars(yaml: &str) -> Result<BTreeSet<String>> {
    let docs = yaml_documents("manifests", yaml)?;
    let config_maps = data_keys(&docs, "ConfigMap");
    let secrets = data_keys(&docs, "Secret");
    let mut vars = BTreeSet::new();
    for doc in &docs {
        let Some(spec) = pod_spec(doc) else { continue };
        let id = manifest_id(doc);
        for c in containers(spec) {
            for e in c.get("env").and_then(Value::as_array).into_iter().flatten() {
                let name =
                    e.get("name").and_then(Value::as_str).ok_or_else(|| shape(&id, "an env entry has no name"))?;
                vars.insert(name.to_string());
            }
            for ef in c.get("envFrom").and_then(Value::as_array).into_iter().flatten() {
                let prefix = ef.get("prefix").and_then(Value::as_str).unwrap_or("");
                let (source, kind, table) = match (ef.get("configMapRef"), ef.get("secretRef")) {
                    (Some(r), None) => (r, "ConfigMap", &config_maps),
                    (None, Some(r)) => (r, "Secret", &secrets),
                    _ => return Err(shape(&id, "an envFrom entry needs exactly one of configMapRef, secretRef")),
                };
                let name =
                    source.get("name").and_then(Value::as_str).ok_or_else(|| shape(&id, "envFrom without a name"))?;
                match table.get(name) {
                    Some(keys) => vars.extend(keys.iter().map(|k| format!("{prefix}{k}"))),
                    None if source.get("optional").and_then(Value::as_bool) == Some(true) => {}
                    None => {
                        return Err(shape(
                            &id,
                            format!("envFrom references {kind} `{name}`, which is not in the manifests"),
                        ));
                    }
                }
            }
        }
    }
    Ok(vars)
}

/// Every HTTP probe (liveness, readiness, startup) of the workloads' containers as `(path, port)`; a named port
/// is resolved through the container's `ports`. Exec and TCP probes are not HTTP and are left out.
pub(crate) fn manifest_probes(yaml: &str) -> Result<Vec<(String, u16)>> {
    let docs = yaml_documents("manifests", yaml)?;
    let mut out = Vec::new();
    for doc in &docs {
        let Some(spec) = pod_spec(doc) else { continue };
        let id = manifest_id(doc);
        for c in containers(spec) {
            for kind in ["livenessProbe", "readinessProbe", "startupProbe"] {
                let Some(get) = c.get(kind).and_then(|p| p.get("httpGet")) else { continue };
                let what = format!("{id} {kind}");
                let path = get.get("path").and_then(Value::as_str).unwrap_or("/").to_string();
                let port = get.get("port").ok_or_else(|| shape(&what, "httpGet has no port"))?;
                let port = match port {
                    Value::String(named) if !named.bytes().all(|x| x.is_ascii_digit()) => c
                        .get("ports")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .find(|p| p.get("name").and_then(Value::as_str) == Some(named))
                        .and_then(|p| p.get("containerPort"))
                        .and_then(as_port)
                        .ok_or_else(|| shape(&what, format!("named port `{named}` is not a container port")))?,
                    other => {
                        as_port(other).ok_or_else(|| shape(&what, format!("port {other} is not a port number")))?
                    }
                };
                out.push((path, port));
            }
        }
    }
    Ok(out)
}

fn as_port(v: &Value) -> Option<u16> {
    match v {
        Value::Number(n) => n.as_u64().and_then(|p| u16::try_from(p).ok()),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Compose, env files, Dockerfile
// ---------------------------------------------------------------------------------------------------------------

/// Names of the compose services that run the audit-db image (built from the repository, or an `image` named
/// `audit-db…`); the others (PostgreSQL, Redis, Prometheus, Grafana) read their own variables.
pub(crate) fn compose_audit_db_services(yaml: &str) -> Result<Vec<String>> {
    let docs = yaml_documents("compose file", yaml)?;
    let doc = docs.first().ok_or_else(|| shape("compose file", "empty"))?;
    let services =
        doc.get("services").and_then(Value::as_object).ok_or_else(|| shape("compose file", "no `services`"))?;
    Ok(services
        .iter()
        .filter(|(_, s)| {
            s.get("build").is_some()
                || s.get("image").and_then(Value::as_str).is_some_and(|i| i.starts_with("audit-db"))
        })
        .map(|(name, _)| name.clone())
        .collect())
}

/// Every environment variable name the compose file sets for the services that run audit-db
/// ([`compose_audit_db_services`]): `environment` (mapping or `KEY=value` list) and the variables of each
/// `env_file`, read through `read_env_file(path as written)` (paths are relative to the compose file).
pub(crate) fn compose_env_vars(
    yaml: &str,
    mut read_env_file: impl FnMut(&str) -> std::io::Result<String>,
) -> Result<BTreeSet<String>> {
    let docs = yaml_documents("compose file", yaml)?;
    let doc = docs.first().ok_or_else(|| shape("compose file", "empty"))?;
    let services =
        doc.get("services").and_then(Value::as_object).ok_or_else(|| shape("compose file", "no `services`"))?;
    let mut vars = BTreeSet::new();
    for name in compose_audit_db_services(yaml)? {
        let svc = &services[&name];
        let what = format!("compose service `{name}`");
        match svc.get("environment") {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) => vars.extend(m.keys().cloned()),
            Some(Value::Array(items)) => {
                for it in items {
                    let s = it.as_str().ok_or_else(|| shape(&what, "an environment entry is not a string"))?;
                    vars.insert(s.split_once('=').map_or(s, |(k, _)| k).trim().to_string());
                }
            }
            Some(_) => return Err(shape(&what, "`environment` is neither a mapping nor a list")),
        }
        let files: Vec<&str> = match svc.get("env_file") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(items)) => items
                .iter()
                .map(|it| match it {
                    Value::String(s) => Some(s.as_str()),
                    Value::Object(o) => o.get("path").and_then(Value::as_str),
                    _ => None,
                })
                .collect::<Option<_>>()
                .ok_or_else(|| shape(&what, "an env_file entry is neither a path nor {path: …}"))?,
            Some(_) => return Err(shape(&what, "`env_file` is neither a path nor a list")),
        };
        for f in files {
            let text = read_env_file(f).map_err(|e| shape(format!("{what} env_file `{f}`"), e.to_string()))?;
            vars.extend(env_file_vars(&text));
        }
    }
    Ok(vars)
}

/// Variable names of an env file (`KEY=value` lines; `#` comments, blank lines and an `export ` prefix allowed).
pub(crate) fn env_file_vars(text: &str) -> BTreeSet<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.strip_prefix("export ").unwrap_or(l))
        .map(|l| l.split_once('=').map_or(l, |(k, _)| k).trim().to_string())
        .collect()
}

/// The instructions of a Dockerfile as `(INSTRUCTION, arguments)`, continuation lines joined and comments
/// (including parser directives) dropped; the instruction is upper-cased.
pub(crate) fn dockerfile_instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && current.is_empty()) {
            continue;
        }
        let (part, continues) = match t.strip_suffix('\\') {
            Some(p) => (p.trim_end(), true),
            None => (t, false),
        };
        if !current.is_empty() && !part.is_empty() {
            current.push(' ');
        }
        current.push_str(part);
        if !continues {
            if let Some((ins, args)) = current.split_once(char::is_whitespace) {
                out.push((ins.to_ascii_uppercase(), args.trim().to_string()));
            } else if !current.is_empty() {
                out.push((current.to_ascii_uppercase(), String::new()));
            }
            current.clear();
        }
    }
    out
}
