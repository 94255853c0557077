//! Index builds on the partitioned `audit_log` that never block writers, resumable after a crash.
//!
//! `CREATE INDEX CONCURRENTLY` is refused on a partitioned table, and a plain `CREATE INDEX` holds a SHARE lock
//! (no inserts) for the whole build. So, as PostgreSQL's documentation describes:
//! 1. `CREATE INDEX name ON ONLY audit_log (…)`: catalog only, the parent index is invalid;
//! 2. for each partition (parents before children): a leaf gets `CREATE INDEX CONCURRENTLY` (inserts continue);
//!    an intermediate partitioned table gets its own `ON ONLY` index;
//! 3. `ALTER INDEX parent ATTACH PARTITION child` for each (bottom-up); the parent becomes valid when every
//!    partition's index is attached;
//! 4. check the parent is valid (a partition created meanwhile got the index from `ATTACH PARTITION` itself).
//!
//! Steps 1 and 3 take locks that conflict with inserts for an instant: each runs under a short `lock_timeout`
//! (`lockTimeoutMs`) and is retried, so a writer never queues behind them for longer than that. Partition indexes
//! are named `<parent>_<partition oid>`: a later run recognises its own half-done work, drops an invalid one (a
//! failed concurrent build) and builds it again, attaches a valid one, and finishes the parent. One builder at a
//! time across instances: a session-level advisory lock ([`BUILD_LOCK_KEY`]).

use std::collections::HashMap;
use std::time::Duration;

use audit_core::indexes::{AppliedAction, ApplyPolicy, IndexAction, protection_reason};
use audit_core::{AuditError, AuditResult, SqlState};
use audit_pg::{pg_error, quote_ident};
use tokio_postgres::Client;

use crate::{IndexManager, sql};

/// Advisory lock key of index builds and drops ("auditidx").
pub const BUILD_LOCK_KEY: i64 = 0x6175_6469_7469_6478;

/// Attempts of one short DDL step behind `lock_timeout`.
const DDL_ATTEMPTS: u32 = 40;

/// The name of the partition index of `parent` on the partition with OID `partition_oid` (at most 63 bytes).
pub fn leaf_index_name(parent: &str, partition_oid: u32) -> String {
    let suffix = format!("_{partition_oid}");
    let mut base = parent.to_string();
    base.truncate(63 - suffix.len());
    format!("{base}{suffix}")
}

fn outcome(action: &IndexAction, outcome: &str, detail: impl Into<String>) -> AppliedAction {
    AppliedAction { action: action.clone(), outcome: outcome.to_string(), detail: detail.into() }
}

fn action_label(a: &IndexAction) -> &'static str {
    match a {
        IndexAction::Create { .. } => "create",
        IndexAction::Drop { .. } => "drop",
        IndexAction::Repair { .. } => "repair",
    }
}

/// Carries out `actions` under one advisory lock.
pub(crate) async fn apply(
    m: &IndexManager,
    actions: &[IndexAction],
    policy: ApplyPolicy,
) -> AuditResult<Vec<AppliedAction>> {
    let c = m.connect().await?;
    let mut out = Vec::new();
    let allowed = |a: &IndexAction| match a {
        IndexAction::Create { .. } => policy.allow_create,
        IndexAction::Drop { .. } => policy.allow_drop,
        IndexAction::Repair { .. } => true,
    };
    if policy.dry_run {
        for a in actions {
            let protected = match a {
                IndexAction::Drop { name } => drop_refusal(&c, name).await?,
                _ => None,
            };
            let o = if let Some(why) = protected {
                outcome(a, "skipped", why)
            } else if allowed(a) {
                outcome(a, "planned", "dry run")
            } else {
                outcome(a, "skipped", "not allowed by configuration")
            };
            m.record_action(&c, action_label(a), a.index_name(), &o.outcome, &o.detail).await;
            out.push(o);
        }
        return Ok(out);
    }
    let locked: bool = c
        .query_one(sql::TRY_BUILD_LOCK, &[&BUILD_LOCK_KEY])
        .await
        .map_err(|e| pg_error(e, "taking the index build lock"))?
        .get(0);
    if !locked {
        for a in actions {
            out.push(outcome(a, "skipped", "another instance is building or dropping indexes"));
        }
        return Ok(out);
    }
    // Leftovers first: whatever a crashed run left is finished or removed before anything new starts.
    let mut result = repair_all(m, &c).await.map(|mut r| {
        out.append(&mut r);
    });
    if result.is_ok() {
        for a in actions {
            if matches!(a, IndexAction::Repair { .. }) && out.iter().any(|o| o.action.index_name() == a.index_name()) {
                continue;
            }
            let o = if !allowed(a) {
                outcome(a, "skipped", "not allowed by configuration (enableAutoCreation / enableAutoDrop)")
            } else {
                let r = match a {
                    IndexAction::Create { name, columns } => create(m, &c, name, columns).await,
                    IndexAction::Drop { name } => drop_index(m, &c, name).await,
                    IndexAction::Repair { name } => finish(m, &c, name).await,
                };
                match r {
                    Ok(detail) => outcome(a, "done", detail),
                    Err(e) if e.kind() == audit_core::ErrorKind::InvalidInput => outcome(a, "skipped", e.to_string()),
                    Err(e) => {
                        tracing::warn!(index = a.index_name(), error = %e, "index action failed");
                        if e.class().is_retryable() && c.is_closed() {
                            result = Err(e);
                            out.push(outcome(a, "failed", "connection lost"));
                            break;
                        }
                        outcome(a, "failed", e.to_string())
                    }
                }
            };
            m.record_action(&c, action_label(a), a.index_name(), &o.outcome, &o.detail).await;
            out.push(o);
        }
    }
    let _ = c.query_one(sql::BUILD_UNLOCK, &[&BUILD_LOCK_KEY]).await;
    result.map(|()| out)
}

/// Runs one short DDL statement under `lock_timeout`, retrying lock timeouts with growing pauses.
async fn short_ddl(m: &IndexManager, c: &Client, what: &str, ddl: &str) -> AuditResult<()> {
    let set = format!("SET lock_timeout = {}", m.config.lock_timeout_ms);
    c.batch_execute(&set).await.map_err(|e| pg_error(e, "setting lock_timeout"))?;
    let mut pause = Duration::from_millis(20);
    let mut attempt = 0;
    let result = loop {
        attempt += 1;
        match c.batch_execute(ddl).await.map_err(|e| pg_error(e, what)) {
            Err(e) if e.sqlstate() == Some(SqlState::LOCK_NOT_AVAILABLE) && attempt < DDL_ATTEMPTS => {
                tracing::debug!(what, attempt, "lock timeout; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            other => break other,
        }
    };
    c.batch_execute("RESET lock_timeout").await.map_err(|e| pg_error(e, "resetting lock_timeout"))?;
    result
}

/// The `USING …` part of an index definition (method, columns, INCLUDE, WHERE), to build the same index on a
/// partition.
fn definition_tail(def: &str) -> AuditResult<&str> {
    def.find(" USING ")
        .map(|i| &def[i + 1..])
        .ok_or_else(|| AuditError::permanent(format!("unexpected index definition: {def}")))
}

/// Builds a new btree index on every partition without blocking writers.
async fn create(m: &IndexManager, c: &Client, name: &str, columns: &[String]) -> AuditResult<String> {
    if columns.is_empty() {
        return Err(AuditError::invalid(format!("index {name}: no columns")));
    }
    let exists = c.query_opt(sql::INDEX_BY_NAME, &[&name]).await.map_err(|e| pg_error(e, "looking up an index"))?;
    if exists.is_none() {
        let cols: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
        let ddl = format!(
            "CREATE INDEX IF NOT EXISTS {} ON ONLY audit_log USING btree ({})",
            quote_ident(name),
            cols.join(", ")
        );
        short_ddl(m, c, "creating the parent index ON ONLY audit_log", &ddl).await?;
        tracing::info!(index = name, "parent index created (invalid until every partition is attached)");
    }
    finish(m, c, name).await
}

/// Finishes a parent index: builds and attaches what each partition lacks, then checks it is valid.
async fn finish(m: &IndexManager, c: &Client, name: &str) -> AuditResult<String> {
    let row = c
        .query_opt(sql::INDEX_BY_NAME, &[&name])
        .await
        .map_err(|e| pg_error(e, "looking up an index"))?
        .ok_or_else(|| AuditError::not_found(format!("index {name} does not exist")))?;
    let on_root: bool = row.get("on_root");
    if !on_root {
        let (valid, ready, attached): (bool, bool, bool) =
            (row.get("indisvalid"), row.get("indisready"), row.get("attached"));
        if attached || (valid && ready) {
            // Finished meanwhile (its parent's repair rebuilt and attached it).
            return Ok("nothing to repair (valid or attached now)".into());
        }
        // A stray partition index: remove it (a failed concurrent build).
        let ddl = format!("DROP INDEX CONCURRENTLY IF EXISTS {}", quote_ident(name));
        c.batch_execute(&ddl).await.map_err(|e| pg_error(e, "dropping a leftover partition index"))?;
        return Ok("leftover partition index dropped".into());
    }
    let root_index: u32 = row.get("oid");
    let def: String = c
        .query_one("SELECT pg_get_indexdef($1)", &[&root_index])
        .await
        .map_err(|e| pg_error(e, "reading an index definition"))?
        .get(0);
    let tail = definition_tail(&def)?.to_string();
    let unique = if def.starts_with("CREATE UNIQUE") { "UNIQUE " } else { "" };
    let mut built = 0;
    let mut attached = 0;
    for round in 0..3 {
        let root: u32 = c.query_one(sql::ROOT_OID, &[]).await.map_err(|e| pg_error(e, "reading audit_log"))?.get(0);
        let tree = c.query(sql::PARTITION_TREE, &[]).await.map_err(|e| pg_error(e, "reading partitions"))?;
        // Table OID -> (its index for this parent index, attached to the parent's?).
        let mut index_of: HashMap<u32, (u32, String)> = HashMap::from([(root, (root_index, name.to_string()))]);
        let mut pending_attach: Vec<(i32, u32, String, u32)> = Vec::new(); // (level, parent index, child name, table)
        for p in &tree {
            let (oid, table, parent, leaf, level): (u32, String, u32, bool, i32) =
                (p.get("oid"), p.get("name"), p.get("parent"), p.get("isleaf"), p.get("level"));
            let Some((parent_index, _)) = index_of.get(&parent).cloned() else { continue };
            if let Some(r) = c
                .query_opt(sql::ATTACHED_CHILD, &[&parent_index, &oid])
                .await
                .map_err(|e| pg_error(e, "reading attached indexes"))?
            {
                let child: String = r.get(0);
                let child_oid: u32 = c
                    .query_one(sql::INDEX_BY_NAME, &[&child])
                    .await
                    .map_err(|e| pg_error(e, "looking up an index"))?
                    .get("oid");
                index_of.insert(oid, (child_oid, child));
                continue;
            }
            let child = crate::leaf_index_name(name, oid);
            let existing =
                c.query_opt(sql::INDEX_BY_NAME, &[&child]).await.map_err(|e| pg_error(e, "looking up an index"))?;
            if let Some(e) = &existing
                && leaf
                && (!e.get::<_, bool>("indisvalid") || !e.get::<_, bool>("indisready"))
            {
                tracing::info!(index = %child, "dropping an invalid partition index left by an interrupted build");
                let ddl = format!("DROP INDEX CONCURRENTLY IF EXISTS {}", quote_ident(&child));
                c.batch_execute(&ddl).await.map_err(|e| pg_error(e, "dropping an invalid partition index"))?;
            }
            let reuse = existing
                .as_ref()
                .is_some_and(|e| !leaf || (e.get::<_, bool>("indisvalid") && e.get::<_, bool>("indisready")));
            if !reuse {
                if leaf {
                    // No lock_timeout here: the build waits for older transactions as lock waits, and must not be
                    // cancelled for it (it blocks no writer while waiting).
                    let ddl = format!(
                        "CREATE {unique}INDEX CONCURRENTLY IF NOT EXISTS {} ON {} {tail}",
                        quote_ident(&child),
                        quote_ident(&table)
                    );
                    c.batch_execute(&ddl).await.map_err(|e| pg_error(e, &format!("building {child} on {table}")))?;
                    built += 1;
                    tracing::info!(index = %child, partition = %table, "partition index built concurrently");
                } else {
                    let ddl = format!(
                        "CREATE {unique}INDEX IF NOT EXISTS {} ON ONLY {} {tail}",
                        quote_ident(&child),
                        quote_ident(&table)
                    );
                    short_ddl(m, c, "creating an intermediate partition index", &ddl).await?;
                }
            }
            let child_oid: u32 = c
                .query_one(sql::INDEX_BY_NAME, &[&child])
                .await
                .map_err(|e| pg_error(e, "looking up an index"))?
                .get("oid");
            index_of.insert(oid, (child_oid, child.clone()));
            pending_attach.push((level, parent_index, child, oid));
        }
        // Attach bottom-up, so an intermediate index is complete before it joins its parent.
        pending_attach.sort_by_key(|a| std::cmp::Reverse(a.0));
        for (_, parent_index, child, _) in &pending_attach {
            let parent_name: String = c
                .query_one("SELECT $1::oid::regclass::text", &[parent_index])
                .await
                .map_err(|e| pg_error(e, "naming an index"))?
                .get(0);
            let ddl = format!("ALTER INDEX {parent_name} ATTACH PARTITION {}", quote_ident(child));
            short_ddl(m, c, "attaching a partition index", &ddl).await?;
            attached += 1;
        }
        let valid: bool =
            c.query_one(sql::INDEX_VALID, &[&root_index]).await.map_err(|e| pg_error(e, "checking the index"))?.get(0);
        if valid {
            return Ok(format!("valid on every partition ({built} built concurrently, {attached} attached)"));
        }
        tracing::info!(index = name, round, "parent index not valid yet (a partition appeared meanwhile?); again");
    }
    Err(AuditError::transient(format!("index {name} is still invalid after three rounds of attaching partitions")))
}

/// Finishes every invalid parent index and removes every stray invalid partition index.
async fn repair_all(m: &IndexManager, c: &Client) -> AuditResult<Vec<AppliedAction>> {
    let mut out = Vec::new();
    let parents = c.query(sql::PARENT_INDEXES, &[]).await.map_err(|e| pg_error(e, "reading audit_log's indexes"))?;
    for p in parents.iter().filter(|p| !p.get::<_, bool>("indisvalid")) {
        let name: String = p.get("name");
        let action = IndexAction::Repair { name: name.clone() };
        let o = match finish(m, c, &name).await {
            Ok(d) => outcome(&action, "done", d),
            Err(e) => outcome(&action, "failed", e.to_string()),
        };
        tracing::info!(index = %name, outcome = %o.outcome, detail = %o.detail, "repaired a half-done index build");
        m.record_action(c, "repair", &name, &o.outcome, &o.detail).await;
        out.push(o);
    }
    let strays = c.query(sql::STRAY_LEFTOVERS, &[]).await.map_err(|e| pg_error(e, "reading leftovers"))?;
    for s in &strays {
        let name: String = s.get("name");
        let action = IndexAction::Repair { name: name.clone() };
        let ddl = format!("DROP INDEX CONCURRENTLY IF EXISTS {}", quote_ident(&name));
        let o = match c.batch_execute(&ddl).await {
            Ok(()) => outcome(&action, "done", "invalid partition index dropped"),
            Err(e) => outcome(&action, "failed", pg_error(e, "dropping a leftover").to_string()),
        };
        m.record_action(c, "repair", &name, &o.outcome, &o.detail).await;
        out.push(o);
    }
    Ok(out)
}

/// Drops a parent index. PostgreSQL 15 cannot drop a partitioned index concurrently, nor one partition's index
/// while attached: the drop is one short catalog step under `lock_timeout`, retried (writers wait at most
/// `lockTimeoutMs` behind each attempt).
async fn drop_index(m: &IndexManager, c: &Client, name: &str) -> AuditResult<String> {
    if let Some(why) = drop_refusal(c, name).await? {
        return Err(AuditError::invalid(why));
    }
    short_ddl(m, c, "dropping an index", &format!("DROP INDEX IF EXISTS {}", quote_ident(name))).await?;
    Ok("dropped from audit_log and every partition".into())
}

/// Why `name` may not be dropped (missing, not an audit_log index, protected), or `None`.
async fn drop_refusal(c: &Client, name: &str) -> AuditResult<Option<String>> {
    let Some(row) = c.query_opt(sql::INDEX_BY_NAME, &[&name]).await.map_err(|e| pg_error(e, "looking up an index"))?
    else {
        return Ok(Some(format!("index {name} does not exist")));
    };
    let (unique, primary, on_root): (bool, bool, bool) =
        (row.get("indisunique"), row.get("indisprimary"), row.get("on_root"));
    if let Some(why) = protection_reason(name, unique, primary) {
        return Ok(Some(format!("index {name} is protected ({why}) and is never dropped")));
    }
    if !on_root {
        return Ok(Some(format!("{name} is not an index of audit_log")));
    }
    Ok(None)
}
