//! Picking one replica among those that may serve a read, by [`Strategy`]. Pure logic over what the router
//! knows of each candidate, so it is tested without servers.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use rand::Rng as _;

use crate::config::Strategy;

/// What a strategy may look at for one candidate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Candidate {
    /// Index of the replica in the router's list.
    pub index: usize,
    /// Reads running on it now.
    pub in_flight: usize,
    /// Moving average of its latency, µs (`None` before the first measurement).
    pub latency_us: Option<f64>,
    /// Its `weight`.
    pub weight: u32,
}

/// The strategy's state across reads.
#[derive(Debug)]
pub(crate) struct Picker {
    strategy: Strategy,
    turn: AtomicUsize,
    /// Smooth weighted round robin: each replica's current weight, by index.
    current: Mutex<Vec<i64>>,
}

impl Picker {
    /// A picker for `replicas` replicas.
    pub(crate) fn new(strategy: Strategy, replicas: usize) -> Self {
        Self { strategy, turn: AtomicUsize::new(0), current: Mutex::new(vec![0; replicas]) }
    }

    /// The strategy in use.
    pub(crate) fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// The index of the chosen replica; `None` only when `candidates` is empty.
    pub(crate) fn pick(&self, candidates: &[Candidate]) -> Option<usize> {
        if candidates.is_empty() {
            return None;
        }
        let n = candidates.len();
        let chosen = match self.strategy {
            Strategy::RoundRobin => candidates[self.turn.fetch_add(1, Ordering::Relaxed) % n],
            Strategy::Random => candidates[rand::thread_rng().gen_range(0..n)],
            Strategy::LeastConnections => {
                // Ties are broken in turn, so that sequential reads still spread.
                let start = self.turn.fetch_add(1, Ordering::Relaxed) % n;
                let rotated = candidates[start..].iter().chain(&candidates[..start]);
                *rotated.min_by_key(|c| c.in_flight).expect("not empty")
            }
            Strategy::LeastLatency => {
                // An unmeasured replica goes first: it must be measured to be compared.
                *candidates
                    .iter()
                    .min_by(|a, b| a.latency_us.unwrap_or(0.0).total_cmp(&b.latency_us.unwrap_or(0.0)))
                    .expect("not empty")
            }
            Strategy::Weighted => {
                let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
                let total: i64 = candidates.iter().map(|c| i64::from(c.weight)).sum();
                let mut best = candidates[0];
                for c in candidates {
                    current[c.index] += i64::from(c.weight);
                    if current[c.index] > current[best.index] {
                        best = *c;
                    }
                }
                current[best.index] -= total;
                best
            }
        };
        Some(chosen.index)
    }
}

/// An exponentially weighted moving average of latencies in µs, `alpha` of each new sample.
pub(crate) fn ewma(previous: Option<f64>, sample_us: f64, alpha: f64) -> f64 {
    match previous {
        Some(p) => p + alpha * (sample_us - p),
        None => sample_us,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cands(spec: &[(usize, Option<f64>, u32)]) -> Vec<Candidate> {
        spec.iter()
            .enumerate()
            .map(|(index, &(in_flight, latency_us, weight))| Candidate { index, in_flight, latency_us, weight })
            .collect()
    }

    fn counts(p: &Picker, c: &[Candidate], n: usize) -> Vec<usize> {
        let mut out = vec![0; c.iter().map(|c| c.index + 1).max().unwrap_or(0)];
        for _ in 0..n {
            out[p.pick(c).unwrap()] += 1;
        }
        out
    }

    #[test]
    fn round_robin_takes_turns() {
        let c = cands(&[(0, None, 1), (0, None, 1), (0, None, 1)]);
        assert_eq!(counts(&Picker::new(Strategy::RoundRobin, 3), &c, 300), [100, 100, 100]);
        assert_eq!(Picker::new(Strategy::RoundRobin, 3).pick(&[]), None);
    }

    #[test]
    fn weighted_gives_exact_shares_interleaved() {
        let c = cands(&[(0, None, 3), (0, None, 1)]);
        let p = Picker::new(Strategy::Weighted, 2);
        let seq: Vec<usize> = (0..8).map(|_| p.pick(&c).unwrap()).collect();
        assert_eq!(seq, [0, 0, 1, 0, 0, 0, 1, 0]);
        assert_eq!(counts(&p, &c, 400), [300, 100]);
        // A replica leaving the candidates leaves the others' shares intact.
        let only = [c[1]];
        assert_eq!(counts(&p, &only, 10), [0, 10]);
    }

    #[test]
    fn least_connections_prefers_the_idle_and_rotates_ties() {
        let p = Picker::new(Strategy::LeastConnections, 2);
        let busy = cands(&[(3, None, 1), (0, None, 1)]);
        assert_eq!(counts(&p, &busy, 10), [0, 10]);
        let tie = cands(&[(1, None, 1), (1, None, 1)]);
        assert_eq!(counts(&p, &tie, 10), [5, 5]);
    }

    #[test]
    fn least_latency_prefers_the_fast_and_measures_the_unknown_first() {
        let p = Picker::new(Strategy::LeastLatency, 3);
        assert_eq!(p.pick(&cands(&[(0, Some(900.0), 1), (0, Some(300.0), 1), (0, Some(500.0), 1)])), Some(1));
        assert_eq!(p.pick(&cands(&[(0, Some(900.0), 1), (0, None, 1)])), Some(1));
    }

    #[test]
    fn random_reaches_everyone() {
        let c = cands(&[(0, None, 1), (0, None, 1)]);
        let got = counts(&Picker::new(Strategy::Random, 2), &c, 1000);
        assert!(got.iter().all(|&n| n > 350), "{got:?}");
    }

    #[test]
    fn the_average_follows_new_samples() {
        assert_eq!(ewma(None, 100.0, 0.2), 100.0);
        assert_eq!(ewma(Some(100.0), 200.0, 0.5), 150.0);
    }
}
