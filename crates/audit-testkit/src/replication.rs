//! Streaming replication in tests: make a replica lag (replay paused, or applied with a delay), read its replay
//! position, build the libpq multi-host URL that follows a failover, and put latency in front of a server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::sql;

/// Applies WAL on the replica at `url` only `delay` after its commit on the primary (`recovery_min_apply_delay`,
/// set with `ALTER SYSTEM` and a reload; zero turns it off). Waits until the replica reports the new value.
pub async fn set_apply_delay(url: &str, delay: Duration) {
    let pg = sql(url).await;
    let ms = delay.as_millis();
    // Two statements: ALTER SYSTEM refuses to run in the implicit transaction of a multi-statement query.
    for statement in [format!("ALTER SYSTEM SET recovery_min_apply_delay = '{ms}ms'"), "SELECT pg_reload_conf()".into()]
    {
        pg.batch_execute(&statement).await.unwrap_or_else(|e| panic!("{statement} on {url}: {e:?}"));
    }
    crate::wait_for("recovery_min_apply_delay to apply", Duration::from_secs(10), || async {
        let v: String = sql(url).await.query_one("SHOW recovery_min_apply_delay", &[]).await.unwrap().get(0);
        normalise_ms(&v) == Some(ms)
    })
    .await;
}

/// `SHOW recovery_min_apply_delay` text (`0`, `250ms`, `3s`, `1min`) in ms.
fn normalise_ms(v: &str) -> Option<u128> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (n, unit) = v.split_at(split);
    let n: u128 = n.parse().ok()?;
    Some(match unit {
        "" | "ms" => n,
        "s" => n * 1_000,
        "min" => n * 60_000,
        "h" => n * 3_600_000,
        _ => return None,
    })
}

/// Stops (`true`) or resumes (`false`) WAL replay on the replica at `url` (`pg_wal_replay_pause/resume`).
pub async fn pause_replay(url: &str, paused: bool) {
    let f = if paused { "pg_wal_replay_pause" } else { "pg_wal_replay_resume" };
    sql(url).await.batch_execute(&format!("SELECT {f}()")).await.unwrap_or_else(|e| panic!("{f} on {url}: {e}"));
}

/// The replica's replay position (`pg_last_wal_replay_lsn()`) as a number comparable with a commit LSN's.
pub async fn replay_lsn(url: &str) -> u64 {
    let text: Option<String> =
        sql(url).await.query_one("SELECT pg_last_wal_replay_lsn()::text", &[]).await.unwrap().get(0);
    parse_lsn(&text.unwrap_or_else(|| panic!("{url} is not in recovery")))
}

/// PostgreSQL's `X/Y` LSN text as a number.
pub fn parse_lsn(text: &str) -> u64 {
    let (hi, lo) = text.split_once('/').unwrap_or_else(|| panic!("`{text}` is not an LSN"));
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

/// A libpq multi-host URL for database `db` on the local servers listening on `ports`, with
/// `target_session_attrs=read-write`: connections go to whichever of them accepts writes (follows a failover).
pub fn multi_host_url(ports: &[u16], db: &str) -> String {
    let hosts: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    format!("postgres://postgres@{}/{db}?target_session_attrs=read-write", hosts.join(","))
}

/// A TCP proxy on loopback that delays everything the server sends by a fixed time (a slower or further server),
/// forwarding the client's bytes at once. The delay can be changed at any time.
#[derive(Debug)]
pub struct SlowProxy {
    addr: SocketAddr,
    delay_us: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl SlowProxy {
    /// Starts a proxy to `upstream` that delays each answer by `delay`.
    pub async fn start(upstream: SocketAddr, delay: Duration) -> SlowProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding a loopback port");
        let addr = listener.local_addr().expect("bound address");
        let delay_us = Arc::new(AtomicU64::new(delay.as_micros() as u64));
        let shared = delay_us.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let delay_us = shared.clone();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        pipe(client, server, delay_us).await;
                    }
                });
            }
        });
        SlowProxy { addr, delay_us, task }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Changes the delay of answers from now on.
    pub fn set_delay(&self, delay: Duration) {
        self.delay_us.store(delay.as_micros() as u64, Ordering::Relaxed);
    }

    /// `url` with its server replaced by this proxy.
    pub fn url_for(&self, url: &str) -> String {
        let at = url.find('@').map_or_else(|| url.find("://").map_or(0, |i| i + 3), |i| i + 1);
        let end = url[at..].find('/').map_or(url.len(), |i| at + i);
        format!("{}{}{}", &url[..at], self.addr, &url[end..])
    }
}

impl Drop for SlowProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pipe(client: TcpStream, server: TcpStream, delay_us: Arc<AtomicU64>) {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up = async move {
        let _ = tokio::io::copy(&mut cr, &mut sw).await;
        let _ = sw.shutdown().await;
    };
    let down = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match sr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            tokio::time::sleep(Duration::from_micros(delay_us.load(Ordering::Relaxed))).await;
            if cw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = cw.shutdown().await;
    };
    tokio::join!(up, down);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_delays_are_read_in_ms() {
        assert_eq!(normalise_ms("0"), Some(0));
        assert_eq!(normalise_ms("250ms"), Some(250));
        assert_eq!(normalise_ms("3s"), Some(3_000));
        assert_eq!(normalise_ms("1min"), Some(60_000));
        assert_eq!(normalise_ms("fast"), None);
    }

    #[test]
    fn urls_name_every_host_and_ask_for_the_writer() {
        assert_eq!(
            multi_host_url(&[5432, 5433], "audit"),
            "postgres://postgres@127.0.0.1:5432,127.0.0.1:5433/audit?target_session_attrs=read-write"
        );
        assert_eq!(parse_lsn("1/10"), (1 << 32) | 16);
    }

    #[tokio::test]
    async fn the_slow_proxy_delays_answers_and_rewrites_urls() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = echo.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let mut b = [0u8; 16];
                    while let Ok(n) = s.read(&mut b).await {
                        if n == 0 || s.write_all(&b[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let proxy = SlowProxy::start(upstream, Duration::from_millis(80)).await;
        let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
        let started = std::time::Instant::now();
        c.write_all(b"ping").await.unwrap();
        let mut b = [0u8; 4];
        c.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"ping");
        assert!(started.elapsed() >= Duration::from_millis(80), "{:?}", started.elapsed());
        let url = proxy.url_for("postgres://u@127.0.0.1:5432/db?x=1");
        assert_eq!(url, format!("postgres://u@{}/db?x=1", proxy.addr()));
    }
}
