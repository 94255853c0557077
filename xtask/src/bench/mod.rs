//! `cargo xtask bench`: the measures of the performance issue, each beside its same-run baseline.
//!
//! Flow: [`reexec_release`] (debug xtask) → `cargo run --release -p xtask -- bench-run …` → [`run`]: start the
//! environment ([`env::BenchEnv`]), run the selected groups (ingest, query, integrity, retention, cache), write
//! `target/bench/results.json` and `results.md`, print the table, optionally rewrite `docs/benchmarks.md`.

pub(crate) mod cache_rss;
pub(crate) mod env;
pub(crate) mod http;
pub(crate) mod index;
pub(crate) mod ingest;
pub(crate) mod integrity;
pub(crate) mod measure;
pub(crate) mod overload;
pub(crate) mod privacy;
pub(crate) mod query;
pub(crate) mod replica;
pub(crate) mod report;
pub(crate) mod retention;
pub(crate) mod rows;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::Instant;

use anyhow::{Context as _, bail};
use audit_server::config::AuditConfig;
use chrono::{DateTime, Utc};
use serde_json::json;

use measure::{Measure, Results};

/// Arguments shared by `bench` and `bench-run`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct BenchArgs {
    /// Quick mode: ~1M rows, ≤ 5 minutes on 2 cores (default: full, 10M rows, ≤ 60 minutes).
    #[arg(long)]
    pub quick: bool,
    /// Use this PostgreSQL server (fresh databases are created on it and dropped at the end) instead of a private
    /// cluster.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Run only these groups or measures (comma-separated): ingest, privacy, query, integrity, retention, cache, replica,
    /// http, index, or any measure name (its group runs).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Rows of the bulk ingest (overrides the mode's size; for trying the harness).
    #[arg(long)]
    pub rows: Option<usize>,
    /// Workload seed.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Where to write results.json (default: target/bench/results.json under the workspace root).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Also rewrite docs/benchmarks.md from this run.
    #[arg(long)]
    pub update_docs: bool,
    /// Leave the private cluster / databases and the temp directory in place.
    #[arg(long)]
    pub keep: bool,
    /// Allow `bench-run` in an unoptimised build (numbers are then meaningless; for developing the harness).
    #[arg(long, hide = true)]
    pub allow_debug: bool,
}

impl BenchArgs {
    fn to_args(&self) -> Vec<String> {
        let mut a = Vec::new();
        if self.quick {
            a.push("--quick".to_string());
        }
        if !self.only.is_empty() {
            a.extend(["--only".to_string(), self.only.join(",")]);
        }
        if let Some(r) = self.rows {
            a.extend(["--rows".to_string(), r.to_string()]);
        }
        a.extend(["--seed".to_string(), self.seed.to_string()]);
        if let Some(o) = &self.out {
            a.extend(["--out".to_string(), o.display().to_string()]);
        }
        if self.update_docs {
            a.push("--update-docs".to_string());
        }
        if self.keep {
            a.push("--keep".to_string());
        }
        a
    }
}

/// Sizes of one mode.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sizes {
    /// Rows of the bulk ingest (also the data set the queries run on).
    pub rows: usize,
    /// Rows per alternation round of the bulk ingest.
    pub round: usize,
    /// Events of the 1,000-task concurrent ingest.
    pub concurrent: usize,
    /// Seconds the one-INSERT-per-transaction baseline runs.
    pub per_call_secs: u64,
    /// Timed iterations per query kind (after warm-up).
    pub query_iters: usize,
    /// Operations of the realistic read mix.
    pub mix_ops: usize,
    /// Rows of the month retention drops.
    pub retention_rows: usize,
    /// Minutes of the overload group's soak.
    pub soak_minutes: u64,
}

impl Sizes {
    fn for_mode(quick: bool, rows: Option<usize>) -> Self {
        let mut s = if quick {
            Self {
                rows: 1_000_000,
                round: 50_000,
                concurrent: 100_000,
                per_call_secs: 10,
                query_iters: 250,
                mix_ops: 4_000,
                retention_rows: 200_000,
                soak_minutes: 2,
            }
        } else {
            Self {
                rows: 10_000_000,
                round: 250_000,
                concurrent: 500_000,
                per_call_secs: 20,
                query_iters: 1_000,
                mix_ops: 20_000,
                retention_rows: 1_000_000,
                soak_minutes: 10,
            }
        };
        if let Some(r) = rows {
            s.rows = r.max(1);
            s.round = s.round.min(s.rows);
            s.concurrent = s.concurrent.min(s.rows.max(1_000));
            s.retention_rows = s.retention_rows.min(s.rows.max(1_000));
        }
        s
    }
}

/// The experiment groups, in run order.
pub(crate) const GROUPS: [&str; 10] =
    ["cache", "ingest", "privacy", "query", "integrity", "retention", "replica", "http", "index", "overload"];

/// Group of each measure name this harness emits with a target.
pub(crate) const MEASURE_GROUPS: &[(&str, &str)] = &[
    ("ingest_bulk_ratio_vs_copy", "ingest"),
    ("ingest_concurrent_ratio_vs_copy", "ingest"),
    ("ingest_concurrent_ratio_vs_per_call_insert", "ingest"),
    ("ingest_bulk_ratio_vs_heap_copy", "ingest"),
    ("wal_bytes_per_event", "ingest"),
    ("seal_seconds_per_million_events", "ingest"),
    ("ingest_bulk_ratio_privacy_on_vs_off", "privacy"),
    ("query_uncached_p50_ms", "query"),
    ("query_uncached_p99_ms", "query"),
    ("query_l1_hit_p50_us", "query"),
    ("query_l2_hit_p50_us", "query"),
    ("verify_leaves_per_sec_per_core", "integrity"),
    ("verify_ratio_vs_in_memory", "integrity"),
    ("proof_bytes", "integrity"),
    ("proof_p50_ms", "integrity"),
    ("verify_in_memory_value_path_leaves_per_sec", "integrity"),
    ("retention_drop_ratio_vs_delete", "retention"),
    ("retention_reader_max_block_ms", "retention"),
    ("retention_archive_ratio_vs_compress", "retention"),
    ("l1_rss_ratio_vs_max_size", "cache"),
    ("replica_read_scaling", "replica"),
    ("replica_ryw_wait_p99_ms", "replica"),
    ("replica_ryw_wait_p99_ms_waiting", "replica"),
    ("index_build_writer_max_block_ms", "index"),
    ("index_recommend_query_speedup", "index"),
    ("http_ingest_ratio_vs_library", "http"),
    ("http_query_p50_ms", "http"),
    ("overload_rss_ratio", "overload"),
    ("overload_other_5xx", "overload"),
    ("soak_rss_growth_pct", "overload"),
];

/// Resolves `--only` to a set of groups; unknown names are an error naming the valid ones.
pub(crate) fn selected_groups(only: &[String]) -> anyhow::Result<Vec<&'static str>> {
    if only.is_empty() {
        return Ok(GROUPS.to_vec());
    }
    let mut out = Vec::new();
    for name in only.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        let group = GROUPS
            .iter()
            .copied()
            .find(|g| *g == name)
            .or_else(|| MEASURE_GROUPS.iter().find(|(m, _)| *m == name).map(|(_, g)| *g));
        match group {
            Some(g) if !out.contains(&g) => out.push(g),
            Some(_) => {}
            None => bail!(
                "--only: unknown name `{name}`; use a group ({}) or a measure ({})",
                GROUPS.join(", "),
                MEASURE_GROUPS.iter().map(|(m, _)| *m).collect::<Vec<_>>().join(", ")
            ),
        }
    }
    Ok(GROUPS.iter().copied().filter(|g| out.contains(g)).collect())
}

static STARTED: OnceLock<Instant> = OnceLock::new();

/// Prints a progress line on stderr with the time since the run started.
pub(crate) fn progress(msg: impl AsRef<str>) {
    let t = STARTED.get_or_init(Instant::now).elapsed().as_secs_f64();
    eprintln!("[{t:>7.1}s] {}", msg.as_ref());
}

/// What every experiment gets.
#[derive(Debug)]
pub(crate) struct Ctx {
    /// The environment.
    pub env: env::BenchEnv,
    /// Sizes of the mode.
    pub sizes: Sizes,
    /// Workload seed.
    pub seed: u64,
    /// The run's fixed "now": workload times and query windows are relative to it.
    pub now: DateTime<Utc>,
    /// Base configuration of every client (pool sizes, cache, breaker defaults); URLs are filled per database.
    pub config: AuditConfig,
}

impl Ctx {
    /// The workload shape of the ingest data set (the audit-server default: 300 organisations, 50k principals,
    /// 60 days, 2 % in the last hour).
    pub(crate) fn shape(&self) -> audit_server::workload::WorkloadShape {
        audit_server::workload::WorkloadShape::default()
    }

    /// The partitions the ingest data set needs: `[now - span - 1 day, now + 1 day]`.
    pub(crate) fn covering(&self) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
        let span = chrono::Duration::days(self.shape().span_days + 1);
        vec![(self.now - span, self.now + chrono::Duration::days(1))]
    }
}

/// `cargo xtask bench`: run `bench-run` from an optimised build.
pub(crate) fn reexec_release(args: &BenchArgs) -> anyhow::Result<ExitCode> {
    if !cfg!(debug_assertions) {
        // Already optimised (e.g. `cargo run --release -p xtask -- bench`): no need to build again.
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        return rt.block_on(run(args.clone()));
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut cmd = std::process::Command::new(cargo);
    cmd.current_dir(crate::workspace_root())
        .args(["run", "--release", "--quiet", "-p", "xtask", "--", "bench-run"])
        .args(args.to_args());
    if let Some(url) = &args.database_url {
        // Through the environment, not the command line, so that a password never shows in `ps`.
        cmd.env("DATABASE_URL", url);
    }
    eprintln!(
        "cargo xtask bench: building xtask with --release and running `xtask bench-run` (see docs/benchmarks.md)"
    );
    let status = cmd.status().context("running cargo")?;
    Ok(if status.success() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// `bench-run`: the whole suite in this process.
pub(crate) async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    if cfg!(debug_assertions) && !args.allow_debug {
        bail!("bench-run needs an optimised build: use `cargo xtask bench` (it re-executes with --release)");
    }
    let _ = STARTED.set(Instant::now());
    let groups = selected_groups(&args.only)?;
    let sizes = Sizes::for_mode(args.quick, args.rows);
    let mode = if args.quick { "quick" } else { "full" };
    progress(format!("audit-db bench, {mode} mode: groups {}; {sizes:?}", groups.join(", ")));
    let started_at = Utc::now();

    let env = env::BenchEnv::start(args.database_url.clone(), args.keep).await?;
    let mut config = AuditConfig::default();
    config.cache.key_prefix = env.key_prefix.clone();
    let now = audit_core::event::truncate_to_micros(Utc::now());
    let ctx = Ctx { env, sizes, seed: args.seed, now, config };

    let mut measures: Vec<Measure> = Vec::new();
    let outcome = run_groups(&ctx, &groups, &mut measures).await;
    if let Err(e) = &outcome {
        progress(format!("the run stopped early: {e:#}"));
    }

    let server = ctx.env.describe_server().await.unwrap_or_else(|e| json!({"error": format!("{e:#}")}));
    let mut machine = env::machine();
    machine["postgres"] = server;
    machine["redis"] = ctx.env.redis_desc();
    machine["started_at"] = json!(started_at.to_rfc3339());
    machine["duration_s"] = json!((Utc::now() - started_at).num_milliseconds() as f64 / 1e3);
    machine["groups"] = json!(groups);
    machine["sizes"] = json!({
        "rows": sizes.rows, "round": sizes.round, "concurrent": sizes.concurrent,
        "per_call_secs": sizes.per_call_secs, "query_iters": sizes.query_iters, "mix_ops": sizes.mix_ops,
        "retention_rows": sizes.retention_rows, "seed": args.seed,
    });
    let results = Results { mode: mode.to_string(), machine, measures };
    ctx.env.shutdown().await;

    let out = args.out.clone().unwrap_or_else(|| crate::workspace_root().join("target/bench/results.json"));
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&results)?)
        .with_context(|| format!("writing {}", out.display()))?;
    let md = report::markdown(&results, &args);
    let md_path = out.with_extension("md");
    std::fs::write(&md_path, &md).with_context(|| format!("writing {}", md_path.display()))?;
    if args.update_docs {
        let docs = crate::workspace_root().join("docs/benchmarks.md");
        std::fs::write(&docs, &md).with_context(|| format!("writing {}", docs.display()))?;
        progress(format!("wrote {}", docs.display()));
    }
    println!("\naudit-db benchmarks ({mode} mode)\n");
    println!("{}", measure::text_table(&results.measures));
    println!("results: {}\nreport:  {}", out.display(), md_path.display());
    outcome.map(|()| ExitCode::SUCCESS)
}

async fn run_groups(ctx: &Ctx, groups: &[&str], measures: &mut Vec<Measure>) -> anyhow::Result<()> {
    // The query group needs the ingest data set: the ingest group leaves it behind, otherwise it is loaded untimed.
    let mut dataset: Option<ingest::Dataset> = None;
    for g in groups {
        progress(format!("== {g}"));
        match *g {
            "cache" => measures.extend(cache_rss::run(ctx).await?),
            "ingest" => {
                let (ms, ds) = ingest::run(ctx).await?;
                measures.extend(ms);
                dataset = Some(ds);
            }
            "query" => {
                let ds = match dataset.take() {
                    Some(ds) => ds,
                    None => ingest::load_untimed(ctx).await?,
                };
                measures.extend(query::run(ctx, &ds).await?);
                dataset = Some(ds);
            }
            "integrity" => measures.extend(integrity::run(ctx, dataset.as_ref()).await?),
            "retention" => measures.extend(retention::run(ctx).await?),
            "privacy" => measures.extend(privacy::run(ctx).await?),
            "replica" => measures.extend(replica::run(ctx).await?),
            "index" => measures.extend(index::run(ctx).await?),
            "http" => measures.extend(http::run(ctx).await?),
            "overload" => measures.extend(overload::run(ctx).await?),
            other => bail!("unknown group {other}"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_accepts_groups_and_measure_names_and_keeps_run_order() {
        assert_eq!(selected_groups(&[]).unwrap(), GROUPS.to_vec());
        let g = selected_groups(&["retention".into(), "query_l1_hit_p50_us".into(), "query".into()]).unwrap();
        assert_eq!(g, vec!["query", "retention"]);
        let e = selected_groups(&["nope".into()]).unwrap_err().to_string();
        assert!(e.contains("nope") && e.contains("ingest_bulk_ratio_vs_copy"), "{e}");
        for (m, g) in MEASURE_GROUPS {
            assert!(GROUPS.contains(g), "{m} → {g}");
        }
    }

    #[test]
    fn args_survive_the_re_execution() {
        use clap::Parser;
        #[derive(Debug, Parser)]
        struct P {
            #[command(flatten)]
            a: BenchArgs,
        }
        let a = BenchArgs {
            quick: true,
            database_url: None,
            only: vec!["ingest".into(), "query".into()],
            rows: Some(1000),
            seed: 5,
            out: Some(PathBuf::from("/tmp/r.json")),
            update_docs: true,
            keep: false,
            allow_debug: false,
        };
        let mut argv = vec!["x".to_string()];
        argv.extend(a.to_args());
        let p = P::try_parse_from(argv).unwrap();
        assert_eq!(p.a.to_args(), a.to_args());
    }

    #[test]
    fn sizes_of_the_modes() {
        let q = Sizes::for_mode(true, None);
        let f = Sizes::for_mode(false, None);
        assert_eq!((q.rows, f.rows), (1_000_000, 10_000_000));
        assert_eq!(q.rows % q.round, 0);
        assert_eq!(f.rows % f.round, 0);
        let t = Sizes::for_mode(true, Some(20_000));
        assert_eq!((t.rows, t.round), (20_000, 20_000));
    }
}
