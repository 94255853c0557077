//! Dropping one expired partition, in stages on the maintenance session: `DETACH … CONCURRENTLY` (finalizing an
//! interrupted one), archiving its events through a cursor, then one transaction that checks the row count and
//! the holds, keeps the leaf hashes, drops the table and logs it. Also finishes what an interrupted run left.

use std::path::PathBuf;
use std::sync::Arc;

use audit_core::{AuditError, AuditResult, ResiliencePolicy};
use audit_pg::{EVENT_COLUMNS, pg_error, quote_ident, stored_event_from_row};
use chrono::{DateTime, Utc};
use tokio_postgres::{Client, Row};
use uuid::Uuid;

use crate::archive::{Archive, ArchiveManifest, ArchiveReceipt, StagedWriter};
use crate::catalog::{Detail, list_partitions};
use crate::db::{On, Session, retry_lock_timeouts};
use crate::holds::holds_on;
use crate::manager::PartitionManager;
use crate::period::{PARENT_TABLE, Period, ts_literal};
use crate::retention::{RetentionAction, RetentionItem, days, insert_log};
use audit_core::metrics::RETENTION_ACTIONS;

/// Rows fetched per round trip while archiving.
const ARCHIVE_BATCH: u32 = 5_000;
/// The cursor the archive reads a detached partition through.
const ARCHIVE_CURSOR: &str = "audit_partition_archive";

/// What the drop transaction found.
enum DropOutcome {
    /// Leaves kept, table dropped, logged; how long keeping the leaf hashes took (`None`: an earlier attempt did).
    Dropped(Option<f64>),
    /// A legal hold now matches a row: kept.
    Held(Vec<i64>),
    /// The table holds this many rows, not the number archived: kept.
    CountMismatch(i64),
}

impl<R: ResiliencePolicy> PartitionManager<R> {
    /// Detaches, archives and drops one expired partition.
    pub(crate) async fn drop_one(&self, session: &Session, run_id: Uuid, item: &mut RetentionItem) -> AuditResult<()> {
        self.log(On::Session(session), run_id, "detaching", item, None).await?;
        metrics::counter!(RETENTION_ACTIONS, "action" => "detaching").increment(1);
        let t = std::time::Instant::now();
        self.detach(session, &item.partition).await?;
        item.timings.detach_s = Some(t.elapsed().as_secs_f64());
        self.forget(Period::from_bounds(self.config.interval, item.range_from, item.range_to));
        tracing::info!(partition = %item.partition, "detached partition");
        let Err(e) = self.finish_drop(session, run_id, item).await else { return Ok(()) };
        // Nothing was dropped (the drop is one transaction, after the archive). Put the partition back, so that its
        // events stay visible to queries and to verify (a detached partition's rows would read as missing leaves)
        // until a run can archive them; if that fails too, the next run resumes the detached table.
        if item.action != RetentionAction::Dropped {
            match self.reattach(session, item).await {
                Ok(()) => tracing::warn!(partition = %item.partition, error = %e, "not dropped; re-attached"),
                Err(re) => tracing::warn!(partition = %item.partition, error = %e, reattach = %re,
                    "not dropped and not re-attached: the next retention run resumes it"),
            }
        }
        Err(e)
    }

    /// `DETACH … CONCURRENTLY`; an interrupted one (left "detach pending") is completed with `FINALIZE`.
    async fn detach(&self, session: &Session, name: &str) -> AuditResult<()> {
        let on = On::Session(session);
        let sql = format!("ALTER TABLE {PARENT_TABLE} DETACH PARTITION {} CONCURRENTLY", quote_ident(name));
        let Err(e) = self.batch(on, &format!("detaching {name}"), &sql).await else { return Ok(()) };
        let parts = self.run(on, |c| async move { list_partitions(&*c, Detail::Bounds).await }).await?;
        if !parts.iter().any(|p| p.name == name && p.detach_pending) {
            return Err(e);
        }
        self.finalize_detach(session, name).await
    }

    async fn finalize_detach(&self, session: &Session, name: &str) -> AuditResult<()> {
        let sql = format!("ALTER TABLE {PARENT_TABLE} DETACH PARTITION {} FINALIZE", quote_ident(name));
        self.batch(On::Session(session), &format!("finalizing detach of {name}"), &sql).await
    }

    /// Archive → (count check, hold re-check, keep leaves, drop, log) for a detached table.
    async fn finish_drop(&self, session: &Session, run_id: Uuid, item: &mut RetentionItem) -> AuditResult<()> {
        let archive = self.require_archive()?.clone();
        let t = std::time::Instant::now();
        item.archive = Some(self.archive_table(session, &archive, run_id, item).await?);
        item.timings.archive_s = Some(t.elapsed().as_secs_f64());
        let t = std::time::Instant::now();
        let schedule = &self.ddl_retry;
        let what = format!("dropping {}", item.partition);
        let (what, shared) = (what.as_str(), &*item);
        let outcome = self
            .run(On::Session(session), |c| async move {
                retry_lock_timeouts(schedule, what, c, |mut c| async move {
                    let r = self.try_drop(&mut c, run_id, shared).await;
                    (c, r)
                })
                .await
            })
            .await?;
        item.timings.drop_transaction_s = Some(t.elapsed().as_secs_f64());
        match outcome {
            DropOutcome::Dropped(keep_leaves_s) => {
                item.timings.keep_leaves_s = keep_leaves_s;
                item.action = RetentionAction::Dropped;
                metrics::counter!(RETENTION_ACTIONS, "action" => "dropped").increment(1);
                tracing::info!(partition = %item.partition, rows = item.rows, "archived and dropped partition");
                Ok(())
            }
            DropOutcome::Held(holds) => {
                item.action = RetentionAction::Held;
                item.holds = holds;
                if let Err(e) = self.reattach(session, item).await {
                    item.detail = Some(format!("held after detaching; re-attach failed (next run retries): {e}"));
                }
                let detail = "legal hold placed during the run; re-attached";
                self.log(On::Session(session), run_id, "held", item, Some(detail)).await
            }
            DropOutcome::CountMismatch(n) => Err(AuditError::integrity(format!(
                "{} holds {n} rows but {} were archived; not dropped",
                item.partition, item.rows
            ))),
        }
    }

    /// Attaches a detached partition again (a hold was placed while it was being dropped).
    async fn reattach(&self, session: &Session, item: &RetentionItem) -> AuditResult<()> {
        let sql = format!(
            "{};\nALTER TABLE {PARENT_TABLE} ATTACH PARTITION {} FOR VALUES FROM ({}) TO ({});",
            self.set_local_lock_timeout(),
            quote_ident(&item.partition),
            ts_literal(item.range_from),
            ts_literal(item.range_to)
        );
        self.batch(On::Session(session), &format!("re-attaching {}", item.partition), &sql).await
    }

    /// One attempt of the drop transaction. Safe to repeat: a table this run dropped already counts as dropped.
    async fn try_drop(&self, client: &mut Client, run_id: Uuid, item: &RetentionItem) -> AuditResult<DropOutcome> {
        let name = item.partition.as_str();
        let t = quote_ident(name);
        let pg = |e| pg_error(e, &format!("dropping {name}"));
        if dropped_by(client, run_id, name).await? {
            return Ok(DropOutcome::Dropped(None));
        }
        let tx = client.transaction().await.map_err(pg)?;
        tx.batch_execute(&format!("{}; LOCK TABLE {t} IN ACCESS EXCLUSIVE MODE", self.set_local_lock_timeout()))
            .await
            .map_err(pg)?;
        let n: i64 = tx.query_one(&format!("SELECT count(*) FROM {t}"), &[]).await.map_err(pg)?.get(0);
        if n != item.rows {
            return Ok(DropOutcome::CountMismatch(n));
        }
        let holds = holds_on(&tx, name).await?;
        if !holds.is_empty() {
            return Ok(DropOutcome::Held(holds));
        }
        let t_leaves = std::time::Instant::now();
        audit_pg::pruned_leaves::retain(&tx, name).await?;
        let keep_leaves_s = t_leaves.elapsed().as_secs_f64();
        tx.batch_execute(&format!("DROP TABLE {t}")).await.map_err(pg)?;
        insert_log(&tx, &self.actor, run_id, "dropped", item, item.detail.as_deref()).await?;
        tx.commit().await.map_err(pg)?;
        Ok(DropOutcome::Dropped(Some(keep_leaves_s)))
    }

    /// Streams a (detached) table's events into a staged gzip NDJSON file (one [`audit_core::StoredEvent`] JSON
    /// object per line, the form of `audit-db query` and evidence packs), then stores it in the archive. Reads one
    /// snapshot through a cursor, a batch per call; sets `item.rows` to the number archived.
    async fn archive_table(
        &self,
        session: &Session,
        archive: &Arc<dyn Archive>,
        run_id: Uuid,
        item: &mut RetentionItem,
    ) -> AuditResult<ArchiveReceipt> {
        let file_name = format!("{}-{run_id}.ndjson.gz", item.partition);
        let staged: PathBuf = archive.staging_dir().join(format!("{file_name}.part"));
        let r = self.archive_into(session, archive, run_id, item, file_name, staged.clone()).await;
        if r.is_err() {
            // A half-written staged file (disk full, I/O error) would hold the very space a later run needs, and no
            // run ever resumes it (the name carries this run's id): remove it.
            match std::fs::remove_file(&staged) {
                Ok(()) => tracing::info!(file = %staged.display(), "removed the staged file of a failed archive"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(file = %staged.display(), error = %e, "cannot remove a failed staged file"),
            }
        }
        r
    }

    async fn archive_into(
        &self,
        session: &Session,
        archive: &Arc<dyn Archive>,
        run_id: Uuid,
        item: &mut RetentionItem,
        file_name: String,
        staged: PathBuf,
    ) -> AuditResult<ArchiveReceipt> {
        let what = format!("archiving {}", item.partition);
        let writer = StagedWriter::create(staged)?;
        let streamed = self.stream_events(session, &item.partition, writer, &what).await;
        // The cursor's transaction ends either way, so the session is clean for the next step.
        let end = if streamed.is_ok() { "COMMIT" } else { "ROLLBACK" };
        let what_ref = what.as_str();
        let ended = self
            .run(On::Session(session), |c| async move { c.batch_execute(end).await.map_err(|e| pg_error(e, what_ref)) })
            .await;
        let writer = streamed?;
        ended?;
        let (path, rows, sha256, bytes) = blocking(&what, move || writer.finish()).await?;
        item.rows = i64::try_from(rows).unwrap_or(i64::MAX);
        let manifest = ArchiveManifest {
            format: "ndjson+gzip".into(),
            partition: item.partition.clone(),
            range_from: item.range_from,
            range_to: item.range_to,
            rows,
            sha256,
            bytes,
            file_name,
            run_id,
            created_at: Utc::now(),
        };
        archive.store(&path, &manifest).await
    }

    /// Opens the archive cursor (REPEATABLE READ, read only) and writes every row through `writer`. Each batch is
    /// one policy call; should the policy repeat a batch whose answer was lost, rows would be missing from the
    /// file — and the drop transaction's row count check then refuses to drop the table.
    async fn stream_events(
        &self,
        session: &Session,
        table: &str,
        mut writer: StagedWriter,
        what: &str,
    ) -> AuditResult<StagedWriter> {
        let on = On::Session(session);
        let open = format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; \
             DECLARE {ARCHIVE_CURSOR} NO SCROLL CURSOR FOR SELECT {EVENT_COLUMNS} FROM {}",
            quote_ident(table)
        );
        let open = open.as_str();
        self.run(on, |c| async move { c.batch_execute(open).await.map_err(|e| pg_error(e, what)) }).await?;
        let fetch = format!("FETCH FORWARD {ARCHIVE_BATCH} FROM {ARCHIVE_CURSOR}");
        let fetch = fetch.as_str();
        loop {
            let rows =
                self.run(on, |c| async move { c.query(fetch, &[]).await.map_err(|e| pg_error(e, what)) }).await?;
            if rows.is_empty() {
                return Ok(writer);
            }
            writer = blocking(what, move || write_rows(writer, &rows)).await?;
        }
    }

    /// Finishes partitions a previous run left half-done: completes pending detaches, then archives and drops
    /// detached tables whose `detaching` record has no `dropped` record after it.
    pub(crate) async fn resume_leftovers(&self, session: &Session, run_id: Uuid) -> AuditResult<Vec<RetentionItem>> {
        let on = On::Session(session);
        let parts = self.run(on, |c| async move { list_partitions(&*c, Detail::Bounds).await }).await?;
        for p in parts.into_iter().filter(|p| p.detach_pending) {
            tracing::info!(partition = %p.name, "finalizing an interrupted concurrent detach");
            self.finalize_detach(session, &p.name).await?;
        }
        let leftovers = self.run(on, |c| async move { leftovers(&c).await }).await?;
        let mut items = Vec::new();
        for (old_run, mut item) in leftovers {
            tracing::info!(partition = %item.partition, %old_run, "resuming an interrupted retention drop");
            if let Err(e) = self.finish_drop(session, run_id, &mut item).await {
                item.action = RetentionAction::Failed;
                item.detail = Some(format!("resumed from run {old_run}: {e}"));
            }
            items.push(item);
        }
        Ok(items)
    }
}

/// Whether run `run_id` dropped `name` already (a repeated attempt whose first commit's answer was lost).
async fn dropped_by(client: &Client, run_id: Uuid, name: &str) -> AuditResult<bool> {
    client
        .query_one(
            "SELECT to_regclass(quote_ident($2)) IS NULL AND EXISTS (SELECT 1 FROM audit_retention_log \
             WHERE run_id = $1 AND partition_name = $2 AND action = 'dropped')",
            &[&run_id, &name],
        )
        .await
        .map(|r| r.get(0))
        .map_err(|e| pg_error(e, &format!("checking whether {name} was dropped")))
}

/// Detached tables with a `detaching` record and no `dropped` record after it: (the run that began, the item).
async fn leftovers(client: &Client) -> AuditResult<Vec<(Uuid, RetentionItem)>> {
    let rows = client
        .query(
            "SELECT DISTINCT ON (l.partition_name) l.run_id, l.partition_name, l.range_from, l.range_to, \
                    coalesce(l.retention_days, 0), coalesce(l.row_count, 0) \
             FROM audit_retention_log l \
             JOIN pg_class c ON c.oid = to_regclass(quote_ident(l.partition_name)) \
             WHERE l.action = 'detaching' AND NOT c.relispartition \
               AND NOT EXISTS (SELECT 1 FROM audit_retention_log d WHERE d.action = 'dropped' \
                               AND d.partition_name = l.partition_name AND d.id > l.id) \
             ORDER BY l.partition_name, l.id DESC",
            &[],
        )
        .await
        .map_err(|e| pg_error(e, "finding interrupted retention runs"))?;
    Ok(rows
        .iter()
        .map(|r| {
            let old_run: Uuid = r.get(0);
            let (range_from, range_to): (DateTime<Utc>, DateTime<Utc>) = (r.get(2), r.get(3));
            let retention_days = u32::try_from(r.get::<_, i32>(4)).unwrap_or(0);
            let item = RetentionItem {
                partition: r.get(1),
                range_from,
                range_to,
                rows: r.get(5),
                retention_days,
                expired_at: range_to + days(retention_days),
                action: RetentionAction::Failed,
                holds: Vec::new(),
                archive: None,
                detail: Some(format!("resumed from run {old_run}")),
                timings: crate::retention::DropTimings::default(),
            };
            (old_run, item)
        })
        .collect())
}

/// Writes selected `audit_log` rows as stored-event JSON lines.
fn write_rows(mut writer: StagedWriter, rows: &[Row]) -> AuditResult<StagedWriter> {
    for r in rows {
        writer.write_json(&stored_event_from_row(r)?)?;
    }
    Ok(writer)
}

/// Runs file work off the async threads.
async fn blocking<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> AuditResult<T> + Send + 'static,
) -> AuditResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AuditError::permanent(format!("{what}: writer task failed: {e}")))?
}
