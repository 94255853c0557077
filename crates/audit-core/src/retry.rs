//! When to try again: the one retry schedule of the workspace.
//!
//! Every place that repeats a failed call — the resilience policy, the write path waiting out an outage, partition
//! DDL behind a lock timeout, the cache re-sending invalidations — runs the call with `backon`'s `Retryable` over a
//! [`RetrySchedule`]'s delays and decides *which* errors to repeat by kind or class. This module only computes
//! delays (pure: the caller supplies the random seed and does the sleeping).

use std::time::Duration;

/// Exponential backoff with full jitter ("sleep a uniform random time up to the ceiling", so clients that failed
/// together do not retry together), bounded by a number of attempts and optionally by the total time spent waiting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule {
    /// Attempts per call, the first included (`0` behaves as `1`).
    pub max_attempts: u32,
    /// Delay ceiling before the first retry; it doubles for each further retry.
    pub base_delay: Duration,
    /// Cap of the delay ceiling.
    pub max_delay: Duration,
    /// Stop once the delays handed out add up to more than this (`None`: no bound).
    pub total_delay: Option<Duration>,
    /// Draw delays uniformly from `[0, ceiling]` (true) or use the ceiling itself (false: for waits that must make
    /// progress, such as polling a database that is restarting).
    pub jitter: bool,
}

impl RetrySchedule {
    /// `max_attempts` attempts with full-jitter delays from `base_delay` doubling up to `max_delay`.
    pub fn new(max_attempts: u32, base_delay: Duration, max_delay: Duration) -> Self {
        Self { max_attempts, base_delay, max_delay, total_delay: None, jitter: true }
    }

    /// One attempt, no retry.
    pub fn none() -> Self {
        Self::new(1, Duration::ZERO, Duration::ZERO)
    }

    /// Retries without a bound on attempts until `total` has been spent waiting, pausing `first` then doubling up to
    /// `max` without jitter: for outages, where the waiting itself is the point.
    pub fn patient(total: Duration, first: Duration, max: Duration) -> Self {
        Self { max_attempts: u32::MAX, base_delay: first, max_delay: max, total_delay: Some(total), jitter: false }
    }

    /// The ceiling of the delay before retry number `retry` (1-based): `min(max_delay, base_delay · 2^(retry-1))`.
    pub fn delay_ceiling(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry.saturating_sub(1)).unwrap_or(u32::MAX);
        self.base_delay.saturating_mul(factor).min(self.max_delay)
    }

    /// The delays before each retry, in order (at most `max_attempts - 1` of them), drawn with a generator seeded by
    /// `seed`. An iterator of durations is what `backon` accepts as a backoff.
    pub fn delays(&self, seed: u64) -> Delays {
        Delays { schedule: self.clone(), retry: 0, spent: Duration::ZERO, rng: SplitMix64(seed) }
    }
}

impl Default for RetrySchedule {
    fn default() -> Self {
        Self::new(5, Duration::from_millis(50), Duration::from_secs(2))
    }
}

/// The delays of one call (see [`RetrySchedule::delays`]).
#[derive(Debug, Clone)]
pub struct Delays {
    schedule: RetrySchedule,
    retry: u32,
    spent: Duration,
    rng: SplitMix64,
}

impl Iterator for Delays {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        if self.retry.saturating_add(1) >= self.schedule.max_attempts.max(1) {
            return None;
        }
        self.retry += 1;
        let ceiling = self.schedule.delay_ceiling(self.retry);
        let delay = if self.schedule.jitter && !ceiling.is_zero() {
            let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
            Duration::from_nanos(self.rng.next_u64() % nanos.saturating_add(1))
        } else {
            ceiling
        };
        if let Some(total) = self.schedule.total_delay
            && self.spent >= total
        {
            return None;
        }
        self.spent = self.spent.saturating_add(delay);
        Some(delay)
    }
}

/// A small, fast generator for jitter (not for secrets).
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_under_a_doubling_capped_ceiling() {
        let r = RetrySchedule::new(20, Duration::from_millis(30), Duration::from_millis(700));
        let ceilings: Vec<_> = (1..=8).map(|n| r.delay_ceiling(n)).collect();
        assert_eq!(ceilings, [30, 60, 120, 240, 480, 700, 700, 700].map(Duration::from_millis).to_vec());
        for seed in 0..50 {
            for (i, d) in r.delays(seed).enumerate() {
                assert!(d <= r.delay_ceiling(i as u32 + 1));
            }
        }
        assert_eq!(r.delays(1).count(), 19, "20 attempts are 19 retries");
        assert_eq!(RetrySchedule::none().delays(1).count(), 0);
        assert_eq!(RetrySchedule::new(0, Duration::from_millis(1), Duration::from_millis(1)).delays(1).count(), 0);
    }

    #[test]
    fn jitter_spreads_retries_and_patience_is_bounded_by_time() {
        let r = RetrySchedule::new(3, Duration::from_secs(1), Duration::from_secs(1));
        let firsts: std::collections::BTreeSet<_> = (0..20).map(|s| r.delays(s).next().unwrap()).collect();
        assert!(firsts.len() > 10, "different seeds draw different delays");
        let p = RetrySchedule::patient(Duration::from_secs(10), Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<_> = p.delays(0).collect();
        assert_eq!(&delays[..5], &[100, 200, 400, 800, 1000].map(Duration::from_millis));
        let total: Duration = delays.iter().sum();
        assert!(total >= Duration::from_secs(10) && total <= Duration::from_secs(11), "{total:?}");
    }
}
