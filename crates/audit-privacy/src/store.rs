//! The SQL of personal data, in one place: the `audit_subject_keys` table and the erasure's look at `audit_log`.

use std::sync::Arc;
use std::time::Duration;

use audit_core::{AuditResult, ResiliencePolicy};
use audit_pg::{PgPool, PooledConn, checkout, pg_error};
use serde::Serialize;

/// A subject key row: the wrapped secret and what it is bound to.
#[derive(Debug, Clone)]
pub(crate) struct KeyRow {
    pub key_id: Vec<u8>,
    pub subject_index: Vec<u8>,
    pub wrapped_key: Vec<u8>,
    pub master_key_id: String,
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

const KEY_COLUMNS: &str = "key_id, subject_index, wrapped_key, master_key_id";

fn key_row(r: &tokio_postgres::Row) -> KeyRow {
    KeyRow { key_id: r.get(0), subject_index: r.get(1), wrapped_key: r.get(2), master_key_id: r.get(3) }
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
        let indexes = Arc::new(indexes);
        self.with_conn(move |conn| {
            let indexes = indexes.clone();
            async move {
                let sql = format!("SELECT {KEY_COLUMNS} FROM audit_subject_keys WHERE subject_index = ANY($1)");
                let rows = conn.query(&sql, &[&*indexes]).await.map_err(|e| pg_error(e, "reading subject keys"))?;
                Ok(rows.iter().map(key_row).collect())
            }
        })
        .await
    }

    /// Key rows by key id.
    pub(crate) async fn by_id(&self, ids: Vec<Vec<u8>>) -> AuditResult<Vec<KeyRow>> {
        let ids = Arc::new(ids);
        self.with_conn(move |conn| {
            let ids = ids.clone();
            async move {
                let sql = format!("SELECT {KEY_COLUMNS} FROM audit_subject_keys WHERE key_id = ANY($1)");
                let rows = conn.query(&sql, &[&*ids]).await.map_err(|e| pg_error(e, "reading subject keys"))?;
                Ok(rows.iter().map(key_row).collect())
            }
        })
        .await
    }

    /// Inserts new keys; returns the subject indexes inserted. A subject that got a key concurrently keeps that
    /// one (the caller reads those back).
    pub(crate) async fn insert(&self, rows: Vec<KeyRow>) -> AuditResult<Vec<Vec<u8>>> {
        let cols = Arc::new((
            rows.iter().map(|r| r.key_id.clone()).collect::<Vec<_>>(),
            rows.iter().map(|r| r.subject_index.clone()).collect::<Vec<_>>(),
            rows.iter().map(|r| r.wrapped_key.clone()).collect::<Vec<_>>(),
            rows.iter().map(|r| r.master_key_id.clone()).collect::<Vec<_>>(),
        ));
        self.with_conn(move |conn| {
            let cols = cols.clone();
            async move {
                let rows = conn
                    .query(
                        "INSERT INTO audit_subject_keys (key_id, subject_index, wrapped_key, master_key_id) \
                         SELECT * FROM unnest($1::bytea[], $2::bytea[], $3::bytea[], $4::text[]) \
                         ON CONFLICT DO NOTHING RETURNING subject_index",
                        &[&cols.0, &cols.1, &cols.2, &cols.3],
                    )
                    .await
                    .map_err(|e| pg_error(e, "storing subject keys"))?;
                Ok(rows.iter().map(|r| r.get(0)).collect())
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
