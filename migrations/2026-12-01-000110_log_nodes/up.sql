-- Stored Merkle nodes (issue 17: proofs must not grow with the log). The checkpointer stores the root of every
-- complete aligned subtree of 256 leaves or more (height `level` >= 8, leaves [idx·2^level, (idx+1)·2^level)) of each
-- log, as Tessera and CT logs keep tiles. An inclusion or consistency proof then reads these nodes (O(log n) rows)
-- plus the leaves of at most two 256-leaf tiles (the leaf's own and the partial one at the right edge) instead of
-- every leaf of the log.
--
-- Derived data, not evidence: every proof is checked against the signed root before it is returned, so a wrong or
-- forged row only makes proofs fail with an integrity error. Deleting a log's rows is safe: the next proof that
-- misses a node recomputes the log's nodes once from its leaves (checked against the signed root) and stores them,
-- which is also how a database upgraded from before this migration gets them.
CREATE TABLE audit_log_nodes (
    log_id varchar(255) NOT NULL,
    level  smallint     NOT NULL CHECK (level >= 8 AND level < 63),
    idx    bigint       NOT NULL CHECK (idx >= 0),
    hash   bytea        NOT NULL CHECK (octet_length(hash) = 32),
    PRIMARY KEY (log_id, level, idx)
);
