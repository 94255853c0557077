//! Retention: dropping an expired month through the partition manager versus deleting the same month's rows, and
//! how long a concurrent reader waits meanwhile.
//!
//! A fresh database gets one old month (January 2018, long past every retention rule, including the 7-year floor
//! of PHI) of workload rows plus recent rows for the reader. audit_log refuses DELETE by trigger, so the DELETE
//! baseline runs on `bench_plain_log`: an ordinary table with the same columns, constraints and the month
//! partition's indexes, holding the same rows. The candidate is `PartitionManager::retention(false)` — everything
//! the product does to drop a month: plan, `DETACH … CONCURRENTLY`, archive to gzip NDJSON with a SHA-256
//! manifest, keep the leaf hashes, `DROP TABLE`, log. The drop ratio compares the manager's detach and drop
//! steps (its own timings) with DELETE + VACUUM, archives excluded on both sides; the archive is compared with
//! encoding and compressing the same rows in memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use audit_partition::{PartitionManager, RetentionAction};
use audit_server::workload::{Workload, WorkloadShape, organization};
use chrono::{DateTime, TimeZone as _, Utc};
use serde_json::{Value, json};

use super::measure::{Measure, Target, fmt_num};
use super::rows::{self, RowFactory};
use super::{Ctx, env, progress};

/// Rows of recent data the concurrent reader queries.
const RECENT_ROWS: usize = 20_000;

/// One reader query: when it started and how long it took (relative to the reader's start).
#[derive(Debug, Clone, Copy)]
struct Sample {
    start: Duration,
    took: Duration,
}

/// Longest reader query that overlapped `[from, to]` (offsets from the reader's start).
fn max_overlapping(samples: &[Sample], from: Duration, to: Duration) -> Option<Duration> {
    samples.iter().filter(|s| s.start <= to && s.start + s.took >= from).map(|s| s.took).max()
}

/// The retention group.
pub(crate) async fn run(ctx: &Ctx) -> anyhow::Result<Vec<Measure>> {
    let month_from = Utc.with_ymd_and_hms(2018, 1, 1, 0, 0, 0).single().context("a valid date")?;
    let month_to = Utc.with_ymd_and_hms(2018, 2, 1, 0, 0, 0).single().context("a valid date")?;
    let mut covering = ctx.covering();
    covering.push((month_from, month_to - chrono::Duration::microseconds(1)));
    let app = ctx.env.fresh_database("retention", &ctx.config, &covering).await?;
    let url = app.url.clone();
    let mut c = env::connect(&url).await?;

    // --- data: a month of N rows in January 2018, plus recent rows --------------------------------------------------
    let n = ctx.sizes.retention_rows;
    let month_now = month_to - chrono::Duration::days(1);
    let mut old = Workload::new(
        ctx.seed ^ 0x2018,
        WorkloadShape { span_days: 30, last_hour_share: 0.0, ..WorkloadShape::default() },
        month_now,
    );
    let mut recent = Workload::new(ctx.seed ^ 0x2026, WorkloadShape::default(), ctx.now);
    let mut factory = RowFactory::new(ctx.now, 1);
    let mut loaded = 0;
    while loaded < n {
        let k = 50_000.min(n - loaded);
        let values: Vec<Value> = old.by_ref().take(k).collect();
        for chunk in factory.make_all(&values)?.chunks(10_000) {
            rows::copy_rows(&mut c, "audit_log", chunk).await?;
        }
        loaded += k;
        progress(format!("retention: loaded {loaded}/{n} rows of January 2018 (untimed)"));
    }
    let values: Vec<Value> = recent.by_ref().take(RECENT_ROWS).collect();
    for chunk in factory.make_all(&values)?.chunks(10_000) {
        rows::copy_rows(&mut c, "audit_log", chunk).await?;
    }
    let partition = "audit_log_2018_01";
    let in_month: i64 = c.query_one(&format!("SELECT count(*) FROM {partition}"), &[]).await?.get(0);
    if in_month != n as i64 {
        bail!("{partition} holds {in_month} rows, expected {n}");
    }

    // --- the DELETE baseline's table: same columns, constraints, indexes and rows, no audit triggers -------------
    c.batch_execute(
        "CREATE TABLE bench_plain_log (LIKE audit_log INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE)",
    )
    .await
    .context("creating bench_plain_log")?;
    let defs: Vec<String> = c
        .query("SELECT indexdef FROM pg_indexes WHERE schemaname = 'public' AND tablename = $1", &[&partition])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for (i, def) in defs.iter().enumerate() {
        let sql =
            plain_index_sql(def, partition, i).with_context(|| format!("cannot rewrite index definition {def}"))?;
        c.batch_execute(&sql).await.with_context(|| format!("creating {sql}"))?;
    }
    // Separate calls: VACUUM cannot run inside the implicit transaction of a multi-statement string.
    for sql in [
        "INSERT INTO bench_plain_log SELECT * FROM audit_log",
        "VACUUM ANALYZE bench_plain_log",
        "VACUUM ANALYZE audit_log",
    ] {
        c.batch_execute(sql).await.with_context(|| format!("preparing the DELETE baseline: {sql}"))?;
    }
    ctx.env.checkpoint().await;

    let t = Instant::now();
    let deleted = c
        .execute(
            "DELETE FROM bench_plain_log WHERE \"timestamp\" >= $1 AND \"timestamp\" < $2",
            &[&month_from, &month_to],
        )
        .await
        .context("DELETE of the month")?;
    let delete_only = t.elapsed();
    // The space of deleted rows is only reusable after VACUUM: part of what a DELETE-based retention costs.
    c.batch_execute("VACUUM bench_plain_log").await.context("VACUUM after the DELETE")?;
    let delete_time = t.elapsed();
    if deleted != n as u64 {
        bail!("DELETE removed {deleted} rows, expected {n}");
    }
    progress(format!(
        "DELETE of {deleted} rows: {:.3} s, + VACUUM: {:.3} s",
        delete_only.as_secs_f64(),
        delete_time.as_secs_f64()
    ));
    ctx.env.checkpoint().await;

    // The archive's floor: the same rows (a sample of up to 200k) serialised as the archive's JSON lines and gzip-
    // compressed with the same codec and level, in memory, on one core.
    let sample = c
        .query(&format!("SELECT {} FROM {partition} LIMIT 200000", rows::COLUMNS), &[])
        .await
        .context("reading the month for the compression baseline")?;
    let events: Vec<audit_core::StoredEvent> =
        sample.iter().map(audit_pg::stored_event_from_row).collect::<Result<_, _>>()?;
    drop(sample);
    let t = Instant::now();
    let compressed = compress_like_the_archive(&events)?;
    let compress_s = t.elapsed().as_secs_f64();
    let compress_rate = events.len() as f64 / compress_s;
    progress(format!(
        "in-memory NDJSON + gzip of {} rows: {compress_s:.3} s = {compress_rate:.0} rows/s ({compressed} bytes)",
        events.len()
    ));
    drop(events);

    // --- the partition manager's drop, with a reader running the whole time ------------------------------------------
    let mut pcfg = ctx.config.partition.clone();
    pcfg.archive_dir = Some(ctx.env.scratch.join("archive"));
    let connector = audit_pg::Connector::new(&url, audit_pg::DatabaseConfig::default().connect_options("primary"))?;
    let manager = PartitionManager::connect(&connector, pcfg).await?.with_actor("xtask-bench");
    let stop = Arc::new(AtomicBool::new(false));
    let reader_started = Instant::now();
    let reader = tokio::spawn(reader_loop(url.clone(), ctx.now, stop.clone(), reader_started));
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let drop_from = reader_started.elapsed();
    let t = Instant::now();
    let report = manager.retention(false).await.context("PartitionManager::retention")?;
    let drop_time = t.elapsed();
    let drop_to = reader_started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Release);
    let samples = reader.await.context("the reader task panicked")??;

    let dropped: Vec<_> = report.items.iter().filter(|i| i.action == RetentionAction::Dropped).collect();
    if dropped.len() != 1 || dropped[0].partition != partition {
        bail!("retention did not drop exactly {partition}: {:?}", report.items);
    }
    let still: bool = c.query_one("SELECT to_regclass($1) IS NOT NULL", &[&partition]).await?.get(0);
    if still {
        bail!("{partition} still exists after retention reported it dropped");
    }
    progress(format!("PartitionManager::retention dropped {partition} in {:.3} s", drop_time.as_secs_f64()));

    // Where the manager's time went, from its own retention log (recorded_at = start of each logging transaction).
    let steps = c
        .query(
            "SELECT action::text, extract(epoch FROM recorded_at)::float8 FROM audit_retention_log \
             WHERE partition_name = $1 ORDER BY id",
            &[&partition],
        )
        .await?;
    let at = |a: &str| steps.iter().find(|r| r.get::<_, String>(0) == a).map(|r| r.get::<_, f64>(1));
    let breakdown = match (at("detaching"), at("dropped")) {
        (Some(d), Some(x)) => json!({
            "detach_and_archive_s": x - d,
            "note": "detach_and_archive = from the `detaching` record to the start of the drop transaction \
                     (DETACH CONCURRENTLY, then in one transaction on the locked table: gzip NDJSON archive with \
                     manifest, copy of every leaf hash into audit_log_pruned_leaves); the rest of the total is \
                     planning (a GROUP BY scan of each old partition) and the drop (hold re-check, DROP TABLE, log)",
        }),
        _ => Value::Null,
    };
    let archive_bytes = dropped[0].archive.as_ref().map(|a| serde_json::to_value(a).unwrap_or(Value::Null));

    let idle_max = max_overlapping(&samples, Duration::ZERO, drop_from.saturating_sub(Duration::from_millis(1)));
    let during_max = max_overlapping(&samples, drop_from, drop_to);
    let during: Vec<&Sample> = samples.iter().filter(|s| s.start <= drop_to && s.start + s.took >= drop_from).collect();
    let ms = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3);
    progress(format!(
        "reader: {} queries during the drop, longest {} ms (idle longest {} ms)",
        during.len(),
        fmt_num(ms(during_max)),
        fmt_num(ms(idle_max))
    ));

    // A ratio of times, not of rates: value = (DELETE + VACUUM) s ÷ (DETACH CONCURRENTLY + DROP) s, archives (and
    // the leaf hashes integrity keeps, an archive of its own) excluded on both sides; raw times beside it.
    let tm = &dropped[0].timings;
    let detach_s = tm.detach_s.unwrap_or(f64::NAN);
    let archive_s = tm.archive_s.unwrap_or(f64::NAN);
    let keep_leaves_s = tm.keep_leaves_s.unwrap_or(f64::NAN);
    let drop_tx_s = tm.drop_transaction_s.unwrap_or(f64::NAN);
    // The manager times the drop itself (hold re-check, DROP TABLE, log, COMMIT) apart from the archive and the
    // leaf-hash copy that precede it in the same transaction.
    let detach_drop_s = detach_s + drop_tx_s;
    let archive_rate = n as f64 / archive_s;
    let mut measures = vec![
        Measure::new(
            "retention_drop_ratio_vs_delete",
            delete_time.as_secs_f64() / detach_drop_s,
            "ratio",
            detach_drop_s,
            delete_time.as_secs_f64(),
            Some(Target::at_least(100.0)),
        )
        .raw_unit("s")
        .note(
            "value = (DELETE + VACUUM of the month on an ordinary table with the same rows and indexes) s ÷ \
             (DETACH CONCURRENTLY + the drop: hold re-check, DROP TABLE, log, COMMIT) s of \
             PartitionManager::retention; archive and kept leaf hashes excluded (both in details)",
        )
        .details(json!({
            "rows": n,
            "partition": partition,
            "delete_s": delete_only.as_secs_f64(),
            "delete_and_vacuum_s": delete_time.as_secs_f64(),
            "detach_s": detach_s,
            "drop_transaction_s": drop_tx_s,
            "keep_leaves_s": keep_leaves_s,
            "archive_s": archive_s,
            "manager_retention_s": drop_time.as_secs_f64(),
            "ratio_with_everything_the_manager_does": delete_time.as_secs_f64() / drop_time.as_secs_f64(),
            "breakdown": breakdown,
            "archive": archive_bytes,
            "delete_table": "bench_plain_log (LIKE audit_log INCLUDING DEFAULTS, CONSTRAINTS, STORAGE + the month \
                             partition's indexes), same rows as audit_log",
        })),
    ];
    let mut block = Measure::new(
        "retention_reader_max_block_ms",
        ms(during_max),
        "ms",
        ms(during_max),
        ms(idle_max),
        Some(Target::at_most(100.0)),
    )
    .note("baseline = the same reader's longest query before the drop started")
    .details(json!({
        "queries_during_drop": during.len(),
        "queries_total": samples.len(),
        "reader": "one connection alternating org + last-30-days window and principal + action (all partitions), \
                   prepared, back to back",
    }));
    if during.is_empty() {
        block = Measure::unmeasured(
            "retention_reader_max_block_ms",
            "ms",
            Some(Target::at_most(100.0)),
            "the reader ran no query during the drop",
        );
    }
    measures.push(block);
    measures.push(
        Measure::ratio(
            "retention_archive_ratio_vs_compress",
            archive_rate,
            compress_rate,
            "rows/s",
            Some(Target::at_least(0.5)),
        )
        .note("archive rows/s (cursor read + NDJSON + gzip + fsync + manifest) ÷ NDJSON + gzip of the same rows in memory")
        .details(json!({"archive_s": archive_s, "rows": n, "compress_s": compress_s, "compressed_bytes": compressed})),
    );
    Ok(measures)
}

/// The archive's encoding (one JSON line per stored event, gzip at the default level) into memory; returns the
/// compressed size.
fn compress_like_the_archive(events: &[audit_core::StoredEvent]) -> anyhow::Result<usize> {
    use std::io::Write as _;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut line = Vec::new();
    for e in events {
        line.clear();
        serde_json::to_writer(&mut line, e)?;
        line.push(b'\n');
        enc.write_all(&line)?;
    }
    Ok(enc.finish()?.len())
}

/// Rewrites an index definition of the month partition for `bench_plain_log` (new unique name, same columns and
/// method; a partition's primary key index becomes a unique index).
pub(crate) fn plain_index_sql(def: &str, partition: &str, i: usize) -> Option<String> {
    let on = def.find(" ON ")?;
    let head = &def[..on];
    let unique = head.contains("UNIQUE");
    let rest = &def[on + 4..];
    let rest = rest.strip_prefix("ONLY ").unwrap_or(rest);
    let using = rest.find(" USING ")?;
    let table = rest[..using].trim();
    if table != format!("public.{partition}") && table != partition {
        return None;
    }
    Some(format!(
        "CREATE {}INDEX bench_plain_log_idx{i} ON bench_plain_log{}",
        if unique { "UNIQUE " } else { "" },
        &rest[using..]
    ))
}

async fn reader_loop(
    url: String,
    now: DateTime<Utc>,
    stop: Arc<AtomicBool>,
    t0: Instant,
) -> anyhow::Result<Vec<Sample>> {
    let c = env::connect(&url).await?;
    let window = c
        .prepare(
            "SELECT id, \"timestamp\", details FROM audit_log WHERE organization_id = $1 AND \"timestamp\" >= $2 \
             ORDER BY \"timestamp\" DESC LIMIT 100",
        )
        .await?;
    let principal = c
        .prepare("SELECT id, \"timestamp\" FROM audit_log WHERE principal_id = $1 AND action = $2 ORDER BY \"timestamp\" DESC LIMIT 100")
        .await?;
    let since = now - chrono::Duration::days(30);
    let mut samples = Vec::new();
    let mut i: u32 = 0;
    while !stop.load(Ordering::Acquire) {
        let start = t0.elapsed();
        if i.is_multiple_of(2) {
            c.query(&window, &[&organization(i % 300), &since]).await?;
        } else {
            let p = format!("user_{:05}", (i as usize * 7919) % 50_000);
            c.query(&principal, &[&p, &"patient_data_access"]).await?;
        }
        samples.push(Sample { start, took: t0.elapsed() - start });
        i = i.wrapping_add(1);
    }
    Ok(samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_definitions_are_rewritten_for_the_plain_table() {
        let p = "audit_log_2018_01";
        assert_eq!(
            plain_index_sql(
                "CREATE UNIQUE INDEX audit_log_2018_01_pkey ON public.audit_log_2018_01 USING btree (event_id, \"timestamp\")",
                p,
                0
            )
            .as_deref(),
            Some("CREATE UNIQUE INDEX bench_plain_log_idx0 ON bench_plain_log USING btree (event_id, \"timestamp\")")
        );
        assert_eq!(
            plain_index_sql("CREATE INDEX x ON public.audit_log_2018_01 USING gin (details jsonb_path_ops)", p, 3)
                .as_deref(),
            Some("CREATE INDEX bench_plain_log_idx3 ON bench_plain_log USING gin (details jsonb_path_ops)")
        );
        assert_eq!(plain_index_sql("CREATE INDEX y ON public.other USING btree (a)", p, 1), None);
    }

    #[test]
    fn the_longest_overlapping_query_is_found() {
        let ms = Duration::from_millis;
        let s = vec![
            Sample { start: ms(0), took: ms(5) },
            Sample { start: ms(90), took: ms(30) }, // overlaps the start of [100, 200]
            Sample { start: ms(150), took: ms(10) }, // inside
            Sample { start: ms(210), took: ms(90) }, // after
        ];
        assert_eq!(max_overlapping(&s, ms(100), ms(200)), Some(ms(30)));
        assert_eq!(max_overlapping(&s, ms(0), ms(50)), Some(ms(5)));
        assert_eq!(max_overlapping(&s, ms(400), ms(500)), None);
    }
}
