//! Privacy: the write-path cost of the personal-data policy (crypto-shredding). The same events are stored with
//! `insert_batch` into two fresh databases of the same schema and partitions, one client with the policy off and one
//! with `principal_id,target_resource_id,details.ip_address` personal (every such value sealed with AES-256-GCM-SIV
//! under its subject's key; a new subject's key generated, wrapped under the master key and stored). Rounds alternate
//! (which side goes first flips) so that noise hits both alike.
//!
//! The workload has a near-unique target per event (about one new subject key per event): the honest worst case,
//! judged by the target. An info line repeats the comparison with every subject id in 10 events (a patient or user
//! seen again and again), where most keys come from the cache.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use audit_server::workload::Workload;
use serde_json::{Value, json};

use super::measure::{Measure, Target};
use super::{Ctx, progress};

/// The personal fields of the "on" side.
const FIELDS: &str = "principal_id,target_resource_id,details.ip_address";

/// Events each side stores before the timed rounds.
const WARM_UP: usize = 1_000;

/// Events per subject id in the reuse info line.
const REUSE: usize = 10;

/// The privacy group.
pub(crate) async fn run(ctx: &Ctx) -> anyhow::Result<Vec<Measure>> {
    let rows = (ctx.sizes.rows / 5).clamp(1_000, 1_000_000);
    let worst = pair(ctx, "", rows, |v, _| v).await?;
    let reuse = pair(ctx, "_reuse", rows, |mut v, i| {
        // Every principal and target id in REUSE events (each id's events spread over the run).
        let pool = (rows / REUSE).max(1);
        v["principal_id"] = Value::String(format!("user_{:07}", i % pool));
        v["target_resource_id"] = Value::String(format!("patient_{:07}", (i * 7 + 3) % pool));
        v
    })
    .await?;
    Ok(vec![
        worst.measure(
            "ingest_bulk_ratio_privacy_on_vs_off",
            Some(Target::at_least(0.8)),
            "the generated workload: \
             a near-unique target per event, so about one new subject key per event (worst case)",
        ),
        reuse.measure(
            "ingest_bulk_ratio_privacy_on_vs_off_reuse10",
            None,
            "info: the same events with every \
             principal and target id in 10 events (one new subject key per 5 events; the rest from the cache)",
        ),
    ])
}

/// One on/off comparison.
struct Pair {
    rows: usize,
    round: usize,
    keys: i64,
    t_on: Duration,
    t_off: Duration,
    /// Where the server spent each side's time: statement profiles and relation sizes.
    server: Value,
}

impl Pair {
    fn measure(&self, name: &str, target: Option<Target>, workload: &str) -> Measure {
        let on_rate = self.rows as f64 / self.t_on.as_secs_f64();
        let off_rate = self.rows as f64 / self.t_off.as_secs_f64();
        Measure::ratio(name, on_rate, off_rate, "events/s", target).details(json!({
            "rows": self.rows,
            "round": self.round,
            "workload": workload,
            "personal_fields": FIELDS,
            "subject_keys_created": self.keys,
            "candidate_seconds": self.t_on.as_secs_f64(),
            "baseline_seconds": self.t_off.as_secs_f64(),
            "candidate": "AuditClient::insert_batch with the personal-data policy on (subject keys looked up in \
                          bulk through the index, new ones stored with one plain INSERT per chunk, values sealed in \
                          the pd2 form, AES-256-GCM-SIV, before hashing)",
            "warm_up_events_per_side": WARM_UP,
            "baseline": "the same events through AuditClient::insert_batch with the policy off, into a fresh \
                         database with the same schema and partitions",
            "server": self.server,
        }))
    }
}

/// Stores `rows` generated events (each passed through `shape` with its number) with the policy on and off.
async fn pair(ctx: &Ctx, tag: &str, rows: usize, shape: impl Fn(Value, usize) -> Value) -> anyhow::Result<Pair> {
    let round = ctx.sizes.round.min(rows);
    let off_cfg = super::ingest::candidate_config(ctx);
    let mut on_cfg = off_cfg.clone();
    let key_dir = ctx.env.scratch.join(format!("privacy-keys{tag}"));
    std::fs::create_dir_all(&key_dir)?;
    let key_path = key_dir.join(audit_privacy::MASTER_KEY_FILE_NAME);
    std::fs::write(&key_path, audit_privacy::FileMasterKey::generate_text()?)?;
    on_cfg.privacy.personal_fields = audit_core::PersonalFields::parse(FIELDS).map_err(anyhow::Error::msg)?;
    on_cfg.privacy.master_key_file = Some(key_path);
    let off_app = ctx.env.fresh_database(&format!("privacy_off{tag}"), &off_cfg, &ctx.covering()).await?;
    let on_app = ctx.env.fresh_database(&format!("privacy_on{tag}"), &on_cfg, &ctx.covering()).await?;
    let off = off_app.client().await.context("connecting the policy-off client")?;
    let on = on_app.client().await.context("connecting the policy-on client")?;
    if on.personal_data().is_none() {
        bail!("the policy-on client has no personal-data policy installed");
    }
    let on_admin = super::env::connect(&on_app.url).await?;
    let off_admin = super::env::connect(&off_app.url).await?;
    for c in [&on_admin, &off_admin] {
        super::ingest::enable_statement_profile(c).await;
    }
    // Warm-up, not timed: both clients open their pools and the policy-on side loads its subject-index key, so the
    // comparison is of the write path in steady state, not of one-time start-up.
    let warm: Vec<Value> = Workload::new(ctx.seed ^ 0x3a7, ctx.shape(), ctx.now).take(WARM_UP).collect();
    for client in [&on, &off] {
        client.insert_batch(warm.clone()).await.context("warm-up insert_batch")?;
    }
    super::ingest::reset_statements(&on_admin).await;
    let mut wl = Workload::new(ctx.seed ^ 0x5eed, ctx.shape(), ctx.now);
    let (mut t_on, mut t_off) = (Duration::ZERO, Duration::ZERO);
    let mut done = 0;
    ctx.env.checkpoint().await;
    for r in 0..rows.div_ceil(round) {
        let n = round.min(rows - done);
        let values: Vec<Value> = wl.by_ref().take(n).enumerate().map(|(i, v)| shape(v, done + i)).collect();
        let sides: [(&audit_server::app::Client, &mut Duration); 2] =
            if r % 2 == 0 { [(&on, &mut t_on), (&off, &mut t_off)] } else { [(&off, &mut t_off), (&on, &mut t_on)] };
        for (client, total) in sides {
            let t = Instant::now();
            let report = client.insert_batch(values.clone()).await.context("insert_batch")?;
            *total += t.elapsed();
            if report.accepted() != n {
                bail!("insert_batch stored {} of {n} events", report.accepted());
            }
        }
        done += n;
        progress(format!(
            "privacy{tag} round {}: {done} rows; policy on {:.0} ev/s, off {:.0} ev/s",
            r + 1,
            done as f64 / t_on.as_secs_f64(),
            done as f64 / t_off.as_secs_f64()
        ));
    }
    let keys: i64 = on_admin.query_one("SELECT count(*) FROM audit_subject_keys", &[]).await?.get(0);
    let server = json!({
        "policy_on": {"statements": super::ingest::statement_profile(&on_admin).await, "sizes": sizes(&on_admin).await?},
        "policy_off": {"statements": super::ingest::statement_profile(&off_admin).await, "sizes": sizes(&off_admin).await?},
    });
    Ok(Pair { rows, round, keys, t_on, t_off, server })
}

/// Bytes of the audit log (heap, indexes) and the subject keys in the database `c` is connected to.
async fn sizes(c: &tokio_postgres::Client) -> anyhow::Result<Value> {
    let row = c
        .query_one(
            "SELECT (SELECT coalesce(sum(pg_table_size(relid)), 0)::int8 FROM pg_partition_tree('audit_log')), \
                    (SELECT coalesce(sum(pg_indexes_size(relid)), 0)::int8 FROM pg_partition_tree('audit_log')), \
                    pg_total_relation_size('audit_subject_keys')",
            &[],
        )
        .await
        .context("measuring relation sizes")?;
    Ok(json!({"audit_log_table_bytes": row.get::<_, i64>(0), "audit_log_index_bytes": row.get::<_, i64>(1),
              "subject_keys_bytes": row.get::<_, i64>(2)}))
}
