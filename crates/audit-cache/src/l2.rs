//! L2 transport: a bb8 pool of multiplexed connections (through bb8-redis) for one Redis server, or one shared
//! Redis Cluster connection (redis's cluster-async client). Every call is bounded by a timeout; a connection that
//! failed or timed out is discarded instead of being handed to the next caller.

use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, FromRedisValue, Pipeline, RedisError, Value};
use tokio::time::Instant;

use crate::error::CacheError;

/// One request: a command or a pipeline (whose keys, in cluster mode, share one hash tag).
#[derive(Clone, Copy)]
pub(crate) enum Req<'a> {
    /// A single command.
    Cmd(&'a Cmd),
    /// A pipeline.
    Pipe(&'a Pipeline),
}

/// A pooled connection that remembers whether it failed, so the pool drops it.
pub(crate) struct Pooled {
    conn: MultiplexedConnection,
    broken: bool,
}

/// bb8 manager: bb8-redis's manager, plus "broken" tracking (bb8-redis never reports a connection broken, and a
/// multiplexed connection to a restarted server never recovers).
pub(crate) struct Manager(bb8_redis::RedisConnectionManager);

impl bb8::ManageConnection for Manager {
    type Connection = Pooled;
    type Error = RedisError;

    async fn connect(&self) -> Result<Pooled, RedisError> {
        Ok(Pooled { conn: self.0.connect().await?, broken: false })
    }

    async fn is_valid(&self, conn: &mut Pooled) -> Result<(), RedisError> {
        self.0.is_valid(&mut conn.conn).await
    }

    fn has_broken(&self, conn: &mut Pooled) -> bool {
        conn.broken
    }
}

/// The Redis side of the cache.
pub(crate) enum Backend {
    /// A single server through a pool.
    Single(bb8::Pool<Manager>),
    /// A cluster through one shared, self-healing connection (created on first use).
    Cluster { client: Box<ClusterClient>, conn: tokio::sync::Mutex<Option<ClusterConnection>> },
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Single(_) => "Backend::Single",
            Backend::Cluster { .. } => "Backend::Cluster",
        })
    }
}

async fn run<C: ConnectionLike + Send, T: FromRedisValue>(c: &mut C, req: Req<'_>) -> Result<T, RedisError> {
    match req {
        Req::Cmd(cmd) => cmd.query_async(c).await,
        Req::Pipe(p) => p.query_async(c).await,
    }
}

fn timeout_err(op: &'static str, t: Duration) -> CacheError {
    CacheError::Timeout { op, timeout_ms: t.as_millis() as u64 }
}

impl Backend {
    /// Builds the backend without connecting (connections are made on first use, so a Redis that is down at
    /// start-up only degrades the cache). `url` may list several cluster seed nodes separated by commas.
    pub(crate) fn new(url: &str, cluster: bool, timeout: Duration, pool_size: u32) -> Result<Self, CacheError> {
        if cluster {
            let seeds: Vec<&str> = url.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
            let client = ClusterClient::builder(seeds)
                .connection_timeout(timeout)
                .response_timeout(timeout)
                .retries(2)
                .build()
                .map_err(|e| CacheError::Config(format!("redisUrl `{url}`: {e}")))?;
            Ok(Backend::Cluster { client: Box::new(client), conn: tokio::sync::Mutex::new(None) })
        } else {
            let manager = bb8_redis::RedisConnectionManager::new(url)
                .map_err(|e| CacheError::Config(format!("redisUrl `{url}`: {e}")))?;
            // No reaper (idle_timeout/max_lifetime off) so that building needs no runtime; no PING per checkout
            // (a failed call marks its connection broken instead).
            let pool = bb8::Pool::builder()
                .max_size(pool_size.max(1))
                .min_idle(None)
                .idle_timeout(None)
                .max_lifetime(None)
                .test_on_check_out(false)
                .connection_timeout(timeout)
                .build_unchecked(Manager(manager));
            Ok(Backend::Single(pool))
        }
    }

    /// Runs `req`, bounded by `timeout` overall (connection checkout included).
    pub(crate) async fn exec<T: FromRedisValue>(
        &self,
        op: &'static str,
        req: Req<'_>,
        timeout: Duration,
    ) -> Result<T, CacheError> {
        let deadline = Instant::now() + timeout;
        match self {
            Backend::Single(pool) => {
                let mut conn = match tokio::time::timeout(timeout, pool.get()).await {
                    Ok(Ok(c)) => c,
                    Ok(Err(e)) => return Err(CacheError::Pool(e.to_string())),
                    Err(_) => return Err(timeout_err(op, timeout)),
                };
                match tokio::time::timeout_at(deadline, run(&mut conn.conn, req)).await {
                    Ok(Ok(v)) => Ok(v),
                    Ok(Err(e)) => {
                        // A server error reply (wrong type, …) leaves the connection usable; anything else not.
                        if e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() {
                            conn.broken = true;
                        }
                        Err(e.into())
                    }
                    Err(_) => {
                        conn.broken = true;
                        Err(timeout_err(op, timeout))
                    }
                }
            }
            Backend::Cluster { .. } => {
                let mut conn = self.cluster_conn(op, timeout).await?;
                match tokio::time::timeout_at(deadline, run(&mut conn, req)).await {
                    Ok(r) => r.map_err(CacheError::from),
                    Err(_) => Err(timeout_err(op, timeout)),
                }
            }
        }
    }

    async fn cluster_conn(&self, op: &'static str, timeout: Duration) -> Result<ClusterConnection, CacheError> {
        let Backend::Cluster { client, conn } = self else {
            return Err(CacheError::Config("not a cluster backend".into()));
        };
        let mut guard = tokio::time::timeout(timeout, conn.lock()).await.map_err(|_| timeout_err(op, timeout))?;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let c = tokio::time::timeout(timeout, client.get_async_connection())
            .await
            .map_err(|_| timeout_err(op, timeout))??;
        *guard = Some(c.clone());
        Ok(c)
    }

    /// Deletes every key matching `pattern` with `SCAN` (never `KEYS`), on every primary in cluster mode.
    /// Returns how many keys were removed. Each round trip is bounded by `timeout`.
    pub(crate) async fn scan_delete(&self, pattern: &str, timeout: Duration) -> Result<u64, CacheError> {
        let mut removed = 0u64;
        match self {
            Backend::Single(_) => {
                let mut cursor: u64 = 0;
                loop {
                    let mut scan = redis::cmd("SCAN");
                    scan.arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(500);
                    let (next, keys): (u64, Vec<String>) = self.exec("scan", Req::Cmd(&scan), timeout).await?;
                    if !keys.is_empty() {
                        let mut unlink = redis::cmd("UNLINK");
                        unlink.arg(&keys);
                        let n: u64 = self.exec("unlink", Req::Cmd(&unlink), timeout).await?;
                        removed += n;
                    }
                    if next == 0 {
                        break;
                    }
                    cursor = next;
                }
            }
            Backend::Cluster { .. } => {
                let mut conn = self.cluster_conn("scan", timeout).await?;
                let slots = tokio::time::timeout(
                    timeout,
                    conn.route_command(
                        redis::cmd("CLUSTER").arg("SLOTS").clone(),
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
                    ),
                )
                .await
                .map_err(|_| timeout_err("cluster slots", timeout))??;
                for (host, port) in primaries(&slots) {
                    let mut cursor: u64 = 0;
                    loop {
                        let mut scan = redis::cmd("SCAN");
                        scan.arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(500);
                        let route =
                            RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host: host.clone(), port });
                        let v = tokio::time::timeout(timeout, conn.route_command(scan, route))
                            .await
                            .map_err(|_| timeout_err("scan", timeout))??;
                        let (next, keys): (u64, Vec<String>) = redis::from_redis_value(v)?;
                        // Keys of different slots cannot share one UNLINK in a cluster: one command per key,
                        // each routed by its own slot.
                        for k in keys {
                            let mut unlink = redis::cmd("UNLINK");
                            unlink.arg(&k);
                            let n: u64 = self.exec("unlink", Req::Cmd(&unlink), timeout).await?;
                            removed += n;
                        }
                        if next == 0 {
                            break;
                        }
                        cursor = next;
                    }
                }
            }
        }
        Ok(removed)
    }
}

/// Distinct primary addresses from a `CLUSTER SLOTS` reply (`[[start, end, [host, port, id], replicas…], …]`).
fn primaries(v: &Value) -> Vec<(String, u16)> {
    let mut out: Vec<(String, u16)> = Vec::new();
    if let Value::Array(ranges) = v {
        for r in ranges {
            let Value::Array(parts) = r else { continue };
            let Some(Value::Array(node)) = parts.get(2) else { continue };
            let host: Option<String> = node.first().and_then(|h| redis::from_redis_value_ref(h).ok());
            let port: Option<u16> = node.get(1).and_then(|p| redis::from_redis_value_ref(p).ok());
            if let (Some(h), Some(p)) = (host, port)
                && !out.contains(&(h.clone(), p))
            {
                out.push((h, p));
            }
        }
    }
    out
}
