//! The connection loop of `serve`: accepts TCP connections and serves HTTP/1.1 on each with bounds that
//! `axum::serve` does not offer.
//! - **Read buffer per connection: at most [`READ_BUFFER_MAX`].** hyper grows a connection's read buffer while a
//!   large body streams in (to ~400 KiB by default) and keeps it for the connection's life, so under overload every
//!   client posting a big batch — even one refused with 429 whose body is being discarded — held that much. The
//!   streamed handlers read their bodies in chunks anyway; a larger buffer only saved system calls.
//! - **Headers within [`HEADER_READ_TIMEOUT`]** of a connection's first byte, or the connection is closed (a client
//!   trickling headers cannot hold a connection and its buffers forever).
//! - **Graceful stop:** when `shutdown` resolves the listener closes, idle connections close, and requests in
//!   flight finish (a streamed batch writes its last result line) before this returns.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tower::ServiceExt as _;

/// Largest read buffer of one connection.
pub(crate) const READ_BUFFER_MAX: usize = 64 * 1024;
/// Time a client has to send a request's headers.
pub(crate) const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `router` on `listener` until `shutdown` resolves, then waits for the requests in flight.
pub async fn serve_on(
    router: Router,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "audit-db HTTP service listening");
    let mut http = hyper::server::conn::http1::Builder::new();
    http.max_buf_size(READ_BUFFER_MAX).timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: the listener stays, the next accept may succeed.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "TCP_NODELAY not set");
        }
        let service =
            TowerToHyperService::new(router.clone().map_request(|r: hyper::Request<Incoming>| r.map(Body::new)));
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!("audit-db HTTP service stopping: finishing the requests in flight");
    graceful.shutdown().await;
    tracing::info!("audit-db HTTP service stopped");
    Ok(())
}
