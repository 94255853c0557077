//! `audit_log_pruned_leaves`: the leaf hashes of rows that retention dropped, kept so that inclusion and
//! consistency proofs still verify. Written by audit-partition when it drops a partition, read by
//! audit-integrity; both use the SQL here, so the contract between them lives in one place.
//!
//! A log is identified as everywhere in integrity: `""` is the shared log (rows without an organisation), any
//! other id is that organisation's log. Positions (`seq`) are unique per log (the table's unique key).

use std::collections::BTreeMap;

use audit_core::{AuditError, AuditResult, SqlState};
use tokio_postgres::GenericClient;

use crate::error::pg_error;
use crate::ident::quote_ident;

/// Copies the `(organization_id, seq, leaf_hash, timestamp)` of every row of `partition` (a detached partition
/// about to be dropped) into `audit_log_pruned_leaves`; returns how many leaves were added. Run it in the
/// transaction that drops the table, so that the leaves are kept exactly when the rows go. Leaves kept already
/// (a resumed run) are left as they are.
pub async fn retain<C: GenericClient + Sync>(client: &C, partition: &str) -> AuditResult<u64> {
    let sql = format!(
        "INSERT INTO audit_log_pruned_leaves (organization_id, seq, leaf_hash, \"timestamp\", partition_name) \
         SELECT organization_id, seq, leaf_hash, \"timestamp\", $1 FROM {} ON CONFLICT DO NOTHING",
        quote_ident(partition)
    );
    client
        .execute(sql.as_str(), &[&partition])
        .await
        .map_err(|e| pg_error(e, &format!("keeping the leaf hashes of {partition}")))
}

/// The kept leaf hashes of log `log_id` at positions `[from, to)`, by position. A database without the table
/// (the partition manager's migration not applied) has pruned nothing: that reads as empty.
pub async fn read<C: GenericClient + Sync>(
    client: &C,
    log_id: &str,
    from: i64,
    to: i64,
) -> AuditResult<BTreeMap<i64, [u8; 32]>> {
    let (sql, rows) = if log_id.is_empty() {
        let sql = "SELECT seq, leaf_hash FROM audit_log_pruned_leaves \
                   WHERE organization_id IS NULL AND seq >= $1 AND seq < $2 ORDER BY seq";
        (sql, client.query(sql, &[&from, &to]).await)
    } else {
        let sql = "SELECT seq, leaf_hash FROM audit_log_pruned_leaves \
                   WHERE organization_id = $1 AND seq >= $2 AND seq < $3 ORDER BY seq";
        (sql, client.query(sql, &[&log_id, &from, &to]).await)
    };
    let rows = match rows.map_err(|e| pg_error(e, "reading pruned leaves")) {
        Ok(rows) => rows,
        Err(e) if e.sqlstate() == Some(SqlState::UNDEFINED_TABLE) => return Ok(BTreeMap::new()),
        Err(e) => return Err(e.context(format!("log `{log_id}` [{from}, {to}): {sql}"))),
    };
    rows.iter()
        .map(|r| {
            let seq: i64 = r.try_get(0).map_err(|e| column_error(e, "seq"))?;
            let leaf: &[u8] = r.try_get(1).map_err(|e| column_error(e, "leaf_hash"))?;
            let leaf: [u8; 32] = leaf.try_into().map_err(|_| {
                AuditError::integrity(format!(
                    "pruned leaf {seq} of log `{log_id}` is {} bytes long, not 32",
                    leaf.len()
                ))
            })?;
            Ok((seq, leaf))
        })
        .collect()
}

fn column_error(e: tokio_postgres::Error, column: &str) -> AuditError {
    AuditError::integrity(format!("reading column {column} of audit_log_pruned_leaves: {e}")).with_source(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ConnectOptions, Connector, run_migrations};

    #[tokio::test]
    async fn leaves_of_a_dropped_table_are_kept_once_and_read_back_per_log() {
        let db = audit_testkit::TestDb::create("pg_pruned").await;
        let connector = Connector::new(&db.url, ConnectOptions::default()).unwrap();
        let c = connector.connect().await.unwrap();
        // Before the partition manager's tables exist nothing was pruned.
        assert!(read(&c, "acme", 0, 10).await.unwrap().is_empty());

        run_migrations(&connector).await.unwrap();
        c.batch_execute(
            "CREATE TABLE doomed (organization_id varchar(255), seq bigint, leaf_hash bytea, \"timestamp\" timestamptz);
             INSERT INTO doomed SELECT CASE WHEN g % 2 = 0 THEN 'acme' END, g / 2, sha256(int8send(g)),
                                       '2019-01-01'::timestamptz FROM generate_series(0, 9) g;",
        )
        .await
        .unwrap();
        assert_eq!(retain(&c, "doomed").await.unwrap(), 10);
        assert_eq!(retain(&c, "doomed").await.unwrap(), 0, "a resumed run keeps nothing twice");

        let acme = read(&c, "acme", 0, 5).await.unwrap();
        let shared = read(&c, "", 0, 5).await.unwrap();
        assert_eq!(acme.keys().copied().collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
        assert_eq!(shared.keys().copied().collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
        assert_ne!(acme, shared, "the two logs are told apart");
        assert_eq!(read(&c, "acme", 1, 3).await.unwrap().keys().copied().collect::<Vec<_>>(), vec![1, 2]);
        // Each leaf is the one the table held at that position, in that log.
        for (log, got) in [("acme", &acme), ("", &shared)] {
            let held: BTreeMap<i64, Vec<u8>> = c
                .query(
                    "SELECT seq, leaf_hash FROM doomed WHERE organization_id IS NOT DISTINCT FROM $1",
                    &[&Some(log).filter(|l| !l.is_empty())],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            assert_eq!(got.iter().map(|(s, l)| (*s, l.to_vec())).collect::<BTreeMap<_, _>>(), held, "log `{log}`");
        }
        db.drop().await.unwrap();
    }
}
