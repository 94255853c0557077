//! The gauges `serve` exports that no single operation records: cache hit rates, pool use, the insert queue,
//! partition coverage, checkpoint age per log, the latest verify result (wherever verify ran), and the archive's
//! free space. A background task samples them on a fixed period, so a scrape never waits on the database.

use std::sync::Arc;
use std::time::Duration;

use audit_core::QueryCache;
use audit_core::metrics as m;
use audit_integrity::store::IntegrityStore;
use audit_partition::{PartitionManager, PartitionState};
use audit_resilience::Policy;
use chrono::Utc;

use crate::app::Client;

/// The Prometheus exporter as `serve` installs it: every histogram of the one list with its buckets
/// (`audit_core::metrics::histogram_buckets`; without them the exporter would publish summaries, which have no
/// `_bucket` series for `histogram_quantile`).
pub fn prometheus_builder()
-> Result<metrics_exporter_prometheus::PrometheusBuilder, metrics_exporter_prometheus::BuildError> {
    let mut builder = metrics_exporter_prometheus::PrometheusBuilder::new();
    for spec in m::METRICS {
        if let Some(buckets) = m::histogram_buckets(spec.name) {
            builder = builder
                .set_buckets_for_metric(metrics_exporter_prometheus::Matcher::Full(spec.name.to_string()), buckets)?;
        }
    }
    Ok(builder)
}

/// How often the gauges are sampled (Prometheus scrapes every 15–60 s).
pub const SAMPLE_EVERY: Duration = Duration::from_secs(15);

/// What the collector reads from.
pub struct Telemetry {
    /// The service's client (cache, pools, queue).
    pub client: Client,
    /// Partition coverage and the archive.
    pub partitions: Arc<PartitionManager<Policy>>,
    /// Checkpoint ages and verify runs.
    pub integrity: Arc<IntegrityStore<Policy>>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}

impl Telemetry {
    /// Samples every gauge now. A source that fails is logged and skipped (its gauges keep their last value); the
    /// others are still sampled.
    pub async fn sample(&self) {
        self.sample_client();
        if let Err(e) = self.sample_partitions().await {
            tracing::debug!(error = %e, "telemetry: partition gauges not sampled");
        }
        if let Err(e) = self.sample_integrity().await {
            tracing::debug!(error = %e, "telemetry: integrity gauges not sampled");
        }
    }

    /// Runs [`Self::sample`] every [`SAMPLE_EVERY`] for as long as the returned task lives.
    pub fn spawn(self) -> tokio::task::JoinHandle<()> {
        metrics::gauge!(m::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                self.sample().await;
            }
        })
    }

    fn sample_client(&self) {
        let s = self.client.cache().stats();
        let rate = |hits: u64, reads: u64| if reads == 0 { 0.0 } else { 100.0 * hits as f64 / reads as f64 };
        let reads = s.l1_hits + s.l2_hits + s.misses;
        metrics::gauge!(m::CACHE_HIT_RATE, "cache_type" => "l1").set(rate(s.l1_hits, reads));
        // L2 is asked only after an L1 miss.
        metrics::gauge!(m::CACHE_HIT_RATE, "cache_type" => "l2").set(rate(s.l2_hits, s.l2_hits + s.misses));
        metrics::gauge!(m::CACHE_HIT_RATE, "cache_type" => "overall").set(100.0 * s.hit_ratio);
        for p in self.client.pools() {
            let pool = p.pool;
            metrics::gauge!(m::POOL_CONNECTIONS, "pool" => pool, "state" => "idle").set(f64::from(p.idle));
            metrics::gauge!(m::POOL_CONNECTIONS, "pool" => pool, "state" => "in_use")
                .set(f64::from(p.connections.saturating_sub(p.idle)));
            metrics::gauge!(m::POOL_MAX_CONNECTIONS, "pool" => pool).set(f64::from(p.max));
        }
        for p in self.client.router().pools() {
            metrics::gauge!(m::POOL_CONNECTIONS, "pool" => p.pool.clone(), "state" => "idle").set(f64::from(p.idle));
            metrics::gauge!(m::POOL_CONNECTIONS, "pool" => p.pool.clone(), "state" => "in_use")
                .set(f64::from(p.connections.saturating_sub(p.idle)));
            metrics::gauge!(m::POOL_MAX_CONNECTIONS, "pool" => p.pool).set(f64::from(p.max));
        }
        let (queued, capacity) = self.client.insert_queue();
        metrics::gauge!(m::INSERT_QUEUE_DEPTH).set(queued as f64);
        metrics::gauge!(m::INSERT_QUEUE_CAPACITY).set(capacity as f64);
    }

    async fn sample_partitions(&self) -> audit_core::AuditResult<()> {
        if let Some(space) = self.partitions.archive_space() {
            metrics::gauge!(m::ARCHIVE_FREE_BYTES).set(space.free_bytes as f64);
            metrics::gauge!(m::ARCHIVE_WRITABLE).set(if space.writable { 1.0 } else { 0.0 });
        }
        let parts = self.partitions.status().await?;
        let attached: Vec<_> = parts.iter().filter(|p| p.state == PartitionState::Attached).collect();
        metrics::gauge!(m::PARTITIONS).set(attached.len() as f64);
        if let Some(end) = attached.iter().filter_map(|p| p.range_to).max() {
            metrics::gauge!(m::PARTITION_COVERAGE_END).set(end.timestamp() as f64);
        }
        if let Some(start) = attached.iter().filter_map(|p| p.range_from).min() {
            metrics::gauge!(m::PARTITION_OLDEST).set(start.timestamp() as f64);
        }
        Ok(())
    }

    async fn sample_integrity(&self) -> audit_core::AuditResult<()> {
        let now = Utc::now();
        for (log, at) in self.integrity.last_checkpoint_times().await? {
            let age = (now - at).num_milliseconds().max(0) as f64 / 1e3;
            metrics::gauge!(m::CHECKPOINT_AGE, "log" => log).set(age);
        }
        if let Some((finished, findings)) = self.integrity.last_verify_run().await? {
            metrics::gauge!(m::VERIFY_LAST_FINDINGS).set(f64::from(findings));
            metrics::gauge!(m::VERIFY_LAST_RUN).set(finished.timestamp() as f64);
        }
        Ok(())
    }
}
