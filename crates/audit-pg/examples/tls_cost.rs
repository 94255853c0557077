//! What TLS costs a connection to PostgreSQL: connect latency and COPY throughput, plain vs TLS, same server.
//!
//! `cargo run --release -p audit-pg --example tls_cost -- [URL] [CONNECTS] [ROWS]`
//! (URL defaults to `DATABASE_URL` or `postgres://postgres@127.0.0.1:5432/test`; the server must have `ssl=on`.)
//! Numbers are printed, never asserted.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use audit_pg::tls::PgConnector;
use futures::{SinkExt as _, StreamExt as _};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .or_else(|| std::env::var("DATABASE_URL").ok())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".to_string());
    let connects: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(200);
    let rows: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(500_000);
    let base = url.split('?').next().unwrap_or(&url).to_string();

    println!("mode     connect_p50_ms connect_p95_ms copy_in_MB_s copy_out_MB_s encrypted");
    for mode in ["disable", "require"] {
        let connector = PgConnector::from_url(&format!("{base}?sslmode={mode}"), false, Duration::from_secs(10))
            .with_context(|| format!("sslmode={mode}"))?;
        let mut times = Vec::with_capacity(connects);
        for _ in 0..connects {
            let started = Instant::now();
            let (client, handle) = connector.connect().await?;
            times.push(started.elapsed());
            drop(client);
            let _ = handle.await;
        }
        times.sort();
        let pct = |p: f64| times[((times.len() - 1) as f64 * p) as usize].as_secs_f64() * 1000.0;

        let (client, _handle) = connector.connect().await?;
        let encrypted: bool =
            client.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).await?.get(0);
        client.batch_execute("CREATE TEMP TABLE tls_cost (id bigint, payload text)").await?;
        let payload = "x".repeat(200);
        let mut buf = String::with_capacity(1 << 20);
        let sink = client.copy_in("COPY tls_cost FROM STDIN").await?;
        futures::pin_mut!(sink);
        let mut bytes_in = 0usize;
        let started = Instant::now();
        for i in 0..rows {
            buf.push_str(&format!("{i}\t{payload}\n"));
            if buf.len() >= 1 << 20 || i + 1 == rows {
                bytes_in += buf.len();
                sink.send(bytes::Bytes::from(std::mem::take(&mut buf))).await?;
            }
        }
        sink.as_mut().finish().await?;
        let copy_in = bytes_in as f64 / 1e6 / started.elapsed().as_secs_f64();

        let started = Instant::now();
        let stream = client.copy_out("COPY tls_cost TO STDOUT").await?;
        futures::pin_mut!(stream);
        let mut bytes_out = 0usize;
        while let Some(chunk) = stream.next().await {
            bytes_out += chunk?.len();
        }
        let copy_out = bytes_out as f64 / 1e6 / started.elapsed().as_secs_f64();
        println!("{mode:8} {:14.2} {:14.2} {copy_in:12.1} {copy_out:13.1} {encrypted}", pct(0.5), pct(0.95));
    }
    Ok(())
}
