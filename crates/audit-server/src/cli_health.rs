//! `audit-db health --service URL`: asks a running service's `GET /health` — what a container `HEALTHCHECK` runs
//! (the image has no curl). Plain HTTP/1.1 over TCP on purpose: the probe targets the service on the same host
//! (`http://127.0.0.1:3000`), and a hand-written request needs no HTTP client dependency in the binary.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Arguments of `audit-db health`.
#[derive(Debug, clap::Args)]
pub(crate) struct HealthArgs {
    /// Ask a running service (`GET URL/health`, e.g. `http://127.0.0.1:3000`) instead of the database: exit 0 when
    /// it answers 2xx, 1 otherwise (refused, timed out, 503).
    #[arg(long, value_name = "URL")]
    pub(crate) service: Option<String>,
    /// How long `--service` waits for the whole answer, in seconds.
    #[arg(long, default_value_t = 5, value_name = "SECONDS")]
    pub(crate) timeout: u64,
}

/// Where to connect and what to ask for.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    /// `host:port` to connect to.
    authority: String,
    /// The `Host` header.
    host: String,
    /// The request path (`…/health`).
    path: String,
}

/// Reads `http://host[:port][/prefix]` into a target for `prefix/health`. Names what was wrong otherwise.
fn parse_target(url: &str) -> anyhow::Result<Target> {
    let rest = match url.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
        Some((scheme, _)) => bail!("--service {url}: scheme `{scheme}` is not supported (use http://)"),
        None => bail!("--service {url}: expected http://host:port"),
    };
    let (authority, prefix) = match rest.find(['/', '?', '#']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if authority.is_empty() || authority.contains('@') {
        bail!("--service {url}: expected http://host:port (no user info)");
    }
    let prefix = prefix.split(['?', '#']).next().unwrap_or_default().trim_end_matches('/');
    // `[::1]:3000`, `host:3000` or `host` (port 80).
    let has_port = match authority.rfind(':') {
        Some(i) => !authority[i..].contains(']'),
        None => false,
    };
    if has_port {
        let port = &authority[authority.rfind(':').unwrap_or_default() + 1..];
        port.parse::<u16>().with_context(|| format!("--service {url}: port `{port}` is not a number 0-65535"))?;
    }
    let host_only = if has_port { &authority[..authority.rfind(':').unwrap_or_default()] } else { authority };
    if host_only.is_empty() || host_only == "[]" {
        bail!("--service {url}: no host");
    }
    let with_port = if has_port { authority.to_string() } else { format!("{authority}:80") };
    Ok(Target { authority: with_port, host: authority.to_string(), path: format!("{prefix}/health") })
}

/// The status code of an HTTP/1.x status line.
fn status_of(response: &[u8]) -> anyhow::Result<u16> {
    let line = response.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    match (parts.next(), parts.next().and_then(|s| s.parse::<u16>().ok())) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") => Ok(code),
        _ => bail!("not an HTTP/1 response: {:?}", line.trim()),
    }
}

/// `GET target`: the status and the body (as text).
async fn get(target: &Target) -> anyhow::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(&target.authority)
        .await
        .with_context(|| format!("connecting to {}", target.authority))?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\nUser-Agent: audit-db-health\r\nConnection: close\r\n\r\n",
        target.path, target.host
    );
    stream.write_all(request.as_bytes()).await.context("sending the request")?;
    let mut response = Vec::new();
    // Bounded: a health answer is small; a peer streaming forever is cut off.
    (&mut stream).take(1 << 20).read_to_end(&mut response).await.context("reading the answer")?;
    let code = status_of(&response)?;
    let body = match response.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => String::from_utf8_lossy(&response[i + 4..]).into_owned(),
        None => String::new(),
    };
    Ok((code, body))
}

/// Runs `health --service URL`: prints the answer (or why there is none) and exits 0 on 2xx, else 1.
pub(crate) async fn run_service(url: &str, timeout: Duration) -> anyhow::Result<ExitCode> {
    let target = parse_target(url)?;
    match tokio::time::timeout(timeout, get(&target)).await {
        Ok(Ok((code, body))) => {
            println!("{}", body.trim());
            if (200..300).contains(&code) {
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("error: {url}{} answered {code}", target.path);
                Ok(ExitCode::from(1))
            }
        }
        Ok(Err(e)) => {
            eprintln!("error: {url}{}: {e:#}", target.path);
            Ok(ExitCode::from(1))
        }
        Err(_) => {
            eprintln!("error: {url}{}: no answer within {}s", target.path, timeout.as_secs());
            Ok(ExitCode::from(1))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(a: &str, h: &str, p: &str) -> Target {
        Target { authority: a.into(), host: h.into(), path: p.into() }
    }

    #[test]
    fn targets_keep_host_port_and_prefix() {
        assert_eq!(parse_target("http://127.0.0.1:3000").unwrap(), t("127.0.0.1:3000", "127.0.0.1:3000", "/health"));
        assert_eq!(parse_target("HTTP://svc/audit/").unwrap(), t("svc:80", "svc", "/audit/health"));
        assert_eq!(parse_target("http://[::1]:3000/x?y#z").unwrap(), t("[::1]:3000", "[::1]:3000", "/x/health"));
        assert_eq!(parse_target("http://[::1]").unwrap(), t("[::1]:80", "[::1]", "/health"));
    }

    #[test]
    fn bad_targets_name_what_is_wrong() {
        for (url, says) in [
            ("https://x:3000", "scheme `https`"),
            ("127.0.0.1:3000", "expected http://"),
            ("http://:3000", "no host"),
            ("http://x:99999", "port `99999`"),
            ("http://u:p@x:1", "user info"),
            ("http://", "expected http://host:port"),
        ] {
            let e = format!("{:#}", parse_target(url).unwrap_err());
            assert!(e.contains(url) && e.contains(says), "{url}: {e}");
        }
    }

    #[test]
    fn status_lines() {
        assert_eq!(status_of(b"HTTP/1.1 503 Service Unavailable\r\n\r\n").unwrap(), 503);
        assert_eq!(status_of(b"HTTP/1.0 200 OK\r\n").unwrap(), 200);
        assert!(status_of(b"SSH-2.0-OpenSSH\r\n").is_err());
        assert!(status_of(b"").is_err());
    }
}
