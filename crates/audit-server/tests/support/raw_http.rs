//! Raw HTTP/1.1 over TCP for tests that must send what a well-behaved client library refuses to (hostile headers,
//! wrong `Content-Length`, non-UTF-8 bytes) or must see every byte of the answer (`#[path = "support/raw_http.rs"]
//! mod raw_http;`).
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// An answer: status (0 when none could be parsed), header lines (name lower-cased, value), body bytes.
#[derive(Debug, Clone, Default)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The client had to close its writing half to get (the rest of) an answer: the server was waiting for body
    /// bytes the request promised.
    pub cut: bool,
}

impl Answer {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Decodes a chunked body; `None` when it is not valid chunked encoding.
fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = b.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&b[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        b = &b[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        if b.len() < size + 2 {
            return None;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

/// Sends `request` (head and body, exactly as given) to `127.0.0.1:port` and reads the answer to the end (the
/// request should say `Connection: close`). When the answer is not complete within `limit` (the server waits for
/// body bytes the request promised but did not send), closes the writing half and reads what is left for 5 s more
/// ([`Answer::cut`]; an empty answer then has status 0). (The writing half stays open until then: hyper drops a
/// connection whose client half-closes before the answer.) A transport failure is an error.
pub async fn send(port: u16, request: &[u8], limit: Duration) -> std::io::Result<Answer> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(request).await?;
    let mut buf = Vec::new();
    let cut = match tokio::time::timeout(limit, s.read_to_end(&mut buf)).await {
        Ok(r) => {
            r?;
            false
        }
        Err(_) => {
            s.shutdown().await?;
            tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
                .await
                .map_err(|_| std::io::Error::other("no answer and no close after the request's end"))??;
            true
        }
    };
    Ok(Answer { cut, ..parse(&buf) })
}

/// Parses a complete HTTP/1.1 answer.
pub fn parse(buf: &[u8]) -> Answer {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Answer { status: 0, headers: Vec::new(), body: buf.to_vec(), cut: false };
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let mut lines = head.split("\r\n");
    let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|c| c.parse().ok()).unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let raw = &buf[end + 4..];
    let chunked = headers.iter().any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let length = headers.iter().find(|(n, _)| n == "content-length").and_then(|(_, v)| v.parse::<usize>().ok());
    // A second answer on the same connection (the server read extra bytes as another request) is not this body.
    let body = match (chunked, length) {
        (true, _) => dechunk(raw).unwrap_or_else(|| raw.to_vec()),
        (false, Some(n)) => raw[..n.min(raw.len())].to_vec(),
        (false, None) => raw.to_vec(),
    };
    Answer { status, headers, body, cut: false }
}

/// A request with the given head lines (each without CRLF) and body, `Connection: close` added.
pub fn request(method: &str, path: &str, head: &[Vec<u8>], body: &[u8]) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n").into_bytes();
    for h in head {
        r.extend_from_slice(h);
        r.extend_from_slice(b"\r\n");
    }
    r.extend_from_slice(b"\r\n");
    r.extend_from_slice(body);
    r
}

/// VmRSS of process `pid`, bytes.
pub fn rss(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
