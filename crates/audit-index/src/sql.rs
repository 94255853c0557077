//! Every statement of the index manager, in one place. DDL that needs identifiers is built in `build.rs` with
//! [`audit_pg::quote_ident`]; everything else is here.

/// The indexes of `audit_log` itself (the partitioned parent): definition, key columns, method, predicate,
/// state and operator classes (for comparing indexes).
pub(crate) const PARENT_INDEXES: &str = "\
SELECT c.relname::text AS name, i.indexrelid::oid AS oid,
       pg_get_indexdef(i.indexrelid) AS def,
       am.amname::text AS method,
       ARRAY(SELECT pg_get_indexdef(i.indexrelid, k, true) FROM generate_series(1, i.indnkeyatts::int) k) AS columns,
       pg_get_expr(i.indpred, i.indrelid, true) AS predicate,
       i.indisunique, i.indisprimary, i.indisvalid, i.indisready,
       i.indclass::text AS opclasses, i.indnatts::int AS natts, i.indnkeyatts::int AS nkeyatts
  FROM pg_index i
  JOIN pg_class c ON c.oid = i.indexrelid
  JOIN pg_am am ON am.oid = c.relam
 WHERE i.indrelid = 'audit_log'::regclass
 ORDER BY c.relname";

/// Every leaf (partition) index attached to an `audit_log` index, with its counters, size, state and the
/// insert count and row estimate of its table.
pub(crate) const LEAF_INDEXES: &str = "\
SELECT p.relname::text AS index_name, lc.relname::text AS leaf_index,
       COALESCE(s.idx_scan, 0)::bigint AS idx_scan, COALESCE(s.idx_tup_read, 0)::bigint AS idx_tup_read,
       pg_relation_size(l.relid)::bigint AS size_bytes,
       li.indisvalid, li.indisready,
       COALESCE(st.n_tup_ins, 0)::bigint AS n_tup_ins,
       GREATEST(tc.reltuples, 0)::float8 AS reltuples
  FROM pg_index i
  JOIN pg_class p ON p.oid = i.indexrelid
  CROSS JOIN LATERAL pg_partition_tree(i.indexrelid) l
  JOIN pg_class lc ON lc.oid = l.relid
  JOIN pg_index li ON li.indexrelid = l.relid
  JOIN pg_class tc ON tc.oid = li.indrelid
  LEFT JOIN pg_stat_user_indexes s ON s.indexrelid = l.relid
  LEFT JOIN pg_stat_user_tables st ON st.relid = li.indrelid
 WHERE i.indrelid = 'audit_log'::regclass AND l.isleaf AND l.level > 0
 ORDER BY 1, 2";

/// Leaf partitions of `audit_log`: name, rows inserted since the statistics reset, estimated rows.
pub(crate) const LEAF_TABLES: &str = "\
SELECT t.relid::oid AS oid, c.relname::text AS name,
       COALESCE(st.n_tup_ins, 0)::bigint AS n_tup_ins, GREATEST(c.reltuples, 0)::float8 AS reltuples
  FROM pg_partition_tree('audit_log'::regclass) t
  JOIN pg_class c ON c.oid = t.relid
  LEFT JOIN pg_stat_user_tables st ON st.relid = t.relid
 WHERE t.isleaf AND t.level > 0
 ORDER BY c.relname";

/// Every partition of `audit_log` (leaf or intermediate), parents before children.
pub(crate) const PARTITION_TREE: &str = "\
SELECT t.relid::oid AS oid, c.relname::text AS name, t.parentrelid::oid AS parent, t.isleaf, t.level
  FROM pg_partition_tree('audit_log'::regclass) t
  JOIN pg_class c ON c.oid = t.relid
 WHERE t.level > 0
 ORDER BY t.level, c.relname";

/// The OID of `audit_log`.
pub(crate) const ROOT_OID: &str = "SELECT 'audit_log'::regclass::oid";

/// The index of table `$2` attached to partitioned index `$1`, if any.
pub(crate) const ATTACHED_CHILD: &str = "\
SELECT c.relname::text, i.indisvalid
  FROM pg_inherits h
  JOIN pg_index i ON i.indexrelid = h.inhrelid
  JOIN pg_class c ON c.oid = i.indexrelid
 WHERE h.inhparent = $1 AND i.indrelid = $2";

/// An index by name in the current schema: its OID, validity, and whether it is attached to a parent index.
pub(crate) const INDEX_BY_NAME: &str = "\
SELECT c.oid, i.indisvalid, i.indisready, EXISTS (SELECT 1 FROM pg_inherits h WHERE h.inhrelid = c.oid) AS attached,
       i.indisunique, i.indisprimary, i.indrelid = 'audit_log'::regclass AS on_root
  FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid
 WHERE c.relname = $1 AND pg_table_is_visible(c.oid)";

/// Invalid or unready indexes on partitions of `audit_log` that are attached to nothing: what a failed
/// `CREATE INDEX CONCURRENTLY` leaves behind. A partition with an index build in progress (ours, or the partition
/// manager sealing it) is left out: its index is invalid because it is being built, not because a build failed.
pub(crate) const STRAY_LEFTOVERS: &str = "\
SELECT c.relname::text AS name, tc.relname::text AS table_name, pg_relation_size(c.oid)::bigint AS size_bytes,
       i.indisvalid, i.indisready
  FROM pg_partition_tree('audit_log'::regclass) t
  JOIN pg_index i ON i.indrelid = t.relid
  JOIN pg_class c ON c.oid = i.indexrelid
  JOIN pg_class tc ON tc.oid = t.relid
 WHERE t.level > 0 AND (NOT i.indisvalid OR NOT i.indisready)
   AND NOT EXISTS (SELECT 1 FROM pg_inherits h WHERE h.inhrelid = i.indexrelid)
   AND NOT EXISTS (SELECT 1 FROM pg_stat_progress_create_index p WHERE p.relid = i.indrelid)
 ORDER BY 1";

/// The columns of `audit_log` with the planner's statistics (distinct values, average width), summed over
/// partitions (`inherited` rows describe the whole tree).
pub(crate) const COLUMN_STATS: &str = "\
SELECT a.attname::text AS name, s.n_distinct::float8 AS n_distinct, s.avg_width::int AS avg_width
  FROM pg_attribute a
  LEFT JOIN pg_stats s ON s.schemaname = current_schema() AND s.tablename = 'audit_log'
                      AND s.attname = a.attname AND s.inherited
 WHERE a.attrelid = 'audit_log'::regclass AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY a.attnum";

/// When the statistics window began (database statistics reset, or the server start), and now.
pub(crate) const STATS_WINDOW: &str = "\
SELECT COALESCE((SELECT stats_reset FROM pg_stat_database WHERE datname = current_database()),
                pg_postmaster_start_time()) AS since, now() AS now";

/// Stores one snapshot row.
pub(crate) const INSERT_SNAPSHOT: &str = "\
INSERT INTO audit_index_usage_snapshots (taken_at, index_name, leaf_index, idx_scan, idx_tup_read, size_bytes)
VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING";

/// The usage history, oldest first per partition index.
pub(crate) const SNAPSHOTS: &str = "\
SELECT taken_at, index_name, leaf_index, idx_scan
  FROM audit_index_usage_snapshots
 ORDER BY index_name, leaf_index, taken_at";

/// Forgets snapshots older than `$1`.
pub(crate) const PRUNE_SNAPSHOTS: &str = "DELETE FROM audit_index_usage_snapshots WHERE taken_at < $1";

/// Records an action.
pub(crate) const INSERT_ACTION: &str =
    "INSERT INTO audit_index_actions (index_name, action, detail) VALUES ($1, $2, $3)";

/// Whether pg_stat_statements is usable here (installed in this database and loaded by the server).
pub(crate) const STATEMENTS_EXTENSION: &str = "\
SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements') AS installed,
       EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'pg_stat_statements') AS available,
       current_setting('shared_preload_libraries') ~ 'pg_stat_statements' AS loaded";

/// Creates pg_stat_statements in this database (needs the server to preload it).
pub(crate) const CREATE_STATEMENTS_EXTENSION: &str = "CREATE EXTENSION IF NOT EXISTS pg_stat_statements";

/// When pg_stat_statements' counters began.
pub(crate) const STATEMENTS_SINCE: &str = "SELECT stats_reset FROM pg_stat_statements_info";

/// Reading statements on `audit_log` of this database, most expensive first (our own catalog reads and
/// EXPLAINs excluded).
pub(crate) const STATEMENTS: &str = "\
SELECT s.queryid, s.query, s.calls, s.mean_exec_time, s.total_exec_time
  FROM pg_stat_statements s
 WHERE s.dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
   AND s.query ~* '\\maudit_log\\M'
   AND s.query ~* '^\\s*(WITH|SELECT)\\M'
   AND s.query !~* '(pg_stat|pg_catalog|pg_class|pg_index|hypopg|pg_partition_tree|audit_index_)'
   AND s.calls >= $1
 ORDER BY s.total_exec_time DESC
 LIMIT 50";

/// HypoPG: available, installed.
pub(crate) const HYPOPG_EXTENSION: &str = "\
SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'hypopg') AS available,
       EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'hypopg') AS installed";

/// Installs HypoPG (its hypothetical indexes live only in the session that creates them).
pub(crate) const CREATE_HYPOPG: &str = "CREATE EXTENSION IF NOT EXISTS hypopg";

/// Creates a hypothetical index (`$1` is a `CREATE INDEX` statement).
pub(crate) const HYPO_CREATE: &str = "SELECT indexrelid FROM hypopg_create_index($1)";

/// Forgets this session's hypothetical indexes.
pub(crate) const HYPO_RESET: &str = "SELECT hypopg_reset()";

/// Plans with parameters unknown (pg_stat_statements' `$n`), so one plan stands for every call.
pub(crate) const GENERIC_PLANS: &str = "SET plan_cache_mode = force_generic_plan";

/// One builder at a time across instances (session-level: it spans `CONCURRENTLY` statements).
pub(crate) const TRY_BUILD_LOCK: &str = "SELECT pg_try_advisory_lock($1)";
/// Releases [`TRY_BUILD_LOCK`].
pub(crate) const BUILD_UNLOCK: &str = "SELECT pg_advisory_unlock($1)";

/// Whether the parent index is valid now.
pub(crate) const INDEX_VALID: &str = "SELECT indisvalid FROM pg_index WHERE indexrelid = $1";
