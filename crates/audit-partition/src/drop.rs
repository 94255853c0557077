//! Dropping one expired partition, in stages on the maintenance session: `DETACH … CONCURRENTLY` (finalizing an
//! interrupted one), then one transaction on the detached table, locked from its first read: archive its events
//! through a cursor (counting them and noting their organisations and classifications), keep their leaf hashes
//! (one per archived row, or nothing is dropped), re-check the holds against what the archive saw, drop the table
//! and log it. The drop itself reads no row. Also finishes what an interrupted run left.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use audit_core::{AuditError, AuditResult, ResiliencePolicy};
use audit_pg::{EVENT_COLUMNS, pg_error, quote_ident, stored_event_from_row};
use chrono::{DateTime, Utc};
use tokio_postgres::{Client, Row};
use uuid::Uuid;

use crate::archive::{Archive, ArchiveManifest, ArchiveReceipt, StagedWriter};
use crate::catalog::{Detail, list_partitions};
use crate::db::{On, Session, retry_lock_timeouts};
use crate::holds::holds_matching;
use crate::manager::PartitionManager;
use crate::period::{PARENT_TABLE, Period, ts_literal};
use crate::retention::{RetentionAction, RetentionItem, days, insert_log};
use audit_core::metrics::RETENTION_ACTIONS;

/// Rows fetched per round trip while archiving.
const ARCHIVE_BATCH: u32 = 5_000;
/// The cursor the archive reads a detached partition through.
const ARCHIVE_CURSOR: &str = "audit_partition_archive";

/// What the archive pass saw in a table besides its rows' JSON: the organisations and classifications present,
/// so that the drop re-checks legal holds without reading the table again.
#[derive(Debug, Default)]
struct Seen {
    organizations: BTreeSet<String>,
    classifications: BTreeSet<String>,
}

/// How the retention transaction of one detached table ended.
enum DropOutcome {
    /// Archived, leaf hashes kept, table dropped and logged: committed.
    Dropped,
    /// A legal hold now matches a row: kept (the caller rolls back).
    Held(Vec<i64>),
    /// Keeping the leaf hashes added this many leaves, not one per archived row: kept (the caller rolls back).
    CountMismatch(u64),
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
        // Nothing was dropped (archive, leaves and drop are one transaction). Put the partition back, so that its
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

    /// Archive, keep the leaf hashes and drop a detached table, all in one transaction that holds the table in
    /// `ACCESS EXCLUSIVE` mode from before the archive's first read: no row can be written into (or removed from)
    /// the table between the archive and the drop, so the rows archived are the rows dropped, and the drop itself
    /// reads no row. Checks on the way: the archive is stored (durable, with its manifest) before anything else
    /// changes; keeping the leaf hashes must add exactly one leaf per archived row (a repeated cursor batch would
    /// have left rows out of the file); the holds are re-checked against what the archive saw. Anything short of
    /// the drop rolls back (the caller then re-attaches the table).
    async fn finish_drop(&self, session: &Session, run_id: Uuid, item: &mut RetentionItem) -> AuditResult<()> {
        let archive = self.require_archive()?.clone();
        let xid = self.lock_for_retention(session, &item.partition).await?;
        let outcome = self.archive_keep_drop(session, &archive, run_id, item, xid).await;
        if !matches!(outcome, Ok(DropOutcome::Dropped)) {
            let what = format!("rolling back the retention of {}", item.partition);
            let what = what.as_str();
            let rolled_back = self
                .run(On::Session(session), |c| async move {
                    c.batch_execute("ROLLBACK").await.map_err(|e| pg_error(e, what))
                })
                .await;
            if let Err(e) = rolled_back {
                tracing::warn!(partition = %item.partition, error = %e, "could not roll back; the session ends it");
            }
        }
        match outcome? {
            DropOutcome::Dropped => {
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
                "keeping the leaf hashes of {} added {n} leaves but {} rows were archived; not dropped",
                item.partition, item.rows
            ))),
        }
    }

    /// Opens the retention transaction of a detached table and locks the table `ACCESS EXCLUSIVE` (no query of
    /// `audit_log` reads a detached table: this only keeps out sessions naming it directly), retried on lock
    /// timeouts. Returns the transaction's id, which each later step checks it is still inside.
    async fn lock_for_retention(&self, session: &Session, name: &str) -> AuditResult<i64> {
        let what = format!("locking {name} for its archive and drop");
        let sql = format!("BEGIN; LOCK TABLE {} IN ACCESS EXCLUSIVE MODE", quote_ident(name));
        let (what, sql, schedule) = (what.as_str(), sql.as_str(), &self.ddl_retry);
        self.run(On::Session(session), |c| async move {
            retry_lock_timeouts(schedule, what, &*c, |c: &Client| async move {
                let opened = async {
                    c.batch_execute(sql).await.map_err(|e| pg_error(e, what))?;
                    let xid: i64 =
                        c.query_one("SELECT txid_current()", &[]).await.map_err(|e| pg_error(e, what))?.get(0);
                    Ok(xid)
                }
                .await;
                if opened.is_err() {
                    // An aborted transaction block must end before the next attempt.
                    let _ = c.batch_execute("ROLLBACK").await;
                }
                (c, opened)
            })
            .await
        })
        .await
    }

    /// The steps inside the retention transaction `xid` (see [`Self::finish_drop`]), timed one by one.
    async fn archive_keep_drop(
        &self,
        session: &Session,
        archive: &Arc<dyn Archive>,
        run_id: Uuid,
        item: &mut RetentionItem,
        xid: i64,
    ) -> AuditResult<DropOutcome> {
        let t = Instant::now();
        let (receipt, seen) = self.archive_table(session, archive, run_id, item, xid).await?;
        item.archive = Some(receipt);
        item.timings.archive_s = Some(t.elapsed().as_secs_f64());

        let t = Instant::now();
        let name = item.partition.as_str();
        let added = self
            .run(On::Session(session), |c| async move {
                require_transaction(&c, xid, name).await?;
                audit_pg::pruned_leaves::retain(&*c, name).await
            })
            .await?;
        item.timings.keep_leaves_s = Some(t.elapsed().as_secs_f64());
        if i64::try_from(added).ok() != Some(item.rows) {
            return Ok(DropOutcome::CountMismatch(added));
        }

        let t = Instant::now();
        let (shared, seen) = (&*item, &seen);
        let outcome =
            self.run(On::Session(session), |c| async move { self.try_drop(&c, run_id, shared, seen, xid).await }).await;
        item.timings.drop_transaction_s = Some(t.elapsed().as_secs_f64());
        outcome
    }

    /// The drop that ends the retention transaction `xid`: hold re-check against what the archive saw, `DROP
    /// TABLE`, the `dropped` record, COMMIT — no row of the table is read. Safe to repeat: outside the transaction
    /// it only says whether this run's drop committed (a COMMIT whose answer was lost).
    async fn try_drop(
        &self,
        client: &Client,
        run_id: Uuid,
        item: &RetentionItem,
        seen: &Seen,
        xid: i64,
    ) -> AuditResult<DropOutcome> {
        let name = item.partition.as_str();
        let pg = |e| pg_error(e, &format!("dropping {name}"));
        if !in_transaction(client, xid).await? {
            return if dropped_by(client, run_id, name).await? {
                Ok(DropOutcome::Dropped)
            } else {
                Err(AuditError::permanent(format!(
                    "the retention transaction of {name} ended before its drop; not dropped"
                )))
            };
        }
        let holds = holds_matching(client, &seen.organizations, &seen.classifications).await?;
        if !holds.is_empty() {
            return Ok(DropOutcome::Held(holds));
        }
        client.batch_execute(&format!("DROP TABLE {}", quote_ident(name))).await.map_err(pg)?;
        insert_log(client, &self.actor, run_id, "dropped", item, item.detail.as_deref()).await?;
        client.batch_execute("COMMIT").await.map_err(pg)?;
        // COMMIT of a transaction that failed underway answers ROLLBACK, not an error: confirm the drop.
        if dropped_by(client, run_id, name).await? {
            Ok(DropOutcome::Dropped)
        } else {
            Err(AuditError::permanent(format!("the drop of {name} did not commit; not dropped")))
        }
    }

    /// Streams a (detached, locked) table's events into a staged gzip NDJSON file (one [`audit_core::StoredEvent`]
    /// JSON object per line, the form of `audit-db query` and evidence packs), then stores it in the archive.
    /// Reads through a cursor inside the retention transaction `xid`, a batch per call; sets `item.rows` to the
    /// number archived and returns what it saw for the hold re-check.
    async fn archive_table(
        &self,
        session: &Session,
        archive: &Arc<dyn Archive>,
        run_id: Uuid,
        item: &mut RetentionItem,
        xid: i64,
    ) -> AuditResult<(ArchiveReceipt, Seen)> {
        let file_name = format!("{}-{run_id}.ndjson.gz", item.partition);
        let staged: PathBuf = archive.staging_dir().join(format!("{file_name}.part"));
        let r = self.archive_into(session, archive, run_id, item, xid, (file_name, staged.clone())).await;
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
        xid: i64,
        (file_name, staged): (String, PathBuf),
    ) -> AuditResult<(ArchiveReceipt, Seen)> {
        let what = format!("archiving {}", item.partition);
        let writer = StagedWriter::create(staged)?;
        let (writer, seen) = self.stream_events(session, &item.partition, writer, &what, xid).await?;
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
        Ok((archive.store(&path, &manifest).await?, seen))
    }

    /// Opens the archive cursor in the retention transaction `xid` and writes every row through `writer`, noting
    /// the organisations and classifications seen. Each batch is one policy call; should the policy repeat a batch
    /// whose answer was lost, rows would be missing from the file — and the leaf count check then refuses to drop
    /// the table.
    async fn stream_events(
        &self,
        session: &Session,
        table: &str,
        mut writer: StagedWriter,
        what: &str,
        xid: i64,
    ) -> AuditResult<(StagedWriter, Seen)> {
        let on = On::Session(session);
        let open =
            format!("DECLARE {ARCHIVE_CURSOR} NO SCROLL CURSOR FOR SELECT {EVENT_COLUMNS} FROM {}", quote_ident(table));
        let open = open.as_str();
        self.run(on, |c| async move {
            require_transaction(&c, xid, table).await?;
            c.batch_execute(open).await.map_err(|e| pg_error(e, what))
        })
        .await?;
        let fetch = format!("FETCH FORWARD {ARCHIVE_BATCH} FROM {ARCHIVE_CURSOR}");
        let fetch = fetch.as_str();
        let mut seen = Seen::default();
        loop {
            let rows =
                self.run(on, |c| async move { c.query(fetch, &[]).await.map_err(|e| pg_error(e, what)) }).await?;
            if rows.is_empty() {
                break;
            }
            note_seen(&mut seen, &rows, what)?;
            writer = blocking(what, move || write_rows(writer, &rows)).await?;
        }
        let close = format!("CLOSE {ARCHIVE_CURSOR}");
        let close = close.as_str();
        self.run(on, |c| async move { c.batch_execute(close).await.map_err(|e| pg_error(e, what)) }).await?;
        Ok((writer, seen))
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

/// Whether the session is still inside transaction `xid` (the retention transaction of a table).
async fn in_transaction(client: &Client, xid: i64) -> AuditResult<bool> {
    let current: Option<i64> = client
        .query_one("SELECT txid_current_if_assigned()", &[])
        .await
        .map_err(|e| pg_error(e, "checking the retention transaction"))?
        .get(0);
    Ok(current == Some(xid))
}

/// Fails unless the session is still inside transaction `xid`: a step of the retention of `name` must never run
/// on its own (outside the lock that keeps the table unchanged).
async fn require_transaction(client: &Client, xid: i64, name: &str) -> AuditResult<()> {
    if in_transaction(client, xid).await? {
        Ok(())
    } else {
        Err(AuditError::permanent(format!("the retention transaction of {name} ended underway; not dropped")))
    }
}

/// Adds the organisations and classifications of `rows` (archive cursor rows) to `seen`.
fn note_seen(seen: &mut Seen, rows: &[Row], what: &str) -> AuditResult<()> {
    let col = |e: tokio_postgres::Error| AuditError::integrity(format!("{what}: {e}")).with_source(e);
    for r in rows {
        if let Some(org) = r.try_get::<_, Option<&str>>("organization_id").map_err(col)?
            && !seen.organizations.contains(org)
        {
            seen.organizations.insert(org.to_owned());
        }
        let class: &str = r.try_get("data_classification").map_err(col)?;
        if !seen.classifications.contains(class) {
            seen.classifications.insert(class.to_owned());
        }
    }
    Ok(())
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
