//! The SQL of personal data, in one place: the `audit_subject_keys` table and the erasure's look at `audit_log`.

use std::sync::Arc;
use std::time::Duration;

use audit_core::{AuditError, AuditResult, KeyManager, ResiliencePolicy, SqlState};
use audit_pg::{PgPool, PooledConn, checkout, pg_error};

use crate::cipher::INDEX_KEY_CONTEXT;
use serde::Serialize;

/// A subject key row: the wrapped secret and what it is bound to.
#[derive(Debug, Clone)]
pub(crate) struct KeyRow {
    pub key_id: Vec<u8>,
    pub subject_index: Vec<u8>,
    pub wrapped_key: Vec<u8>,
    pub master_key_id: String,
    /// `audit_subject_keys.value_format` (see `ValueFormat`).
    pub value_format: i16,
}

/// Events of one organisation and classification that carry a subject's personal values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SubjectEvents {
    /// The organisation (`None`: the shared log).
    pub organization_id: Option<String>,
    /// The events' classification.
    pub data_classification: String,
    /// How many.
    pub events: i64,
}

/// The subject-key table on a pool, every statement under the resilience policy.
pub(crate) struct KeyStore<R> {
    pool: PgPool,
    policy: R,
    acquire_timeout: Duration,
}

/// Look-ups of at most this many keys run as one plain statement (see [`KeyStore::lookup`]).
const FEW_KEYS: usize = 64;

/// Subject keys re-wrapped per statement during a master-key rotation (all in one transaction).
const REWRAP_CHUNK: usize = 10_000;

/// What a rotation did: keys re-wrapped, and keys already under the new master key (an earlier, resumed run).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rewrapped {
    pub rewrapped: i64,
    pub already_new: i64,
}

const KEY_COLUMNS: &str = "key_id, subject_index, wrapped_key, master_key_id, value_format";

/// Key rows as the column arrays an `unnest` insert binds.
struct KeyColumns {
    key_id: Vec<Vec<u8>>,
    subject_index: Vec<Vec<u8>>,
    wrapped_key: Vec<Vec<u8>>,
    master_key_id: Vec<String>,
    value_format: Vec<i16>,
}

/// Inserts the rows of a [`KeyColumns`] ([`KeyColumns::params`]).
const INSERT_KEYS: &str = "INSERT INTO audit_subject_keys (key_id, subject_index, wrapped_key, master_key_id, value_format) \
     SELECT * FROM unnest($1::bytea[], $2::bytea[], $3::bytea[], $4::text[], $5::int2[])";

impl KeyColumns {
    /// The parameters of [`INSERT_KEYS`].
    fn params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 5] {
        [&self.key_id, &self.subject_index, &self.wrapped_key, &self.master_key_id, &self.value_format]
    }

    fn of(rows: &[&KeyRow]) -> Self {
        Self {
            key_id: rows.iter().map(|r| r.key_id.clone()).collect(),
            subject_index: rows.iter().map(|r| r.subject_index.clone()).collect(),
            wrapped_key: rows.iter().map(|r| r.wrapped_key.clone()).collect(),
            master_key_id: rows.iter().map(|r| r.master_key_id.clone()).collect(),
            value_format: rows.iter().map(|r| r.value_format).collect(),
        }
    }
}

fn key_row(r: &tokio_postgres::Row) -> KeyRow {
    KeyRow {
        key_id: r.get(0),
        subject_index: r.get(1),
        wrapped_key: r.get(2),
        master_key_id: r.get(3),
        value_format: r.get(4),
    }
}

impl<R: ResiliencePolicy> KeyStore<R> {
    pub(crate) fn new(pool: PgPool, policy: R, acquire_timeout: Duration) -> Self {
        Self { pool, policy, acquire_timeout }
    }

    async fn with_conn<T, F, Fut>(&self, op: F) -> AuditResult<T>
    where
        T: Send,
        F: Fn(PooledConn) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = AuditResult<T>> + Send + 'static,
    {
        let (pool, wait, op) = (self.pool.clone(), self.acquire_timeout, Arc::new(op));
        self.policy
            .execute(move || {
                let (pool, op) = (pool.clone(), op.clone());
                async move { op(checkout(&pool, wait).await?).await }
            })
            .await
    }

    /// Key rows by subject index.
    pub(crate) async fn by_index(&self, indexes: Vec<Vec<u8>>) -> AuditResult<Vec<KeyRow>> {
        self.lookup("subject_index", indexes).await
    }

    /// Key rows by key id.
    pub(crate) async fn by_id(&self, ids: Vec<Vec<u8>>) -> AuditResult<Vec<KeyRow>> {
        self.lookup("key_id", ids).await
    }

    /// Key rows whose unique `column` is one of `values`, always through that column's index. Costing random reads
    /// as disk reads, the planner picks a sequential scan of the whole table for a chunk's ten thousand or so values
    /// once the table holds a few hundred thousand keys, although the index is cached (measured at 628,000 keys and
    /// 16,000 values: 100 ms by sequential scan, 41 ms by index), and the scan grows with the table while the index
    /// probes do not. So for a large look-up sequential scans are off for that one statement (`SET LOCAL`, in its
    /// own transaction); a few values (a query's filter, an erasure) take one round trip, where the planner already
    /// uses the index.
    async fn lookup(&self, column: &'static str, values: Vec<Vec<u8>>) -> AuditResult<Vec<KeyRow>> {
        if values.is_empty() {
            return Ok(Vec::new());
        }
        let values = Arc::new(values);
        self.with_conn(move |mut conn| {
            let values = values.clone();
            async move {
                let sql = format!("SELECT {KEY_COLUMNS} FROM audit_subject_keys WHERE {column} = ANY($1)");
                let read = |e| pg_error(e, "reading subject keys");
                if values.len() <= FEW_KEYS {
                    let rows = conn.query(&sql, &[&*values]).await.map_err(read)?;
                    return Ok(rows.iter().map(key_row).collect());
                }
                // Left set when a statement fails: the pool then discards the connection, open transaction and all.
                conn.set_in_caller_transaction(true);
                let tx = conn.client().transaction().await.map_err(read)?;
                tx.batch_execute("SET LOCAL enable_seqscan = off").await.map_err(read)?;
                let rows = tx.query(&sql, &[&*values]).await.map_err(read)?;
                tx.commit().await.map_err(read)?;
                conn.set_in_caller_transaction(false);
                Ok(rows.iter().map(key_row).collect())
            }
        })
        .await
    }

    /// Stores new keys for subjects that had none when the caller looked; returns the subject indexes stored. The
    /// rows go in by subject index (neighbouring entries share index pages). The usual case is one plain INSERT;
    /// only when another process created one of the subjects' keys since the caller looked (the INSERT fails with a
    /// unique violation and stores nothing) are the rows inserted again keeping the stored keys (the caller reads
    /// those back). `ON CONFLICT` is not the first try because its speculative insertion costs about half again as
    /// much per key (docs/compliance.md, "Cost").
    pub(crate) async fn create(&self, rows: &[KeyRow]) -> AuditResult<Vec<Vec<u8>>> {
        let mut sorted: Vec<&KeyRow> = rows.iter().collect();
        sorted.sort_unstable_by(|a, b| a.subject_index.cmp(&b.subject_index));
        let cols = Arc::new(KeyColumns::of(&sorted));
        let plain = {
            let cols = cols.clone();
            self.with_conn(move |conn| {
                let cols = cols.clone();
                async move {
                    conn.execute(INSERT_KEYS, &cols.params()).await.map_err(|e| pg_error(e, "storing subject keys"))
                }
            })
            .await
        };
        match plain {
            Ok(_) => Ok(rows.iter().map(|r| r.subject_index.clone()).collect()),
            Err(e) if e.sqlstate() == Some(SqlState::UNIQUE_VIOLATION) => self.insert_keeping_stored(cols).await,
            Err(e) => Err(e),
        }
    }

    /// Inserts new keys, keeping any key already stored for a subject; returns the subject indexes inserted.
    async fn insert_keeping_stored(&self, cols: Arc<KeyColumns>) -> AuditResult<Vec<Vec<u8>>> {
        self.with_conn(move |conn| {
            let cols = cols.clone();
            async move {
                let rows = conn
                    .query(&format!("{INSERT_KEYS} ON CONFLICT DO NOTHING RETURNING subject_index"), &cols.params())
                    .await
                    .map_err(|e| pg_error(e, "storing subject keys"))?;
                Ok(rows.iter().map(|r| r.get(0)).collect())
            }
        })
        .await
    }

    /// Re-wraps every subject key wrapped under `old` under `new`, in one transaction that locks the table against
    /// key creation and erasure meanwhile (they wait, then proceed under whichever master key they hold). The
    /// subject keys themselves do not change. Refuses, changing nothing, when `old` is `new`, or when a stored key is
    /// wrapped under a master key that is neither (the error names it), or when a key does not unwrap under `old`.
    pub(crate) async fn rewrap(&self, old: Arc<dyn KeyManager>, new: Arc<dyn KeyManager>) -> AuditResult<Rewrapped> {
        let (old_id, new_id) = (old.master_key_id(), new.master_key_id());
        if old_id == new_id {
            return Err(AuditError::invalid(format!(
                "new master key: it is the old master key ({old_id}); generate a new one with `audit-db keygen --master`"
            )));
        }
        self.with_conn(move |mut conn| {
            let (old, new, old_id, new_id) = (old.clone(), new.clone(), old_id.clone(), new_id.clone());
            async move {
                conn.set_in_caller_transaction(true);
                let tx = conn.client().transaction().await.map_err(|e| pg_error(e, "starting the rotation"))?;
                tx.batch_execute("LOCK TABLE audit_subject_keys IN SHARE ROW EXCLUSIVE MODE")
                    .await
                    .map_err(|e| pg_error(e, "locking audit_subject_keys"))?;
                let counts: Vec<(String, i64)> = tx
                    .query("SELECT master_key_id, count(*) FROM audit_subject_keys GROUP BY 1 ORDER BY 1", &[])
                    .await
                    .map_err(|e| pg_error(e, "counting subject keys per master key"))?
                    .iter()
                    .map(|r| (r.get(0), r.get(1)))
                    .collect();
                let count_of = |id: &str| counts.iter().find(|(m, _)| m == id).map_or(0, |(_, n)| *n);
                let others: Vec<String> = counts
                    .iter()
                    .filter(|(m, _)| *m != old_id && *m != new_id)
                    .map(|(m, n)| format!("{m} ({n} keys)"))
                    .collect();
                if !others.is_empty() {
                    return Err(AuditError::invalid(format!(
                        "old master key: subject keys are wrapped under master key {}, not under the old master key                          {old_id} (nor the new one {new_id}); give the master key file they were created with",
                        others.join(", ")
                    )));
                }
                // The subject-index key moves with the subject keys (every subject keeps its index).
                let index_row = tx
                    .query_opt(
                        "SELECT wrapped_key, master_key_id FROM audit_subject_index_key WHERE singleton FOR UPDATE",
                        &[],
                    )
                    .await
                    .map_err(|e| pg_error(e, "reading the subject index key"))?;
                let index_secret = match index_row.map(|r| (r.get::<_, Vec<u8>>(0), r.get::<_, String>(1))) {
                    Some((_, id)) if id == new_id => None,
                    Some((wrapped, id)) if id == old_id => {
                        Some(old.unwrap(&wrapped, INDEX_KEY_CONTEXT).await.map_err(|e| {
                            e.context(format!("old master key {old_id}: the subject index key"))
                        })?)
                    }
                    Some((_, id)) => {
                        return Err(AuditError::invalid(format!(
                            "old master key: the subject index key is wrapped under master key {id}, not under the \
                             old master key {old_id}; give the master key file it was created with"
                        )));
                    }
                    None => Some(old.subject_index_secret().ok_or_else(|| {
                        AuditError::invalid(format!(
                            "old master key {old_id}: its subject index key cannot be exported, so it cannot be \
                             rotated by re-wrapping"
                        ))
                    })?),
                };
                if let Some(secret) = index_secret {
                    let wrapped = new.wrap(&secret, INDEX_KEY_CONTEXT).await?;
                    tx.execute(
                        "INSERT INTO audit_subject_index_key (wrapped_key, master_key_id) VALUES ($1, $2) \
                         ON CONFLICT (singleton) DO UPDATE SET wrapped_key = EXCLUDED.wrapped_key, \
                         master_key_id = EXCLUDED.master_key_id, updated_at = now()",
                        &[&wrapped, &new_id],
                    )
                    .await
                    .map_err(|e| pg_error(e, "storing the re-wrapped subject index key"))?;
                }
                let mut done = Rewrapped { rewrapped: 0, already_new: count_of(&new_id) };
                let mut after: Vec<u8> = Vec::new();
                loop {
                    let sql = format!(
                        "SELECT {KEY_COLUMNS} FROM audit_subject_keys WHERE master_key_id = $1 AND key_id > $2 \
                         ORDER BY key_id LIMIT {REWRAP_CHUNK}"
                    );
                    let rows: Vec<KeyRow> = tx
                        .query(&sql, &[&old_id, &after])
                        .await
                        .map_err(|e| pg_error(e, "reading subject keys to re-wrap"))?
                        .iter()
                        .map(key_row)
                        .collect();
                    let Some(last) = rows.last() else { break };
                    after = last.key_id.clone();
                    let contexts: Vec<Vec<u8>> =
                        rows.iter().map(|r| [r.key_id.as_slice(), r.subject_index.as_slice()].concat()).collect();
                    let mut secrets = Vec::with_capacity(rows.len());
                    for (r, context) in rows.iter().zip(&contexts) {
                        secrets.push(old.unwrap(&r.wrapped_key, context).await.map_err(|e| {
                            e.context(format!("old master key {old_id}: subject key {}", hex::encode(&r.key_id)))
                        })?);
                    }
                    let items: Vec<(&[u8], &[u8])> =
                        secrets.iter().zip(&contexts).map(|(s, c)| (s.as_slice(), c.as_slice())).collect();
                    let wrapped = new.wrap_many(&items).await?;
                    let ids: Vec<Vec<u8>> = rows.iter().map(|r| r.key_id.clone()).collect();
                    let n = tx
                        .execute(
                            "UPDATE audit_subject_keys k SET wrapped_key = u.wrapped_key, master_key_id = $3 \
                             FROM unnest($1::bytea[], $2::bytea[]) AS u(key_id, wrapped_key) \
                             WHERE k.key_id = u.key_id AND k.master_key_id = $4",
                            &[&ids, &wrapped, &new_id, &old_id],
                        )
                        .await
                        .map_err(|e| pg_error(e, "storing re-wrapped subject keys"))?;
                    if n != rows.len() as u64 {
                        return Err(AuditError::permanent(format!(
                            "re-wrapping changed {n} of {} subject keys; rolled back",
                            rows.len()
                        )));
                    }
                    done.rewrapped += rows.len() as i64;
                }
                tx.commit().await.map_err(|e| pg_error(e, "committing the rotation"))?;
                conn.set_in_caller_transaction(false);
                Ok(done)
            }
        })
        .await
    }

    /// The stored subject-index key (wrapped, and the master key id it is wrapped under), if any.
    pub(crate) async fn index_key(&self) -> AuditResult<Option<(Vec<u8>, String)>> {
        self.with_conn(|conn| async move {
            let row = conn
                .query_opt("SELECT wrapped_key, master_key_id FROM audit_subject_index_key WHERE singleton", &[])
                .await
                .map_err(|e| pg_error(e, "reading the subject index key"))?;
            Ok(row.map(|r| (r.get(0), r.get(1))))
        })
        .await
    }

    /// Stores the subject-index key wrapped under `master_key_id` unless one is stored (then that one wins), and
    /// returns the stored one. Refuses to start the record under a master key other than the one every existing
    /// subject key is wrapped under (a misconfigured master key would otherwise index subjects differently).
    pub(crate) async fn init_index_key(
        &self,
        wrapped: Vec<u8>,
        master_key_id: String,
    ) -> AuditResult<(Vec<u8>, String)> {
        let args = Arc::new((wrapped, master_key_id));
        self.with_conn(move |conn| {
            let args = args.clone();
            async move {
                conn.execute(
                    "INSERT INTO audit_subject_index_key (wrapped_key, master_key_id) SELECT $1, $2 \
                     WHERE NOT EXISTS (SELECT 1 FROM audit_subject_keys WHERE master_key_id <> $2) \
                     ON CONFLICT (singleton) DO NOTHING",
                    &[&args.0, &args.1],
                )
                .await
                .map_err(|e| pg_error(e, "storing the subject index key"))?;
                let row = conn
                    .query_opt("SELECT wrapped_key, master_key_id FROM audit_subject_index_key WHERE singleton", &[])
                    .await
                    .map_err(|e| pg_error(e, "reading the subject index key"))?;
                if let Some(r) = row {
                    return Ok((r.get(0), r.get(1)));
                }
                let other: String = conn
                    .query_one(
                        "SELECT master_key_id FROM audit_subject_keys WHERE master_key_id <> $1 LIMIT 1",
                        &[&args.1],
                    )
                    .await
                    .map_err(|e| pg_error(e, "reading subject keys"))?
                    .get(0);
                Err(AuditError::integrity(format!(
                    "subject keys are wrapped under master key {other}, but master key {} is configured",
                    args.1
                )))
            }
        })
        .await
    }

    /// Destroys a key; `true` if it existed. Then asks PostgreSQL to reclaim the dead row (best effort: the
    /// wrapped bytes are useless without the master key either way).
    pub(crate) async fn delete(&self, key_id: Vec<u8>) -> AuditResult<bool> {
        let key_id = Arc::new(key_id);
        let n = self
            .with_conn(move |conn| {
                let key_id = key_id.clone();
                async move {
                    conn.execute("DELETE FROM audit_subject_keys WHERE key_id = $1", &[&*key_id])
                        .await
                        .map_err(|e| pg_error(e, "destroying a subject key"))
                }
            })
            .await?;
        let vacuum = self
            .with_conn(|conn| async move {
                conn.batch_execute("VACUUM audit_subject_keys").await.map_err(|e| pg_error(e, "vacuuming subject keys"))
            })
            .await;
        if let Err(e) = vacuum {
            tracing::warn!(error = %e, "VACUUM of audit_subject_keys after an erasure failed; autovacuum will reclaim the row");
        }
        Ok(n > 0)
    }

    /// Where a subject's personal values are stored: `tokens` are the stored forms of the subject's own id in
    /// `principal_id` and `target_resource_id` (deterministic, so equality finds them), `tag` the key-id prefix
    /// every `details` value under the key starts with. Erasure is rare: the `details` test scans.
    pub(crate) async fn subject_events(
        &self,
        principal_token: String,
        target_token: String,
        tag: String,
    ) -> AuditResult<Vec<SubjectEvents>> {
        let args = Arc::new((principal_token, target_token, tag));
        self.with_conn(move |conn| {
            let args = args.clone();
            async move {
                let rows = conn
                    .query(
                        "SELECT organization_id::text, data_classification::text, count(*) FROM audit_log \
                         WHERE principal_id = $1 OR target_resource_id = $2 OR strpos(details::text, $3) > 0 \
                         GROUP BY 1, 2 ORDER BY 1 NULLS FIRST, 2",
                        &[&args.0, &args.1, &args.2],
                    )
                    .await
                    .map_err(|e| pg_error(e, "finding the subject's events"))?;
                Ok(rows
                    .iter()
                    .map(|r| SubjectEvents {
                        organization_id: r.get(0),
                        data_classification: r.get(1),
                        events: r.get(2),
                    })
                    .collect())
            }
        })
        .await
    }

    /// Events that carry `subject` in clear in `principal_id` or `target_resource_id` (stored before the policy was
    /// on, or with the policy off): crypto-shredding cannot reach them, and the erasure report says so.
    pub(crate) async fn plaintext_events(&self, subject: String) -> AuditResult<i64> {
        let subject = Arc::new(subject);
        self.with_conn(move |conn| {
            let subject = subject.clone();
            async move {
                conn.query_one(
                    "SELECT count(*) FROM audit_log WHERE principal_id = $1 OR target_resource_id = $1",
                    &[&*subject],
                )
                .await
                .map(|r| r.get(0))
                .map_err(|e| pg_error(e, "counting plaintext events of the subject"))
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use audit_core::Direct;
    use audit_pg::{ConnectOptions, Connector, PoolOptions, build_pool, run_migrations};
    use audit_testkit::TestDb;

    fn row(key_id: u8, subject: u8) -> KeyRow {
        KeyRow {
            key_id: vec![key_id; 16],
            subject_index: vec![subject; 32],
            wrapped_key: vec![key_id; 60],
            master_key_id: "mk_test".into(),
            value_format: 2,
        }
    }

    async fn store(db: &TestDb) -> KeyStore<Direct> {
        let connector = Connector::new(&db.url, ConnectOptions::default()).unwrap();
        run_migrations(&connector).await.unwrap();
        let pool = build_pool(connector, &PoolOptions::default()).unwrap();
        KeyStore::new(pool, Direct, Duration::from_secs(10))
    }

    /// The write path's key creation: new subjects go in with one plain INSERT; when another process stored one of
    /// the subjects' keys since the caller looked, the batch is stored again keeping that stored key, and only the
    /// subjects actually inserted are reported (the caller reads the others back).
    #[tokio::test]
    async fn creating_keys_keeps_a_key_stored_meanwhile_and_reports_only_the_inserted_subjects() {
        let db = TestDb::create("privacy_keystore").await;
        let keys = store(&db).await;
        let mut first = keys.create(&[row(1, 10), row(2, 20)]).await.unwrap();
        first.sort();
        assert_eq!(first, vec![vec![10; 32], vec![20; 32]]);
        // Subject 20 got key 2 "meanwhile": the batch (30 new, 20 again under key 4) goes in without failing.
        let second = keys.create(&[row(3, 30), row(4, 20)]).await.unwrap();
        assert_eq!(second, vec![vec![30; 32]], "only the subject without a stored key is reported");
        let stored = keys.by_index(vec![vec![20; 32], vec![30; 32], vec![40; 32]]).await.unwrap();
        let mut pairs: Vec<(u8, u8)> = stored.iter().map(|r| (r.subject_index[0], r.key_id[0])).collect();
        pairs.sort();
        assert_eq!(pairs, vec![(20, 2), (30, 3)], "subject 20 keeps the key stored first; 40 has none");
        // A large look-up (its own transaction, sequential scans off) finds the same rows among absent ones.
        let many: Vec<Vec<u8>> = (100..=250u8).map(|i| vec![i; 32]).chain([vec![20; 32], vec![30; 32]]).collect();
        assert!(many.len() > FEW_KEYS);
        let mut found: Vec<u8> = keys.by_index(many).await.unwrap().iter().map(|r| r.key_id[0]).collect();
        found.sort();
        assert_eq!(found, vec![2, 3]);
        let by_id = keys.by_id(vec![vec![3; 16], vec![4; 16]]).await.unwrap();
        assert_eq!(by_id.len(), 1, "the losing candidate key was never stored");
        assert_eq!(by_id[0].subject_index, vec![30; 32]);
        db.drop().await.unwrap();
    }
}
