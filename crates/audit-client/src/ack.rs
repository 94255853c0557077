//! What the client answers: acknowledgements of writes and pages of reads.

use std::sync::Arc;

use audit_core::traits::CacheTier;
use audit_core::{Page, ReadRoute, SqlState};
use serde::Serialize;
use uuid::Uuid;

pub use audit_core::CommitLsn;

/// The acknowledgement of one stored event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Ack {
    /// Durably stored now.
    Stored {
        /// The event's id.
        event_id: Uuid,
        /// Row id.
        id: i64,
        /// Position in its organisation's integrity log.
        seq: i64,
        /// WAL position of the commit that stored it: a replica that has replayed this far has the event (hand it
        /// to a reader as `Consistency::ReadYourWrites`). `None` inside a caller's open transaction (not committed
        /// yet).
        #[serde(skip_serializing_if = "Option::is_none")]
        commit_lsn: Option<CommitLsn>,
    },
    /// Already stored earlier (same `event_id` and `timestamp`); not stored again.
    Duplicate {
        /// The event's id.
        event_id: Uuid,
        /// WAL position of the commit that found the stored copy (at or after the copy's own commit), so reading
        /// at this position sees it too. `None` inside a caller's open transaction.
        #[serde(skip_serializing_if = "Option::is_none")]
        commit_lsn: Option<CommitLsn>,
    },
}

impl Ack {
    /// The event's id.
    pub fn event_id(&self) -> Uuid {
        match self {
            Ack::Stored { event_id, .. } | Ack::Duplicate { event_id, .. } => *event_id,
        }
    }

    /// WAL position of the commit behind this acknowledgement (see the variants).
    pub fn commit_lsn(&self) -> Option<CommitLsn> {
        match self {
            Ack::Stored { commit_lsn, .. } | Ack::Duplicate { commit_lsn, .. } => *commit_lsn,
        }
    }
}

/// Why one event of a batch was refused: the message names the field (or, for a refusal by the database, what the
/// database said), and the SQLSTATE is kept when the database refused it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejection {
    /// What was wrong, naming the field.
    pub reason: String,
    /// The database's SQLSTATE when the database refused the row (validation rejections have none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sqlstate: Option<SqlState>,
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

/// Result of one event of a bulk insert.
#[derive(Debug, Clone, PartialEq)]
pub enum BatchItem {
    /// Stored or recognised as a duplicate.
    Ok(Ack),
    /// Refused; the reason names the field.
    Rejected(Rejection),
}

/// Outcome of `insert_batch`, one item per input event, in input order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchReport {
    /// Per-event results.
    pub items: Vec<BatchItem>,
    /// WAL position of the last commit of the batch (`None` when nothing was committed).
    pub commit_lsn: Option<CommitLsn>,
}

impl BatchReport {
    /// Events stored now.
    pub fn accepted(&self) -> usize {
        self.items.iter().filter(|i| matches!(i, BatchItem::Ok(Ack::Stored { .. }))).count()
    }
    /// Events already stored before.
    pub fn duplicates(&self) -> usize {
        self.items.iter().filter(|i| matches!(i, BatchItem::Ok(Ack::Duplicate { .. }))).count()
    }
    /// Events refused.
    pub fn rejected(&self) -> usize {
        self.items.iter().filter(|i| matches!(i, BatchItem::Rejected(_))).count()
    }
}

/// A query's answer, which tier produced it and which server answered.
#[derive(Debug, Clone)]
pub struct QueryAnswer {
    /// The page (shared with the cache).
    pub page: Arc<Page>,
    /// `l1`, `l2` or `db`.
    pub tier: CacheTier,
    /// The cache, the primary, or the replica that answered.
    pub route: ReadRoute,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_carry_their_commit_position_in_json() {
        let event_id = Uuid::nil();
        let lsn: CommitLsn = "0/3016060".parse().unwrap();
        let stored = Ack::Stored { event_id, id: 7, seq: 0, commit_lsn: Some(lsn) };
        assert_eq!(stored.commit_lsn(), Some(lsn));
        let json = serde_json::to_value(&stored).unwrap();
        assert_eq!(json["result"], "stored");
        assert_eq!(json["commit_lsn"], "0/3016060");
        let open = serde_json::to_value(Ack::Duplicate { event_id, commit_lsn: None }).unwrap();
        assert!(open.get("commit_lsn").is_none(), "{open}");
    }
}
