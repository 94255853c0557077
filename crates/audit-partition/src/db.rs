//! Where the manager's statements run, and the one retry of DDL behind a lock timeout.
//!
//! Every statement runs through [`PartitionManager::run`]: under the manager's [`ResiliencePolicy`] (deadline,
//! breaker), on a connection leased for that one attempt — from the manager's small pool for on-demand work, or
//! the dedicated [`Session`] of a maintenance run, where the session itself matters (`DETACH … CONCURRENTLY`
//! cannot run in a transaction, the archive reads one snapshot through a cursor, and data-volume statements run
//! without the pool's `statement_timeout`).

use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::time::Duration;

use audit_core::{AuditError, AuditResult, ResiliencePolicy, RetrySchedule, SqlState};
use audit_pg::{ConnectOptions, PooledConn, checkout};
use backon::RetryableWithContext;
use tokio::sync::{Mutex, MutexGuard};
use tokio_postgres::Client;

use crate::manager::PartitionManager;
use audit_core::metrics::PARTITION_LOCK_TIMEOUTS as LOCK_TIMEOUTS;

/// A boxed, sendable future (see [`PartitionManager::run`]).
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Lock-timeout retries of one DDL step: 6 attempts, full-jitter pauses from 100 ms doubling up to 3 s.
pub(crate) fn ddl_retry_schedule() -> RetrySchedule {
    RetrySchedule::new(6, Duration::from_millis(100), Duration::from_secs(3))
}

/// Whether our `lock_timeout` fired (the only failure a DDL step retries by itself).
pub(crate) fn is_lock_timeout(e: &AuditError) -> bool {
    e.sqlstate() == Some(SqlState::LOCK_NOT_AVAILABLE)
}

/// Runs `step` on `ctx` (a connection, or anything the step needs mutably) again while it fails with
/// `lock_not_available`, pausing as `schedule` says. `what` names the step in logs.
pub(crate) async fn retry_lock_timeouts<C, T, F, Fut>(
    schedule: &RetrySchedule,
    what: &str,
    ctx: C,
    step: F,
) -> AuditResult<T>
where
    F: FnMut(C) -> Fut,
    Fut: Future<Output = (C, AuditResult<T>)>,
{
    let (_, result) = step
        .retry(schedule.delays(rand::random()))
        .context(ctx)
        .when(is_lock_timeout)
        .notify(|e: &AuditError, pause: Duration| {
            tracing::info!(what, pause_ms = pause.as_millis() as u64, error = %e, "lock timeout; retrying");
            metrics::counter!(LOCK_TIMEOUTS).increment(1);
        })
        .await;
    result
}

/// A dedicated connection of one maintenance run (see the module docs). The mutex only hands out `&mut Client`
/// (for transactions) through shared references; one run uses it from one task.
pub(crate) struct Session {
    client: Mutex<Client>,
}

/// Where one statement runs.
#[derive(Clone, Copy)]
pub(crate) enum On<'s> {
    /// A connection of the manager's pool.
    Pool,
    /// A maintenance run's own connection.
    Session(&'s Session),
}

/// A connection leased for one attempt of one operation.
pub(crate) enum Lease<'s> {
    /// Checked out of the pool; goes back when dropped. (Boxed: a pooled connection is large, a lock guard is a
    /// pointer.)
    Pooled(Box<PooledConn>),
    /// The maintenance session, locked for this attempt.
    Session(MutexGuard<'s, Client>),
}

impl Deref for Lease<'_> {
    type Target = Client;

    fn deref(&self) -> &Client {
        match self {
            Lease::Pooled(c) => c,
            Lease::Session(c) => c,
        }
    }
}

impl DerefMut for Lease<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        match self {
            Lease::Pooled(c) => c,
            Lease::Session(c) => c,
        }
    }
}

impl<R: ResiliencePolicy> PartitionManager<R> {
    /// Runs `op` under the policy, leasing a connection `on` for each attempt. Boxed: the `Send` check happens
    /// here, where every lifetime is known, instead of in each caller's future (rustc cannot always prove it
    /// there for higher-ranked closures).
    pub(crate) fn run<'a, 's: 'a, T, F, Fut>(&'a self, on: On<'s>, op: F) -> BoxFuture<'a, AuditResult<T>>
    where
        T: Send + 'a,
        F: Fn(Lease<'s>) -> Fut + Send + Sync + 'a,
        Fut: Future<Output = AuditResult<T>> + Send + 'a,
    {
        Box::pin(async move {
            let (pool, wait, op) = (&self.pool, self.acquire_timeout, &op);
            self.policy
                .execute(move || async move {
                    let lease = match on {
                        On::Pool => Lease::Pooled(Box::new(checkout(pool, wait).await?)),
                        On::Session(s) => Lease::Session(s.client.lock().await),
                    };
                    op(lease).await
                })
                .await
        })
    }

    /// Opens a dedicated connection through the policy: `application_name` says what it is for, and it has no
    /// `statement_timeout` (DDL waits under `lock_timeout`; the policy's deadline bounds each call).
    pub(crate) fn dedicated<'a>(&'a self, application_name: &str) -> BoxFuture<'a, AuditResult<Client>> {
        let connector = self.connector.with_options(ConnectOptions {
            statement_timeout: None,
            application_name: application_name.into(),
            ..self.connector.options().clone()
        });
        Box::pin(async move {
            let connector = &connector;
            self.guarded(move || connector.connect()).await
        })
    }

    /// Runs `op` under the policy without leasing a connection (for the dedicated connections), boxed like
    /// [`Self::run`].
    pub(crate) fn guarded<'a, T, F, Fut>(&'a self, op: F) -> BoxFuture<'a, AuditResult<T>>
    where
        T: Send + 'a,
        F: FnMut() -> Fut + Send + 'a,
        Fut: Future<Output = AuditResult<T>> + Send + 'a,
    {
        Box::pin(self.policy.execute(op))
    }

    /// A maintenance session with the configured session-level `lock_timeout` (for `DETACH … CONCURRENTLY`,
    /// which cannot take `SET LOCAL`).
    pub(crate) async fn open_session(&self) -> AuditResult<Session> {
        let client = self.dedicated("audit-partition maintenance").await?;
        let session = Session { client: Mutex::new(client) };
        let sql = self.set_lock_timeout();
        let sql = sql.as_str();
        self.run(On::Session(&session), |c| async move {
            c.batch_execute(sql).await.map_err(|e| audit_pg::pg_error(e, "setting lock_timeout"))
        })
        .await?;
        Ok(session)
    }

    /// Runs a batch of statements (one implicit transaction when there are several) on `on`, retrying lock
    /// timeouts. `what` names it in errors and logs.
    pub(crate) async fn batch(&self, on: On<'_>, what: &str, sql: &str) -> AuditResult<()> {
        let schedule = &self.ddl_retry;
        self.run(on, |c| async move {
            retry_lock_timeouts(schedule, what, &*c, |c: &Client| async move {
                (c, c.batch_execute(sql).await.map_err(|e| audit_pg::pg_error(e, what)))
            })
            .await
        })
        .await
    }
}
