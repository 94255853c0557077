//! Invalidation: after a commit, replace the generation tokens of what was written, and keep re-sending the
//! replacements Redis did not get.
//!
//! # Design of the re-sending (the "pending invalidations")
//!
//! A bump that cannot reach Redis is a freshness debt: this process is safe at once (its in-process counters were
//! bumped first), but other processes that still reach Redis may serve answers missing the write until the bump
//! lands (the known limit in `docs/caching.md`). So:
//!
//! * **What is owed** is kept in [`Pending`]: each generation key with the *ticket* of its latest queueing. A
//!   delivery attempt snapshots (key, ticket) pairs and, once Redis acknowledged them, removes only the pairs whose
//!   ticket is unchanged. A key queued again while an attempt is in flight (a later commit) keeps its debt, because
//!   the attempt's write may predate that commit.
//! * **Memory is bounded**: past `max_pending_invalidations` keys the individual keys are dropped and the debt
//!   becomes "replace every generation under the prefix" (a `SCAN` + `UNLINK` of the generation keys once Redis
//!   answers). Deleting a token is as good as bumping it — readers recreate it with a fresh random value, so no
//!   answer stored under the old one matches again — it only costs other processes their cached answers.
//! * **Retrying** is the workspace's one retry primitive: `backon` over the cache's [`audit_core::RetrySchedule`]
//!   (`CacheOptions::invalidation_retry`, effectively unbounded attempts with jittered, capped delays) in one
//!   background task per cache, started when the first debt is queued and ending when nothing is owed. Each attempt
//!   goes through [`Remote::run`], i.e. through the cache's `ResiliencePolicy`: while a breaker is open an attempt
//!   is refused at once and the schedule's next delay follows; there is no separate breaker here. The task holds
//!   the cache weakly, so dropping the cache stops it.
//! * A successful `clear()` pays every debt queued before it began (it removed every token).
//! * Debts live in this process's memory: if it exits first, other processes may miss those writes until their
//!   cached answers expire (`defaultTTL`), as `docs/caching.md` states for writes made while Redis is down.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};

use audit_core::{AuditError, AuditResult, ResiliencePolicy, WriteMark};
use backon::Retryable as _;
use tracing::{debug, warn};

use crate::TieredCache;
use crate::generation::{bumps_for, new_token};
use crate::remote::{Attempt, Call, Remote};

/// Generation keys whose bump Redis has not acknowledged yet.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    /// Key → ticket of its latest queueing.
    keys: BTreeMap<String, u64>,
    /// Set once the key bound was passed: every generation must be replaced (ticket of the latest queueing).
    all: Option<u64>,
    /// Last ticket handed out.
    tickets: u64,
    /// Whether a retrier task is running (changed only under the same lock as the debts, so none is orphaned).
    retrier: bool,
}

/// What one delivery attempt sends.
#[derive(Debug, PartialEq)]
pub(crate) enum Work {
    /// Nothing is owed.
    Idle,
    /// Replace every generation; settle debts up to this ticket.
    All(u64),
    /// These keys, by hash-tag group, with their tickets.
    Keys(Vec<Vec<(String, u64)>>),
}

impl Pending {
    /// Queues `keys`; past `max_keys` keys the debt becomes "every generation".
    pub(crate) fn add(&mut self, keys: impl IntoIterator<Item = String>, max_keys: usize) {
        self.tickets += 1;
        let ticket = self.tickets;
        if self.all.is_some() {
            self.all = Some(ticket);
            return;
        }
        for k in keys {
            self.keys.insert(k, ticket);
        }
        if self.keys.len() > max_keys {
            self.keys.clear();
            self.all = Some(ticket);
        }
    }

    /// A snapshot of what is owed now.
    pub(crate) fn work(&self) -> Work {
        if let Some(t) = self.all {
            return Work::All(t);
        }
        if self.keys.is_empty() {
            return Work::Idle;
        }
        let mut groups: BTreeMap<&str, Vec<(String, u64)>> = BTreeMap::new();
        for (k, t) in &self.keys {
            groups.entry(group_id(k)).or_default().push((k.clone(), *t));
        }
        Work::Keys(groups.into_values().collect())
    }

    /// Forgets the debts that `delivered` paid: a key only if it was not queued again since the snapshot.
    pub(crate) fn settle(&mut self, delivered: impl IntoIterator<Item = (String, u64)>) {
        for (k, t) in delivered {
            if self.keys.get(&k) == Some(&t) {
                self.keys.remove(&k);
            }
        }
    }

    /// Forgets every debt queued up to `ticket` (all generations were replaced after it).
    pub(crate) fn settle_up_to(&mut self, ticket: u64) {
        if self.all.is_some_and(|t| t <= ticket) {
            self.all = None;
        }
        self.keys.retain(|_, t| *t > ticket);
    }

    /// The latest ticket handed out (debts queued so far).
    pub(crate) fn last_ticket(&self) -> u64 {
        self.tickets
    }

    /// Keys owed individually.
    pub(crate) fn keys_len(&self) -> usize {
        self.keys.len()
    }

    /// Whether every generation must be replaced.
    pub(crate) fn owes_everything(&self) -> bool {
        self.all.is_some()
    }

    fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.all.is_none()
    }
}

/// The part of a generation key naming its hash-tag group (prefix and tag): keys of one group share a cluster slot.
fn group_id(key: &str) -> &str {
    key.rfind(":gen:").map_or(key, |i| &key[..i])
}

/// What a bump achieved.
pub(crate) struct BumpOutcome {
    /// Indices of the groups Redis did not acknowledge.
    failed: Vec<usize>,
    /// The last error seen.
    error: Option<AuditError>,
}

impl<P: ResiliencePolicy> TieredCache<P> {
    /// `QueryCache::invalidate`: bumps the in-process counters first (this process reads its own writes even if
    /// Redis is gone), then publishes the bumps to Redis.
    pub(crate) async fn invalidate_writes(&self, writes: &[WriteMark]) {
        if !self.enabled {
            return;
        }
        let groups = bumps_for(&self.prefix, writes);
        if groups.is_empty() {
            return;
        }
        self.locals.bump(groups.iter().flatten());
        if let Some(remote) = &self.remote {
            remote.publish(groups).await;
        }
    }
}

impl<P: ResiliencePolicy> Remote<P> {
    /// Replaces the tokens of `groups`; what Redis does not acknowledge is owed and re-sent in the background.
    pub(crate) async fn publish(self: &Arc<Self>, groups: Vec<Vec<String>>) {
        let outcome = self.bump(&groups).await;
        if outcome.failed.is_empty() {
            return;
        }
        let owed_before = !self.pending.lock().unwrap_or_else(|p| p.into_inner()).is_empty();
        let error = outcome.error.map(|e| e.to_string()).unwrap_or_default();
        if owed_before {
            debug!(groups = outcome.failed.len(), %error, "invalidations queued for redis");
        } else {
            warn!(
                groups = outcome.failed.len(),
                %error,
                "could not publish invalidations to redis; other processes may serve stale answers until it is reachable"
            );
        }
        let failed = groups.into_iter().enumerate().filter(|(i, _)| outcome.failed.contains(i)).map(|(_, g)| g);
        self.owe(failed.flatten());
    }

    /// Writes a fresh random token to every key of `groups`: one pipeline in single-server mode, one per hash-tag
    /// group (one slot each) in cluster mode.
    async fn bump(&self, groups: &[Vec<String>]) -> BumpOutcome {
        let batches: Vec<Vec<usize>> =
            if self.cluster { (0..groups.len()).map(|i| vec![i]).collect() } else { vec![(0..groups.len()).collect()] };
        let mut outcome = BumpOutcome { failed: Vec::new(), error: None };
        for batch in batches {
            let keys = batch.iter().flat_map(|&i| &groups[i]);
            if let Err(e) = self.call::<()>("bump", self.set_fresh_tokens(keys)).await {
                outcome.failed.extend(batch);
                outcome.error = Some(e);
            }
        }
        outcome
    }

    /// One pipeline of `SET key <fresh token> PX <generation TTL>`.
    fn set_fresh_tokens<'a>(&self, keys: impl Iterator<Item = &'a String>) -> Call {
        let ttl_ms = u64::try_from(self.generation_ttl.as_millis()).unwrap_or(u64::MAX);
        let mut p = redis::pipe();
        for k in keys {
            p.cmd("SET").arg(k).arg(new_token()).arg("PX").arg(ttl_ms).ignore();
        }
        Call::pipe(p)
    }

    /// Records `keys` as owed and makes sure a retrier runs.
    fn owe(self: &Arc<Self>, keys: impl IntoIterator<Item = String>) {
        let start = {
            let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            p.add(keys, self.max_pending);
            !std::mem::replace(&mut p.retrier, true)
        };
        if start {
            self.spawn_retrier();
        }
    }

    /// The background task: `backon` over the invalidation schedule, each attempt delivering what is owed.
    fn spawn_retrier(self: &Arc<Self>) {
        let weak: Weak<Self> = Arc::downgrade(self);
        let delays = self.retry.delays(rand::random());
        tokio::spawn(async move {
            let attempt = || {
                let weak = weak.clone();
                async move {
                    match weak.upgrade() {
                        Some(remote) => remote.deliver_pending().await,
                        None => Ok(()), // the cache is gone, and its debts with it
                    }
                }
            };
            let outcome = attempt
                .retry(delays)
                .notify(|e: &AuditError, delay| {
                    let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
                    debug!(error = %e, delay_ms, "re-sending invalidations");
                })
                .await;
            if let (Err(e), Some(remote)) = (outcome, weak.upgrade()) {
                // The schedule ran out: stop here; the next failed bump starts a new retrier.
                remote.pending.lock().unwrap_or_else(|p| p.into_inner()).retrier = false;
                warn!(error = %e, "gave up re-sending invalidations to redis for now");
            }
        });
    }

    /// One delivery attempt. `Ok` only when nothing is owed any more (the retrier then ends, under the lock).
    async fn deliver_pending(&self) -> AuditResult<()> {
        let work = self.pending.lock().unwrap_or_else(|p| p.into_inner()).work();
        let sent: AuditResult<()> = match work {
            Work::Idle => Ok(()),
            Work::All(ticket) => self.replace_all_generations().await.map(|removed| {
                debug!(removed, "replaced every generation token after too many pending invalidations");
                self.pending.lock().unwrap_or_else(|p| p.into_inner()).settle_up_to(ticket);
            }),
            Work::Keys(owed) => {
                let groups: Vec<Vec<String>> =
                    owed.iter().map(|g| g.iter().map(|(k, _)| k.clone()).collect()).collect();
                let outcome = self.bump(&groups).await;
                let delivered = owed.into_iter().enumerate().filter(|(i, _)| !outcome.failed.contains(i));
                self.pending.lock().unwrap_or_else(|p| p.into_inner()).settle(delivered.flat_map(|(_, g)| g));
                outcome.error.map_or(Ok(()), Err)
            }
        };
        let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if p.is_empty() {
            p.retrier = false;
            debug!("pending invalidations delivered to redis");
            return Ok(());
        }
        let still = AuditError::unavailable(format!("{} generation keys still owed to redis", p.keys_len()))
            .with_component("redis");
        Err(sent.err().unwrap_or(still))
    }

    /// Deletes every generation token under the prefix (readers recreate them with fresh values).
    async fn replace_all_generations(&self) -> AuditResult<u64> {
        self.delete_matching(format!("{}{{*}}:gen:*", glob_escape(&self.prefix))).await
    }

    /// Deletes every key matching `pattern` (`SCAN`, never `KEYS`; every primary in cluster mode), under the
    /// policy; each round trip is bounded by the Redis timeout (at least one second: a scan step may be slow).
    pub(crate) async fn delete_matching(&self, pattern: String) -> AuditResult<u64> {
        let step = self.timeout.max(std::time::Duration::from_secs(1));
        let pattern: Arc<str> = pattern.into();
        self.run("scan_delete", move |backend| -> Attempt<u64> {
            let pattern = pattern.clone();
            Box::pin(async move { backend.scan_delete(&pattern, step).await })
        })
        .await
    }

    /// Forgets the debts queued before `ticket` was handed out: a `clear()` that began after them removed every
    /// token.
    pub(crate) fn paid_up_to(&self, ticket: u64) {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).settle_up_to(ticket);
    }
}

/// Escapes Redis glob metacharacters.
pub(crate) fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(ks: &[&str]) -> Vec<String> {
        ks.iter().map(|k| k.to_string()).collect()
    }

    #[test]
    fn keys_are_grouped_by_hash_tag_and_settled_only_if_not_queued_again() {
        let mut p = Pending::default();
        p.add(keys(&["p:{o:1}:gen:all", "p:{o:1}:gen:m:2024-01", "p:{g}:gen:all"]), 100);
        let Work::Keys(groups) = p.work() else { panic!("keys owed") };
        assert_eq!(groups.len(), 2, "{groups:?}");
        assert!(groups.iter().all(|g| g.iter().all(|(k, _)| group_id(k) == group_id(&g[0].0))));
        // A later commit queues one of the keys again while the attempt is in flight.
        p.add(keys(&["p:{o:1}:gen:all"]), 100);
        p.settle(groups.into_iter().flatten());
        assert_eq!(p.work(), Work::Keys(vec![vec![("p:{o:1}:gen:all".into(), 2)]]));
        assert_eq!(p.keys_len(), 1);
        p.settle([("p:{o:1}:gen:all".to_string(), 2)]);
        assert_eq!(p.work(), Work::Idle);
        assert!(p.is_empty());
    }

    #[test]
    fn past_the_bound_the_debt_becomes_every_generation() {
        let mut p = Pending::default();
        p.add(keys(&["a:gen:1", "a:gen:2"]), 2);
        assert_eq!(p.keys_len(), 2);
        p.add(keys(&["a:gen:3"]), 2);
        assert_eq!((p.keys_len(), p.owes_everything()), (0, true), "memory stays bounded");
        assert_eq!(p.work(), Work::All(2));
        p.add(keys(&["b:gen:1"]), 2);
        assert_eq!(p.work(), Work::All(3), "a later commit moves the ticket");
        p.settle_up_to(2);
        assert!(p.owes_everything(), "a replacement that began before the last commit does not pay it");
        p.settle_up_to(3);
        assert!(p.is_empty());
    }

    #[test]
    fn a_clear_pays_what_was_queued_before_it() {
        let mut p = Pending::default();
        p.add(keys(&["a:gen:1"]), 10);
        let before_clear = p.last_ticket();
        p.add(keys(&["a:gen:2"]), 10);
        p.settle_up_to(before_clear);
        assert_eq!(p.work(), Work::Keys(vec![vec![("a:gen:2".into(), 2)]]));
    }

    #[test]
    fn glob_and_group_helpers() {
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
        assert_eq!(group_id("p:{o:12}:gen:m:2024-01"), "p:{o:12}");
    }
}
