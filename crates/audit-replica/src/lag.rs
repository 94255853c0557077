//! How far behind a replica is, in bytes and in seconds, from what the health probes see.
//!
//! Bytes: the primary's current WAL position minus the replica's replay position (`pg_wal_lsn_diff`).
//!
//! Seconds: `now() - pg_last_xact_replay_timestamp()` on the replica is the usual answer, but it grows while the
//! primary is idle (the last replayed commit gets older although nothing is missing) and jumps when the primary
//! writes a few bytes of housekeeping WAL. So the router keeps a short history of the primary's position over
//! time and bounds the lag from both sides: a replica that has replayed everything the primary had at time `t`
//! is at most `now - t` behind; one that has replayed every byte is not behind at all. The answer is the tighter
//! of the two upper bounds.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Samples of the primary's WAL position, oldest first.
#[derive(Debug, Default)]
pub(crate) struct LsnHistory {
    samples: VecDeque<(Instant, u64)>,
}

/// How long samples are kept (lag beyond this is reported as at least this old).
const KEEP: Duration = Duration::from_secs(600);
/// Most samples kept (a 10-minute window at sub-second probe intervals).
const MAX_SAMPLES: usize = 4_096;

impl LsnHistory {
    /// Records the primary's position at `at`. Positions only grow: an older one is ignored, the same one moves
    /// the last sample's time forward (the primary was still there then — what bounds an idle primary's lag).
    pub(crate) fn record(&mut self, at: Instant, lsn: u64) {
        match self.samples.back_mut() {
            Some((_, last)) if lsn < *last => return,
            Some((t, last)) if lsn == *last => {
                *t = at;
                return;
            }
            _ => self.samples.push_back((at, lsn)),
        }
        while self.samples.len() > MAX_SAMPLES
            || self.samples.front().is_some_and(|&(t, _)| at.duration_since(t) > KEEP)
        {
            self.samples.pop_front();
        }
    }

    /// The newest known position of the primary.
    pub(crate) fn latest(&self) -> Option<u64> {
        self.samples.back().map(|&(_, l)| l)
    }

    /// An upper bound on how stale a replica that replayed up to `replay` is at `now`: `now - t` for the newest
    /// sample whose position it has reached; `None` when it is behind every sample kept.
    pub(crate) fn staleness_bound(&self, replay: u64, now: Instant) -> Option<Duration> {
        let newest = self.samples.back()?;
        if replay >= newest.1 {
            return Some(Duration::ZERO);
        }
        self.samples.iter().rev().find(|&&(_, l)| l <= replay).map(|&(t, _)| now.saturating_duration_since(t))
    }

    /// How long ago the oldest sample was taken (a replica behind all of them is at least this stale).
    pub(crate) fn window(&self, now: Instant) -> Option<Duration> {
        self.samples.front().map(|&(t, _)| now.saturating_duration_since(t))
    }
}

/// A replica's lag from one probe.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Lag {
    /// Unreplayed WAL bytes (`None` until the primary's position is known).
    pub bytes: Option<u64>,
    /// Seconds behind (`None` when nothing bounds it yet).
    pub seconds: Option<f64>,
}

/// Combines what a probe saw: the replica's replay position, its own `now - last replayed commit time` (seconds,
/// `None` before its first replayed commit), and the primary's history.
pub(crate) fn lag(history: &LsnHistory, replay: Option<u64>, replay_age_s: Option<f64>, now: Instant) -> Lag {
    let bytes = match (history.latest(), replay) {
        (Some(primary), Some(r)) => Some(primary.saturating_sub(r)),
        _ => None,
    };
    if bytes == Some(0) {
        return Lag { bytes, seconds: Some(0.0) };
    }
    let from_history = replay.and_then(|r| history.staleness_bound(r, now)).map(|d| d.as_secs_f64());
    let from_replay_time = replay_age_s.map(|s| s.max(0.0));
    let seconds = match (from_history, from_replay_time) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (Some(a), None) => Some(a),
        (None, Some(b)) => Some(b),
        // Behind everything we remember and no commit replayed yet: at least as old as our memory.
        (None, None) => replay.and_then(|_| history.window(now)).map(|d| d.as_secs_f64()),
    };
    Lag { bytes, seconds }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(t0: Instant, points: &[(u64, u64)]) -> LsnHistory {
        let mut h = LsnHistory::default();
        for &(secs, lsn) in points {
            h.record(t0 + Duration::from_secs(secs), lsn);
        }
        h
    }

    #[test]
    fn an_idle_primary_does_not_make_a_caught_up_replica_look_behind() {
        let t0 = Instant::now();
        let h = history(t0, &[(0, 100), (1, 200)]);
        // The last commit the replica replayed is an hour old, but it has every byte.
        let l = lag(&h, Some(200), Some(3600.0), t0 + Duration::from_secs(60));
        assert_eq!(l, Lag { bytes: Some(0), seconds: Some(0.0) });
    }

    #[test]
    fn housekeeping_wal_after_an_idle_hour_bounds_the_lag_by_the_history() {
        let t0 = Instant::now();
        // The primary wrote at 0 s (to 200), idled, then wrote 100 bytes of housekeeping at 3600 s.
        let h = history(t0, &[(0, 200), (3600, 300)]);
        let now = t0 + Duration::from_secs(3601);
        let l = lag(&h, Some(200), Some(3601.0), now);
        assert_eq!(l.bytes, Some(100));
        // Replayed everything the primary had at 0 s: at most 3601 s, as the replay time says too.
        assert_eq!(l.seconds, Some(3601.0));
        // With probes in between that saw the primary still at 200 (3599 s), it is at most 2 s behind.
        let h = history(t0, &[(0, 200), (1800, 200), (3599, 200), (3600, 300)]);
        assert_eq!(lag(&h, Some(200), Some(3601.0), now).seconds, Some(2.0));
    }

    #[test]
    fn a_replica_behind_a_busy_primary_is_as_old_as_the_last_position_it_reached() {
        let t0 = Instant::now();
        let h = history(t0, &[(0, 100), (1, 200), (2, 300), (3, 400)]);
        let now = t0 + Duration::from_secs(3);
        // Replayed 250: it has what the primary had at 1 s, not at 2 s.
        let l = lag(&h, Some(250), Some(10.0), now);
        assert_eq!(l.bytes, Some(150));
        assert_eq!(l.seconds, Some(2.0));
        // The replay time can be tighter than the history's resolution.
        assert_eq!(lag(&h, Some(250), Some(1.5), now).seconds, Some(1.5));
        // Behind every sample and no replayed commit yet: at least the window.
        assert_eq!(lag(&h, Some(50), None, now).seconds, Some(3.0));
        // Nothing known about the primary: only the replay time.
        assert_eq!(lag(&LsnHistory::default(), Some(50), Some(4.0), now), Lag { bytes: None, seconds: Some(4.0) });
    }

    #[test]
    fn history_keeps_growing_positions_within_its_window() {
        let t0 = Instant::now();
        let mut h = history(t0, &[(0, 100), (1, 90), (2, 100)]);
        assert_eq!(h.samples.len(), 1, "positions never go back");
        assert_eq!(h.samples[0].0, t0 + Duration::from_secs(2), "the same position moves its time forward");
        h.record(t0 + Duration::from_secs(700), 200);
        assert_eq!(h.samples.len(), 1, "samples older than the window are dropped");
        assert_eq!(h.latest(), Some(200));
    }
}
