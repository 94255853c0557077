//! [`ReplicaRouter`]: the replicas' pools, their health, and the choice of the server of each read.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use audit_core::metrics as metric;
use audit_core::{
    AuditError, AuditResult, CommitLsn, ComponentHealth, Consistency, ErrorClass, HealthState, ReadRouter,
    ResiliencePolicy, Routed, SqlState,
};
use audit_pg::{Connector, DatabaseConfig, PgPool, PooledConn, build_pool, checkout, pg_error, redact};
use serde::Serialize;

use crate::config::{ReplicaEndpoint, RouterConfig, Strategy, check_replicas};
use crate::lag::{LsnHistory, lag};
use crate::strategy::{Candidate, Picker, ewma};

/// Weight of a new latency sample in the moving average.
const LATENCY_ALPHA: f64 = 0.2;
/// First pause between two looks at a lagging replica's replay position while a read-your-writes read waits;
/// it doubles up to [`MAX_POLL`].
const FIRST_POLL: Duration = Duration::from_millis(2);
const MAX_POLL: Duration = Duration::from_millis(20);

/// The probe each replica answers every `healthCheckInterval`.
const PROBE_SQL: &str = "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text, \
     EXTRACT(EPOCH FROM clock_timestamp() - pg_last_xact_replay_timestamp())::float8";
/// The replay position, checked on the connection a read-your-writes read will use.
const REPLAY_SQL: &str = "SELECT pg_last_wal_replay_lsn()::text";
/// The primary's current position (the lag reference).
const PRIMARY_SQL: &str = "SELECT pg_current_wal_lsn()::text";

/// Why a replica serves no reads now.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Exclusion {
    /// Not probed yet (only before the first health check has answered).
    NotProbed,
    /// The health probe failed: unreachable, refused, or timed out.
    Down {
        /// What failed.
        error: String,
    },
    /// It is not in recovery: promoted (or a primary listed by mistake). Reads there could miss nothing but it is
    /// no longer a replica of our primary.
    Promoted,
    /// It lags past its bound.
    Lagging {
        /// Seconds behind.
        lag_seconds: Option<f64>,
        /// Unreplayed bytes.
        lag_bytes: Option<u64>,
        /// Its bound, seconds.
        max_lag_seconds: f64,
        /// Its bound in bytes, if any.
        max_lag_bytes: Option<u64>,
    },
    /// A read failed as unavailable since the last probe (it is back once a probe answers).
    ReadFailed {
        /// What failed.
        error: String,
    },
}

impl Exclusion {
    /// The metric label (`down`, `lagging`, `promoted`, `read_failed`, `not_probed`).
    pub fn label(&self) -> &'static str {
        match self {
            Exclusion::NotProbed => "not_probed",
            Exclusion::Down { .. } => "down",
            Exclusion::Promoted => "promoted",
            Exclusion::Lagging { .. } => "lagging",
            Exclusion::ReadFailed { .. } => "read_failed",
        }
    }
}

impl std::fmt::Display for Exclusion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exclusion::NotProbed => f.write_str("not probed yet"),
            Exclusion::Down { error } => write!(f, "down: {error}"),
            Exclusion::Promoted => f.write_str("promoted: not in recovery, no longer a replica"),
            Exclusion::Lagging { lag_seconds, lag_bytes, max_lag_seconds, max_lag_bytes } => {
                let secs = lag_seconds.map_or("unknown".to_string(), |s| format!("{s:.1} s"));
                write!(f, "lagging: {secs} behind (maxLag {max_lag_seconds:.1} s)")?;
                if let (Some(b), Some(max)) = (lag_bytes, max_lag_bytes) {
                    write!(f, ", {b} bytes (maxLagBytes {max})")?;
                }
                Ok(())
            }
            Exclusion::ReadFailed { error } => write!(f, "a read failed: {error}"),
        }
    }
}

/// One replica's state, as `audit-db replicas status`, `health()` and `/ready` show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReplicaStatus {
    /// Its id.
    pub id: String,
    /// Its URL without password.
    pub url: String,
    /// Eligible for reads now.
    pub healthy: bool,
    /// `pg_is_in_recovery()` at the last probe that answered.
    pub in_recovery: Option<bool>,
    /// Unreplayed WAL bytes at the last probe.
    pub lag_bytes: Option<u64>,
    /// Seconds behind at the last probe (0 when it had replayed everything).
    pub lag_seconds: Option<f64>,
    /// Moving average of query and probe latency, ms.
    pub latency_ms: Option<f64>,
    /// Reads running on it now.
    pub in_flight: usize,
    /// Reads it has served.
    pub served: u64,
    /// Its replay position as last seen.
    pub replay_lsn: Option<CommitLsn>,
    /// `weight` (the `weighted` strategy).
    pub weight: u32,
    /// Its lag bound, ms.
    pub max_lag_ms: u64,
    /// Milliseconds since its last probe answered.
    pub last_probe_ms_ago: Option<u64>,
    /// Why it serves no reads (absent while healthy).
    pub excluded: Option<Exclusion>,
}

/// How much of one replica's pool is in use (for `audit_db_pool_connections{pool="replica:<id>"}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplicaPoolUse {
    /// `replica:<id>`.
    pub pool: String,
    /// Open connections.
    pub connections: u32,
    /// Open and idle.
    pub idle: u32,
    /// Most connections the pool opens.
    pub max: u32,
}

/// The router's state, for operators.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouterStatus {
    /// The strategy in use.
    pub strategy: Strategy,
    /// Whether reads fall back to the primary.
    pub fallback_to_master: bool,
    /// The primary's WAL position at the last health check.
    pub primary_lsn: Option<CommitLsn>,
    /// Every replica, in configuration order.
    pub replicas: Vec<ReplicaStatus>,
}

/// What the last probe saw, and why the replica is out (if it is).
#[derive(Debug)]
struct Health {
    in_recovery: Option<bool>,
    lag_bytes: Option<u64>,
    lag_seconds: Option<f64>,
    last_ok: Option<Instant>,
    excluded: Option<Exclusion>,
}

/// One replica: pool, policy, probe connection, and what is known about it.
struct Replica<R> {
    id: Arc<str>,
    url: String,
    weight: u32,
    max_lag: Duration,
    max_lag_bytes: Option<u64>,
    pool: PgPool,
    pool_size: u32,
    acquire_timeout: Duration,
    connector: Connector,
    probe_conn: tokio::sync::Mutex<Option<tokio_postgres::Client>>,
    policy: R,
    /// Hot-path copies of `health`: eligible now, and lag in ms (`u64::MAX`: unknown).
    eligible: AtomicBool,
    lag_ms: AtomicU64,
    /// Highest replay position seen (probes and checks).
    replay_lsn: AtomicU64,
    in_flight: AtomicUsize,
    served: AtomicU64,
    /// Latency moving average, µs, as f64 bits (0: none yet).
    latency_us: AtomicU64,
    health: Mutex<Health>,
}

impl<R> Replica<R> {
    fn latency(&self) -> Option<f64> {
        Some(f64::from_bits(self.latency_us.load(Ordering::Relaxed))).filter(|v| *v > 0.0)
    }

    fn observe_latency(&self, d: Duration) {
        let sample = (d.as_secs_f64() * 1e6).max(1.0);
        let _ = self.latency_us.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
            let prev = Some(f64::from_bits(bits)).filter(|v| *v > 0.0);
            Some(ewma(prev, sample, LATENCY_ALPHA).to_bits())
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the exclusion (or clears it) and tells operators about a change.
    fn set_excluded(&self, excluded: Option<Exclusion>) {
        let mut h = self.lock();
        let was = h.excluded.as_ref().map(Exclusion::label);
        let now = excluded.as_ref().map(Exclusion::label);
        if was != now {
            match &excluded {
                Some(e) => {
                    tracing::warn!(replica = %self.id, reason = %e, "read replica taken out of rotation");
                    metrics::counter!(metric::REPLICA_EXCLUSIONS, "replica" => self.id.to_string(), "reason" => e.label())
                        .increment(1);
                }
                None if was == Some("not_probed") => {
                    tracing::info!(replica = %self.id, "read replica in rotation");
                }
                None => tracing::info!(replica = %self.id, "read replica back in rotation"),
            }
        }
        self.eligible.store(excluded.is_none(), Ordering::Release);
        metrics::gauge!(metric::REPLICA_HEALTHY, "replica" => self.id.to_string()).set(if excluded.is_none() {
            1.0
        } else {
            0.0
        });
        h.excluded = excluded;
    }

    fn status(&self) -> ReplicaStatus {
        let h = self.lock();
        ReplicaStatus {
            id: self.id.to_string(),
            url: self.url.clone(),
            healthy: h.excluded.is_none(),
            in_recovery: h.in_recovery,
            lag_bytes: h.lag_bytes,
            lag_seconds: h.lag_seconds,
            latency_ms: self.latency().map(|us| us / 1e3),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            served: self.served.load(Ordering::Relaxed),
            replay_lsn: Some(self.replay_lsn.load(Ordering::Relaxed)).filter(|v| *v > 0).map(CommitLsn),
            weight: self.weight,
            max_lag_ms: self.max_lag.as_millis() as u64,
            last_probe_ms_ago: h.last_ok.map(|t| t.elapsed().as_millis() as u64),
            excluded: h.excluded.clone(),
        }
    }
}

/// Counts a read in flight on a replica for as long as it lives.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn enter(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

struct Shared<R> {
    config: RouterConfig,
    primary: Connector,
    primary_conn: tokio::sync::Mutex<Option<tokio_postgres::Client>>,
    history: Mutex<LsnHistory>,
    replicas: Vec<Replica<R>>,
    picker: Picker,
    probe_timeout: Duration,
}

/// Routes reads to streaming replicas (the seed's Read Replica Router, for real): each replica has its own pool,
/// resilience policy (breaker `replica:<id>`, deadline) and health; a background task probes every replica every
/// `healthCheckInterval` (recovery state, replay position, lag in bytes and seconds against the primary, latency)
/// and takes out those that are down, lag past their bound or were promoted, putting them back when they recover.
/// Each read goes to a replica the read's [`Consistency`] allows, chosen by the [`Strategy`]; a replica that fails
/// mid-read is left for another one or the primary, so a replica going away fails no read.
///
/// Implements [`ReadRouter`] for audit-pg's pooled connections; `audit-server` hands it to the client. Cheap to
/// clone; the health task stops when the last clone is dropped.
pub struct ReplicaRouter<R> {
    shared: Arc<Shared<R>>,
}

impl<R> Clone for ReplicaRouter<R> {
    fn clone(&self) -> Self {
        Self { shared: self.shared.clone() }
    }
}

impl<R> std::fmt::Debug for ReplicaRouter<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.shared.replicas.iter().map(|r| &*r.id).collect();
        f.debug_struct("ReplicaRouter")
            .field("strategy", &self.shared.picker.strategy())
            .field("replicas", &ids)
            .finish_non_exhaustive()
    }
}

impl<R: ResiliencePolicy> ReplicaRouter<R> {
    /// Builds a pool per replica (connections as the primary's: `database`'s timeouts, TLS settings and pool size,
    /// component `replica:<id>`), probes every replica once, and starts the health task. `primary` is the
    /// primary's connector (its WAL position is the lag reference). A replica that does not answer does not fail
    /// construction: it starts excluded. Invalid URLs and ids fail, naming the replica.
    pub async fn start(
        config: RouterConfig,
        database: &DatabaseConfig,
        primary: Connector,
        replicas: Vec<(ReplicaEndpoint, R)>,
    ) -> AuditResult<Self> {
        config.check().map_err(|(k, why)| AuditError::invalid(format!("{k}: {why}")))?;
        let endpoints: Vec<ReplicaEndpoint> = replicas.iter().map(|(e, _)| e.clone()).collect();
        check_replicas(&endpoints).map_err(|(k, why)| AuditError::invalid(format!("{k}: {why}")))?;
        let pool_options = database.pool_options();
        let mut built = Vec::with_capacity(replicas.len());
        for (endpoint, policy) in replicas {
            let connector = Connector::new(&endpoint.url, database.connect_options(&endpoint.component()))
                .map_err(|e| e.context(format!("read replica {}", endpoint.id)))?;
            let pool = build_pool(connector.clone(), &pool_options)?;
            built.push(Replica {
                id: Arc::from(endpoint.id.as_str()),
                url: redact(&endpoint.url),
                weight: endpoint.weight,
                max_lag: endpoint.max_lag(&config),
                max_lag_bytes: endpoint.max_lag_bytes,
                pool,
                pool_size: pool_options.max_connections,
                acquire_timeout: pool_options.acquire_timeout,
                connector,
                probe_conn: tokio::sync::Mutex::new(None),
                policy,
                eligible: AtomicBool::new(false),
                lag_ms: AtomicU64::new(u64::MAX),
                replay_lsn: AtomicU64::new(0),
                in_flight: AtomicUsize::new(0),
                served: AtomicU64::new(0),
                latency_us: AtomicU64::new(0),
                health: Mutex::new(Health {
                    in_recovery: None,
                    lag_bytes: None,
                    lag_seconds: None,
                    last_ok: None,
                    excluded: Some(Exclusion::NotProbed),
                }),
            });
        }
        // A probe is one short statement; it gets the connect timeout to open its connection, plus a second.
        let probe_timeout = Duration::from_millis(database.connection_timeout).saturating_add(Duration::from_secs(1));
        let shared = Arc::new(Shared {
            picker: Picker::new(config.strategy, built.len()),
            config,
            primary,
            primary_conn: tokio::sync::Mutex::new(None),
            history: Mutex::new(LsnHistory::default()),
            replicas: built,
            probe_timeout,
        });
        if !shared.replicas.is_empty() {
            // The primary's position first, so that the first lag figures have their reference.
            shared.sample_primary().await;
            shared.probe_all().await;
            spawn_health_task(Arc::downgrade(&shared));
            tracing::info!(
                replicas = shared.replicas.len(),
                strategy = %shared.config.strategy,
                fallback_to_master = shared.config.fallback_to_master,
                "read replica routing on"
            );
        }
        Ok(Self { shared })
    }

    /// A router without replicas (every read goes to the primary), for wiring that always names this type.
    pub fn without_replicas(primary: Connector) -> Self {
        let config = RouterConfig::default();
        Self {
            shared: Arc::new(Shared {
                picker: Picker::new(config.strategy, 0),
                config,
                primary,
                primary_conn: tokio::sync::Mutex::new(None),
                history: Mutex::new(LsnHistory::default()),
                replicas: Vec::new(),
                probe_timeout: Duration::from_secs(1),
            }),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &RouterConfig {
        &self.shared.config
    }

    /// Every replica's state now.
    pub fn status(&self) -> RouterStatus {
        let s = &self.shared;
        RouterStatus {
            strategy: s.picker.strategy(),
            fallback_to_master: s.config.fallback_to_master,
            primary_lsn: s.history.lock().unwrap_or_else(|p| p.into_inner()).latest().map(CommitLsn),
            replicas: s.replicas.iter().map(Replica::status).collect(),
        }
    }

    /// Connections of each replica's pool now.
    pub fn pools(&self) -> Vec<ReplicaPoolUse> {
        self.shared
            .replicas
            .iter()
            .map(|r| {
                let state = r.pool.state();
                ReplicaPoolUse {
                    pool: format!("replica:{}", r.id),
                    connections: state.connections,
                    idle: state.idle_connections,
                    max: r.pool_size,
                }
            })
            .collect()
    }

    /// Probes every replica now (the health task does it every `healthCheckInterval` anyway).
    pub async fn refresh(&self) {
        self.shared.probe_all().await;
    }

    /// The seed's `router.route(fn)`: runs `op` on a replica chosen by the strategy (any replica within its lag
    /// bound), or returns `Routed::Primary` when none may serve and falling back is on.
    pub async fn route<T, F, Fut>(&self, op: F) -> AuditResult<Routed<T>>
    where
        T: Send + 'static,
        F: Fn(PooledConn) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = AuditResult<T>> + Send + 'static,
    {
        self.shared.read(Consistency::Eventual, op).await
    }
}

fn spawn_health_task<R: ResiliencePolicy>(shared: Weak<Shared<R>>) {
    let Some(interval) = shared.upgrade().map(|s| s.config.interval()) else { return };
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(shared) = shared.upgrade() else { return };
            shared.probe_all().await;
        }
    });
}

impl<R: ResiliencePolicy> Shared<R> {
    /// One health round: the primary's position and every replica, all at once (a primary that does not answer
    /// must not delay the replicas' health — they matter most then; lag is computed against the newest position
    /// known).
    async fn probe_all(&self) {
        let replicas = futures::future::join_all(self.replicas.iter().map(|r| self.probe(r)));
        tokio::join!(self.sample_primary(), replicas);
    }

    /// Records the primary's WAL position (kept from earlier rounds while the primary does not answer: with no new
    /// WAL, a replica that replayed it all is not behind).
    async fn sample_primary(&self) {
        let result = tokio::time::timeout(self.probe_timeout, async {
            let mut slot = self.primary_conn.lock().await;
            let lsn = query_lsn(&self.primary, &mut slot, PRIMARY_SQL).await;
            if lsn.is_err() {
                *slot = None;
            }
            lsn
        })
        .await;
        match result {
            Ok(Ok(Some(lsn))) => {
                self.history.lock().unwrap_or_else(|p| p.into_inner()).record(Instant::now(), lsn.0);
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "primary WAL position unknown this round"),
            Err(_) => tracing::debug!("primary WAL position unknown this round (no answer in time)"),
        }
    }

    /// Probes one replica and decides whether it may serve reads.
    async fn probe(&self, r: &Replica<R>) {
        let started = Instant::now();
        let result = tokio::time::timeout(self.probe_timeout, async {
            let mut slot = r.probe_conn.lock().await;
            let result = probe_once(&r.connector, &mut slot).await;
            if result.is_err() {
                *slot = None;
            }
            result
        })
        .await
        .unwrap_or_else(|_| {
            Err(AuditError::unavailable(format!("no answer within {} ms", self.probe_timeout.as_millis())))
        });
        let (in_recovery, replay, replay_age) = match result {
            Ok(p) => p,
            Err(e) => {
                r.set_excluded(Some(Exclusion::Down { error: e.message().to_string() }));
                r.lag_ms.store(u64::MAX, Ordering::Relaxed);
                return;
            }
        };
        r.observe_latency(started.elapsed());
        if let Some(l) = replay {
            r.replay_lsn.fetch_max(l, Ordering::Relaxed);
        }
        let lag = {
            let history = self.history.lock().unwrap_or_else(|p| p.into_inner());
            lag(&history, replay, replay_age, Instant::now())
        };
        let label = r.id.to_string();
        if let Some(b) = lag.bytes {
            metrics::gauge!(metric::REPLICA_LAG_BYTES, "replica" => label.clone()).set(b as f64);
        }
        if let Some(s) = lag.seconds {
            metrics::gauge!(metric::REPLICA_LAG_SECONDS, "replica" => label).set(s);
        }
        r.lag_ms.store(lag.seconds.map_or(u64::MAX, |s| (s * 1e3) as u64), Ordering::Relaxed);
        {
            let mut h = r.lock();
            h.in_recovery = Some(in_recovery);
            h.lag_bytes = lag.bytes;
            h.lag_seconds = lag.seconds;
            h.last_ok = Some(Instant::now());
        }
        let too_far = lag.seconds.is_none_or(|s| s > r.max_lag.as_secs_f64())
            || matches!((lag.bytes, r.max_lag_bytes), (Some(b), Some(max)) if b > max);
        let excluded = if !in_recovery {
            Some(Exclusion::Promoted)
        } else if too_far {
            Some(Exclusion::Lagging {
                lag_seconds: lag.seconds,
                lag_bytes: lag.bytes,
                max_lag_seconds: r.max_lag.as_secs_f64(),
                max_lag_bytes: r.max_lag_bytes,
            })
        } else {
            None
        };
        r.set_excluded(excluded);
    }

    /// The replicas a read may use now (eligible, within `max_stale`, not yet tried).
    fn candidates(
        &self,
        max_stale: Option<Duration>,
        tried: &[usize],
        hopeful_within: Option<Duration>,
    ) -> Vec<Candidate> {
        self.replicas
            .iter()
            .enumerate()
            .filter(|(i, r)| r.eligible.load(Ordering::Acquire) && !tried.contains(i))
            .filter(|(_, r)| {
                let lag_ms = r.lag_ms.load(Ordering::Relaxed);
                let within = |d: Duration| lag_ms != u64::MAX && lag_ms <= d.as_millis() as u64;
                max_stale.is_none_or(within) && hopeful_within.is_none_or(within)
            })
            .map(|(index, r)| Candidate {
                index,
                in_flight: r.in_flight.load(Ordering::Relaxed),
                latency_us: r.latency(),
                weight: r.weight,
            })
            .collect()
    }

    /// See [`ReadRouter::read`].
    async fn read<T, F, Fut>(&self, consistency: Consistency, op: F) -> AuditResult<Routed<T>>
    where
        T: Send + 'static,
        F: Fn(PooledConn) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = AuditResult<T>> + Send + 'static,
    {
        let (min_lsn, max_stale) = match consistency {
            Consistency::Strong => return Ok(Routed::Primary),
            Consistency::ReadYourWrites(lsn) => (lsn.map_or(0, |l| l.0), None),
            Consistency::BoundedStaleness(max) => (0, Some(max)),
            Consistency::Eventual => (0, None),
        };
        let wait = Duration::from_millis(self.config.read_your_writes_wait_ms);
        let started = Instant::now();
        let mut tried: Vec<usize> = Vec::new();
        let mut poll = FIRST_POLL;
        loop {
            let candidates = self.candidates(max_stale, &tried, None);
            if candidates.is_empty() {
                break;
            }
            let ready: Vec<Candidate> = candidates
                .iter()
                .copied()
                .filter(|c| self.replicas[c.index].replay_lsn.load(Ordering::Acquire) >= min_lsn)
                .collect();
            // Caught up as far as we know: run there. Otherwise look at the position on the connection the read
            // would use — only on replicas that can catch up within the wait, only while it lasts.
            let (pool, check) = if !ready.is_empty() {
                (ready, None)
            } else {
                let left = wait.saturating_sub(started.elapsed());
                let hopeful = self.candidates(max_stale, &tried, Some(wait));
                if hopeful.is_empty() || left.is_zero() {
                    break;
                }
                (hopeful, Some(min_lsn))
            };
            let Some(index) = self.picker.pick(&pool) else { break };
            let replica = &self.replicas[index];
            match self.run_on(replica, check, &op).await {
                Ok(Some(value)) => {
                    replica.served.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!(metric::REPLICA_ROUTED_QUERIES, "target" => replica.id.to_string()).increment(1);
                    if check.is_some() {
                        tracing::debug!(
                            replica = %replica.id,
                            waited_ms = started.elapsed().as_millis() as u64,
                            "read-your-writes read waited for the replica to replay its position"
                        );
                    }
                    return Ok(Routed::Replica { id: replica.id.clone(), value });
                }
                Ok(None) => {
                    let left = wait.saturating_sub(started.elapsed());
                    tokio::time::sleep(poll.min(left)).await;
                    poll = (poll * 2).min(MAX_POLL);
                }
                Err(e) if is_replica_failure(&e) => {
                    tracing::debug!(replica = %replica.id, error = %e, "read failed on a replica; trying elsewhere");
                    if e.class() == ErrorClass::Unavailable {
                        replica.set_excluded(Some(Exclusion::ReadFailed { error: e.message().to_string() }));
                    }
                    tried.push(index);
                }
                Err(e) => return Err(e),
            }
        }
        if self.config.fallback_to_master {
            return Ok(Routed::Primary);
        }
        Err(self.unavailable(consistency))
    }

    /// Runs `op` on a connection of `r` under its policy; with `min_lsn`, first checks the replica's replay position
    /// on that connection and answers `None` (without running `op`) when it is behind.
    async fn run_on<T, F, Fut>(&self, r: &Replica<R>, min_lsn: Option<u64>, op: &F) -> AuditResult<Option<T>>
    where
        T: Send + 'static,
        F: Fn(PooledConn) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = AuditResult<T>> + Send + 'static,
    {
        let _in_flight = InFlight::enter(&r.in_flight);
        let started = Instant::now();
        let result = r
            .policy
            .execute(move || async move {
                let conn = fresh_connection(r).await?;
                if let Some(min) = min_lsn {
                    let row = conn
                        .query_one(REPLAY_SQL, &[])
                        .await
                        .map_err(|e| pg_error(e, "reading the replay position"))?;
                    let replayed = parse_lsn(row.get::<_, Option<String>>(0))?;
                    match replayed {
                        Some(l) => {
                            r.replay_lsn.fetch_max(l, Ordering::AcqRel);
                            if l < min {
                                return Ok(None);
                            }
                        }
                        // Not in recovery any more: promoted since the last probe.
                        None => {
                            return Err(AuditError::unavailable("the replica is not in recovery (promoted)"));
                        }
                    }
                }
                op(conn).await.map(Some)
            })
            .await;
        if matches!(result, Ok(Some(_))) {
            r.observe_latency(started.elapsed());
        }
        result.map_err(|e| e.or_component(&format!("replica:{}", r.id)))
    }

    /// The error of a read no replica may serve with falling back off: each replica's state.
    fn unavailable(&self, consistency: Consistency) -> AuditError {
        let states: Vec<String> = self
            .replicas
            .iter()
            .map(|r| {
                let s = r.status();
                let why = match (&s.excluded, consistency) {
                    (Some(e), _) => e.to_string(),
                    (None, Consistency::ReadYourWrites(Some(lsn))) if s.replay_lsn.is_none_or(|l| l < lsn) => {
                        format!(
                            "has not replayed {lsn} within {} ms (replayed {})",
                            self.config.read_your_writes_wait_ms,
                            s.replay_lsn.map_or("nothing".to_string(), |l| l.to_string())
                        )
                    }
                    (None, Consistency::BoundedStaleness(max)) => format!(
                        "lags {} (more than {} ms)",
                        s.lag_seconds.map_or("an unknown time".to_string(), |l| format!("{l:.1} s")),
                        max.as_millis()
                    ),
                    (None, _) => "failed this read".to_string(),
                };
                format!("{}: {why}", s.id)
            })
            .collect();
        let list = if states.is_empty() { "no replica is configured".to_string() } else { states.join("; ") };
        AuditError::unavailable(format!(
            "no read replica can serve a {consistency} read and replicaRouter.fallbackToMaster is off: {list}"
        ))
        .with_component("replicas")
    }
}

/// A pooled connection that is still open. Connections that were idle in the pool while the replica restarted are
/// closed by now; they are dropped (the pool discards closed connections) instead of failing the read and taking a
/// replica that is back out of rotation again.
async fn fresh_connection<R>(r: &Replica<R>) -> AuditResult<PooledConn> {
    let mut stale = 0;
    loop {
        let conn = checkout(&r.pool, r.acquire_timeout).await?;
        if !conn.is_closed() || stale > r.pool.state().connections {
            return Ok(conn);
        }
        stale += 1;
    }
}

/// Whether a failed read should be tried on another server: the replica is unavailable (down, shutting down,
/// breaker open, no connection) or the read hit a transient conflict (a standby cancels queries that conflict
/// with replay, SQLSTATE 40001). A statement timeout is the query's own cost, not the replica's: it is returned.
fn is_replica_failure(e: &AuditError) -> bool {
    e.class().is_retryable() && e.sqlstate() != Some(SqlState::QUERY_CANCELED)
}

fn parse_lsn(text: Option<String>) -> AuditResult<Option<u64>> {
    text.map(|t| t.parse::<CommitLsn>().map(|l| l.0).map_err(AuditError::permanent)).transpose()
}

/// Runs `sql` (one LSN column) on the kept connection, opening it first if needed.
async fn query_lsn(
    connector: &Connector,
    slot: &mut Option<tokio_postgres::Client>,
    sql: &str,
) -> AuditResult<Option<CommitLsn>> {
    let client = connection(connector, slot).await?;
    let row = client.query_one(sql, &[]).await.map_err(|e| pg_error(e, "reading a WAL position"))?;
    Ok(parse_lsn(row.get::<_, Option<String>>(0))?.map(CommitLsn))
}

/// The kept connection, opened (again) when absent or closed.
async fn connection<'a>(
    connector: &Connector,
    slot: &'a mut Option<tokio_postgres::Client>,
) -> AuditResult<&'a tokio_postgres::Client> {
    if slot.as_ref().is_none_or(tokio_postgres::Client::is_closed) {
        *slot = Some(connector.connect().await?);
    }
    Ok(slot.as_ref().expect("just connected"))
}

/// One probe: (in recovery, replay position, seconds since the last replayed commit).
async fn probe_once(
    connector: &Connector,
    slot: &mut Option<tokio_postgres::Client>,
) -> AuditResult<(bool, Option<u64>, Option<f64>)> {
    let client = connection(connector, slot).await?;
    let row = client.query_one(PROBE_SQL, &[]).await.map_err(|e| pg_error(e, "probing a read replica"))?;
    Ok((row.get(0), parse_lsn(row.get(1))?, row.get(2)))
}

impl<R: ResiliencePolicy> ReadRouter<PooledConn> for ReplicaRouter<R> {
    fn has_replicas(&self) -> bool {
        !self.shared.replicas.is_empty()
    }

    fn read<T, F, Fut>(&self, consistency: Consistency, op: F) -> impl Future<Output = AuditResult<Routed<T>>> + Send
    where
        T: Send + 'static,
        F: Fn(PooledConn) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = AuditResult<T>> + Send + 'static,
    {
        let shared = self.shared.clone();
        async move { shared.read(consistency, op).await }
    }

    fn health(&self) -> Vec<ComponentHealth> {
        self.shared
            .replicas
            .iter()
            .map(|r| {
                let s = r.status();
                let status = match &s.excluded {
                    None => HealthState::Healthy,
                    Some(Exclusion::Lagging { .. }) => HealthState::Degraded,
                    Some(_) => HealthState::Unhealthy,
                };
                let mut details = serde_json::to_value(&s).unwrap_or_default();
                if let (Some(obj), Some(e)) = (details.as_object_mut(), &s.excluded) {
                    obj.insert("why".into(), serde_json::Value::String(e.to_string()));
                }
                ComponentHealth { name: format!("replica:{}", s.id), status, details }
            })
            .collect()
    }
}
