//! Ingest: `insert_batch` and 1,000 concurrent `insert` calls of the production-wired client, against binary COPY of
//! the same rows and against one INSERT per transaction.
//!
//! Four fresh databases are built from the migrations with the same partitions: `candidate` (the chosen index
//! layout, written through the client), `todays_set` (the layout before issue 14 — GIN on `details` on every
//! partition — written through the client), `copy` (same schema as the candidate, written by binary COPY) and
//! `heap` (only the primary key, written by binary COPY: what PostgreSQL can take). The bulk phase rotates which
//! side goes first every round so that a noisy neighbour or a checkpoint hits each alike; each side's time (and
//! WAL, from `pg_current_wal_lsn()`) is the sum of its rounds. The baseline rows (ids, per-organisation seq, 32-byte leaf hash) are built before the timed regions.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use audit_client::Ack;
use audit_server::app::App;
use audit_server::workload::Workload;
use serde_json::{Value, json};

use super::measure::{Measure, Target};
use super::rows::{self, Row, RowFactory};
use super::{Ctx, env, progress};

/// COPY chunk of the baseline: the same as `insert_batch`'s transaction size (audit-client's `CHUNK`).
pub(crate) const CHUNK: usize = 10_000;

/// Number of concurrent tasks of the concurrent ingest.
pub(crate) const TASKS: usize = 1_000;

/// The candidate database the query group reads.
#[derive(Debug)]
pub(crate) struct Dataset {
    /// The candidate database (production wiring, URL in its config).
    pub app: App,
    /// Events stored in it.
    pub rows: usize,
}

/// The candidate's configuration: the production wiring with L2 on the benchmark's Redis.
pub(crate) fn candidate_config(ctx: &Ctx) -> audit_server::config::AuditConfig {
    let mut c = ctx.config.clone();
    c.cache.redis_url = Some(ctx.env.redis_url.clone());
    c
}

async fn copy_chunks(client: &mut tokio_postgres::Client, rows: &[Row]) -> anyhow::Result<Duration> {
    let t = Instant::now();
    for chunk in rows.chunks(CHUNK) {
        rows::copy_rows(client, "audit_log", chunk).await?;
    }
    Ok(t.elapsed())
}

fn check_report(report: &audit_client::BatchReport, n: usize) -> anyhow::Result<()> {
    if report.accepted() != n {
        bail!(
            "insert_batch stored {} of {n} events ({} duplicates, {} rejected)",
            report.accepted(),
            report.duplicates(),
            report.rejected()
        );
    }
    Ok(())
}

/// Server time per statement in the database `c` is connected to, since the last reset: the top statements by total
/// execution time from pg_stat_statements (`null` when the extension is not available).
pub(crate) async fn statement_profile(c: &tokio_postgres::Client) -> Value {
    let rows = c
        .query(
            "SELECT left(regexp_replace(query, '\\s+', ' ', 'g'), 140), calls, total_exec_time, rows, \
             wal_bytes::int8 FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
             ORDER BY total_exec_time DESC LIMIT 8",
            &[],
        )
        .await;
    match rows {
        Ok(rows) => Value::Array(
            rows.iter()
                .map(|r| {
                    let (calls, total): (i64, f64) = (r.get(1), r.get(2));
                    json!({
                        "statement": r.get::<_, String>(0),
                        "calls": calls,
                        "total_ms": total,
                        "mean_ms": total / calls.max(1) as f64,
                        "rows": r.get::<_, i64>(3),
                        "wal_bytes": r.get::<_, i64>(4),
                    })
                })
                .collect(),
        ),
        Err(_) => Value::Null,
    }
}

/// Creates pg_stat_statements in the database `c` is connected to; without it, profiles are `null` (said once here).
pub(crate) async fn enable_statement_profile(c: &tokio_postgres::Client) {
    if let Err(e) = c.batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements").await {
        progress(format!("no server-side statement profile (pg_stat_statements): {e}"));
    }
}

/// Clears pg_stat_statements (cluster-wide) so the next profile covers one phase.
pub(crate) async fn reset_statements(c: &tokio_postgres::Client) {
    let _ = c.batch_execute("SELECT pg_stat_statements_reset()").await;
}

/// The candidate and copy databases' statement profiles of the phase that just ended.
async fn profiles(cand: &tokio_postgres::Client, copy: &tokio_postgres::Client) -> Value {
    json!({"candidate_db": statement_profile(cand).await, "copy_db": statement_profile(copy).await})
}

/// The ingest group. Returns its measures and the candidate data set for the query group.
pub(crate) async fn run(ctx: &Ctx) -> anyhow::Result<(Vec<Measure>, Dataset)> {
    let s = ctx.sizes;
    let cfg = candidate_config(ctx);
    let candidate = ctx.env.fresh_database("candidate", &cfg, &ctx.covering()).await?;
    let copy = ctx.env.fresh_database("copy", &cfg, &ctx.covering()).await?;
    let heap = ctx.env.fresh_database("heap", &cfg, &ctx.covering()).await?;
    let lean = ctx.env.fresh_database("lean", &cfg, &ctx.covering()).await?;
    let legacy = ctx.env.fresh_database("todays_set", &cfg, &ctx.covering()).await?;
    let client = candidate.client().await.context("connecting the candidate client")?;
    let legacy_client = legacy.client().await.context("connecting the today's-set client")?;
    let mut copy_client = env::connect(&copy.url).await?;
    let mut heap_client = env::connect(&heap.url).await?;
    let mut lean_client = env::connect(&lean.url).await?;
    lean_client.batch_execute(LEAN_SET_SQL).await.context("building the lean index set")?;
    let cand_admin = env::connect(&candidate.url).await?;
    let heap_dropped = keep_only_primary_key(&heap_client).await?;
    env::connect(&legacy.url).await?.batch_execute(TODAYS_SET_SQL).await.context("building today's index set")?;
    progress(format!(
        "databases: candidate (chosen layout), todays_set (+ GIN on details on every partition), copy (same \
         schema as the candidate), lean (copy without the principal and action/status indexes), heap (primary key \
         only; dropped {})",
        heap_dropped.join(", ")
    ));
    for c in [&cand_admin, &copy_client] {
        enable_statement_profile(c).await;
    }
    let mut wl = Workload::new(ctx.seed, ctx.shape(), ctx.now);
    let mut factory = RowFactory::new(ctx.now, 1);
    let mut measures = Vec::new();

    // --- bulk: insert_batch (chosen layout and today's set) vs binary COPY (same schema, PK only), rotating ------
    ctx.env.checkpoint().await;
    let rounds = s.rows.div_ceil(s.round);
    let mut sides = [Side::default(); SIDES];
    let tx_before = client.write_transactions();
    reset_statements(&cand_admin).await;
    let mut done = 0;
    for r in 0..rounds {
        let n = s.round.min(s.rows - done);
        let values: Vec<Value> = wl.by_ref().take(n).collect();
        let rows = factory.make_all(&values)?;
        // Which side goes first rotates every round, so a checkpoint or a noisy neighbour hits each alike.
        for k in 0..SIDES {
            let which = (r + k) % SIDES;
            let wal0 = wal_position(&cand_admin).await?;
            let (t, cpu) = (Instant::now(), env::process_cpu_seconds());
            match which {
                CAND => {
                    let report = client.insert_batch(values.clone()).await.context("insert_batch")?;
                    check_report(&report, n)?;
                }
                LEGACY => {
                    let report =
                        legacy_client.insert_batch(values.clone()).await.context("insert_batch (today's set)")?;
                    check_report(&report, n)?;
                }
                COPY => {
                    copy_chunks(&mut copy_client, &rows).await?;
                }
                LEAN => {
                    copy_chunks(&mut lean_client, &rows).await?;
                }
                _ => {
                    copy_chunks(&mut heap_client, &rows).await?;
                }
            }
            let side = &mut sides[which];
            side.time += t.elapsed();
            side.cpu += env::process_cpu_seconds() - cpu;
            side.wal += wal_position(&cand_admin).await? - wal0;
        }
        done += n;
        let rate = |i: usize| done as f64 / sides[i].time.as_secs_f64();
        progress(format!(
            "bulk round {}/{rounds}: {done} rows; insert_batch {:.0} ev/s (today's set {:.0}), COPY {:.0}, heap COPY \
             {:.0} ev/s, lean COPY {:.0} ev/s so far",
            r + 1,
            rate(CAND),
            rate(LEGACY),
            rate(COPY),
            rate(HEAP),
            rate(LEAN)
        ));
    }
    let bulk_txs = client.write_transactions() - tx_before;
    let bulk_profile = profiles(&cand_admin, &copy_client).await;
    let rate = |i: usize| s.rows as f64 / sides[i].time.as_secs_f64();
    let wal_per = |i: usize| sides[i].wal / s.rows as f64;
    let (cand_rate, copy_rate) = (rate(CAND), rate(COPY));
    let side_json = |i: usize| {
        json!({"seconds": sides[i].time.as_secs_f64(), "events_per_s": rate(i), "client_process_cpu_s": sides[i].cpu,
               "wal_bytes": sides[i].wal, "wal_bytes_per_event": wal_per(i)})
    };
    let sides_json = json!({
        "chosen_layout_insert_batch": side_json(CAND),
        "todays_set_insert_batch": side_json(LEGACY),
        "copy_same_schema": side_json(COPY),
        "copy_primary_key_only": side_json(HEAP),
        "copy_lean_set": side_json(LEAN),
    });
    measures.push(
        Measure::ratio("ingest_bulk_ratio_vs_copy", cand_rate, copy_rate, "events/s", Some(Target::at_least(0.8)))
            .details(json!({
                "rows": s.rows,
                "rounds": rounds,
                "chunk": CHUNK,
                "candidate_seconds": sides[CAND].time.as_secs_f64(),
                "baseline_seconds": sides[COPY].time.as_secs_f64(),
                "candidate_write_transactions": bulk_txs,
                "candidate_process_cpu_s": sides[CAND].cpu,
                "baseline_process_cpu_s": sides[COPY].cpu,
                "server_statements": bulk_profile,
                "candidate": "AuditClient::insert_batch (validation, per-organisation seq under head locks, leaf \
                              hashes, id draw, binary COPY, cache invalidation) of JSON events",
                "baseline": "binary COPY (BinaryCopyInWriter) of the same rows, same 20 columns incl. id, seq and a \
                             32-byte leaf hash precomputed untimed, same chunk size, into a fresh database built \
                             from the same migrations",
            })),
    );
    measures.push(
        Measure::ratio(
            "ingest_bulk_ratio_vs_heap_copy",
            cand_rate,
            rate(HEAP),
            "events/s",
            Some(Target::at_least(0.5)),
        )
        .note("baseline = binary COPY of the same rows into the same partitions with only the primary key")
        .details(json!({"sides": sides_json, "heap_dropped_indexes": heap_dropped})),
    );
    measures.push(
        Measure::new(
            "wal_bytes_per_event",
            wal_per(CAND),
            "bytes",
            wal_per(CAND),
            wal_per(LEGACY),
            Some(Target::at_most(1_200.0)),
        )
        .note("pg_current_wal_lsn() difference around each insert_batch call ÷ events; baseline = today's set")
        .details(sides_json.clone()),
    );
    measures.push(
        Measure::ratio("ingest_copy_lean_ratio_vs_heap_copy", rate(LEAN), rate(HEAP), "events/s", None)
            .note("binary COPY into the lean set (PK, (org, ts), (org, seq)) ÷ into the primary key alone")
            .details(json!({"lean": side_json(LEAN), "same_schema_copy": side_json(COPY)})),
    );
    measures.push(
        Measure::ratio("ingest_bulk_ratio_vs_todays_set", cand_rate, rate(LEGACY), "events/s", None)
            .note("insert_batch into the chosen layout ÷ into today's set (GIN on details on every partition)")
            .details(sides_json),
    );

    // --- concurrent: 1,000 tasks each awaiting its durable ack vs COPY of the same rows --------------------------
    ctx.env.checkpoint().await;
    let conc_rounds = 2;
    let per_round = s.concurrent.div_ceil(conc_rounds);
    let (mut t_conc, mut t_conc_copy) = (Duration::ZERO, Duration::ZERO);
    let mut conc_rows: Vec<Row> = Vec::with_capacity(s.concurrent);
    let mut conc_done = 0;
    let tx_before = client.write_transactions();
    let mut cpu_conc = 0.0;
    reset_statements(&cand_admin).await;
    for r in 0..conc_rounds {
        let n = per_round.min(s.concurrent - conc_done);
        let values: Vec<Value> = wl.by_ref().take(n).collect();
        let rows = factory.make_all(&values)?;
        let copy_first = !r.is_multiple_of(2);
        if copy_first {
            t_conc_copy += copy_chunks(&mut copy_client, &rows).await?;
        }
        let cpu = env::process_cpu_seconds();
        t_conc += concurrent_inserts(&client, values).await?;
        cpu_conc += env::process_cpu_seconds() - cpu;
        if !copy_first {
            t_conc_copy += copy_chunks(&mut copy_client, &rows).await?;
        }
        conc_done += n;
        conc_rows.extend(rows);
        progress(format!(
            "concurrent round {}/{conc_rounds}: {conc_done} events; 1,000 tasks {:.0} ev/s, COPY {:.0} ev/s",
            r + 1,
            conc_done as f64 / t_conc.as_secs_f64(),
            conc_done as f64 / t_conc_copy.as_secs_f64()
        ));
    }
    let conc_txs = client.write_transactions() - tx_before;
    let conc_profile = profiles(&cand_admin, &copy_client).await;
    let conc_rate = s.concurrent as f64 / t_conc.as_secs_f64();
    let conc_copy_rate = s.concurrent as f64 / t_conc_copy.as_secs_f64();
    measures.push(
        Measure::ratio(
            "ingest_concurrent_ratio_vs_copy",
            conc_rate,
            conc_copy_rate,
            "events/s",
            Some(Target::at_least(0.5)),
        )
        .details(json!({
            "events": s.concurrent,
            "tasks": TASKS,
            "candidate_seconds": t_conc.as_secs_f64(),
            "baseline_seconds": t_conc_copy.as_secs_f64(),
            "candidate_write_transactions": conc_txs,
            "events_per_transaction": s.concurrent as f64 / conc_txs.max(1) as f64,
            "candidate_process_cpu_s": cpu_conc,
            "server_statements": conc_profile,
            "candidate": "1,000 tokio tasks, each calling AuditClient::insert and awaiting its durable ack before \
                          its next event (group commit)",
            "baseline": "binary COPY of the same rows in 10,000-row transactions into the copy database",
        })),
    );

    // --- one INSERT per transaction, 1,000 tasks over a pool of the client's size --------------------------------
    ctx.env.checkpoint().await;
    let pool = ctx.config.database.pool_size as usize;
    reset_statements(&cand_admin).await;
    let (count, elapsed) =
        per_call_inserts(&copy.url, pool, Arc::new(conc_rows), Duration::from_secs(s.per_call_secs)).await?;
    let per_call_rate = count as f64 / elapsed.as_secs_f64();
    progress(format!(
        "one INSERT per transaction: {count} rows in {:.1} s = {per_call_rate:.0} ev/s",
        elapsed.as_secs_f64()
    ));
    measures.push(
        Measure::ratio(
            "ingest_concurrent_ratio_vs_per_call_insert",
            conc_rate,
            per_call_rate,
            "events/s",
            Some(Target::at_least(10.0)),
        )
        .details(json!({
            "baseline_rows": count,
            "baseline_seconds": elapsed.as_secs_f64(),
            "baseline_pool": pool,
            "baseline_mean_latency_ms": pool as f64 / per_call_rate * 1e3,
            "baseline_server_statements": statement_profile(&copy_client).await,
            "baseline": format!(
                "the seed's way: 1,000 tasks each running one plain INSERT per transaction (autocommit, prepared) \
                 over a pool of {pool} connections (database.poolSize) for {} s, same rows with a fresh event_id",
                s.per_call_secs
            ),
        })),
    );

    // --- sealing: the partitions whose period is over get the sealed indexes, frozen, analysed ------------------
    ctx.env.checkpoint().await;
    let pm = candidate.partitions().await?;
    let t = Instant::now();
    // Every partition whose period has ended (the grace period is for late events, which this data set has none of).
    let sealed = pm
        .seal_due(chrono::Utc::now() + chrono::Duration::from_std(audit_partition::SEAL_GRACE)?)
        .await
        .context("sealing")?;
    let seal_s = t.elapsed().as_secs_f64();
    let sealed_rows: i64 = sealed.iter().map(|r| r.rows).sum();
    progress(format!("sealed {} partitions ({sealed_rows} rows) in {seal_s:.1} s", sealed.len()));
    measures.push(
        Measure::new(
            "seal_seconds_per_million_events",
            seal_s / (sealed_rows.max(1) as f64) * 1e6,
            "s",
            seal_s,
            sealed_rows as f64,
            None,
        )
        .raw_unit("s / rows")
        .note("candidate = seconds to seal, baseline column = rows sealed (GIN built concurrently + VACUUM (FREEZE, ANALYZE))")
        .details(serde_json::to_value(&sealed)?),
    );
    drop(legacy_client);

    let (rss, hwm) = env::rss();
    measures.push(
        Measure::new("ingest_peak_rss_mb", hwm as f64 / 1048576.0, "MiB", hwm as f64 / 1048576.0, f64::NAN, None)
            .note("VmHWM of the whole benchmark process after the ingest (includes the generator's round buffers)")
            .details(json!({"vm_rss_mib_after": rss as f64 / 1048576.0, "round_rows": s.round})),
    );
    drop(client);
    Ok((measures, Dataset { app: candidate, rows: s.rows + s.concurrent }))
}

/// Indexes of the sides of the bulk ingest.
const CAND: usize = 0;
const LEGACY: usize = 1;
const COPY: usize = 2;
const HEAP: usize = 3;
const LEAN: usize = 4;
const SIDES: usize = 5;

/// The lean alternative: the candidate's layout without the two secondary btrees that only principal + action and
/// action + status queries use (PK, (organization_id, timestamp) and (organization_id, seq) remain).
const LEAN_SET_SQL: &str = "DROP INDEX audit_log_principal_action_idx; DROP INDEX audit_log_action_status_ts_idx";

/// What one side of the bulk ingest spent.
#[derive(Debug, Default, Clone, Copy)]
struct Side {
    time: Duration,
    cpu: f64,
    wal: f64,
}

/// Today's index set before issue 14: the GIN on `details` as a partitioned index, maintained on every partition.
pub(crate) const TODAYS_SET_SQL: &str =
    "CREATE INDEX audit_log_details_gin_idx ON audit_log USING gin (details jsonb_path_ops)";

/// The server's WAL insert position, bytes.
async fn wal_position(c: &tokio_postgres::Client) -> anyhow::Result<f64> {
    Ok(c.query_one("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::float8", &[]).await?.get(0))
}

/// Drops every index of `audit_log` but its primary key (the "what PostgreSQL can take" side); returns their names.
async fn keep_only_primary_key(c: &tokio_postgres::Client) -> anyhow::Result<Vec<String>> {
    let names: Vec<String> = c
        .query(
            "SELECT x.relname::text FROM pg_index i JOIN pg_class x ON x.oid = i.indexrelid \
             WHERE i.indrelid = 'audit_log'::regclass AND NOT i.indisprimary ORDER BY 1",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for n in &names {
        c.batch_execute(&format!("DROP INDEX \"{}\"", n.replace('"', "\"\"")))
            .await
            .with_context(|| format!("dropping {n}"))?;
    }
    Ok(names)
}

/// 1,000 tasks, each storing its share of `values` one `insert` at a time. Returns the wall time.
pub(crate) async fn concurrent_inserts(
    client: &audit_server::app::Client,
    values: Vec<Value>,
) -> anyhow::Result<Duration> {
    let mut shares: Vec<Vec<Value>> = (0..TASKS).map(|_| Vec::new()).collect();
    for (i, v) in values.into_iter().enumerate() {
        shares[i % TASKS].push(v);
    }
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for share in shares {
        let client = client.clone();
        tasks.spawn(async move {
            for v in share {
                match client.insert(v).await? {
                    Ack::Stored { .. } => {}
                    Ack::Duplicate { event_id, .. } => bail!("event {event_id} reported as a duplicate"),
                }
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.context("an insert task panicked")??;
    }
    Ok(started.elapsed())
}

/// 1,000 tasks running one INSERT per transaction over `pool` connections until `duration` has passed. Returns the
/// rows stored and the wall time (until the last in-flight INSERT finished).
pub(crate) async fn per_call_inserts(
    url: &str,
    pool: usize,
    rows: Arc<Vec<Row>>,
    duration: Duration,
) -> anyhow::Result<(usize, Duration)> {
    if rows.is_empty() {
        bail!("no rows for the one-INSERT-per-transaction baseline");
    }
    let mut conns = Vec::with_capacity(pool);
    for _ in 0..pool.max(1) {
        let c = env::connect(url).await?;
        let stmt = c.prepare(rows::INSERT_SQL).await.context("preparing the INSERT")?;
        conns.push((c, stmt));
    }
    let conns = Arc::new(conns);
    let free = Arc::new(std::sync::Mutex::new((0..conns.len()).collect::<Vec<usize>>()));
    let sem = Arc::new(tokio::sync::Semaphore::new(conns.len()));
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..TASKS {
        let (conns, free, sem, next, rows) = (conns.clone(), free.clone(), sem.clone(), next.clone(), rows.clone());
        tasks.spawn(async move {
            let mut stored = 0usize;
            loop {
                let permit = sem.acquire().await.context("pool semaphore closed")?;
                if Instant::now() >= deadline {
                    return Ok::<_, anyhow::Error>(stored);
                }
                let slot = free.lock().expect("pool lock").pop().context("a permit without a free connection")?;
                let row = &rows[next.fetch_add(1, Ordering::Relaxed) % rows.len()];
                let (c, stmt) = &conns[slot];
                let res = rows::insert_one(c, stmt, row, uuid::Uuid::new_v4()).await;
                free.lock().expect("pool lock").push(slot);
                drop(permit);
                res.context("one-row INSERT")?;
                stored += 1;
            }
        });
    }
    let mut total = 0;
    while let Some(r) = tasks.join_next().await {
        total += r.context("an INSERT task panicked")??;
    }
    Ok((total, started.elapsed()))
}

/// Loads the ingest data set into a fresh candidate database without timing it (when `--only` skips ingest).
pub(crate) async fn load_untimed(ctx: &Ctx) -> anyhow::Result<Dataset> {
    let cfg = candidate_config(ctx);
    let app = ctx.env.fresh_database("candidate", &cfg, &ctx.covering()).await?;
    let client = app.client().await?;
    let mut wl = Workload::new(ctx.seed, ctx.shape(), ctx.now);
    let mut done = 0;
    while done < ctx.sizes.rows {
        let n = ctx.sizes.round.min(ctx.sizes.rows - done);
        let report = client.insert_batch(wl.by_ref().take(n).collect()).await?;
        check_report(&report, n)?;
        done += n;
        progress(format!("loading the query data set (untimed): {done}/{}", ctx.sizes.rows));
    }
    app.partitions()
        .await?
        .seal_due(chrono::Utc::now() + chrono::Duration::from_std(audit_partition::SEAL_GRACE)?)
        .await?;
    Ok(Dataset { app, rows: done })
}
