//! The database side of tamper evidence: sealing each organisation's log in a signed checkpoint, verifying stored
//! rows against the signed roots, inclusion and consistency proofs, and evidence packs. The hashing, proof and
//! verification logic itself is pure (the rest of this crate, specified in `docs/integrity.md`).
//!
//! Every statement runs on a pooled connection (connect timeout, server-side statement timeout) under the
//! resilience policy the store was given; logs are read in bounded chunks so that each statement has a deadline
//! and a failed chunk can be read again.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use audit_core::event::StoredEvent;
use std::future::Future;
use std::sync::Arc;

use audit_core::{AuditError, AuditResult, Direct, ErrorKind, ResiliencePolicy, SqlState};
use audit_pg::{EVENT_COLUMNS, PgPool, PooledConn, pg_error, stored_event_from_row};
use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use postgres_types::ToSql;
use serde::Serialize;
use tokio_postgres::Row;

use uuid::Uuid;

use crate::{
    Checkpoint, CompactRange, Finding, Hash, NoteSigner, NoteVerifier, ProofsFile, RowView, TILE_HEIGHT, TiledTree,
    TrustedCheckpoint, build_pack, consistency_proof_by, inclusion_proof_by, leaf_hash, leaf_hash_raw, nodes_read_by,
    origin_for, verify_consistency, verify_inclusion, verify_incremental,
};

/// Rows read per statement when walking a log: bounded memory, and a statement that finishes well within the
/// query timeout.
const CHUNK_ROWS: i64 = 20_000;

/// Positions read per binary COPY statement when verifying (a chunk's bytes are held in memory while hashed).
const COPY_CHUNK_SEQS: i64 = 50_000;

/// Stored nodes written per statement (three arrays of this length).
const NODE_BATCH: usize = 10_000;

/// Logs verified at once (at most the cores; the store's pool bounds the connections anyway).
const VERIFY_PARALLEL_LOGS: usize = 4;

/// `organization_id = $1`, or `IS NULL` for the shared log (`IS NOT DISTINCT FROM` cannot use an index).
fn log_predicate(log_id: &str) -> &'static str {
    if log_id.is_empty() { "organization_id IS NULL" } else { "organization_id = $1" }
}

/// A statement parameter the store owns, so a repeated attempt (and a spawned task) can use it again.
type Param = Box<dyn ToSql + Send + Sync>;

/// Owned statement parameters.
macro_rules! params {
    ($($p:expr),* $(,)?) => { vec![$(Box::new($p) as Param),*] };
}

/// Parameters for a `log_predicate` query followed by a `[from, to)` seq range.
fn log_range_params(log_id: &str, from: i64, to: i64) -> Vec<Param> {
    let mut p: Vec<Param> = Vec::with_capacity(3);
    if !log_id.is_empty() {
        p.push(Box::new(log_id.to_string()));
    }
    p.push(Box::new(from));
    p.push(Box::new(to));
    p
}

/// One stored checkpoint row.
#[derive(Debug, Clone, Serialize)]
pub struct CheckpointRecord {
    /// Row id.
    pub id: i64,
    /// The log (`""`: shared).
    pub log_id: String,
    /// Signed size.
    pub tree_size: i64,
    /// Signed root (hex).
    #[serde(serialize_with = "hex_hash")]
    pub root_hash: Hash,
    /// When sealed.
    pub created_at: DateTime<Utc>,
    /// Key id (hex key hash).
    pub key_id: String,
    /// The signed note text.
    pub note: String,
    /// Compact range at `tree_size` (not signed; re-checked).
    #[serde(skip)]
    pub frontier: Vec<u8>,
}

fn hex_hash<S: serde::Serializer>(h: &Hash, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(h))
}

/// Result of sealing one log.
#[derive(Debug, Clone, Serialize)]
pub struct SealOutcome {
    /// The log.
    pub log_id: String,
    /// Size sealed now (or the existing checkpoint's when nothing was new).
    pub tree_size: i64,
    /// Root (hex).
    pub root_hash: String,
    /// Whether a new checkpoint was written.
    pub new_checkpoint: bool,
}

/// Result of `verify`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    /// Every finding, in log order.
    pub findings: Vec<Finding>,
    /// Logs checked.
    pub logs: usize,
    /// Leaves recomputed.
    pub leaves: u64,
    /// Wall time.
    pub seconds: f64,
}

/// JSON form of an inclusion proof (`audit-db proof`).
#[derive(Debug, Clone, Serialize)]
pub struct InclusionProofJson {
    /// The event.
    pub event_id: Uuid,
    /// Its organisation (absent: shared log).
    pub organization_id: Option<String>,
    /// Its position.
    pub seq: i64,
    /// Its leaf hash (hex).
    pub leaf_hash: String,
    /// Size of the checkpoint the proof is against.
    pub tree_size: i64,
    /// That checkpoint's root (hex).
    pub root_hash: String,
    /// Audit path, bottom-up (hex), RFC 9162 §2.1.3.
    pub proof: Vec<String>,
    /// The signed checkpoint note.
    pub checkpoint: String,
}

/// JSON form of a consistency proof.
#[derive(Debug, Clone, Serialize)]
pub struct ConsistencyProofJson {
    /// The log.
    pub log_id: String,
    /// Older size and root.
    pub old_size: i64,
    /// Older root (hex).
    pub old_root: String,
    /// Newer size.
    pub new_size: i64,
    /// Newer root (hex).
    pub new_root: String,
    /// Proof hashes (hex), RFC 9162 §2.1.4.
    pub proof: Vec<String>,
}

/// Database access for tamper evidence, generic over the resilience policy that wraps each statement.
pub struct IntegrityStore<R = Direct> {
    pool: PgPool,
    policy: R,
    acquire_timeout: Duration,
    rows_read: AtomicU64,
}

impl<R> std::fmt::Debug for IntegrityStore<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntegrityStore").finish_non_exhaustive()
    }
}

impl<R: ResiliencePolicy> IntegrityStore<R> {
    /// A store over `pool` whose statements run under `policy`; a checkout waits at most `acquire_timeout`.
    pub fn new(pool: PgPool, policy: R, acquire_timeout: Duration) -> Self {
        Self { pool, policy, acquire_timeout, rows_read: AtomicU64::new(0) }
    }

    /// Rows this store has fetched from the database so far, over every statement: lets a test or a benchmark bound
    /// what one operation reads (a proof must not read the whole log).
    pub fn rows_read(&self) -> u64 {
        self.rows_read.load(Ordering::Relaxed)
    }

    /// Runs `op` on a pooled connection under the policy (each attempt checks a connection out). The operation
    /// owns what it uses, so the store's futures are `Send` for spawned tasks (the checkpointer, the service).
    async fn with_conn<T, F, Fut>(&self, op: F) -> AuditResult<T>
    where
        T: Send,
        F: Fn(PooledConn) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = AuditResult<T>> + Send + 'static,
    {
        let (pool, wait, op) = (self.pool.clone(), self.acquire_timeout, Arc::new(op));
        self.policy
            .execute(move || {
                let (pool, op) = (pool.clone(), op.clone());
                async move { op(audit_pg::checkout(&pool, wait).await?).await }
            })
            .await
    }

    /// Runs one statement (under the policy; repeated on a transient failure) and returns its rows.
    async fn rows(&self, what: &'static str, sql: impl Into<Arc<str>>, params: Vec<Param>) -> AuditResult<Vec<Row>> {
        let (sql, params) = (sql.into(), Arc::new(params));
        let rows: Vec<Row> = self
            .with_conn(move |conn| {
                let (sql, params) = (sql.clone(), params.clone());
                async move {
                    let refs: Vec<&(dyn ToSql + Sync)> =
                        params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)).collect();
                    conn.query(&*sql, &refs).await.map_err(|e| pg_error(e, what))
                }
            })
            .await?;
        self.rows_read.fetch_add(rows.len() as u64, Ordering::Relaxed);
        Ok(rows)
    }

    /// Runs one statement that returns no rows.
    async fn execute(&self, what: &'static str, sql: impl Into<Arc<str>>, params: Vec<Param>) -> AuditResult<u64> {
        let (sql, params) = (sql.into(), Arc::new(params));
        self.with_conn(move |conn| {
            let (sql, params) = (sql.clone(), params.clone());
            async move {
                let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)).collect();
                conn.execute(&*sql, &refs).await.map_err(|e| pg_error(e, what))
            }
        })
        .await
    }

    /// Every log with its head size (`org`: only that organisation's; `Some("")`: the shared log). A log is known by
    /// its head row, by its checkpoints, or by its rows — any one of them suffices, so deleting a head row (or all of
    /// a log's rows) cannot hide a log from `verify`. A log without a head row gets size 0.
    pub async fn logs(&self, org: Option<&str>) -> AuditResult<Vec<(String, i64)>> {
        let sql = "WITH RECURSIVE orgs AS ( \
                       (SELECT organization_id FROM audit_log WHERE organization_id IS NOT NULL \
                        ORDER BY organization_id LIMIT 1) \
                       UNION ALL \
                       SELECT (SELECT a.organization_id FROM audit_log a WHERE a.organization_id > orgs.organization_id \
                               ORDER BY a.organization_id LIMIT 1) \
                       FROM orgs WHERE orgs.organization_id IS NOT NULL), \
                   ids AS ( \
                       SELECT log_id FROM audit_log_heads \
                       UNION SELECT log_id FROM audit_checkpoints \
                       UNION SELECT organization_id FROM orgs WHERE organization_id IS NOT NULL \
                       UNION SELECT '' WHERE EXISTS (SELECT 1 FROM audit_log WHERE organization_id IS NULL)) \
                   SELECT ids.log_id, coalesce(h.size, 0) FROM ids LEFT JOIN audit_log_heads h USING (log_id) \
                   WHERE $1::text IS NULL OR ids.log_id = $1 ORDER BY ids.log_id";
        let rows = self.rows("listing logs", sql, params![org.map(str::to_string)]).await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Calls `each` for every stored event of a log with `from <= seq < to`, in seq order, reading
    /// [`CHUNK_ROWS`] rows per statement.
    async fn for_each_event(
        &self,
        log_id: &str,
        from: i64,
        to: i64,
        mut each: impl FnMut(StoredEvent) -> AuditResult<()>,
    ) -> AuditResult<()> {
        let sql: Arc<str> = format!(
            "SELECT {EVENT_COLUMNS} FROM audit_log WHERE {} AND seq >= ${} AND seq < ${} ORDER BY seq LIMIT {CHUNK_ROWS}",
            log_predicate(log_id),
            if log_id.is_empty() { 1 } else { 2 },
            if log_id.is_empty() { 2 } else { 3 },
        )
        .into();
        let mut next = from;
        while next < to {
            let rows = self.rows("reading a log", sql.clone(), log_range_params(log_id, next, to)).await?;
            let Some(last) = rows.last() else { break };
            let last_seq: i64 = last.try_get(18).map_err(|e| pg_error(e, "reading a log"))?;
            let full = rows.len() as i64 == CHUNK_ROWS;
            for r in &rows {
                each(stored_event_from_row(r)?)?;
            }
            if !full {
                break;
            }
            next = last_seq + 1;
        }
        Ok(())
    }

    /// Leaf hashes kept for rows that retention dropped (`seq → leaf`).
    async fn pruned_leaves(&self, log_id: &str, from: i64, to: i64) -> AuditResult<BTreeMap<i64, Hash>> {
        let log_id: Arc<str> = log_id.into();
        let pruned = self
            .with_conn(move |conn| {
                let log_id = log_id.clone();
                async move { audit_pg::pruned_leaves::read(&**conn, &log_id, from, to).await }
            })
            .await?;
        self.rows_read.fetch_add(pruned.len() as u64, Ordering::Relaxed);
        Ok(pruned)
    }

    /// Row views of `[from, to)`: stored rows with recomputed leaves, plus pruned positions (content archived, so
    /// their stored leaf stands for both).
    ///
    /// Reads with binary COPY out, [`COPY_CHUNK_SEQS`] positions per statement (each with its own deadline), and
    /// recomputes each chunk's leaves straight from the COPY bytes ([`leaf_hash_raw`]: no `serde_json::Value`) on
    /// the blocking pool while the next chunk is being read, so the server's work and ours overlap (and several logs
    /// verified at once hash on several cores).
    async fn row_views(
        &self,
        log_id: &str,
        from: i64,
        to: i64,
        progress: &(dyn Fn(u64) + Sync),
    ) -> AuditResult<Vec<RowView>> {
        // Where the rows end (injected rows beyond the head included), so the walk knows when to stop even across
        // a gap that retention left.
        let last = self
            .rows(
                "reading a log",
                format!("SELECT max(seq) FROM audit_log WHERE {}", log_predicate(log_id)),
                if log_id.is_empty() { Vec::new() } else { params![log_id.to_string()] },
            )
            .await?;
        let end = last.first().and_then(|r| r.get::<_, Option<i64>>(0)).map_or(from, |m| to.min(m.saturating_add(1)));
        let predicate = match log_id {
            "" => "organization_id IS NULL".to_string(),
            org => format!("organization_id = {}", audit_pg::quote_literal(org)),
        };
        let fetch = |next: i64| {
            let upto = end.min(next.saturating_add(COPY_CHUNK_SEQS));
            (
                upto,
                self.copy_out(audit_pg::copy_out_events_sql(&format!(
                    "{predicate} AND seq >= {next} AND seq < {upto}"
                ))),
            )
        };
        let mut views = Vec::new();
        let mut pending = None;
        if from < end {
            let (upto, bytes) = fetch(from);
            pending = Some((upto, bytes.await?));
        }
        while let Some((upto, bytes)) = pending.take() {
            let hashing = tokio::task::spawn_blocking(move || recompute_leaves(&bytes));
            let (chunk, next) = if upto < end {
                let (more, bytes) = fetch(upto);
                let (chunk, bytes) = tokio::join!(hashing, bytes);
                (chunk, Some((more, bytes?)))
            } else {
                (hashing.await, None)
            };
            let chunk = chunk.map_err(|e| AuditError::permanent(format!("verify: hashing task failed: {e}")))??;
            self.rows_read.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            progress(chunk.len() as u64);
            views.extend(chunk);
            pending = next;
        }
        for (seq, leaf) in self.pruned_leaves(log_id, from, to).await? {
            views.push(RowView { seq, event_id: Uuid::nil(), recomputed_leaf: leaf, stored_leaf: leaf });
        }
        views.sort_by_key(|v| v.seq);
        Ok(views)
    }

    /// Runs one `COPY … TO STDOUT (FORMAT binary)` (under the policy; repeated on a transient failure) and returns
    /// its bytes.
    async fn copy_out(&self, sql: String) -> AuditResult<Vec<u8>> {
        let sql: Arc<str> = sql.into();
        self.with_conn(move |conn| {
            let sql = sql.clone();
            async move {
                let stream = conn.copy_out(&*sql).await.map_err(|e| pg_error(e, "reading a log"))?;
                let mut stream = std::pin::pin!(stream);
                let mut buf = Vec::new();
                while let Some(chunk) = stream.next().await {
                    buf.extend_from_slice(&chunk.map_err(|e| pg_error(e, "reading a log"))?);
                }
                Ok(buf)
            }
        })
        .await
    }

    /// Stored leaf hashes `[0, size)` in order, failing if a position is missing or doubled. Reads the whole log:
    /// for evidence packs, which hold the events anyway; proofs use [`Self::tiled_tree`].
    async fn leaves(&self, log_id: &str, size: i64) -> AuditResult<Vec<Hash>> {
        let mut leaves = Vec::with_capacity(size as usize);
        let mut next = 0;
        while next < size {
            let to = size.min(next + CHUNK_ROWS);
            leaves.extend(self.leaf_range(log_id, next, to).await?);
            next = to;
        }
        Ok(leaves)
    }

    /// Stored leaf hashes of positions `[from, to)` (`to - from` at most [`CHUNK_ROWS`]), from the rows and the
    /// leaves kept for pruned rows; an integrity error if a position is missing or doubled. Reads only `seq` and
    /// `leaf_hash`: proofs and node building never need the events' content.
    async fn leaf_range(&self, log_id: &str, from: i64, to: i64) -> AuditResult<Vec<Hash>> {
        let sql = format!(
            "SELECT seq, leaf_hash FROM audit_log WHERE {} AND seq >= ${} AND seq < ${} ORDER BY seq",
            log_predicate(log_id),
            if log_id.is_empty() { 1 } else { 2 },
            if log_id.is_empty() { 2 } else { 3 },
        );
        let rows = self.rows("reading leaf hashes", sql, log_range_params(log_id, from, to)).await?;
        let mut found: Vec<(i64, Hash)> = Vec::with_capacity((to - from).max(0) as usize);
        for r in &rows {
            let seq: i64 = r.try_get(0).map_err(|e| pg_error(e, "reading leaf hashes"))?;
            let leaf: &[u8] = r.try_get(1).map_err(|e| pg_error(e, "reading leaf hashes"))?;
            let leaf: Hash = leaf.try_into().map_err(|_| {
                AuditError::integrity(format!("log `{log_id}`: the leaf hash at position {seq} is not 32 bytes"))
            })?;
            found.push((seq, leaf));
        }
        found.extend(self.pruned_leaves(log_id, from, to).await?);
        found.sort_by_key(|(seq, _)| *seq);
        if found.len() as i64 != to - from {
            return Err(AuditError::integrity(format!(
                "log `{log_id}` has {} rows at positions [{from}, {to}); run `audit-db verify`",
                found.len()
            )));
        }
        found
            .into_iter()
            .enumerate()
            .map(|(k, (seq, leaf))| {
                if seq != from + k as i64 {
                    return Err(AuditError::integrity(format!(
                        "log `{log_id}` has no single row at position {}; run `audit-db verify`",
                        from + k as i64
                    )));
                }
                Ok(leaf)
            })
            .collect()
    }

    /// Stores completed nodes (`level >= TILE_HEIGHT`) of a log. Idempotent: a node is a function of the leaves
    /// below it, so a node already stored is left alone. A database not yet migrated to `audit_log_nodes` stores
    /// nothing (its proofs compute the nodes from the leaves until it is).
    async fn store_nodes(&self, log_id: &str, nodes: &[(u32, u64, Hash)]) -> AuditResult<()> {
        match self.insert_nodes(log_id, nodes).await {
            Err(e) if e.sqlstate() == Some(SqlState::UNDEFINED_TABLE) => {
                tracing::warn!(log_id, "audit_log_nodes does not exist yet (run `audit-db migrate`): nodes not stored");
                Ok(())
            }
            other => other,
        }
    }

    async fn insert_nodes(&self, log_id: &str, nodes: &[(u32, u64, Hash)]) -> AuditResult<()> {
        for batch in nodes.chunks(NODE_BATCH) {
            let levels: Vec<i16> = batch.iter().map(|n| n.0 as i16).collect();
            let idx: Vec<i64> = batch.iter().map(|n| n.1 as i64).collect();
            let hashes: Vec<Vec<u8>> = batch.iter().map(|n| n.2.to_vec()).collect();
            self.execute(
                "storing Merkle nodes",
                "INSERT INTO audit_log_nodes (log_id, level, idx, hash) \
                 SELECT $1, l, i, h FROM unnest($2::int2[], $3::int8[], $4::bytea[]) AS t(l, i, h) \
                 ON CONFLICT DO NOTHING",
                params![log_id.to_string(), levels, idx, hashes],
            )
            .await?;
        }
        Ok(())
    }

    /// The stored nodes among `wanted` (absent ones are simply not in the map).
    async fn stored_nodes(
        &self,
        log_id: &str,
        wanted: &[(u32, u64)],
    ) -> AuditResult<std::collections::HashMap<(u32, u64), Hash>> {
        if wanted.is_empty() {
            return Ok(Default::default());
        }
        let levels: Vec<i16> = wanted.iter().map(|n| n.0 as i16).collect();
        let idx: Vec<i64> = wanted.iter().map(|n| n.1 as i64).collect();
        let rows = match self
            .rows(
                "reading Merkle nodes",
                "SELECT n.level, n.idx, n.hash FROM audit_log_nodes n \
                 JOIN unnest($2::int2[], $3::int8[]) AS w(level, idx) ON n.level = w.level AND n.idx = w.idx \
                 WHERE n.log_id = $1",
                params![log_id.to_string(), levels, idx],
            )
            .await
        {
            Err(e) if e.sqlstate() == Some(SqlState::UNDEFINED_TABLE) => return Ok(Default::default()),
            other => other?,
        };
        rows.iter()
            .map(|r| {
                let (level, idx): (i16, i64) = (r.get(0), r.get(1));
                let hash: &[u8] = r.get(2);
                let hash: Hash = hash.try_into().map_err(|_| {
                    AuditError::integrity(format!("log `{log_id}`: stored node ({level}, {idx}) is not 32 bytes"))
                })?;
                Ok(((level as u32, idx as u64), hash))
            })
            .collect()
    }

    /// Computes and stores every node (`level >= TILE_HEIGHT`) of `[0, size)` from the stored leaves, read in
    /// chunks — once, for a log sealed before `audit_log_nodes` existed. Stores nothing unless the leaves hash to the
    /// signed `root`, so a tampered log never yields nodes that look trustworthy.
    async fn fill_nodes(
        &self,
        log_id: &str,
        size: i64,
        root: Hash,
    ) -> AuditResult<std::collections::HashMap<(u32, u64), Hash>> {
        let mut range = CompactRange::new();
        let mut nodes = Vec::new();
        let mut next = 0;
        while next < size {
            let to = size.min(next + CHUNK_ROWS);
            for leaf in self.leaf_range(log_id, next, to).await? {
                range.append_with(leaf, &mut |level, idx, h| {
                    if level >= TILE_HEIGHT {
                        nodes.push((level, idx, *h));
                    }
                });
            }
            next = to;
        }
        if range.root() != root {
            return Err(AuditError::integrity(format!(
                "log `{log_id}`: stored leaves do not hash to the signed root of size {size}; run `audit-db verify`"
            )));
        }
        tracing::info!(log_id, size, nodes = nodes.len(), "stored the Merkle nodes of a log sealed without them");
        self.store_nodes(log_id, &nodes).await?;
        Ok(nodes.into_iter().map(|(l, i, h)| ((l, i), h)).collect())
    }

    /// The part of the tree of `[0, size)` that the node reads `planned` need: stored nodes and at most a couple of
    /// 256-leaf tiles. Missing stored nodes (a log sealed before they were kept) are filled first from the leaves,
    /// checked against the signed `root`.
    async fn tiled_tree(
        &self,
        log_id: &str,
        size: i64,
        root: Hash,
        planned: &std::collections::BTreeSet<(u32, u64)>,
    ) -> AuditResult<TiledTree> {
        let (wanted, tiles) = TiledTree::needs(planned);
        let mut nodes = self.stored_nodes(log_id, &wanted).await?;
        if nodes.len() < wanted.len() {
            let all = self.fill_nodes(log_id, size, root).await?;
            nodes = wanted.iter().filter_map(|k| all.get(k).map(|h| (*k, *h))).collect();
        }
        let mut tree = TiledTree { nodes, tiles: Default::default() };
        for t in tiles {
            let from = (t << TILE_HEIGHT) as i64;
            let to = size.min(from + (1 << TILE_HEIGHT));
            tree.tiles.insert(t, self.leaf_range(log_id, from, to).await?);
        }
        Ok(tree)
    }

    /// Every checkpoint of a log, oldest first.
    pub async fn checkpoints(&self, log_id: &str) -> AuditResult<Vec<CheckpointRecord>> {
        let rows = self
            .rows(
                "reading checkpoints",
                "SELECT id, log_id, tree_size, root_hash, created_at, key_id, note, frontier FROM audit_checkpoints \
                 WHERE log_id = $1 ORDER BY tree_size, id",
                params![log_id.to_string()],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let root: Vec<u8> = r.get(3);
                Ok(CheckpointRecord {
                    id: r.get(0),
                    log_id: r.get(1),
                    tree_size: r.get(2),
                    root_hash: root
                        .as_slice()
                        .try_into()
                        .map_err(|_| AuditError::integrity("a checkpoint root has the wrong length"))?,
                    created_at: r.get(4),
                    key_id: r.get(5),
                    note: r.get(6),
                    frontier: r.get(7),
                })
            })
            .collect()
    }

    /// Seals every log (or one organisation's) that grew since its last checkpoint: checks the new rows (contiguous
    /// positions, leaf hashes that match their content), extends the stored compact range, signs the new root.
    /// Refuses to sign a log whose new rows do not check out — signing them would bless tampering.
    pub async fn checkpoint(
        &self,
        signer: &NoteSigner,
        org: Option<&str>,
        now: DateTime<Utc>,
    ) -> AuditResult<Vec<SealOutcome>> {
        observed("checkpoint", self.seal_logs(signer, org, now)).await
    }

    async fn seal_logs(
        &self,
        signer: &NoteSigner,
        org: Option<&str>,
        now: DateTime<Utc>,
    ) -> AuditResult<Vec<SealOutcome>> {
        let mut out = Vec::new();
        for (log_id, size) in self.logs(org).await? {
            let previous = self.checkpoints(&log_id).await?.into_iter().rev().find(|c| c.key_id == signer.key_id());
            let (mut range, from) = match &previous {
                Some(c) => {
                    let r = CompactRange::from_bytes(&c.frontier)?;
                    if r.root() != c.root_hash || r.size() as i64 != c.tree_size {
                        return Err(AuditError::integrity(format!(
                            "log `{log_id}`: the stored frontier of checkpoint {} does not match its signed root; run \
                             `audit-db verify`",
                            c.id
                        )));
                    }
                    (r, c.tree_size)
                }
                None => (CompactRange::new(), 0),
            };
            if size < from {
                return Err(AuditError::integrity(format!(
                    "log `{log_id}`: its head ({size}) is behind its signed checkpoint ({from}); refusing to sign (run \
                     `audit-db verify`)"
                )));
            }
            if from == size {
                out.push(SealOutcome {
                    log_id,
                    tree_size: size,
                    root_hash: hex::encode(range.root()),
                    new_checkpoint: false,
                });
                continue;
            }
            let views = self.row_views(&log_id, from, size, &|_| {}).await?;
            let mut nodes = Vec::new();
            for (k, v) in views.iter().enumerate() {
                let expected = from + k as i64;
                if v.seq != expected {
                    return Err(AuditError::integrity(format!(
                        "log `{log_id}`: position {expected} is missing or doubled; refusing to sign (run `audit-db verify`)"
                    )));
                }
                if v.recomputed_leaf != v.stored_leaf {
                    return Err(AuditError::integrity(format!(
                        "log `{log_id}`: event {} at position {expected} does not match its leaf hash; refusing to sign",
                        v.event_id
                    )));
                }
                range.append_with(v.stored_leaf, &mut |level, idx, h| {
                    if level >= TILE_HEIGHT {
                        nodes.push((level, idx, *h));
                    }
                });
            }
            if (views.len() as i64) != size - from {
                return Err(AuditError::integrity(format!(
                    "log `{log_id}`: expected {} new rows, found {}; refusing to sign",
                    size - from,
                    views.len()
                )));
            }
            let root = range.root();
            let cp = Checkpoint { origin: origin_for(&log_id), tree_size: size as u64, root_hash: root, time: now };
            let note = signer.sign(&cp);
            // Nodes first: a proof against this checkpoint then finds them (nodes without their checkpoint are
            // harmless; the next seal completes the same ones).
            self.store_nodes(&log_id, &nodes).await?;
            self.execute(
                "storing a checkpoint",
                "INSERT INTO audit_checkpoints (log_id, tree_size, root_hash, created_at, key_id, signature, note, \
                 frontier) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                params![
                    log_id.clone(),
                    size,
                    root.to_vec(),
                    now,
                    signer.key_id(),
                    note_signature(&note),
                    note.clone(),
                    range.to_bytes(),
                ],
            )
            .await?;
            metrics::counter!(audit_core::metrics::CHECKPOINTS).increment(1);
            out.push(SealOutcome { log_id, tree_size: size, root_hash: hex::encode(root), new_checkpoint: true });
        }
        Ok(out)
    }

    /// The checkpoints of a log whose notes verify with `verifier` and agree with their row; the others become
    /// `bad-signature` findings.
    async fn trusted_checkpoints(
        &self,
        log_id: &str,
        verifier: &NoteVerifier,
        findings: &mut Vec<Finding>,
    ) -> AuditResult<Vec<(CheckpointRecord, TrustedCheckpoint)>> {
        let mut out = Vec::new();
        for c in self.checkpoints(log_id).await? {
            if c.key_id != verifier.key_id() {
                continue; // sealed by another key: not ours to judge
            }
            match verifier.verify(&c.note) {
                Ok(cp)
                    if cp.tree_size as i64 == c.tree_size
                        && cp.root_hash == c.root_hash
                        && cp.origin == origin_for(log_id) =>
                {
                    let frontier = CompactRange::from_bytes(&c.frontier).ok();
                    out.push((
                        c.clone(),
                        TrustedCheckpoint { tree_size: cp.tree_size, root_hash: cp.root_hash, frontier },
                    ));
                }
                Ok(_) => findings.push(Finding::bad_signature(
                    log_id,
                    format!("checkpoint {} (size {}): its row does not match its signed note", c.id, c.tree_size),
                )),
                Err(e) => findings
                    .push(Finding::bad_signature(log_id, format!("checkpoint {} (size {}): {e}", c.id, c.tree_size))),
            }
        }
        Ok(out)
    }

    /// Recomputes leaves and roots and checks them against the signed checkpoints. `incremental`: start from the
    /// last checkpoint a previous clean run verified (re-checked against its signature). `progress` is called with
    /// the number of leaves just read.
    pub async fn verify(
        &self,
        verifier: &NoteVerifier,
        org: Option<&str>,
        incremental: bool,
        progress: &(dyn Fn(u64) + Sync),
    ) -> AuditResult<VerifyReport> {
        observed("verify", self.verify_logs(verifier, org, incremental, progress)).await
    }

    async fn verify_logs(
        &self,
        verifier: &NoteVerifier,
        org: Option<&str>,
        incremental: bool,
        progress: &(dyn Fn(u64) + Sync),
    ) -> AuditResult<VerifyReport> {
        let started = Instant::now();
        let started_at = Utc::now();
        let mut report = VerifyReport::default();
        // Logs are independent: verify several at once (bounded by the cores and by the store's pool), keeping the
        // report in log order.
        let parallel = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, VERIFY_PARALLEL_LOGS);
        let logs = self.logs(org).await?;
        let mut each = futures::stream::iter(logs)
            .map(|(log_id, head)| self.verify_log(verifier, log_id, head, incremental, progress))
            .buffered(parallel);
        while let Some(one) = each.next().await {
            let (leaves, findings) = one?;
            report.logs += 1;
            report.leaves += leaves;
            report.findings.extend(findings);
        }
        report.seconds = started.elapsed().as_secs_f64();
        self.record_verify_run(started_at, org, incremental, &report).await?;
        Ok(report)
    }

    /// Verifies one log: its signed checkpoints, then every leaf from the start (or from the last clean verified
    /// checkpoint when `incremental`); records a clean result. Returns the leaves read and the findings.
    async fn verify_log(
        &self,
        verifier: &NoteVerifier,
        log_id: String,
        head: i64,
        incremental: bool,
        progress: &(dyn Fn(u64) + Sync),
    ) -> AuditResult<(u64, Vec<Finding>)> {
        let mut findings = Vec::new();
        let trusted = self.trusted_checkpoints(&log_id, verifier, &mut findings).await?;
        let mut base = CompactRange::new();
        if incremental
            && let Some((size, root)) = self.last_verified(&log_id).await?
            && let Some((_, t)) = trusted.iter().find(|(c, _)| c.tree_size == size && c.root_hash == root)
            && let Some(f) = &t.frontier
            && f.root() == t.root_hash
            && f.size() == t.tree_size
        {
            base = f.clone();
        }
        let views = self.row_views(&log_id, base.size() as i64, i64::MAX, progress).await?;
        let leaves = views.len() as u64;
        let checkpoints: Vec<TrustedCheckpoint> = trusted.iter().map(|(_, t)| t.clone()).collect();
        findings.extend(verify_incremental(&log_id, &views, &base, &checkpoints, head as u64));
        if findings.is_empty()
            && let Some((c, _)) = trusted.last()
        {
            self.execute(
                "recording a verification",
                "INSERT INTO audit_verifications (log_id, tree_size, root_hash) VALUES ($1, $2, $3)",
                params![log_id.clone(), c.tree_size, c.root_hash.to_vec()],
            )
            .await?;
        }
        Ok((leaves, findings))
    }

    /// Appends the run's outcome to `audit_verify_runs` (what the service's verify metrics read).
    async fn record_verify_run(
        &self,
        started_at: DateTime<Utc>,
        org: Option<&str>,
        incremental: bool,
        report: &VerifyReport,
    ) -> AuditResult<()> {
        let (logs, leaves, findings) = (
            i32::try_from(report.logs).unwrap_or(i32::MAX),
            i64::try_from(report.leaves).unwrap_or(i64::MAX),
            i32::try_from(report.findings.len()).unwrap_or(i32::MAX),
        );
        self.execute(
            "recording a verify run",
            "INSERT INTO audit_verify_runs (started_at, finished_at, organization, incremental, logs, leaves, \
             findings) VALUES ($1, now(), $2, $3, $4, $5, $6)",
            params![started_at, org.map(str::to_string), incremental, logs, leaves, findings],
        )
        .await
        .map(drop)
    }

    /// The latest verify run: when it finished and how many findings it had (`None` before the first run).
    pub async fn last_verify_run(&self) -> AuditResult<Option<(DateTime<Utc>, i32)>> {
        let rows = self
            .rows(
                "reading the last verify run",
                "SELECT finished_at, findings FROM audit_verify_runs ORDER BY finished_at DESC, id DESC LIMIT 1",
                Vec::new(),
            )
            .await?;
        Ok(rows.first().map(|r| (r.get(0), r.get(1))))
    }

    /// When each log was last sealed (its newest checkpoint), for the checkpoint-age metric.
    pub async fn last_checkpoint_times(&self) -> AuditResult<Vec<(String, DateTime<Utc>)>> {
        let rows = self
            .rows(
                "reading checkpoint times",
                "SELECT log_id, max(created_at) FROM audit_checkpoints GROUP BY log_id ORDER BY log_id",
                Vec::new(),
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    async fn last_verified(&self, log_id: &str) -> AuditResult<Option<(i64, Hash)>> {
        let rows = self
            .rows(
                "reading the last verification",
                "SELECT tree_size, root_hash FROM audit_verifications WHERE log_id = $1 ORDER BY tree_size DESC, id DESC LIMIT 1",
                params![log_id.to_string()],
            )
            .await?;
        Ok(rows.first().and_then(|r| {
            let root: Vec<u8> = r.get(1);
            root.as_slice().try_into().ok().map(|h| (r.get(0), h))
        }))
    }

    /// The latest checkpoint of a log that verifies with `verifier`.
    async fn latest_trusted(&self, log_id: &str, verifier: &NoteVerifier) -> AuditResult<CheckpointRecord> {
        let mut findings = Vec::new();
        let trusted = self.trusted_checkpoints(log_id, verifier, &mut findings).await?;
        trusted.into_iter().map(|(c, _)| c).next_back().ok_or_else(|| {
            AuditError::invalid(format!(
                "log `{log_id}` has no checkpoint signed by key {}; run `audit-db checkpoint` first",
                verifier.key_id()
            ))
        })
    }

    /// An event's inclusion proof against the latest checkpoint of its log.
    ///
    /// Reads the event, O(log n) stored nodes and the leaves of at most two 256-leaf tiles — not the log — and
    /// returns the proof only if the event's content hashes to its leaf and the proof leads to the signed root
    /// (an integrity error otherwise).
    pub async fn inclusion_proof(&self, verifier: &NoteVerifier, event_id: Uuid) -> AuditResult<InclusionProofJson> {
        let rows = self
            .rows(
                "finding the event",
                format!("SELECT {EVENT_COLUMNS} FROM audit_log WHERE event_id = $1 LIMIT 1"),
                params![event_id],
            )
            .await?;
        let row = rows
            .first()
            .ok_or_else(|| AuditError::not_found(format!("event_id: no stored event has id {event_id}")))?;
        let event = stored_event_from_row(row)?;
        let (org, seq, leaf) = (event.event.organization_id.clone(), event.seq, event.leaf_hash);
        let log_id = org.clone().unwrap_or_default();
        if leaf_hash(&event) != leaf {
            return Err(AuditError::integrity(format!(
                "log `{log_id}`: event {event_id} at position {seq} does not match its leaf hash; run `audit-db verify`"
            )));
        }
        let cp = self.latest_trusted(&log_id, verifier).await?;
        if seq >= cp.tree_size {
            return Err(AuditError::invalid(format!(
                "event {event_id} (position {seq}) is newer than the latest checkpoint (size {}); run `audit-db checkpoint`",
                cp.tree_size
            )));
        }
        let (size, index) = (cp.tree_size as u64, seq as u64);
        let planned = nodes_read_by(|src| {
            inclusion_proof_by(size, index, src);
        });
        let tree = self.tiled_tree(&log_id, cp.tree_size, cp.root_hash, &planned).await?;
        let (proof, _) = tree.run(|src| inclusion_proof_by(size, index, src));
        if !verify_inclusion(&leaf, index, size, &proof, &cp.root_hash) {
            return Err(AuditError::integrity(format!(
                "log `{log_id}`: stored leaves do not hash to the signed root of size {}; run `audit-db verify`",
                cp.tree_size
            )));
        }
        Ok(InclusionProofJson {
            event_id,
            organization_id: org,
            seq,
            leaf_hash: hex::encode(leaf),
            tree_size: cp.tree_size,
            root_hash: hex::encode(cp.root_hash),
            proof: proof.iter().map(hex::encode).collect(),
            checkpoint: cp.note,
        })
    }

    /// A consistency proof between two checkpoints of a log (default: the two latest). Reads stored nodes and at
    /// most two tiles of leaves, and returns the proof only if it verifies between the two signed roots.
    pub async fn consistency_proof(
        &self,
        verifier: &NoteVerifier,
        log_id: &str,
        old_size: Option<i64>,
        new_size: Option<i64>,
    ) -> AuditResult<ConsistencyProofJson> {
        let mut findings = Vec::new();
        let trusted: Vec<CheckpointRecord> =
            self.trusted_checkpoints(log_id, verifier, &mut findings).await?.into_iter().map(|(c, _)| c).collect();
        let pick = |size: Option<i64>, nth_from_end: usize| -> AuditResult<CheckpointRecord> {
            match size {
                Some(s) => {
                    trusted.iter().find(|c| c.tree_size == s).cloned().ok_or_else(|| {
                        AuditError::invalid(format!("log `{log_id}` has no signed checkpoint of size {s}"))
                    })
                }
                None => trusted.iter().rev().nth(nth_from_end).cloned().ok_or_else(|| {
                    AuditError::invalid(format!("log `{log_id}` needs two signed checkpoints for a consistency proof"))
                }),
            }
        };
        let new = pick(new_size, 0)?;
        let old = pick(old_size, 1)?;
        if old.tree_size > new.tree_size {
            return Err(AuditError::invalid("the old checkpoint must not be larger than the new one"));
        }
        let (size, old_n) = (new.tree_size as u64, old.tree_size as u64);
        let planned = nodes_read_by(|src| {
            consistency_proof_by(size, old_n, src);
        });
        let tree = self.tiled_tree(log_id, new.tree_size, new.root_hash, &planned).await?;
        let (proof, _) = tree.run(|src| consistency_proof_by(size, old_n, src));
        if !verify_consistency(old_n, size, &old.root_hash, &new.root_hash, &proof) {
            return Err(AuditError::integrity(format!("log `{log_id}`: stored leaves do not hash to the signed root")));
        }
        Ok(ConsistencyProofJson {
            log_id: log_id.to_string(),
            old_size: old.tree_size,
            old_root: hex::encode(old.root_hash),
            new_size: new.tree_size,
            new_root: hex::encode(new.root_hash),
            proof: proof.iter().map(hex::encode).collect(),
        })
    }

    /// An evidence pack of one organisation's events (optionally within `[from, to]`), with the latest checkpoint,
    /// an inclusion proof per event and the public key. Holds nothing of other organisations.
    pub async fn export_pack(
        &self,
        signer: &NoteSigner,
        org: &str,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> AuditResult<BTreeMap<String, Vec<u8>>> {
        let verifier = signer.verifier();
        let cp = self.latest_trusted(org, &verifier).await?;
        let mut events = Vec::new();
        self.for_each_event(org, 0, cp.tree_size, |e| {
            if from.is_none_or(|f| e.event.timestamp >= f) && to.is_none_or(|t| e.event.timestamp <= t) {
                events.push(e);
            }
            Ok(())
        })
        .await?;
        let leaves = self.leaves(org, cp.tree_size).await?;
        let proofs = ProofsFile::build(&leaves, &events)?;
        if proofs.root != hex::encode(cp.root_hash) {
            return Err(AuditError::integrity(format!(
                "log `{org}`: stored leaves do not hash to the signed root; run `audit-db verify`"
            )));
        }
        Ok(build_pack(signer, (!org.is_empty()).then_some(org), &cp.note, &events, &proofs, now, &BTreeMap::new())?)
    }
}

/// Row views (recomputed and stored leaf) of the tuples of one binary COPY of [`audit_pg::copy_out_events_sql`].
fn recompute_leaves(bytes: &[u8]) -> AuditResult<Vec<RowView>> {
    let mut tuples = audit_pg::BinaryTuples::new(bytes)?;
    let (mut fields, mut buf) = (Vec::with_capacity(20), Vec::with_capacity(1024));
    let mut out = Vec::new();
    while tuples.next_tuple(&mut fields)? {
        let row = audit_pg::RawEventRow::from_fields(&fields)?;
        out.push(RowView {
            seq: row.seq,
            event_id: row.event_id,
            recomputed_leaf: leaf_hash_raw(&row, &mut buf)?,
            stored_leaf: row.leaf_hash,
        });
    }
    Ok(out)
}

/// Runs `fut`, recording its duration as the seed's `audit_db_operation_duration_seconds{operation, status}`.
async fn observed<T>(operation: &'static str, fut: impl Future<Output = AuditResult<T>>) -> AuditResult<T> {
    let started = Instant::now();
    let result = fut.await;
    let status = if result.is_ok() { "success" } else { "error" };
    metrics::histogram!(audit_core::metrics::OPERATION_DURATION, "operation" => operation, "status" => status)
        .record(started.elapsed().as_secs_f64());
    result
}

/// The raw signature bytes of a note's signature line (stored beside the note for indexing and audits).
fn note_signature(note: &str) -> Vec<u8> {
    use base64::Engine as _;
    note.lines()
        .rev()
        .find_map(|l| l.strip_prefix("— "))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .unwrap_or_default()
}

/// Seals every log on a fixed period (`integrity.checkpointIntervalSecs`) for as long as the returned task runs.
/// A failed round is logged and tried again on the next tick; a log that does not check out is never signed.
pub fn spawn_checkpointer<R: ResiliencePolicy>(
    store: std::sync::Arc<IntegrityStore<R>>,
    signer: NoteSigner,
    interval: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match store.checkpoint(&signer, None, Utc::now()).await {
                Ok(sealed) => {
                    let new = sealed.iter().filter(|o| o.new_checkpoint).count();
                    tracing::info!(new, logs = sealed.len(), "checkpointer sealed the logs");
                }
                Err(e) if e.kind() == ErrorKind::Integrity => {
                    tracing::error!(error = %e, "checkpointer refused to sign: run `audit-db verify`")
                }
                Err(e) => tracing::warn!(error = %e, "checkpointer: round failed; trying again next tick"),
            }
        }
    })
}
