//! How long a breaker stays open: exponential growth with jitter, usable for sub-second periods.
//!
//! failsafe's own `backoff::{exponential, equal_jittered, full_jittered}` assert a start of at least one second,
//! and deployments (and tests) configure `resetTimeoutMs` well below that. failsafe's failure policies accept any
//! `Iterator<Item = Duration> + Clone`, so this iterator plugs into them unchanged.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Open periods of a breaker: the first is exactly `start`; the n-th (from 0) is drawn uniformly from
/// `[max(start, b/2), b]` with `b = min(max, start · 2ⁿ)`, so repeated failures wait longer, concurrent breakers
/// do not probe in lockstep, and no period is ever shorter than `start` or longer than `max`.
///
/// Values are whole milliseconds (sub-millisecond precision buys nothing for a breaker and keeps the reference
/// model in the tests exact). The iterator never ends.
#[derive(Debug, Clone)]
pub struct OpenBackoff {
    start_ms: u64,
    max_ms: u64,
    step: u32,
    rng: Jitter,
}

#[derive(Debug, Clone)]
enum Jitter {
    Thread,
    Seeded(Box<StdRng>),
}

impl OpenBackoff {
    /// A backoff from `start` growing to `max`. `start` is rounded down to whole milliseconds with a floor of
    /// 1 ms; a `max` below `start` is raised to `start` (constant periods).
    pub fn new(start: Duration, max: Duration) -> Self {
        let start_ms = u64::try_from(start.as_millis()).unwrap_or(u64::MAX).max(1);
        let max_ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX).max(start_ms);
        Self { start_ms, max_ms, step: 0, rng: Jitter::Thread }
    }

    /// The same backoff with a deterministic jitter source, so that tests can replay the exact periods; a clone
    /// replays the same sequence from where it was cloned.
    pub fn seeded(mut self, seed: u64) -> Self {
        self.rng = Jitter::Seeded(Box::new(StdRng::seed_from_u64(seed)));
        self
    }

    /// The first (shortest) open period.
    pub fn start(&self) -> Duration {
        Duration::from_millis(self.start_ms)
    }

    /// The longest open period.
    pub fn max(&self) -> Duration {
        Duration::from_millis(self.max_ms)
    }

    /// The default ceiling for a given first period: a minute, or eight first periods when that is longer, so a
    /// dependency that stays down is probed at most about once a minute with the default settings.
    pub fn default_max_for(start: Duration) -> Duration {
        (start.saturating_mul(8)).max(Duration::from_secs(60))
    }
}

impl Iterator for OpenBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let factor = 1u64.checked_shl(self.step.min(63)).unwrap_or(u64::MAX);
        let ceiling = self.start_ms.saturating_mul(factor).min(self.max_ms);
        self.step = self.step.saturating_add(1);
        let floor = (ceiling / 2).max(self.start_ms);
        let ms = if floor >= ceiling {
            ceiling
        } else {
            match &mut self.rng {
                Jitter::Thread => rand::thread_rng().gen_range(floor..=ceiling),
                Jitter::Seeded(rng) => rng.gen_range(floor..=ceiling),
            }
        };
        Some(Duration::from_millis(ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_second_start_grows_within_bounds() {
        let start = Duration::from_millis(150);
        let max = Duration::from_secs(2);
        let periods: Vec<Duration> = OpenBackoff::new(start, max).take(12).collect();
        assert_eq!(periods[0], start, "the first open period is exactly resetTimeoutMs");
        for (n, p) in periods.iter().enumerate() {
            let ceiling = start.saturating_mul(1 << n).min(max);
            assert!(*p >= start && *p <= ceiling, "period {n} = {p:?} outside [{start:?}, {ceiling:?}]");
        }
        assert!(periods[11] >= max / 2, "once capped, periods are drawn from [max/2, max]: {:?}", periods[11]);
    }

    #[test]
    fn seeded_clones_replay_the_same_sequence() {
        let b = OpenBackoff::new(Duration::from_millis(10), Duration::from_secs(5)).seeded(7);
        let a: Vec<_> = b.clone().take(10).collect();
        let c: Vec<_> = b.take(10).collect();
        assert_eq!(a, c);
    }

    #[test]
    fn max_below_start_means_constant_periods() {
        let b = OpenBackoff::new(Duration::from_millis(300), Duration::from_millis(100));
        assert!(b.take(5).all(|p| p == Duration::from_millis(300)));
    }
}
