//! `cargo xtask chaos` and `cargo xtask fuzz`: longer runs of the reliability tests.
//!
//! The fault scenarios and the fuzz properties live once, in audit-server's test files
//! (`tests/crash_accounting.rs`, `tests/fuzz_inputs.rs`), with their accounting checker in audit-testkit; these
//! commands build the test binaries once and run them many times with a seed (`AUDIT_CHAOS_SEED`) or a case count
//! (`AUDIT_FUZZ_CASES`), so a long run and the suite's short run exercise the same code.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use audit_testkit::accounting::Seeded;
use clap::Args;

/// The fault kinds `chaos` chooses from: (name, test function).
pub(crate) const FAULTS: &[(&str, &str)] = &[
    ("serve-kill", "kill_9_of_serve_during_http_ingest_loses_no_acknowledged_event"),
    ("ingest-kill", "kill_9_of_ingest_mid_file_then_the_same_file_again_stores_every_line_once"),
    ("postgres-crash", "a_postgres_crash_during_library_ingest_loses_no_acknowledged_event"),
    ("postmaster-kill", "kill_9_of_the_postmaster_during_library_ingest_loses_no_acknowledged_event"),
    ("redis-kill", "redis_killed_during_a_read_write_mix_leaves_every_answer_fresh_and_correct"),
    ("archive-unwritable", "an_unwritable_archive_during_retention_drops_nothing"),
    ("archive-full", "a_full_archive_disk_during_retention_drops_nothing_and_a_later_run_archives_everything"),
];

/// Arguments of `cargo xtask chaos`.
#[derive(Debug, Args)]
pub(crate) struct ChaosArgs {
    /// Trials to run (at most; `--seconds` may stop earlier).
    #[arg(long, default_value_t = 20)]
    trials: u32,
    /// Stop starting new trials after this many seconds.
    #[arg(long, default_value_t = 600)]
    seconds: u64,
    /// Seed of the run (printed; give it again to replay the same faults and timings).
    #[arg(long)]
    seed: Option<u64>,
    /// Only this fault kind (serve-kill, ingest-kill, postgres-crash, postmaster-kill, redis-kill,
    /// archive-unwritable, archive-full).
    #[arg(long)]
    only: Option<String>,
}

/// Arguments of `cargo xtask fuzz`.
#[derive(Debug, Args)]
pub(crate) struct FuzzArgs {
    /// Cases per property (the suite runs 64–512).
    #[arg(long, default_value_t = 10_000)]
    cases: u32,
}

/// Builds an audit-server test binary (and `audit-db`, which the tests run) and returns its path.
fn build_test(name: &str) -> anyhow::Result<PathBuf> {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(crate::workspace_root())
        .args(["test", "-p", "audit-server", "--test", name, "--no-run", "--message-format=json"])
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the {name} tests failed");
    }
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        if v["reason"] == "compiler-artifact"
            && v["target"]["name"] == name
            && v["profile"]["test"] == true
            && let Some(exe) = v["executable"].as_str()
        {
            return Ok(PathBuf::from(exe));
        }
    }
    bail!("cargo did not name the {name} test binary")
}

/// Runs one test function of a test binary with `env`; returns (passed, its output).
fn run_test(exe: &PathBuf, test: &str, env: &[(&str, String)]) -> anyhow::Result<(bool, String)> {
    let mut c = Command::new(exe);
    c.current_dir(crate::workspace_root().join("crates/audit-server")).args([
        test,
        "--exact",
        "--nocapture",
        "--test-threads=1",
    ]);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().with_context(|| format!("running {}", exe.display()))?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Ok((out.status.success(), text))
}

/// `cargo xtask chaos`: random fault kinds and timings from one seed; every trial's accounting must be clean.
pub(crate) fn chaos(args: &ChaosArgs) -> anyhow::Result<ExitCode> {
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
    });
    println!("chaos: seed {seed} (replay: cargo xtask chaos --seed {seed} --trials {})", args.trials);
    let faults: Vec<&(&str, &str)> =
        FAULTS.iter().filter(|(name, _)| args.only.as_deref().is_none_or(|o| o == *name)).collect();
    if faults.is_empty() {
        bail!("--only: no fault kind `{}`", args.only.as_deref().unwrap_or_default());
    }
    let exe = build_test("crash_accounting")?;
    let mut rng = Seeded::new(seed);
    let started = Instant::now();
    let mut per_kind: BTreeMap<&str, (u32, u32)> = BTreeMap::new();
    let mut failed = Vec::new();
    for trial in 0..args.trials {
        if started.elapsed() > Duration::from_secs(args.seconds) {
            break;
        }
        let (name, test) = faults[rng.range(0, faults.len() as u64) as usize];
        let trial_seed = rng.next_u64();
        let t0 = Instant::now();
        let (ok, text) =
            run_test(&exe, test, &[("AUDIT_CHAOS_SEED", trial_seed.to_string()), ("AUDIT_CHAOS_TRIALS", "1".into())])?;
        let e = per_kind.entry(name).or_default();
        e.0 += 1;
        let detail: Vec<&str> = text.lines().filter(|l| l.starts_with("trial ")).collect();
        println!(
            "trial {trial}: {name} (AUDIT_CHAOS_SEED={trial_seed}) {} in {:.1}s  {}",
            if ok { "ok" } else { "FAILED" },
            t0.elapsed().as_secs_f64(),
            detail.join(" | ")
        );
        if !ok {
            e.1 += 1;
            eprintln!("{text}");
            failed.push(format!("{name} AUDIT_CHAOS_SEED={trial_seed}"));
        }
    }
    println!("chaos summary (seed {seed}, {:.0}s):", started.elapsed().as_secs_f64());
    for (name, (n, bad)) in &per_kind {
        println!("  {name:<20} {n:>4} trials  {bad} failed");
    }
    if failed.is_empty() {
        println!("every trial: 0 acknowledged events lost, 0 duplicates, seq gap-free, verify clean");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("failed (replay one with AUDIT_CHAOS_SEED=… cargo test -p audit-server --test crash_accounting):");
        for f in &failed {
            println!("  {f}");
        }
        Ok(ExitCode::FAILURE)
    }
}

/// `cargo xtask fuzz --cases N`: every fuzz property with N cases.
pub(crate) fn fuzz(args: &FuzzArgs) -> anyhow::Result<ExitCode> {
    let exe = build_test("fuzz_inputs")?;
    let mut c = Command::new(&exe);
    c.current_dir(crate::workspace_root().join("crates/audit-server"))
        .args(["--nocapture", "--test-threads=1"])
        .env("AUDIT_FUZZ_CASES", args.cases.to_string());
    let started = Instant::now();
    let out = c.output().context("running the fuzz tests")?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // libtest prints `test name ... ` before a test's own output, on the same line.
    for line in text.lines().filter_map(|l| l.find("fuzz ").map(|i| &l[i..])) {
        println!("{line}");
    }
    println!("fuzz: {:.0}s", started.elapsed().as_secs_f64());
    if out.status.success() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("{text}");
        Ok(ExitCode::FAILURE)
    }
}
