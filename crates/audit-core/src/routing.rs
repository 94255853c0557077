//! Read routing: how fresh a read must be ([`Consistency`]), where a commit landed in the primary's WAL
//! ([`CommitLsn`]), and the [`ReadRouter`] trait through which the client lets a replica router (audit-replica)
//! serve reads, with [`PrimaryOnly`] as the router that has no replicas.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::AuditResult;
use crate::traits::ComponentHealth;

/// Where a write's commit landed in the primary's WAL (`pg_current_wal_lsn()` right after COMMIT), so that a
/// reader can ask a replica for at least this state (read-your-writes). Ordered like PostgreSQL's `pg_lsn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize)]
#[serde(transparent)]
pub struct CommitLsn(#[serde(serialize_with = "lsn_text")] pub u64);

fn lsn_text<S: serde::Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&CommitLsn(*v))
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

impl<'de> serde::Deserialize<'de> for CommitLsn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// How fresh a read must be, chosen per query by the caller. Replicas only ever serve reads; writes always go to
/// the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Consistency {
    /// The primary only: sees every committed write.
    Strong,
    /// A server that has replayed at least this WAL position (a position handed over from a writer: an `Ack`, the
    /// CLI's `commit_lsn`, an HTTP header). `ReadYourWrites(None)` — the default — means this client's own last
    /// commit, which makes "insert, then query" correct with replicas on. A replica that has not caught up is waited
    /// for up to a bound, then the primary answers.
    ReadYourWrites(Option<CommitLsn>),
    /// Any replica whose lag is at most this long.
    BoundedStaleness(Duration),
    /// Any replica within its own configured lag bound (may miss recent writes, even this client's own).
    Eventual,
}

impl Default for Consistency {
    fn default() -> Self {
        Consistency::ReadYourWrites(None)
    }
}

impl std::fmt::Display for Consistency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Consistency::Strong => f.write_str("strong"),
            Consistency::ReadYourWrites(None) => f.write_str("read-your-writes"),
            Consistency::ReadYourWrites(Some(lsn)) => write!(f, "read-your-writes({lsn})"),
            Consistency::BoundedStaleness(max) => write!(f, "bounded-staleness({}ms)", max.as_millis()),
            Consistency::Eventual => f.write_str("eventual"),
        }
    }
}

impl std::str::FromStr for Consistency {
    type Err = String;

    /// `strong`, `read-your-writes` (the client's own writes; an LSN is passed separately), `eventual`, or
    /// `bounded-staleness:<ms>`; `_` and `-` are interchangeable, case is ignored.
    fn from_str(s: &str) -> Result<Self, String> {
        let norm = s.trim().to_ascii_lowercase().replace('_', "-");
        match norm.as_str() {
            "strong" => Ok(Consistency::Strong),
            "read-your-writes" => Ok(Consistency::ReadYourWrites(None)),
            "eventual" => Ok(Consistency::Eventual),
            other => match other.strip_prefix("bounded-staleness:") {
                Some(ms) => {
                    ms.trim().parse::<u64>().map(|ms| Consistency::BoundedStaleness(Duration::from_millis(ms))).map_err(
                        |_| format!("`{s}`: bounded-staleness takes milliseconds, e.g. bounded-staleness:5000"),
                    )
                }
                None => Err(format!(
                    "`{s}` is not a consistency (strong, read-your-writes, eventual, bounded-staleness:<ms>)"
                )),
            },
        }
    }
}

/// Which server answered a read, for logs (`route=<replica id>|primary|cache`) and callers that want to know.
/// Serialises as that text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ReadRoute {
    /// The query cache (no server was asked).
    Cache,
    /// The primary.
    Primary,
    /// The read replica with this id.
    Replica(Arc<str>),
}

impl ReadRoute {
    /// `cache`, `primary` or the replica id.
    pub fn as_str(&self) -> &str {
        match self {
            ReadRoute::Cache => "cache",
            ReadRoute::Primary => "primary",
            ReadRoute::Replica(id) => id,
        }
    }
}

impl Serialize for ReadRoute {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl std::fmt::Display for ReadRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a [`ReadRouter`] did with a read.
#[derive(Debug)]
pub enum Routed<T> {
    /// A replica answered.
    Replica {
        /// The replica's id.
        id: Arc<str>,
        /// Its answer.
        value: T,
    },
    /// No replica may serve this read now (none eligible, none caught up within the wait, or each one tried
    /// failed) and falling back to the primary is allowed: the caller runs it on the primary.
    Primary,
}

/// Chooses the server of each read: a replica that satisfies the read's [`Consistency`], or the primary. The
/// client asks it for every read except [`Consistency::Strong`] ones; the router runs the read on a replica's
/// connection (`Conn`, audit-pg's pooled connection) or hands it back (`Routed::Primary`). Generic over the
/// connection type so that this crate names no database driver.
///
/// A router must never answer from a replica that has not replayed a `ReadYourWrites` position, that lags past
/// a `BoundedStaleness` bound or its own bound, or that is not in recovery (promoted). When falling back to the
/// primary is off and no replica may serve, it fails with an *unavailable* error naming each replica's state.
pub trait ReadRouter<Conn>: Send + Sync + 'static {
    /// Whether any replica is configured; `false` sends every read straight to the primary.
    fn has_replicas(&self) -> bool;

    /// Runs `op` on a replica allowed by `consistency` (`ReadYourWrites(None)` has already been resolved by the
    /// caller to its last commit, or means "no position required"), or answers [`Routed::Primary`]. `op` may be
    /// called more than once (a replica that fails is left for another); it must be a read.
    fn read<T, F, Fut>(&self, consistency: Consistency, op: F) -> impl Future<Output = AuditResult<Routed<T>>> + Send
    where
        T: Send + 'static,
        F: Fn(Conn) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = AuditResult<T>> + Send + 'static;

    /// One health entry per replica (`replica:<id>`), for the health report.
    fn health(&self) -> Vec<ComponentHealth> {
        Vec::new()
    }
}

/// The router without replicas: every read goes to the primary.
#[derive(Debug, Clone, Copy, Default)]
pub struct PrimaryOnly;

impl<Conn: Send + 'static> ReadRouter<Conn> for PrimaryOnly {
    fn has_replicas(&self) -> bool {
        false
    }

    fn read<T, F, Fut>(&self, _consistency: Consistency, _op: F) -> impl Future<Output = AuditResult<Routed<T>>> + Send
    where
        T: Send + 'static,
        F: Fn(Conn) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = AuditResult<T>> + Send + 'static,
    {
        std::future::ready(Ok(Routed::Primary))
    }
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
        assert_eq!(serde_json::to_string(&l).unwrap(), "\"16/B374D848\"");
        assert_eq!(serde_json::from_str::<CommitLsn>("\"16/B374D848\"").unwrap(), l);
        assert!(serde_json::from_str::<CommitLsn>("\"16\"").is_err());
    }

    #[test]
    fn consistencies_parse_by_name_and_name_what_is_wrong() {
        assert_eq!("strong".parse::<Consistency>().unwrap(), Consistency::Strong);
        assert_eq!("Read_Your_Writes".parse::<Consistency>().unwrap(), Consistency::ReadYourWrites(None));
        assert_eq!("eventual".parse::<Consistency>().unwrap(), Consistency::Eventual);
        assert_eq!(
            "bounded-staleness:2500".parse::<Consistency>().unwrap(),
            Consistency::BoundedStaleness(Duration::from_millis(2500))
        );
        let e = "bounded-staleness:soon".parse::<Consistency>().unwrap_err();
        assert!(e.contains("milliseconds"), "{e}");
        let e = "fresh".parse::<Consistency>().unwrap_err();
        assert!(e.contains("`fresh`") && e.contains("eventual"), "{e}");
        assert_eq!(Consistency::default(), Consistency::ReadYourWrites(None));
    }

    #[test]
    fn routes_print_the_server() {
        assert_eq!(ReadRoute::Replica("replica-1".into()).to_string(), "replica-1");
        assert_eq!(ReadRoute::Primary.as_str(), "primary");
        assert_eq!(ReadRoute::Cache.as_str(), "cache");
    }
}
