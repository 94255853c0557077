//! `audit-db serve`: starts the HTTP service with its background work (checkpointing, partition maintenance).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use audit_integrity::NoteSigner;
use audit_server::app::App;
use audit_server::http::{IndexHealthSlot, ServiceState, drain_insert_queue, router, serve};
use audit_server::telemetry::Telemetry;

/// Arguments of `audit-db serve`.
#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:3000", env = "AUDIT_DB_LISTEN")]
    pub(crate) listen: SocketAddr,
}

/// Runs the service until interrupted.
pub(crate) async fn run(app: App, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let metrics = if app.config.monitoring.enabled {
        let handle = audit_server::telemetry::prometheus_builder()?.install_recorder()?;
        audit_core::metrics::describe_all();
        Some(handle)
    } else {
        tracing::info!("metrics are off (METRICS_ENABLED=false): /metrics answers 404");
        None
    };
    app.migrate().await?;
    // One policy for the client and the erase route: an erasure through the API reads as `[erased]` at once.
    let privacy = app.privacy()?;
    let client = app.client_with_privacy(privacy.clone()).await?;
    let partitions = Arc::new(app.partitions().await?);
    let _checkpointer = match (app.config.integrity.checkpoint_interval_secs, &app.config.integrity.signing_key_file) {
        (Some(secs), Some(key)) => {
            let text = std::fs::read_to_string(key).with_context(|| format!("reading {}", key.display()))?;
            let signer = NoteSigner::parse(text.trim())?;
            tracing::info!(every_s = secs, "sealing every log periodically");
            Some(audit_integrity::store::spawn_checkpointer(
                Arc::new(app.integrity()?),
                signer,
                std::time::Duration::from_secs(secs.max(1)),
            ))
        }
        (Some(_), None) => anyhow::bail!("integrity.checkpointIntervalSecs needs AUDIT_DB_SIGNING_KEY_FILE"),
        _ => None,
    };
    let index_health: IndexHealthSlot = Default::default();
    let _indexes = spawn_index_rounds(app.indexes(), index_health.clone());
    // Partition maintenance (`partition.autoMaintenance`) runs inside the client.
    let _telemetry = metrics.is_some().then(|| -> anyhow::Result<_> {
        Ok(Telemetry { client: client.clone(), partitions: partitions.clone(), integrity: Arc::new(app.integrity()?) }
            .spawn())
    });
    let mut state = ServiceState::new(&app, client.clone(), metrics)?;
    state.indexes = index_health;
    state.privacy = privacy;
    state.partitions = Some(partitions);
    let state = Arc::new(state);
    if !app.config.api.audit_reads {
        tracing::warn!(
            "reads through the API are NOT audited (AUDIT_DB_AUDIT_READS=false): for tests and benchmarks only"
        );
    }
    serve(router(state), args.listen).await?;
    // In-flight requests are drained; their events were committed before they answered. Anything still queued
    // (a request cut off by a client disconnect) is given time to commit.
    drain_insert_queue(&client, std::time::Duration::from_secs(30)).await;
    Ok(ExitCode::SUCCESS)
}

/// The index manager's background rounds (`indexes.analysisInterval`): usage snapshot, analysis, and what
/// `enableAutoCreation` / `enableAutoDrop` allow (repairs of half-done builds always), each action logged; the
/// analysis becomes the `indexes` component of `/health`. The task ends with the returned guard.
fn spawn_index_rounds(im: audit_index::IndexManager, health: IndexHealthSlot) -> Option<AbortOnDrop> {
    let every = im.analysis_interval()?;
    tracing::info!(
        every_s = every.as_secs(),
        auto_create = im.config().enable_auto_creation,
        auto_drop = im.config().enable_auto_drop,
        "index analysis runs periodically"
    );
    Some(AbortOnDrop(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match im.run_round().await {
                Ok((report, applied)) => {
                    tracing::info!(
                        findings = report.findings.len(),
                        recommendations = report.recommendations.len(),
                        actions = applied.len(),
                        "index analysis done"
                    );
                    if let Ok(mut slot) = health.lock() {
                        *slot = Some(report.health());
                    }
                }
                Err(e) => tracing::warn!(error = %e, "index analysis failed; next round as scheduled"),
            }
        }
    })))
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
