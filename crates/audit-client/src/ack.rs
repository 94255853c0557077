//! What the client answers: acknowledgements of writes and pages of reads.

use std::sync::Arc;

use audit_core::traits::CacheTier;
use audit_core::{Page, SqlState};
use serde::Serialize;
use uuid::Uuid;

/// Where a write's commit landed in the primary's WAL (`pg_current_wal_lsn()` right after COMMIT), so that a
/// reader can ask a replica for at least this state (read-your-writes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct CommitLsn(#[serde(serialize_with = "lsn_text")] pub u64);

fn lsn_text<S: serde::Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{:X}/{:X}", v >> 32, v & 0xFFFF_FFFF))
}

impl std::fmt::Display for CommitLsn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl std::str::FromStr for CommitLsn {
    type Err = String;

    /// Parses PostgreSQL's `XXXXXXXX/XXXXXXXX` text form of an LSN.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not a WAL position (expected the form 16/B374D848)");
        let (hi, lo) = s.trim().split_once('/').ok_or_else(bad)?;
        let hi = u64::from_str_radix(hi, 16).map_err(|_| bad())?;
        let lo = u64::from_str_radix(lo, 16).map_err(|_| bad())?;
        if hi > u64::from(u32::MAX) || lo > u64::from(u32::MAX) {
            return Err(bad());
        }
        Ok(CommitLsn((hi << 32) | lo))
    }
}

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
    },
    /// Already stored earlier (same `event_id` and `timestamp`); not stored again.
    Duplicate {
        /// The event's id.
        event_id: Uuid,
    },
}

impl Ack {
    /// The event's id.
    pub fn event_id(&self) -> Uuid {
        match self {
            Ack::Stored { event_id, .. } | Ack::Duplicate { event_id } => *event_id,
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

/// A query's answer and which tier produced it.
#[derive(Debug, Clone)]
pub struct QueryAnswer {
    /// The page (shared with the cache).
    pub page: Arc<Page>,
    /// `l1`, `l2` or `db`.
    pub tier: CacheTier,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_round_trip_through_postgres_text() {
        let l: CommitLsn = "16/B374D848".parse().unwrap();
        assert_eq!(l.0, 0x16_B374_D848);
        assert_eq!(l.to_string(), "16/B374D848");
        assert!("16-B3".parse::<CommitLsn>().is_err());
        assert!("1FFFFFFFF/0".parse::<CommitLsn>().is_err());
        assert!("0/1".parse::<CommitLsn>().unwrap() < "1/0".parse::<CommitLsn>().unwrap());
    }
}
