//! Running the `audit-db` binary the way a user does, and reading what it prints — shared by the CLI test files
//! (`#[path = "support/cli.rs"] mod cli;`), so that every test starts the binary in the same clean environment.
#![allow(dead_code, unreachable_pub)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use chrono::{Duration, SecondsFormat, Utc};
use serde_json::Value;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_audit-db");

/// `audit-db args…` in a clean environment: every variable the configuration reads (`audit_server::config::
/// ENVIRONMENT`, the numbered replica variables, `AUDIT_DB_CONFIG`) and `RUST_LOG` removed, so that a developer's
/// shell cannot change what a test sees; `LOG_LEVEL=info`, so the lines tests read from stderr are printed. Add
/// what the test needs with `.env(…)`.
pub fn command(args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args);
    for name in inherited_settings() {
        c.env_remove(name);
    }
    c.env("LOG_LEVEL", "info");
    c
}

/// [`command`] as a tokio process (the test's runtime keeps serving proxies meanwhile), killed if the test ends
/// first.
pub fn async_command(args: &[&str]) -> tokio::process::Command {
    let mut c = tokio::process::Command::from(command(args));
    c.kill_on_drop(true);
    c
}

/// The names [`command`] removes from the inherited environment.
fn inherited_settings() -> Vec<String> {
    let mut names: Vec<String> = audit_server::config::ENVIRONMENT.iter().map(|(k, _)| k.to_string()).collect();
    names.extend(["AUDIT_DB_CONFIG".to_string(), "RUST_LOG".to_string()]);
    names.extend(
        std::env::vars_os()
            .filter_map(|(k, _)| k.into_string().ok())
            .filter(|k| k.starts_with(audit_server::config::REPLICA_ENV_PREFIX)),
    );
    names
}

/// Runs `audit-db args…` against the database at `url` with extra `env`, and waits for it.
pub fn run(url: &str, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut c = command(args);
    c.env("DATABASE_URL", url);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("audit-db runs")
}

/// Runs `audit-db args…` with no database and no key in the environment (what an auditor has).
pub fn run_offline(args: &[&str]) -> Output {
    command(args).output().expect("audit-db runs")
}

/// Its stdout, as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Its stderr, as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts that the run succeeded, showing both streams when not.
pub fn ok(o: &Output, what: &str) {
    assert!(o.status.success(), "{what} failed ({:?})\nstdout: {}\nstderr: {}", o.status, stdout(o), stderr(o));
}

/// The last stdout line as JSON (the summary `ingest` prints).
pub fn summary(o: &Output) -> Value {
    let out = stdout(o);
    serde_json::from_str(out.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("summary line is JSON ({e}): {out}\nstderr: {}", stderr(o)))
}

/// The counts of an `ingest` summary, after checking its `commit_lsn`: a WAL position (`16/B374D848`), or null when
/// nothing was committed.
pub fn counts(summary: &Value) -> Value {
    let lsn = &summary["commit_lsn"];
    let is_lsn = |s: &str| {
        s.split_once('/')
            .is_some_and(|(hi, lo)| u32::from_str_radix(hi, 16).is_ok() && u32::from_str_radix(lo, 16).is_ok())
    };
    assert!(lsn.is_null() || lsn.as_str().is_some_and(is_lsn), "commit_lsn is a WAL position or null: {summary}");
    let mut counts = summary.clone();
    counts.as_object_mut().expect("the summary is an object").remove("commit_lsn");
    counts
}

/// Every non-empty stdout line as JSON (NDJSON output).
pub fn json_lines(o: &Output) -> Vec<Value> {
    stdout(o)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("stdout line is JSON ({e}): {l}")))
        .collect()
}

/// Runs a command that must succeed and print one JSON document, and returns the document.
pub fn json_of(url: &str, env: &[(&str, &str)], args: &[&str]) -> Value {
    let o = run(url, env, args);
    assert!(o.status.success(), "{args:?} failed ({:?})\nstdout: {}\nstderr: {}", o.status, stdout(&o), stderr(&o));
    serde_json::from_str(&stdout(&o)).unwrap_or_else(|e| panic!("{args:?} prints JSON ({e}): {}", stdout(&o)))
}

/// `now - ago` as RFC 3339 with microseconds, as producers send timestamps.
pub fn ts(ago: Duration) -> String {
    (Utc::now() - ago).to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Writes one line per item to `dir/name` and returns the path.
pub fn write_lines(dir: &Path, name: &str, lines: &[impl std::fmt::Display]) -> PathBuf {
    let path = dir.join(name);
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    for l in lines {
        writeln!(f, "{l}").unwrap();
    }
    f.flush().unwrap();
    path
}
