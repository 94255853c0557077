//! A running `audit-db serve` for the HTTP test files (`#[path = "support/service.rs"] mod service;`, beside
//! `mod cli;`): started on a free port against a test database and the shared Redis, ready when `/ready` answers
//! 200, and killed when dropped so no service outlives its test.
#![allow(dead_code, unreachable_pub)]

use std::ffi::OsStr;
use std::time::Duration;

use audit_testkit::{TestDb, redis_url, wait_for};
use reqwest::StatusCode;
use serde_json::Value;

/// A running `audit-db serve`.
pub struct Service {
    pub base: String,
    pub http: reqwest::Client,
    pub child: tokio::process::Child,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Service {
    /// Starts the service on `db` with extra environment and waits until `/ready` answers 200.
    pub async fn start<K: AsRef<OsStr>, V: AsRef<OsStr>>(db: &TestDb, env: &[(K, V)]) -> Service {
        Self::start_at(&db.url, env).await
    }

    /// [`Service::start`] against the database at `url`.
    pub async fn start_at<K: AsRef<OsStr>, V: AsRef<OsStr>>(url: &str, env: &[(K, V)]) -> Service {
        let port = free_port();
        let mut c = crate::cli::async_command(&["serve"]);
        c.env("DATABASE_URL", url)
            .env("REDIS_URL", redis_url())
            .env("AUDIT_DB_LISTEN", format!("127.0.0.1:{port}"))
            .env("LOG_LEVEL", "warn")
            .kill_on_drop(true)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit());
        for (k, v) in env {
            c.env(k, v);
        }
        let child = c.spawn().expect("audit-db serve starts");
        let s = Service { base: format!("http://127.0.0.1:{port}"), http: reqwest::Client::new(), child };
        let url = format!("{}/ready", s.base);
        let http = s.http.clone();
        wait_for("the service to be ready", Duration::from_secs(30), || {
            let (http, url) = (http.clone(), url.clone());
            async move { http.get(&url).send().await.is_ok_and(|r| r.status() == StatusCode::OK) }
        })
        .await;
        s
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, key: &str, path: &str) -> (StatusCode, Value) {
        let r = self.http.get(self.url(path)).bearer_auth(key).send().await.unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, key: &str, path: &str, body: &Value) -> (StatusCode, Value) {
        let r = self.http.post(self.url(path)).bearer_auth(key).json(body).send().await.unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }
}
