//! The deployment-artefact readers on tricky input, and the real artefacts in `deploy/` read with them and held
//! against the operations guide (docs/operations.md): every metric a dashboard or alert names is documented,
//! every runbook link lands on a heading, every variable a manifest sets is a documented setting, and probes,
//! health check and scrape target agree on the port and paths. (The end-to-end test holds the same artefacts
//! against a running service's `/metrics` and router.)

#[path = "support/deploy_artifacts.rs"]
mod deploy_artifacts;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use deploy_artifacts::*;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

fn names(expr: &str) -> Vec<String> {
    metric_names_in_promql(expr).unwrap_or_else(|e| panic!("{e}")).into_iter().collect()
}

// --- PromQL scanner -------------------------------------------------------------------------------------------

#[test]
fn promql_seed_query_names_the_histogram_base_name() {
    assert_eq!(
        names("histogram_quantile(0.95, rate(audit_db_operation_duration_seconds_bucket[5m]))"),
        ["audit_db_operation_duration_seconds"]
    );
}

#[test]
fn promql_grouping_label_lists_are_not_metrics() {
    let e = "histogram_quantile(0.95, sum by (le, operation) (rate(audit_db_operation_duration_seconds_bucket[$__rate_interval])))";
    assert_eq!(names(e), ["audit_db_operation_duration_seconds"]);
    let e = "sum without (instance, job) (rate(a_total[5m])) / ignoring(code) group_left(version) b_info";
    assert_eq!(names(e), ["a_total", "b_info"]);
    let e = "sum(rate(x_sum[5m])) BY (le) / on (instance) group_right c";
    assert_eq!(names(e), ["c", "x"]);
    // group_left without a label list: the next word is a metric.
    assert_eq!(names("a * on(job) group_left b"), ["a", "b"]);
}

#[test]
fn promql_strings_matchers_and_label_values_are_not_metrics() {
    let e =
        r#"sum by (route) (rate(audit_db_http_requests_total{status=~"5..", route!="/metrics", method='GET'}[5m]))"#;
    assert_eq!(names(e), ["audit_db_http_requests_total"]);
    let e = r#"label_replace(up{job="audit-db"}, "host", "$1", "instance", "(.*):\\d+")"#;
    assert_eq!(names(e), ["up"]);
    // A string holding something that looks like a metric, and an escaped quote inside it.
    assert_eq!(names(r#"count_values("not_a_metric \"x\" y", z)"#), ["z"]);
    // A selector by name only.
    assert_eq!(names(r#"{__name__="audit_db_events_total", result="stored"}"#), ["audit_db_events_total"]);
    assert_eq!(names(r#"{"audit_db_cache_hit_rate", cache_type="l1"}"#), ["audit_db_cache_hit_rate"]);
    // Grafana variables inside matchers.
    assert_eq!(names(r#"audit_db_partitions{instance=~"$instance", job="${job}"}"#), ["audit_db_partitions"]);
}

#[test]
fn promql_ranges_subqueries_offsets_modifiers_and_numbers_are_not_metrics() {
    let e = "max_over_time(rate(a_total[5m])[1h:1m] offset 1d) > bool 1e-3 and b @ start() unless c offset -5m";
    assert_eq!(names(e), ["a_total", "b", "c"]);
    assert_eq!(names("min(x_timestamp_seconds) - time() < 7 * 86400"), ["x_timestamp_seconds"]);
    assert_eq!(names("sum(y) > Inf or NaN != 0x1f"), ["y"]);
    assert_eq!(names("topk(10, sum by (index) (rate(i_total[5m])))  # a comment naming not_this"), ["i_total"]);
    assert_eq!(names("vector(1) + scalar(k_count) + m_sum_total"), ["k", "m_sum_total"]);
    assert!(names("time() - 3600").is_empty());
}

#[test]
fn promql_text_that_cannot_be_followed_is_an_error() {
    for bad in ["rate(x[5m]", "rate(x[5m)", "x{a=\"b}", "sum(x))", "x{a}", "x ; y", "x}"] {
        assert!(metric_names_in_promql(bad).is_err(), "{bad:?} was accepted");
    }
    let e = metric_names_in_promql("rate(x[5m)").unwrap_err().to_string();
    assert!(e.contains("unterminated `[`") && e.contains("rate(x[5m)") && e.contains("byte 6"), "{e}");
    let e = metric_names_in_promql("rate(x[5m]").unwrap_err().to_string();
    assert!(e.contains("unclosed `(`"), "{e}");
}

#[test]
fn base_names_strip_only_histogram_and_summary_suffixes() {
    assert_eq!(base_metric_name("a_bucket"), "a");
    assert_eq!(base_metric_name("a_count"), "a");
    assert_eq!(base_metric_name("a_sum"), "a");
    assert_eq!(base_metric_name("a_total"), "a_total");
    assert_eq!(base_metric_name("_count"), "_count");
}

// --- YAML readers on small inputs -----------------------------------------------------------------------------

#[test]
fn manifest_env_vars_follow_env_from_with_prefix_and_fail_on_missing_sources() {
    let yaml = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: cfg}
data: {LOG_LEVEL: info, METRICS_ENABLED: "true"}
---
apiVersion: v1
kind: Secret
metadata: {name: s}
stringData: {URL: x}
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: c}
spec:
  jobTemplate:
    spec:
      template:
        spec:
          initContainers:
            - name: i
              env: [{name: INIT_ONLY, value: "1"}]
          containers:
            - name: a
              env:
                - name: DATABASE_URL
                  valueFrom: {secretKeyRef: {name: database-secret, key: url}}
              envFrom:
                - configMapRef: {name: cfg}
                - secretRef: {name: s}
                  prefix: P_
                - configMapRef: {name: absent, optional: true}
"#;
    let vars: Vec<_> = manifest_env_vars(yaml).unwrap().into_iter().collect();
    assert_eq!(vars, ["DATABASE_URL", "INIT_ONLY", "LOG_LEVEL", "METRICS_ENABLED", "P_URL"]);

    let missing = r#"
kind: Deployment
metadata: {name: d}
spec: {template: {spec: {containers: [{name: a, envFrom: [{configMapRef: {name: nowhere}}]}]}}}
"#;
    let e = manifest_env_vars(missing).unwrap_err().to_string();
    assert!(e.contains("Deployment/d") && e.contains("ConfigMap `nowhere`"), "{e}");
}

#[test]
fn manifest_probes_resolve_named_ports_and_skip_non_http_probes() {
    let yaml = r#"
kind: Deployment
metadata: {name: d}
spec:
  template:
    spec:
      containers:
        - name: a
          ports: [{name: http, containerPort: 3000}]
          livenessProbe: {httpGet: {path: /health, port: http}}
          readinessProbe: {httpGet: {path: /ready, port: "3000"}}
          startupProbe: {exec: {command: [true]}}
---
kind: Service
metadata: {name: not-a-workload}
spec: {ports: [{port: 80}]}
"#;
    assert_eq!(manifest_probes(yaml).unwrap(), [("/health".to_string(), 3000), ("/ready".to_string(), 3000)]);
    let bad = "kind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: a, livenessProbe: {httpGet: {path: /, port: web}}}]}\n";
    let e = manifest_probes(bad).unwrap_err().to_string();
    assert!(e.contains("Pod/p livenessProbe") && e.contains("`web`"), "{e}");
}

#[test]
fn compose_env_vars_cover_lists_maps_anchors_and_env_files_of_audit_db_services_only() {
    let yaml = r#"
x-img: &img
  image: audit-db:latest
services:
  db:
    image: postgres:15
    environment: {POSTGRES_PASSWORD_FILE: /run/secrets/p}
  one:
    <<: *img
    environment: ["LOG_LEVEL=debug", "METRICS_ENABLED"]
  two:
    build: {context: ..}
    env_file: [a.env, {path: b.env, required: false}]
    environment: {AUDIT_DB_LISTEN: "0.0.0.0:3000"}
"#;
    let mut asked = Vec::new();
    let vars = compose_env_vars(yaml, |p| {
        asked.push(p.to_string());
        Ok(match p {
            "a.env" => "# comment\n\nDATABASE_URL=postgres://x\nexport REDIS_URL=redis://y\n".to_string(),
            _ => "SLOW_QUERY_THRESHOLD=5".to_string(),
        })
    })
    .unwrap();
    assert_eq!(asked, ["a.env", "b.env"]);
    let vars: Vec<_> = vars.into_iter().collect();
    assert_eq!(
        vars,
        ["AUDIT_DB_LISTEN", "DATABASE_URL", "LOG_LEVEL", "METRICS_ENABLED", "REDIS_URL", "SLOW_QUERY_THRESHOLD"]
    );
    let e = compose_env_vars(yaml, |_| Err(std::io::Error::other("gone"))).unwrap_err().to_string();
    assert!(e.contains("`two`") && e.contains("a.env") && e.contains("gone"), "{e}");
}

#[test]
fn alert_rules_need_a_name_and_an_expression() {
    let ok = "groups:\n- name: g\n  rules:\n  - alert: A\n    expr: up == 0\n    labels: {severity: critical}\n  - record: r:x\n    expr: sum(x)\n";
    let rules = alert_rules(ok).unwrap();
    assert_eq!(rules.len(), 2);
    assert!(rules[0].is_alert && !rules[1].is_alert);
    assert_eq!(rules[0].labels["severity"], "critical");
    assert_eq!(alert_expressions(ok).unwrap(), ["up == 0", "sum(x)"]);
    let e = alert_rules("groups:\n- name: g\n  rules:\n  - alert: A\n").unwrap_err().to_string();
    assert!(e.contains("rule `A`") && e.contains("expr"), "{e}");
    assert!(alert_rules("groups: [").is_err());
}

#[test]
fn dockerfile_instructions_join_continuations_and_drop_comments() {
    let text = "# syntax=docker/dockerfile:1\nFROM x AS y\nRUN a \\\n    && b\n\n# note\nexpose 3000\nHEALTHCHECK --interval=30s \\\n  CMD [\"a\"]\n";
    let got = dockerfile_instructions(text);
    let want =
        [("FROM", "x AS y"), ("RUN", "a && b"), ("EXPOSE", "3000"), ("HEALTHCHECK", "--interval=30s CMD [\"a\"]")];
    assert_eq!(got, want.map(|(a, b)| (a.to_string(), b.to_string())));
}

// --- The real artefacts, against the operations guide ---------------------------------------------------------

/// Metric names in the operations guide's metric table (rows starting with "| `audit_db_").
fn documented_metrics() -> BTreeSet<String> {
    let doc = read("docs/operations.md");
    let set: BTreeSet<String> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`').map(|(n, _)| n.to_string()))
        .filter(|n| n.starts_with("audit_db_"))
        .collect();
    assert!(set.len() >= 30, "docs/operations.md lists only {} metrics", set.len());
    set
}

/// Settings (environment variable names) in the operations guide's configuration table.
fn documented_settings() -> BTreeSet<String> {
    let doc = read("docs/operations.md");
    let section = doc.split("## Configuration").nth(1).expect("docs/operations.md has a Configuration section");
    let section = section.split("\n## ").next().unwrap();
    section
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`').map(|(n, _)| n.to_string()))
        .collect()
}

/// GitHub's anchors for the headings of a Markdown text.
fn heading_anchors(md: &str) -> BTreeSet<String> {
    md.lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| {
            l.trim_start_matches('#')
                .trim()
                .to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
                .map(|c| if c == ' ' { '-' } else { c })
                .collect()
        })
        .collect()
}

fn undocumented(used: impl IntoIterator<Item = String>, documented: &BTreeSet<String>) -> Vec<String> {
    used.into_iter()
        .filter(|n| !documented.contains(n) && !PROMETHEUS_SYNTHETIC_SERIES.contains(&n.as_str()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

#[test]
fn dashboard_uses_only_documented_metrics_and_keeps_the_seed_query() {
    let dash: serde_json::Value = serde_json::from_str(&read("deploy/grafana/audit-db-dashboard.json")).unwrap();
    assert!(dash["schemaVersion"].as_u64().unwrap() >= 36);
    assert_eq!(dash["templating"]["list"][0]["type"], "datasource");
    let exprs = dashboard_expressions(&dash);
    assert!(exprs.len() >= 30, "only {} queries", exprs.len());
    assert!(
        exprs.iter().any(|e| e == "histogram_quantile(0.95, rate(audit_db_operation_duration_seconds_bucket[5m]))")
    );
    assert!(exprs.iter().any(|e| e == "audit_db_cache_hit_rate"));
    let mut used = BTreeSet::new();
    for e in &exprs {
        used.extend(metric_names_in_promql(e).unwrap_or_else(|err| panic!("dashboard: {err}")));
    }
    let documented = documented_metrics();
    assert_eq!(undocumented(used.clone(), &documented), Vec::<String>::new(), "dashboard names undocumented metrics");
    for must in ["audit_db_circuit_breaker_state", "audit_db_replica_lag_seconds", "audit_db_checkpoint_age_seconds"] {
        assert!(used.contains(must), "dashboard does not show {must}");
    }
}

#[test]
fn alerts_use_only_documented_metrics_and_link_to_existing_runbook_sections() {
    let rules = alert_rules(&read("deploy/prometheus/alerts.yaml")).unwrap();
    assert!(rules.len() >= 10);
    let documented = documented_metrics();
    let anchors = heading_anchors(&read("docs/operations.md"));
    for r in &rules {
        assert!(r.is_alert, "{} is not an alert", r.name);
        let used = metric_names_in_promql(&r.expr).unwrap_or_else(|e| panic!("alert {}: {e}", r.name));
        assert!(!used.is_empty(), "alert {} names no metric", r.name);
        assert_eq!(undocumented(used, &documented), Vec::<String>::new(), "alert {}", r.name);
        assert!(matches!(r.labels.get("severity").map(String::as_str), Some("critical" | "warning")), "{}", r.name);
        assert!(r.annotations.contains_key("summary") && r.annotations.contains_key("description"), "{}", r.name);
        let runbook = r.annotations.get("runbook").unwrap_or_else(|| panic!("alert {} has no runbook", r.name));
        let anchor = runbook.strip_prefix("docs/operations.md#").unwrap_or_else(|| panic!("{}: {runbook}", r.name));
        assert!(anchors.contains(anchor), "alert {}: docs/operations.md has no heading #{anchor}", r.name);
    }
    let names: BTreeSet<&str> = rules.iter().map(|r| r.name.as_str()).collect();
    for must in [
        "AuditDbDown",
        "AuditDbCircuitBreakerOpen",
        "AuditDbReplicaLagHigh",
        "AuditDbCheckpointTooOld",
        "AuditDbTamperingDetected",
        "AuditDbPartitionMissingAhead",
        "AuditDbInsertErrors",
        "AuditDbArchiveDiskLow",
        "AuditDbArchiveNotWritable",
    ] {
        assert!(names.contains(must), "no alert {must}");
    }
}

/// All the manifests kustomization.yaml applies, as one multi-document text.
fn kustomized_manifests() -> String {
    let dir = "deploy/kubernetes";
    let files = kustomization_resources(&read(&format!("{dir}/kustomization.yaml"))).unwrap();
    assert!(files.iter().any(|f| f == "deployment.yaml") && files.iter().any(|f| f == "migration-job.yaml"));
    assert!(!files.iter().any(|f| f == "servicemonitor.yaml"), "the ServiceMonitor needs CRDs plain clusters lack");
    files.iter().map(|f| read(&format!("{dir}/{f}"))).collect::<Vec<_>>().join("\n---\n")
}

#[test]
fn kubernetes_manifests_set_only_documented_settings_and_probe_the_seed_paths() {
    let all = kustomized_manifests();
    let vars = manifest_env_vars(&all).unwrap();
    let settings = documented_settings();
    let unknown: Vec<_> = vars.iter().filter(|v| !settings.contains(*v)).collect();
    assert!(unknown.is_empty(), "manifests set variables audit-db does not read: {unknown:?}");
    for must in ["DATABASE_URL", "REDIS_URL", "LOG_FORMAT", "METRICS_ENABLED", "AUDIT_DB_LISTEN"] {
        assert!(vars.contains(must), "manifests do not set {must}");
    }
    let probes: BTreeSet<_> = manifest_probes(&all).unwrap().into_iter().collect();
    let want: BTreeSet<_> = [("/health".to_string(), 3000), ("/ready".to_string(), 3000)].into_iter().collect();
    assert_eq!(probes, want);
}

#[test]
fn compose_sets_only_documented_settings_and_prometheus_scrapes_the_service() {
    let compose = read("deploy/compose.yaml");
    let services = compose_audit_db_services(&compose).unwrap();
    for must in ["audit-db", "audit-db-migrate"] {
        assert!(services.iter().any(|s| s == must), "compose has no {must} service: {services:?}");
    }
    let vars = compose_env_vars(&compose, |p| std::fs::read_to_string(repo().join("deploy").join(p))).unwrap();
    let settings = documented_settings();
    let unknown: Vec<_> = vars.iter().filter(|v| !settings.contains(*v)).collect();
    assert!(unknown.is_empty(), "compose sets variables audit-db does not read: {unknown:?}");
    assert!(vars.contains("DATABASE_URL") && vars.contains("AUDIT_DB_READ_REPLICA_1"));

    let targets = prometheus_scrape_targets(&read("deploy/prometheus/prometheus.yml")).unwrap();
    let audit = targets.iter().find(|t| t.job == "audit-db").expect("a scrape job audit-db");
    assert_eq!((audit.target.as_str(), audit.metrics_path.as_str()), ("audit-db:3000", "/metrics"));
}

#[test]
fn dockerfile_health_check_asks_the_exposed_port_and_runs_as_non_root() {
    let ins = dockerfile_instructions(&read("deploy/Dockerfile"));
    let last = |name: &str| ins.iter().rev().find(|(i, _)| i == name).map(|(_, a)| a.clone());
    assert_eq!(last("EXPOSE").as_deref(), Some("3000"));
    let hc = last("HEALTHCHECK").expect("a HEALTHCHECK");
    assert!(hc.contains(r#"CMD ["audit-db", "health", "--service", "http://127.0.0.1:3000"]"#), "{hc}");
    assert!(hc.starts_with("--interval=30s --timeout=10s --start-period=5s --retries=3"), "{hc}");
    assert_eq!(last("ENTRYPOINT").as_deref(), Some(r#"["audit-db"]"#));
    assert_eq!(last("CMD").as_deref(), Some(r#"["serve"]"#));
    let user = last("USER").expect("a USER");
    assert!(!user.starts_with("root") && !user.starts_with('0'), "{user}");
    assert!(ins.iter().any(|(i, a)| i == "RUN" && a.contains("--uid \"${APP_UID}\"")));
    assert!(ins.iter().any(|(i, a)| i == "ARG" && a == "APP_UID=10001"));
    // The image's own ENV defaults are settings the service reads, too.
    let settings = documented_settings();
    let env: Vec<String> = ins
        .iter()
        .filter(|(i, _)| i == "ENV")
        .flat_map(|(_, a)| a.split_whitespace().filter_map(|kv| kv.split_once('=')).map(|(k, _)| k.to_string()))
        .collect();
    assert!(env.iter().any(|k| k == "AUDIT_DB_LISTEN"), "{env:?}");
    let unknown: Vec<_> = env.iter().filter(|k| !settings.contains(*k) && !k.starts_with("CARGO_PROFILE_")).collect();
    assert!(unknown.is_empty(), "the Dockerfile sets variables audit-db does not read: {unknown:?}");
}

#[test]
fn the_operations_guide_lists_exactly_the_metrics_of_the_one_list_with_their_types_and_labels() {
    let doc = read("docs/operations.md");
    let mut rows = std::collections::BTreeMap::new();
    for line in doc.lines().filter(|l| l.starts_with("| `audit_db_")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let name = cells[1].trim_matches('`').to_string();
        assert!(rows.insert(name.clone(), (cells[2].to_string(), cells[3].to_string())).is_none(), "{name} twice");
    }
    let listed: BTreeSet<&str> = audit_core::metrics::METRICS.iter().map(|m| m.name).collect();
    let documented: BTreeSet<&str> = rows.keys().map(String::as_str).collect();
    assert_eq!(
        documented.symmetric_difference(&listed).collect::<Vec<_>>(),
        Vec::<&&str>::new(),
        "docs/operations.md and audit_core::metrics::METRICS differ"
    );
    for m in audit_core::metrics::METRICS {
        let (kind, labels) = &rows[m.name];
        assert!(kind.starts_with(m.kind.as_str()), "{}: documented as {kind}, is a {}", m.name, m.kind.as_str());
        for l in m.labels {
            assert!(labels.contains(&format!("`{l}`")), "{}: label `{l}` not documented ({labels})", m.name);
        }
        if m.labels.is_empty() {
            assert!(labels.is_empty(), "{}: documented labels {labels}, it has none", m.name);
        }
    }
}
