//! The Markdown report (`target/bench/results.md`, and `docs/benchmarks.md` with `--update-docs`).

use std::fmt::Write as _;

use serde_json::Value;

use super::BenchArgs;
use super::measure::{Measure, Results, markdown_table};

/// What each measure does, exactly (kept next to the code that measures it).
const METHOD: &str = r#"## What each measure does

All experiments run in one process built with `--release`, against fresh databases created from `migrations/`
(one per experiment, identical schema and partitions), with `fsync`, `synchronous_commit` and `full_page_writes`
on. Candidate and baseline always process the *same workload rows* (`audit_server::workload`, seeded; 300
organisations, 50k principals, 60 days, ~200-byte details). Where both sides write, they alternate round by round
(which goes first flips each round) so that a checkpoint or a noisy neighbour hits both; a `CHECKPOINT` precedes
each phase.

| measure | candidate | baseline |
|---|---|---|
| `ingest_bulk_ratio_vs_copy` | `AuditClient::insert_batch` of JSON events (validation, per-organisation `seq` under head-row locks, leaf hashes, id draw, binary COPY in 10,000-event transactions, cache invalidation) through the production wiring (`App::client`: partition manager, `TieredCache` with Redis, resilience policy) | binary COPY (`BinaryCopyInWriter`) of the same rows — the same 20 columns including `id`, `seq` and a 32-byte leaf hash computed before the timed region — in 10,000-row transactions into the `copy` database |
| `ingest_bulk_ratio_vs_heap_copy` | as `ingest_bulk_ratio_vs_copy` | binary COPY of the same rows into the `heap` database: the same partitions with only the primary key (every other index of `audit_log` dropped) — what PostgreSQL can take |
| `wal_bytes_per_event` | WAL written (`pg_current_wal_lsn()` before and after each `insert_batch` call, summed) ÷ events, chosen layout | the same for `insert_batch` into the `todays_set` database (the layout before issue 14: GIN on `details` on every partition); `ingest_bulk_ratio_vs_todays_set` (info) compares their rates. The four bulk sides (chosen, today's set, copy, heap) rotate which goes first every round |
| `ingest_copy_lean_ratio_vs_heap_copy` (info) | binary COPY into the `lean` database: the candidate's layout without `(principal_id, action, timestamp)` and `(action, status, timestamp)` (the alternative of building those at seal time too) | binary COPY into `heap` (primary key only) |
| `seal_seconds_per_million_events` (info) | `PartitionManager::seal_due` after the ingest: every partition whose period is over gets its GIN on `details` (`CREATE INDEX CONCURRENTLY` per leaf) and `VACUUM (FREEZE, ANALYZE)`; seconds ÷ rows sealed × 10⁶ | — |
| `ingest_concurrent_ratio_vs_copy` | 1,000 tokio tasks, each calling `AuditClient::insert` and awaiting its durable acknowledgement before sending its next event (group commit) | binary COPY of the same rows, 10,000 per transaction |
| `ingest_concurrent_ratio_vs_per_call_insert` | as above | the seed's way: 1,000 tasks, one plain prepared `INSERT` per transaction (autocommit) over a pool of `database.poolSize` (10) connections, for 10 s (quick) / 20 s (full); same rows with a fresh `event_id` |
| `query_uncached_p50_ms`, `query_uncached_p99_ms` | `AuditClient::query` with `audit_core::NoCache` for five query kinds: the seed's four example queries (organisation + 30-day window; PHI access at a hospital in the last 30 days; failed `user_authentication` in the last hour; principal + action) and `details @> {"access_reason":"billing"}` at one hospital over 30 days, 16 parameter sets each, N iterations per query after a warm-up pass | the client's own SQL text and encoded parameters (`audit_client::query_statement`) as a raw tokio-postgres prepared statement on the client's session settings, interleaved with the candidate (the bench's hand-written equivalent with a custom plan per execution is in the details) |
| `query_uncached_ratio_vs_raw_sql` | p50 of `AuditClient::query` (cache off) per kind, the worst kind as the value | p50 of the very statement the client sends (same SQL text, parameters and session settings), prepared once and run raw, interleaved with the candidate; rows fetched, not decoded |
| `query_uncached_p50_ms_<kind>_<age>` (info) | the same client, each kind restricted to `sealed` partitions (the same window length ending where the current period starts) or to the partition still `written` (current period start → now); EXPLAIN (indexes, partitions) of the same SQL in the details | — |
| `query_l1_hit_p50_us` | the same queries answered from L1: `TieredCache` without Redis (`maxSizeMB` 64, `localStalenessMs` raised so a long loop stays valid), only answers with tier `l1` counted | the cache-off p50 of the same run |
| `query_l2_hit_p50_us` | the same queries answered from Redis: `TieredCache` with Redis, L1 emptied (`clear_l1`) before every timed call, only answers with tier `l2` counted | the cache-off p50 of the same run |
| `verify_leaves_per_sec_per_core`, `verify_ratio_vs_in_memory` | `IntegrityStore::verify` (full, not incremental) over every log after `IntegrityStore::checkpoint` sealed them all (rows read with binary COPY out, canonical form written from the fields without a `serde_json::Value`, up to 4 logs at once): leaves ÷ wall seconds ÷ max(1, cores used by the verifying process) | the same per-leaf work on a sample of the same rows in memory on one core (the same binary COPY bytes parsed, canonical leaf hash, Merkle root); the ratio is the first ÷ this. `verify_in_memory_value_path_leaves_per_sec` (info): the previous floor, `StoredEvent` with `details` as a `serde_json::Value` |
| `proof_p50_ms` (info) | `IntegrityStore::inclusion_proof` at 40 spread positions of the largest log: stored nodes (`audit_log_nodes`) plus at most two 256-leaf tiles; rows read per proof in the details | the whole-tree method it replaced, same log and run: every row of the log read and decoded, leaves recomputed, `MerkleTree` built (5 positions) |
| `proof_bytes` | audit path of the inclusion proof (`IntegrityStore::inclusion_proof`) of position 0 (the longest path) in the largest log, 32 bytes per hash | size of the whole `audit-db proof` JSON (with the signed checkpoint) |
| `retention_drop_ratio_vs_delete` | `PartitionManager::retention(false)` dropping January 2018, timed by the manager per step: `DETACH … CONCURRENTLY` + the drop that ends its retention transaction (hold re-check against what the archive saw, `DROP TABLE`, log, COMMIT; the archive and the copy of the leaf hashes precede it in that transaction and are excluded, both in the details with the manager's whole time) | `DELETE` + `VACUUM` of the same month in `bench_plain_log`, an ordinary table with the same columns, constraints, indexes and rows (audit_log refuses DELETE by trigger). value = (DELETE + VACUUM) time ÷ (detach + drop) time |
| `retention_archive_ratio_vs_compress` | the manager's archive step: rows ÷ seconds (cursor read, NDJSON, gzip, fsync, manifest) | the same rows (a sample of up to 200k) encoded as the archive's JSON lines and gzip-compressed (same codec and level) in memory on one core |
| `retention_reader_max_block_ms` | longest query of a reader running back-to-back (organisation + 30-day window and principal + action over all partitions) that overlapped the drop | the same reader's longest query before the drop |
| `replica_read_scaling` | 16 tasks running the organisation + 30-day query back to back through `AuditClient::query_with(…, Eventual)` (no cache) with `ReplicaRouter` (`least_connections`) over two streaming replicas of a private primary (this group brings its own three clusters, on the same machine) | the same tasks and queries with every read on the primary; runs alternate, value = replicas' queries/s ÷ primary's |
| `replica_ryw_wait_p99_ms` | both replicas apply WAL 100 ms late (`recovery_min_apply_delay`); insert one event, then read it back by id at the default consistency (read-your-writes, default `readYourWritesWaitMs`) | the same loop reading with `Strong` (primary); value = p99 difference, ms (`_waiting`: the same with a 250 ms wait bound, so reads wait for a replica) |
| `l1_rss_ratio_vs_max_size` | resident memory (VmRSS) added by an L1 of `maxSizeMB` 64 filled with realistic pages (100 events each) until it had evicted for twice as long as it took to fill, in a fresh child process | the configured 64 MiB |
| `overload_rss_ratio` | peak VmRSS of `audit-db serve` (the binary of this build, on a fresh database) while 64 clients post 2,000-event NDJSON batches to `POST /v1/events:batch` back to back with no pacing, 20 s (quick) / 60 s (full); 429/503 counts and offered ÷ absorbed events/s in the details | peak VmRSS of the same serve while one client posts 500-event batches with 100 ms pauses, same duration, measured first |
| `overload_other_5xx` | answers with a 5xx other than 503 in both phases above (target 0: 429/503 + Retry-After is the shedding) | — |
| `soak_rss_growth_pct` | `cargo xtask soak`'s mixed load for 2 (quick) / 10 (full) minutes: max VmRSS of serve in the last minute vs minute 1 (the warm-up), in percent; the run must end with clean accounting and `verify` | — |
| `http_ingest_ratio_vs_library` | `POST /v1/events:batch` (NDJSON, admin API key, reads not audited) to the router `audit-db serve` runs, served in the benchmark process on a local port; rounds of 10,000 events; the answer read to its summary line | `AuditClient::insert_batch` of the same rows into a second fresh database, alternating round by round |
| `http_query_p50_ms` | `GET /v1/events?org=O&limit=50` through the same service (auth, parameter parsing, routing, JSON), organisations in turn, cache on | — (target only) |

Informational lines (no target): `ingest_peak_rss_mb` (VmHWM of the benchmark process after ingest),
`query_partitions_scanned_*` (from `EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)`: partitions whose scan ran, of all leaf
partitions; the plan's partitions, pruned subplans and indexes are in `results.json`), `query_mix_hit_ratio`
(4 tasks, 95 % reads Zipf-distributed over organisations and principals, 5 % inserts of new events that invalidate,
production `TieredCache` with Redis).

For every throughput ratio, `value = candidate ÷ baseline`; for the retention ratio, which compares times, `value =
(DELETE + VACUUM) time ÷ drop time` (the drop's rate over the DELETE's rate). Benchmarks are not tests: nothing here is asserted
in the test suite.
"#;

fn machine_table(m: &Value) -> String {
    let s = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "—".to_string(),
        other => other.to_string(),
    };
    let pg = &m["postgres"];
    let settings = pg["settings"]
        .as_object()
        .map(|o| o.iter().map(|(k, v)| format!("{k}={}", s(v))).collect::<Vec<_>>().join(", "))
        .unwrap_or_default();
    let mut out = String::from("| | |\n|---|---|\n");
    let rows = [
        ("CPU", format!("{} × {}", s(&m["nproc"]), s(&m["cpu"]))),
        ("memory", format!("{} GiB", s(&m["memory_gib"]))),
        ("OS / kernel", format!("{} / {}", s(&m["os"]), s(&m["kernel"]))),
        ("PostgreSQL", s(&pg["version"])),
        ("PostgreSQL server", s(&pg["server"]["kind"])),
        ("PostgreSQL settings", settings),
        (
            "private cluster's extra settings",
            pg["server"]["settings"]
                .as_array()
                .map(|a| a.iter().map(&s).collect::<Vec<_>>().join(", "))
                .unwrap_or_else(|| "— (DATABASE_URL server as configured)".into()),
        ),
        ("Redis", s(&m["redis"]["kind"])),
        ("rustc", s(&m["rustc"])),
        (
            "commit",
            format!(
                "{}{}",
                s(&m["git_commit"]),
                if m["git_dirty"] == Value::Bool(true) { " (with uncommitted changes)" } else { "" }
            ),
        ),
        ("run", format!("{} ({} s)", s(&m["started_at"]), s(&m["duration_s"]))),
        ("sizes", s(&m["sizes"])),
    ];
    for (k, v) in rows {
        let _ = writeln!(out, "| {k} | {} |", v.replace('|', "\\|"));
    }
    out
}

fn details_line(v: &Value) -> String {
    let Some(o) = v.as_object() else { return String::new() };
    o.iter()
        .filter(|(_, v)| !matches!(v, Value::String(s) if s.len() > 80))
        .map(|(k, v)| {
            let text = match v {
                Value::Number(n) => n.as_f64().map_or_else(|| n.to_string(), super::measure::fmt_num),
                other => other.to_string(),
            };
            format!("`{k}` {text}")
        })
        .collect::<Vec<_>>()
        .join(" · ")
}

/// The whole report.
pub(crate) fn markdown(results: &Results, args: &BenchArgs) -> String {
    let mode = results.mode.as_str();
    let command = if args.quick { "cargo xtask bench --quick" } else { "cargo xtask bench" };
    let (targeted, info): (Vec<&Measure>, Vec<&Measure>) = results.measures.iter().partition(|m| m.target.is_some());
    let targeted: Vec<Measure> = targeted.into_iter().cloned().collect();
    let info: Vec<Measure> = info.into_iter().cloned().collect();
    let mut out = String::new();
    let _ = writeln!(out, "# audit-db benchmarks\n");
    let _ = writeln!(
        out,
        "Latest run: **{mode} mode** (`{command}`), {}. {}\n",
        results.machine["started_at"].as_str().unwrap_or("?"),
        match results.machine["sizes"]["rows"].as_u64() {
            Some(10_000_000) if mode == "full" => "Full run (10M rows).".to_string(),
            Some(n) => format!(
                "This run loaded **{n} rows** (the targets are for a full run of 10M rows; at this scale more of \
                 the data fits in memory)."
            ),
            None => String::new(),
        }
    );
    let _ = writeln!(
        out,
        "The machine is shared: read ratios (candidate beside its same-run baseline), not absolute numbers.\n"
    );
    let _ = writeln!(out, "## Machine\n\n{}", machine_table(&results.machine));
    let _ = writeln!(out, "## Results\n\n{}", markdown_table(&targeted));
    if !info.is_empty() {
        let _ = writeln!(out, "### Also reported\n\n{}", markdown_table(&info));
    }
    let _ = writeln!(out, "### Details\n");
    for m in &results.measures {
        let d = details_line(&m.details);
        if !d.is_empty() {
            let _ = writeln!(out, "- **{}**: {d}", m.name);
        }
    }
    let _ = writeln!(
        out,
        "\n## How to reproduce\n\n```sh\n# needs: Rust {}, PostgreSQL 15 server binaries (initdb, pg_ctl), redis-server (or REDIS_URL)\n\
         cargo xtask bench --quick          # ≤ 5 min on 2 cores, ~1M rows\n\
         cargo xtask bench                  # full: ≤ 60 min, 10M rows\n\
         cargo xtask bench --quick --only query,retention   # some groups (or measure names)\n\
         DATABASE_URL=postgres://… cargo xtask bench       # fresh databases on that server instead of a private cluster\n```\n\n\
         `cargo xtask bench` re-executes itself as `cargo run --release -p xtask -- bench-run …`: the benchmark runs in\n\
         an optimised build without changing any profile of the workspace (`bench-run` refuses a debug build). Without\n\
         `DATABASE_URL` it starts a private PostgreSQL cluster (initdb in a temporary directory, its own port; the\n\
         settings are listed above; durability settings stay on) and removes it at the end; Redis is `REDIS_URL`, else\n\
         127.0.0.1:6379, else a private `redis-server --save \"\" --appendonly no` that is stopped at the end. Results go\n\
         to `target/bench/results.json` and `target/bench/results.md`; `--update-docs` rewrites this file. Progress\n\
         lines go to stderr.\n",
        env!("CARGO_PKG_RUST_VERSION")
    );
    out.push_str(METHOD);
    out
}
