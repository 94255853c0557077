//! Group commit: many concurrent `insert` calls share one transaction.
//!
//! Callers enqueue into a bounded channel and wait for their own acknowledgement. One task drains the queue: it
//! takes whatever is waiting (up to `batch_max_events`), waits at most `batch_max_wait_us` for more while the batch is
//! small, flushes the batch in one transaction, then answers every caller. While a flush runs, new callers queue up
//! and form the next batch, so the batch size grows with load by itself. A full queue is refused at once with an
//! *unavailable* error instead of growing memory without bound.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use audit_core::metrics as metric;
use tokio::time::Instant;

use audit_core::AuditError;
use tokio::sync::{mpsc, oneshot};

use crate::ack::CommitLsn;
use crate::writer::{PreparedEvent, WriteOutcome};

/// One event's outcome and the WAL position of the commit that decided it.
pub(crate) type Committed = (WriteOutcome, Option<CommitLsn>);

struct Request {
    event: PreparedEvent,
    reply: oneshot::Sender<Result<Committed, AuditError>>,
    queued_at: Instant,
}

/// Counters of the group committer.
#[derive(Debug, Default)]
pub(crate) struct BatcherStats {
    /// Transactions (flushes) run.
    pub flushes: AtomicU64,
    /// Events flushed.
    pub events: AtomicU64,
    /// Events refused because the queue was full.
    pub refused: AtomicU64,
}

/// Handle to the group-commit task.
#[derive(Clone)]
pub(crate) struct GroupCommitter {
    tx: mpsc::Sender<Request>,
    capacity: usize,
    stats: Arc<BatcherStats>,
}

impl std::fmt::Debug for GroupCommitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommitter").field("capacity", &self.capacity).finish_non_exhaustive()
    }
}

impl GroupCommitter {
    /// Starts the task. `flush` stores one batch and returns one outcome per event, in order, with the WAL
    /// position of its commit.
    pub(crate) fn spawn<F, Fut>(max_events: usize, max_wait: Duration, capacity: usize, flush: F) -> Self
    where
        F: Fn(Vec<PreparedEvent>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(Vec<WriteOutcome>, Option<CommitLsn>), AuditError>> + Send + 'static,
    {
        let (tx, mut rx) = mpsc::channel::<Request>(capacity);
        let stats = Arc::new(BatcherStats::default());
        let task_stats = stats.clone();
        tokio::spawn(async move {
            let mut batch: Vec<Request> = Vec::with_capacity(max_events);
            while let Some(first) = rx.recv().await {
                batch.push(first);
                let deadline = tokio::time::Instant::now() + max_wait;
                while batch.len() < max_events {
                    match rx.try_recv() {
                        Ok(r) => batch.push(r),
                        Err(mpsc::error::TryRecvError::Disconnected) => break,
                        Err(mpsc::error::TryRecvError::Empty) => {
                            match tokio::time::timeout_at(deadline, rx.recv()).await {
                                Ok(Some(r)) => batch.push(r),
                                Ok(None) | Err(_) => break,
                            }
                        }
                    }
                }
                let began = Instant::now();
                let (events, replies): (Vec<_>, Vec<_>) = batch
                    .drain(..)
                    .map(|r| {
                        metrics::histogram!(metric::GROUP_COMMIT_WAIT)
                            .record(began.duration_since(r.queued_at).as_secs_f64());
                        (r.event, r.reply)
                    })
                    .unzip();
                let n = events.len();
                let result = flush(events).await;
                task_stats.flushes.fetch_add(1, Ordering::Relaxed);
                task_stats.events.fetch_add(n as u64, Ordering::Relaxed);
                metrics::histogram!(metric::GROUP_COMMIT_BATCH_SIZE).record(n as f64);
                match result {
                    Ok((outcomes, lsn)) => {
                        for (reply, outcome) in replies.into_iter().zip(outcomes) {
                            let _ = reply.send(Ok((outcome, lsn)));
                        }
                    }
                    Err(e) => {
                        for reply in replies {
                            let _ = reply.send(Err(e.clone()));
                        }
                    }
                }
            }
        });
        Self { tx, capacity, stats }
    }

    /// Enqueues an event and waits until its transaction has committed (or failed).
    pub(crate) async fn submit(&self, event: PreparedEvent) -> Result<Committed, AuditError> {
        let (reply, rx) = oneshot::channel();
        self.tx.try_send(Request { event, reply, queued_at: Instant::now() }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(metric::LOAD_SHED, "reason" => "queue_full").increment(1);
                AuditError::overloaded(format!(
                    "insert queue is full ({} events are waiting for the database); retry later",
                    self.capacity
                ))
            }
            mpsc::error::TrySendError::Closed(_) => AuditError::unavailable("the writer task has stopped"),
        })?;
        rx.await.map_err(|_| AuditError::unavailable("the writer task stopped before acknowledging the event"))?
    }

    /// Events currently waiting.
    pub(crate) fn queued(&self) -> usize {
        self.capacity - self.tx.capacity()
    }

    /// Transactions (flushes) run so far.
    pub(crate) fn flushes(&self) -> u64 {
        self.stats.flushes.load(Ordering::Relaxed)
    }
}
