//! Property tests: the breaker against a small reference model, driven by tokio's paused clock.

use std::time::Duration;

use audit_core::{AuditError, ErrorClass};
use audit_resilience::{Breaker, BreakerSettings, BreakerState, OpenBackoff, Permit, TripPolicy};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Acquire,
    /// Report the outcome of the held permit at this index (modulo the number held); `None` = success.
    Complete(usize, Option<ErrorClass>),
    /// Drop the held permit at this index without reporting (a cancelled caller).
    Abandon(usize),
    Advance(u64),
    /// If the model is open, advance to its reopen instant plus this many ms (-1, 0 or 1): the boundary.
    AdvanceNearReopen(i64),
    Observe,
}

fn class() -> impl Strategy<Value = Option<ErrorClass>> {
    prop_oneof![
        3 => Just(None),
        4 => Just(Some(ErrorClass::Unavailable)),
        1 => Just(Some(ErrorClass::InvalidInput)),
        1 => Just(Some(ErrorClass::Transient)),
        1 => Just(Some(ErrorClass::Integrity)),
        1 => Just(Some(ErrorClass::Permanent)),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Acquire),
        5 => (any::<usize>(), class()).prop_map(|(i, c)| Op::Complete(i, c)),
        1 => any::<usize>().prop_map(Op::Abandon),
        2 => (0u64..400).prop_map(Op::Advance),
        1 => (-1i64..=1).prop_map(Op::AdvanceNearReopen),
        1 => Just(Op::Observe),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum MState {
    Closed,
    Open { until: Duration },
    HalfOpen,
}

/// The specification, written as plainly as possible.
struct Model {
    threshold: u32,
    probes: u32,
    fresh_backoff: OpenBackoff,
    backoff: OpenBackoff,
    state: MState,
    epoch: u64,
    consecutive: u32,
    in_flight: u32,
    total_failures: u64,
    now: Duration,
}

#[derive(Debug, Clone, Copy)]
struct MPermit {
    epoch: u64,
    probe: bool,
}

impl Model {
    fn enter(&mut self, s: MState) {
        self.state = s;
        self.epoch += 1;
        self.in_flight = 0;
    }

    fn refresh(&mut self) {
        if let MState::Open { until } = self.state
            && self.now >= until
        {
            self.enter(MState::HalfOpen);
        }
    }

    fn open(&mut self) {
        let delay = self.backoff.next().expect("backoff never ends");
        self.enter(MState::Open { until: self.now + delay });
    }

    fn acquire(&mut self) -> Option<MPermit> {
        self.refresh();
        match self.state {
            MState::Closed => Some(MPermit { epoch: self.epoch, probe: false }),
            MState::HalfOpen if self.in_flight < self.probes => {
                self.in_flight += 1;
                assert!(self.in_flight <= self.probes);
                Some(MPermit { epoch: self.epoch, probe: true })
            }
            _ => None,
        }
    }

    fn complete(&mut self, p: MPermit, outcome: Option<ErrorClass>) {
        let failed = outcome == Some(ErrorClass::Unavailable);
        if failed {
            self.total_failures += 1;
        }
        if p.epoch != self.epoch {
            return;
        }
        match (self.state, failed) {
            (MState::Closed, true) => {
                self.consecutive += 1;
                if self.consecutive >= self.threshold {
                    self.open();
                }
            }
            (MState::Closed, false) => self.consecutive = 0,
            (MState::HalfOpen, true) => {
                self.consecutive += 1;
                self.open();
            }
            (MState::HalfOpen, false) => {
                self.consecutive = 0;
                self.backoff = self.fresh_backoff.clone();
                self.enter(MState::Closed);
            }
            (MState::Open { .. }, _) => unreachable!("nothing is admitted while open"),
        }
    }

    fn abandon(&mut self, p: MPermit) {
        if p.probe && p.epoch == self.epoch {
            self.in_flight -= 1;
        }
    }

    fn public_state(&self) -> BreakerState {
        match self.state {
            MState::Closed => BreakerState::Closed,
            MState::Open { .. } => BreakerState::Open,
            MState::HalfOpen => BreakerState::HalfOpen,
        }
    }
}

fn error(class: ErrorClass) -> AuditError {
    AuditError::of_class(class, format!("simulated {class} error"))
}

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().expect("runtime")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn breaker_matches_reference_model(
        threshold in 1u32..5,
        probes in 1u32..4,
        reset_ms in 1u64..1_500,
        seed in any::<u64>(),
        ops in proptest::collection::vec(op(), 1..120),
    ) {
        let backoff = OpenBackoff::new(Duration::from_millis(reset_ms), Duration::from_millis(reset_ms * 6)).seeded(seed);
        let settings = BreakerSettings {
            trip: TripPolicy::consecutive_failures(threshold),
            open_backoff: backoff.clone(),
            half_open_probes: probes,
        };
        let mut model = Model {
            threshold,
            probes,
            fresh_backoff: backoff.clone(),
            backoff,
            state: MState::Closed,
            epoch: 0,
            consecutive: 0,
            in_flight: 0,
            total_failures: 0,
            now: Duration::ZERO,
        };
        paused_runtime().block_on(async {
            let breaker = Breaker::new("primary", &settings);
            let mut held: Vec<(Permit<'_>, MPermit)> = Vec::new();
            for (step, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Acquire => {
                        let expected = model.acquire();
                        match (breaker.try_acquire(), expected) {
                            (Ok(p), Some(m)) => {
                                prop_assert_eq!(p.is_probe(), m.probe, "step {}", step);
                                held.push((p, m));
                            }
                            (Err(e), None) => {
                                prop_assert!(e.is_circuit_open(), "step {}: {}", step, e);
                                prop_assert_eq!(e.class(), ErrorClass::Unavailable);
                            }
                            (got, want) => prop_assert!(
                                false, "step {}: breaker admitted={} model admitted={}", step, got.is_ok(), want.is_some()
                            ),
                        }
                    }
                    Op::Complete(i, outcome) if !held.is_empty() => {
                        let (p, m) = held.swap_remove(i % held.len());
                        match outcome {
                            None => p.succeeded(),
                            Some(c) => p.failed(&error(c)),
                        }
                        model.complete(m, outcome);
                    }
                    Op::Abandon(i) if !held.is_empty() => {
                        let (p, m) = held.swap_remove(i % held.len());
                        drop(p);
                        model.abandon(m);
                    }
                    Op::Complete(..) | Op::Abandon(_) => {}
                    Op::Advance(ms) => {
                        tokio::time::advance(Duration::from_millis(ms)).await;
                        model.now += Duration::from_millis(ms);
                    }
                    Op::AdvanceNearReopen(offset) => {
                        if let MState::Open { until } = model.state {
                            let target = (until + Duration::from_millis(1)).saturating_sub(Duration::from_millis((1 - offset) as u64));
                            let step = target.saturating_sub(model.now);
                            tokio::time::advance(step).await;
                            model.now += step;
                        }
                    }
                    Op::Observe => model.refresh(),
                }
                // Observing refreshes both sides the same way, so compare after every step.
                model.refresh();
                let status = breaker.status();
                prop_assert_eq!(status.state, model.public_state(), "step {}", step);
                prop_assert_eq!(status.consecutive_failures, model.consecutive, "step {}", step);
                prop_assert_eq!(status.probes_in_flight, model.in_flight, "step {}", step);
                prop_assert_eq!(status.total_failures, model.total_failures, "step {}", step);
                prop_assert!(status.probes_in_flight <= probes);
                let live_probes = held.iter().filter(|(p, m)| p.is_probe() && m.epoch == model.epoch).count();
                prop_assert!(live_probes <= probes as usize, "step {}: {} probes admitted", step, live_probes);
                if let MState::Open { until } = model.state {
                    prop_assert_eq!(status.open_remaining, Some(until - model.now), "step {}", step);
                }
            }
            Ok(())
        })?;
    }

    #[test]
    fn errors_that_do_not_trip_never_open_the_breaker(
        outcomes in proptest::collection::vec(
            prop_oneof![
                Just(None),
                Just(Some(ErrorClass::InvalidInput)),
                Just(Some(ErrorClass::Integrity)),
                Just(Some(ErrorClass::Permanent)),
                Just(Some(ErrorClass::Transient)),
            ],
            1..200,
        ),
        sqlstate in prop_oneof![Just("23505"), Just("23503"), Just("22P02"), Just("22001"), Just("42601"), Just("42P01")],
    ) {
        let breaker = Breaker::new("primary", &BreakerSettings {
            trip: TripPolicy::consecutive_failures(1),
            ..BreakerSettings::default()
        });
        for outcome in outcomes {
            let p = breaker.try_acquire().expect("a closed breaker admits");
            match outcome {
                None => p.succeeded(),
                Some(c) => p.failed(&error(c)),
            }
            breaker.try_acquire().expect("a closed breaker admits").failed(&AuditError::from_sqlstate(sqlstate.parse().unwrap(), "x"));
            prop_assert_eq!(breaker.state(), BreakerState::Closed);
            prop_assert_eq!(breaker.status().total_failures, 0);
        }
    }
}
