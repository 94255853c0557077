//! `audit-db demo`: the tour a newcomer runs first.

use std::process::ExitCode;
use std::time::Instant;

use audit_core::{DataClassification, EventFilter, Status};
use chrono::{Duration, Utc};

use audit_server::app::App;
use audit_server::workload::{Workload, WorkloadShape, organization};

/// Arguments of `audit-db demo`.
#[derive(Debug, clap::Args)]
pub(crate) struct DemoArgs {
    /// How many events to generate and ingest.
    #[arg(long, default_value_t = 100_000)]
    pub events: usize,
    /// Seed of the generator (same seed, same events relative to now).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

/// Runs the tour.
pub(crate) async fn run(app: App, args: DemoArgs) -> anyhow::Result<ExitCode> {
    println!("audit-db demo: {} realistic events (patient data access, payments, logins)", args.events);
    println!("database: {}", app.connector().target());
    app.migrate().await?;
    let client = app.client().await?;
    let now = Utc::now();
    let mut workload = Workload::new(args.seed ^ now.timestamp() as u64, WorkloadShape::default(), now);

    let started = Instant::now();
    let mut stored = 0usize;
    let mut dups = 0usize;
    let chunk = 10_000;
    let mut done = 0;
    // A principal that really accessed patient data, for the "principal + action" example.
    let mut sample_principal: Option<String> = None;
    while done < args.events {
        let n = chunk.min(args.events - done);
        let events: Vec<serde_json::Value> = workload.by_ref().take(n).collect();
        if sample_principal.is_none() {
            sample_principal = events
                .iter()
                .find(|e| e["action"] == "patient_data_access")
                .and_then(|e| e["principal_id"].as_str().map(str::to_string));
        }
        let report = client.insert_batch(events).await?;
        stored += report.accepted();
        dups += report.duplicates();
        if report.rejected() > 0 {
            anyhow::bail!("the generator produced {} invalid events", report.rejected());
        }
        done += n;
        let secs = started.elapsed().as_secs_f64();
        eprintln!("  ingested {done}/{} ({:.0} events/s)", args.events, done as f64 / secs);
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "\ningested {stored} events ({dups} duplicates) in {secs:.2} s: {:.0} events/s, each durable with its \
         Merkle leaf and per-organisation sequence number",
        stored as f64 / secs
    );

    let principal = sample_principal.unwrap_or_else(|| "user_00042".to_string());
    let hospital = organization(0);
    let bank = organization(1);
    let examples: Vec<(&str, EventFilter)> = vec![
        ("PHI access in the last 30 days at {org}", {
            let mut f = EventFilter {
                organization_id: Some(hospital.clone()),
                data_classification: Some(DataClassification::Phi),
                ..Default::default()
            };
            f.time.gte = Some(now - Duration::days(30));
            f
        }),
        ("failed logins in the last hour (all organisations)", {
            let mut f = EventFilter {
                actions: vec!["user_authentication".into()],
                statuses: vec![Status::Failure],
                ..Default::default()
            };
            f.time.gte = Some(now - Duration::hours(1));
            f
        }),
        ("payments at {bank} in the last 7 days", {
            let mut f = EventFilter {
                organization_id: Some(bank.clone()),
                actions: vec!["payment_processed".into()],
                ..Default::default()
            };
            f.time.gte = Some(now - Duration::days(7));
            f.time.lte = Some(now);
            f
        }),
        (
            "patient data accessed by {principal}",
            EventFilter {
                principal_id: Some(principal.clone()),
                actions: vec!["patient_data_access".into()],
                ..Default::default()
            },
        ),
        (
            "access for billing at {org} (details containment)",
            EventFilter {
                organization_id: Some(hospital.clone()),
                details_contains: Some(serde_json::json!({"access_reason": "billing"})),
                ..Default::default()
            },
        ),
    ];
    println!("\nthe seed's example queries (first page of 100, newest first; then the same query again):");
    for (title, filter) in examples {
        let title = title.replace("{org}", &hospital).replace("{bank}", &bank).replace("{principal}", &principal);
        let total = client.count(&filter).await?;
        let t = Instant::now();
        let first = client.query(&filter).await?;
        let t1 = t.elapsed();
        let t = Instant::now();
        let again = client.query(&filter).await?;
        let t2 = t.elapsed();
        println!(
            "- {title}: {total} matching, {} on the first page; {:.2} ms from {}, then {:.3} ms from {}",
            first.page.events.len(),
            t1.as_secs_f64() * 1e3,
            first.tier.as_str(),
            t2.as_secs_f64() * 1e3,
            again.tier.as_str()
        );
        if let Some(e) = first.page.events.first() {
            println!(
                "    newest: {} {} by {} on {}",
                audit_core::event::format_timestamp(e.event.timestamp),
                e.event.action,
                e.event.principal_id.as_deref().unwrap_or("-"),
                e.event.target_resource_id.as_deref().unwrap_or("-")
            );
        }
    }
    println!("\nhealth:");
    println!("{}", serde_json::to_string_pretty(&client.health().await)?);
    Ok(ExitCode::SUCCESS)
}
