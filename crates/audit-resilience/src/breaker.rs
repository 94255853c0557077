//! A circuit breaker whose trip decision and open-period growth come from failsafe's failure policies, and whose
//! state machine is our own.
//!
//! # Why not `failsafe::StateMachine`
//!
//! failsafe's `FailurePolicy` (`consecutive_failures`, `success_rate_over_time_window`) decides *when* to open and
//! *for how long*, and we use it for exactly that. Its `StateMachine` does not fit four requirements, so this
//! module replaces it:
//!
//! 1. **Bounded probes.** In half-open failsafe admits every call; a recovering database would be hit by the whole
//!    backlog at once. We admit at most `half_open_probes` concurrent probes and reject the rest fast.
//! 2. **Status for the health report.** failsafe keeps its state private (only `Debug` prints it); we need the state,
//!    consecutive/total failure counts and the time of the last transition.
//! 3. **Clock.** failsafe reads `std::time::Instant` (its mock clock is a hidden thread-local); we read
//!    `tokio::time::Instant`, so tests drive the breaker with tokio's paused time like the rest of the async code.
//!    (The failure-rate policy still reads failsafe's clock internally; its window is real time, at least 1 s.)
//! 4. **Late outcomes.** A call admitted before a transition (e.g. a slow call admitted while closed that fails
//!    after the breaker opened) must not move the new state; permits carry the state epoch they were admitted in.
//!
//! # Outcome rules
//!
//! Only errors whose class [`ErrorClass::trips_breaker`] (Unavailable) count as failures. Any other error
//! (InvalidInput, Integrity, Permanent, Transient) means the dependency *answered*, so for the breaker it counts as
//! a success: it resets the consecutive count and closes a half-open breaker. A permit dropped without an outcome
//! (the caller was cancelled) frees its probe slot and counts as nothing.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use audit_core::{AuditError, AuditResult, ComponentHealth, ErrorClass, HealthState};
use chrono::{DateTime, Utc};
use failsafe::FailurePolicy;
use tokio::time::Instant;

use crate::backoff::OpenBackoff;
use crate::config::CircuitBreakerConfig;

/// Gauge of each breaker's state: 0 = closed, 1 = open, 2 = half-open (the seed's metric name and encoding).
pub const STATE_GAUGE: &str = audit_core::metrics::CIRCUIT_BREAKER_STATE;
/// Counter of calls a breaker refused without calling the dependency.
pub const REJECTIONS_COUNTER: &str = audit_core::metrics::CIRCUIT_BREAKER_REJECTIONS;
/// Counter of failures (Unavailable outcomes) a breaker recorded.
pub const FAILURES_COUNTER: &str = audit_core::metrics::CIRCUIT_BREAKER_FAILURES;
/// Counter of state transitions, labelled by the state entered (`to`).
pub const TRANSITIONS_COUNTER: &str = audit_core::metrics::CIRCUIT_BREAKER_TRANSITIONS;

/// When a closed breaker opens. Built through its constructors so that invalid rate settings cannot exist.
#[derive(Debug, Clone, PartialEq)]
pub struct TripPolicy(TripKind);

#[derive(Debug, Clone, PartialEq)]
enum TripKind {
    Consecutive(u32),
    FailureRate { max_failure_rate: f64, min_requests: u32, window: Duration },
}

impl TripPolicy {
    /// Opens after `n` consecutive Unavailable outcomes (`failureThreshold`); `0` is treated as `1`.
    pub fn consecutive_failures(n: u32) -> Self {
        Self(TripKind::Consecutive(n.max(1)))
    }

    /// Opens when, over at least `window`, the (exponentially weighted) failure rate exceeds `max_failure_rate`
    /// and at least `min_requests` calls were seen. Uses failsafe's `success_rate_over_time_window`, whose window
    /// has whole-second granularity, so `window` must be at least 1 s and `max_failure_rate` within `[0, 1)`.
    pub fn failure_rate(max_failure_rate: f64, min_requests: u32, window: Duration) -> AuditResult<Self> {
        if !(0.0..1.0).contains(&max_failure_rate) {
            return Err(AuditError::invalid(format!(
                "circuit breaker failure rate must be within [0, 1), got {max_failure_rate}"
            )));
        }
        if window < Duration::from_secs(1) {
            return Err(AuditError::invalid(format!(
                "circuit breaker failure-rate window must be at least 1 s, got {window:?}"
            )));
        }
        Ok(Self(TripKind::FailureRate { max_failure_rate, min_requests, window }))
    }

    fn build(&self, backoff: OpenBackoff) -> Box<dyn FailurePolicy + Send> {
        match self.0 {
            TripKind::Consecutive(n) => Box::new(failsafe::failure_policy::consecutive_failures(n, backoff)),
            TripKind::FailureRate { max_failure_rate, min_requests, window } => {
                Box::new(failsafe::failure_policy::success_rate_over_time_window(
                    1.0 - max_failure_rate,
                    min_requests,
                    window,
                    backoff,
                ))
            }
        }
    }
}

/// Everything a breaker needs besides its name; one value serves every breaker of a registry.
#[derive(Debug, Clone)]
pub struct BreakerSettings {
    /// When to open.
    pub trip: TripPolicy,
    /// Open periods, starting at `resetTimeoutMs`.
    pub open_backoff: OpenBackoff,
    /// Concurrent probes admitted while half-open (`halfOpenProbes`); `0` is treated as `1`.
    pub half_open_probes: u32,
}

impl BreakerSettings {
    /// Settings from `[circuitBreaker]`: consecutive-failure trip at `failureThreshold`, open periods from
    /// `resetTimeoutMs` up to [`OpenBackoff::default_max_for`], `halfOpenProbes` probes.
    pub fn from_config(cfg: &CircuitBreakerConfig) -> Self {
        let start = Duration::from_millis(cfg.reset_timeout_ms);
        Self {
            trip: TripPolicy::consecutive_failures(cfg.failure_threshold),
            open_backoff: OpenBackoff::new(start, OpenBackoff::default_max_for(start)),
            half_open_probes: cfg.half_open_probes.max(1),
        }
    }
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self::from_config(&CircuitBreakerConfig::default())
    }
}

/// A breaker's state as reported (`closed`, `open`, `half_open`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Calls go through; failures are counted.
    Closed,
    /// Calls are refused until the open period ends.
    Open,
    /// A bounded number of probe calls decide whether to close or reopen.
    HalfOpen,
}

impl BreakerState {
    /// `closed`, `open` or `half_open`, as in logs and the health report.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    /// The value of [`STATE_GAUGE`]: 0 closed, 1 open, 2 half-open.
    pub fn gauge_value(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::Open => 1.0,
            BreakerState::HalfOpen => 2.0,
        }
    }

    /// How the health report rates the state: an open breaker means the dependency is unusable, half-open means
    /// it is being tried again.
    pub fn health(self) -> HealthState {
        match self {
            BreakerState::Closed => HealthState::Healthy,
            BreakerState::HalfOpen => HealthState::Degraded,
            BreakerState::Open => HealthState::Unhealthy,
        }
    }
}

/// A snapshot of one breaker, for the health report and operators.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerStatus {
    /// The breaker's name (`primary`, `replica-1`, `redis`, `maintenance`, …).
    pub name: String,
    /// Current state (an open breaker whose period has ended is reported half-open).
    pub state: BreakerState,
    /// Unavailable outcomes since the last success.
    pub consecutive_failures: u32,
    /// Unavailable outcomes since the breaker was created.
    pub total_failures: u64,
    /// Calls refused since the breaker was created.
    pub rejections: u64,
    /// Probes currently admitted (half-open only).
    pub probes_in_flight: u32,
    /// Wall-clock time the breaker entered `state`.
    pub since: DateTime<Utc>,
    /// Time left in the open period, when open.
    pub open_remaining: Option<Duration>,
}

impl BreakerStatus {
    /// The status as a health-report entry named `breaker:<name>`.
    pub fn to_health(&self) -> ComponentHealth {
        ComponentHealth {
            name: format!("breaker:{}", self.name),
            status: self.state.health(),
            details: serde_json::json!({
                "state": self.state.as_str(),
                "consecutiveFailures": self.consecutive_failures,
                "totalFailures": self.total_failures,
                "rejections": self.rejections,
                "probesInFlight": self.probes_in_flight,
                "since": self.since.to_rfc3339(),
                "openRemainingMs": self.open_remaining.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            }),
        }
    }
}

enum State {
    Closed,
    Open { until: Instant, delay: Duration },
    HalfOpen { delay: Duration },
}

impl State {
    fn public(&self) -> BreakerState {
        match self {
            State::Closed => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }
}

struct Inner {
    state: State,
    /// Incremented on every transition; permits from an older epoch do not move the state.
    epoch: u64,
    policy: Box<dyn FailurePolicy + Send>,
    consecutive_failures: u32,
    total_failures: u64,
    rejections: u64,
    probes_in_flight: u32,
    since: DateTime<Utc>,
}

/// One named circuit breaker. Share it as `Arc<Breaker>`; all methods take `&self`.
pub struct Breaker {
    name: String,
    probes: u32,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.lock();
        f.debug_struct("Breaker")
            .field("name", &self.name)
            .field("state", &inner.state.public().as_str())
            .field("consecutive_failures", &inner.consecutive_failures)
            .finish()
    }
}

impl Breaker {
    /// A closed breaker named `name` (the `component` label of its metrics and of the errors it returns).
    pub fn new(name: impl Into<String>, settings: &BreakerSettings) -> Self {
        let name = name.into();
        metrics::gauge!(STATE_GAUGE, "component" => name.clone()).set(BreakerState::Closed.gauge_value());
        Self {
            probes: settings.half_open_probes.max(1),
            inner: Mutex::new(Inner {
                state: State::Closed,
                epoch: 0,
                policy: settings.trip.build(settings.open_backoff.clone()),
                consecutive_failures: 0,
                total_failures: 0,
                rejections: 0,
                probes_in_flight: 0,
                since: Utc::now(),
            }),
            name,
        }
    }

    /// The breaker's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Asks to make one call. `Err` is the fast refusal of an open (or fully probed half-open) breaker: kind
    /// [`audit_core::ErrorKind::CircuitOpen`] (class Unavailable), component set to the breaker's name, a message
    /// saying why and when the next probe is due.
    pub fn try_acquire(&self) -> AuditResult<Permit<'_>> {
        let mut inner = self.lock();
        self.refresh(&mut inner, Instant::now());
        let epoch = inner.epoch;
        let refusal = match inner.state {
            State::Closed => return Ok(Permit { breaker: self, epoch, probe: false, done: false }),
            State::HalfOpen { .. } if inner.probes_in_flight < self.probes => {
                inner.probes_in_flight += 1;
                return Ok(Permit { breaker: self, epoch, probe: true, done: false });
            }
            State::HalfOpen { .. } => {
                format!("breaker `{}` is half-open and its {} probe slot(s) are in use", self.name, self.probes)
            }
            State::Open { until, .. } => format!(
                "breaker `{}` is open after {} consecutive failure(s); next probe in {} ms",
                self.name,
                inner.consecutive_failures,
                until.saturating_duration_since(Instant::now()).as_millis()
            ),
        };
        inner.rejections += 1;
        drop(inner);
        metrics::counter!(REJECTIONS_COUNTER, "component" => self.name.clone()).increment(1);
        Err(AuditError::circuit_open(refusal).with_component(self.name.clone()))
    }

    /// Runs `fut` under the breaker: refuses fast when open, records the outcome otherwise. This is the seed's
    /// `circuitBreaker.execute(...)`; [`crate::Policy`] adds retry and deadlines around the same steps.
    pub async fn call<T>(&self, fut: impl Future<Output = AuditResult<T>>) -> AuditResult<T> {
        let permit = self.try_acquire()?;
        let result = fut.await;
        permit.record(&result);
        result
    }

    /// Current state, after moving an open breaker whose period has ended to half-open.
    pub fn state(&self) -> BreakerState {
        let mut inner = self.lock();
        self.refresh(&mut inner, Instant::now());
        inner.state.public()
    }

    /// A snapshot for the health report, after the same time-driven refresh as [`Breaker::state`].
    pub fn status(&self) -> BreakerStatus {
        let now = Instant::now();
        let mut inner = self.lock();
        self.refresh(&mut inner, now);
        BreakerStatus {
            name: self.name.clone(),
            state: inner.state.public(),
            consecutive_failures: inner.consecutive_failures,
            total_failures: inner.total_failures,
            rejections: inner.rejections,
            probes_in_flight: inner.probes_in_flight,
            since: inner.since,
            open_remaining: match inner.state {
                State::Open { until, .. } => Some(until.saturating_duration_since(now)),
                _ => None,
            },
        }
    }

    /// Closes the breaker now and forgets its failure history (operator action, or after maintenance).
    pub fn reset(&self) {
        let mut inner = self.lock();
        inner.consecutive_failures = 0;
        inner.policy.revived();
        if !matches!(inner.state, State::Closed) {
            self.transition(&mut inner, State::Closed);
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave `Inner` half-updated in a way that matters more than
        // losing the breaker altogether, so keep going with the data as it is.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn refresh(&self, inner: &mut Inner, now: Instant) {
        if let State::Open { until, delay } = inner.state
            && now >= until
        {
            self.transition(inner, State::HalfOpen { delay });
        }
    }

    fn transition(&self, inner: &mut Inner, to: State) {
        let from = inner.state.public();
        inner.state = to;
        inner.epoch += 1;
        inner.probes_in_flight = 0;
        inner.since = Utc::now();
        let state = inner.state.public();
        metrics::gauge!(STATE_GAUGE, "component" => self.name.clone()).set(state.gauge_value());
        metrics::counter!(TRANSITIONS_COUNTER, "component" => self.name.clone(), "to" => state.as_str()).increment(1);
        match &inner.state {
            State::Open { delay, .. } => tracing::warn!(
                breaker = %self.name,
                from = from.as_str(),
                consecutive_failures = inner.consecutive_failures,
                open_ms = delay.as_millis() as u64,
                "circuit breaker opened"
            ),
            State::HalfOpen { .. } => {
                tracing::info!(breaker = %self.name, "circuit breaker half-open: admitting {} probe(s)", self.probes)
            }
            State::Closed => tracing::info!(breaker = %self.name, from = from.as_str(), "circuit breaker closed"),
        }
    }

    fn complete(&self, epoch: u64, probe: bool, outcome: Option<ErrorClass>) {
        let failed = outcome.is_some_and(ErrorClass::trips_breaker);
        let mut inner = self.lock();
        if failed {
            inner.total_failures += 1;
            metrics::counter!(FAILURES_COUNTER, "component" => self.name.clone()).increment(1);
        }
        if epoch != inner.epoch {
            // Admitted before the last transition: the state was decided without it, and stays.
            return;
        }
        if probe {
            inner.probes_in_flight = inner.probes_in_flight.saturating_sub(1);
        }
        match inner.state {
            State::Closed if failed => {
                inner.consecutive_failures = inner.consecutive_failures.saturating_add(1);
                if let Some(delay) = inner.policy.mark_dead_on_failure() {
                    self.transition(&mut inner, State::Open { until: Instant::now() + delay, delay });
                }
            }
            State::Closed => {
                inner.consecutive_failures = 0;
                inner.policy.record_success();
            }
            State::HalfOpen { delay } if failed => {
                inner.consecutive_failures = inner.consecutive_failures.saturating_add(1);
                let delay = inner.policy.mark_dead_on_failure().unwrap_or(delay);
                self.transition(&mut inner, State::Open { until: Instant::now() + delay, delay });
            }
            State::HalfOpen { .. } => {
                inner.consecutive_failures = 0;
                inner.policy.record_success();
                inner.policy.revived();
                self.transition(&mut inner, State::Closed);
            }
            // Unreachable with a matching epoch (nothing is admitted while open); nothing to do either way.
            State::Open { .. } => {}
        }
    }

    fn release(&self, epoch: u64) {
        let mut inner = self.lock();
        if epoch == inner.epoch {
            inner.probes_in_flight = inner.probes_in_flight.saturating_sub(1);
        }
    }
}

/// Permission for one call, from [`Breaker::try_acquire`]. Report the outcome with [`Permit::record`] (or
/// [`Permit::succeeded`] / [`Permit::failed`]); dropping it unreported frees a probe slot and counts nothing.
#[must_use = "report the call's outcome, or the breaker learns nothing from it"]
pub struct Permit<'a> {
    breaker: &'a Breaker,
    epoch: u64,
    probe: bool,
    done: bool,
}

impl std::fmt::Debug for Permit<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit").field("breaker", &self.breaker.name).field("probe", &self.probe).finish()
    }
}

impl Permit<'_> {
    /// Whether this call is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// Reports the call's result (only Unavailable errors count as failures).
    pub fn record<T>(self, result: &AuditResult<T>) {
        match result {
            Ok(_) => self.succeeded(),
            Err(e) => self.failed(e),
        }
    }

    /// Reports that the dependency answered.
    pub fn succeeded(mut self) {
        self.done = true;
        self.breaker.complete(self.epoch, self.probe, None);
    }

    /// Reports an error; whether it counts against the dependency depends on its class alone.
    pub fn failed(mut self, error: &AuditError) {
        self.done = true;
        self.breaker.complete(self.epoch, self.probe, Some(error.class()));
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.done && self.probe {
            self.breaker.release(self.epoch);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_metrics::Capture;

    fn settings(threshold: u32, reset_ms: u64, probes: u32) -> BreakerSettings {
        BreakerSettings {
            trip: TripPolicy::consecutive_failures(threshold),
            open_backoff: OpenBackoff::new(Duration::from_millis(reset_ms), Duration::from_secs(10)),
            half_open_probes: probes,
        }
    }

    #[test]
    fn client_errors_never_trip_even_at_threshold_one() {
        let b = Breaker::new("primary", &settings(1, 100, 1));
        for code in ["23505", "22P02", "22001", "42601", "42P01", "40001"] {
            b.try_acquire().unwrap().failed(&AuditError::from_sqlstate(code.parse().unwrap(), "x"));
            assert_eq!(b.state(), BreakerState::Closed, "{code} tripped the breaker");
        }
        b.try_acquire().unwrap().failed(&AuditError::integrity("hash mismatch"));
        assert_eq!(b.status().consecutive_failures, 0);
        b.try_acquire().unwrap().failed(&AuditError::from_sqlstate("08006".parse().unwrap(), "connection lost"));
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn open_breaker_refuses_with_a_named_circuit_open_error() {
        let b = Breaker::new("replica-2", &settings(2, 60_000, 1));
        for _ in 0..2 {
            b.try_acquire().unwrap().failed(&AuditError::unavailable("down"));
        }
        let err = b.try_acquire().unwrap_err();
        assert!(err.is_circuit_open(), "{err}");
        assert_eq!(err.kind(), audit_core::ErrorKind::CircuitOpen);
        assert_eq!(err.class(), ErrorClass::Unavailable);
        assert!(err.message().contains("replica-2"), "{err}");
        assert_eq!(err.component(), Some("replica-2"));
        let status = b.status();
        assert_eq!((status.state, status.rejections, status.total_failures), (BreakerState::Open, 1, 2));
        let health = status.to_health();
        assert_eq!(health.name, "breaker:replica-2");
        assert_eq!(health.status, HealthState::Unhealthy);
        assert_eq!(health.details["state"], "open");
        assert_eq!(health.details["consecutiveFailures"], 2);
    }

    #[test]
    fn late_outcome_from_before_a_transition_does_not_move_the_state() {
        let b = Breaker::new("primary", &settings(1, 60_000, 1));
        let slow = b.try_acquire().unwrap();
        b.try_acquire().unwrap().failed(&AuditError::unavailable("down"));
        assert_eq!(b.state(), BreakerState::Open);
        slow.succeeded();
        assert_eq!(b.state(), BreakerState::Open, "a success admitted while closed must not close an open breaker");
        b.reset();
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn every_transition_is_counted_and_moves_the_state_gauge() {
        let capture = Capture::default();
        let _recorder = metrics::set_default_local_recorder(&capture);
        let b = Breaker::new("primary", &settings(1, 100, 1));
        b.try_acquire().unwrap().failed(&AuditError::unavailable("down"));
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(b.state(), BreakerState::HalfOpen);
        b.try_acquire().unwrap().succeeded();
        b.try_acquire().unwrap().failed(&AuditError::unavailable("down again"));
        b.reset();

        let to = |s: &str| (s.to_string(), 1.0);
        assert_eq!(
            capture.by_label(TRANSITIONS_COUNTER, "to"),
            [to("open"), to("half_open"), to("closed"), to("open"), to("closed")]
        );
        let primary = |v: f64| ("primary".to_string(), v);
        assert!(capture.by_label(TRANSITIONS_COUNTER, "component").iter().all(|(c, _)| c == "primary"));
        assert_eq!(
            capture.by_label(STATE_GAUGE, "component"),
            [0.0, 1.0, 2.0, 0.0, 1.0, 0.0].map(primary),
            "created closed, then one update per transition"
        );
    }

    #[test]
    fn failure_rate_rejects_sub_second_windows_and_bad_rates() {
        assert!(TripPolicy::failure_rate(0.5, 10, Duration::from_millis(500)).is_err());
        assert!(TripPolicy::failure_rate(1.0, 10, Duration::from_secs(5)).is_err());
        assert!(TripPolicy::failure_rate(-0.1, 10, Duration::from_secs(5)).is_err());
        assert!(TripPolicy::failure_rate(0.5, 10, Duration::from_secs(5)).is_ok());
    }

    #[test]
    fn failure_rate_policy_opens_only_after_a_full_window() {
        // failsafe's rate policy reads the real clock and needs a full window of observations (>= 1 s).
        let s = BreakerSettings {
            trip: TripPolicy::failure_rate(0.5, 4, Duration::from_secs(1)).unwrap(),
            ..settings(1, 60_000, 1)
        };
        let b = Breaker::new("redis", &s);
        let started = std::time::Instant::now();
        let mut failures = 0;
        while b.state() == BreakerState::Closed && failures < 30 {
            b.try_acquire().unwrap().failed(&AuditError::unavailable("down"));
            failures += 1;
            if b.state() == BreakerState::Open {
                assert!(started.elapsed() >= Duration::from_secs(1), "opened before a full window was observed");
            } else {
                std::thread::sleep(Duration::from_millis(150));
            }
        }
        assert_eq!(b.state(), BreakerState::Open, "a 100% failure rate over the window must open the breaker");
        assert_eq!(b.status().consecutive_failures, failures);
    }
}
