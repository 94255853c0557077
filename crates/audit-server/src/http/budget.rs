//! The in-flight body budget: a semaphore of bytes shared by every request with a body. A request reserves its
//! bytes before anything of its body is read — its `Content-Length`, or `api.bodyLimitBytes` when the length is not
//! declared (chunked) — and holds them until its events are acknowledged (a streamed batch: until its last result
//! line is written). A request whose bytes do not fit is answered 429 + `Retry-After` at once, its body discarded
//! unbuffered, so the service's memory under overload is bounded by the budget, not by the number of clients.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::ApiError;

/// The budget (cheap to clone: one semaphore).
#[derive(Debug, Clone)]
pub(crate) struct BodyBudget {
    sem: Arc<Semaphore>,
    total: usize,
    body_limit: usize,
}

/// Bytes of one request held from the budget; given back when the last clone is dropped. Put in the request's
/// extensions so a streaming handler can keep it for as long as it reads.
#[derive(Debug, Clone)]
pub(crate) struct BodyReservation(#[allow(dead_code)] Arc<Held>);

#[derive(Debug)]
struct Held {
    budget: BodyBudget,
    permit: Option<OwnedSemaphorePermit>,
}

impl Drop for Held {
    fn drop(&mut self) {
        drop(self.permit.take());
        self.budget.publish();
    }
}

impl BodyBudget {
    /// A budget of `total` bytes for bodies of at most `body_limit` bytes (a body larger than `total` reserves all
    /// of it and runs alone).
    pub(crate) fn new(total: usize, body_limit: usize) -> Self {
        let b = Self { sem: Arc::new(Semaphore::new(total)), total, body_limit };
        b.publish();
        b
    }

    /// Bytes held now.
    pub(crate) fn in_use(&self) -> usize {
        self.total - self.sem.available_permits()
    }

    fn publish(&self) {
        metrics::gauge!(audit_core::metrics::HTTP_INFLIGHT_BODY_BYTES).set(self.in_use() as f64);
    }

    /// What a request must reserve: its body's exact length when known (`Content-Length`; 0 without a body), else
    /// the largest accepted body (chunked: the length is unknown until it has been read).
    fn wanted(&self, req: &Request) -> usize {
        use axum::body::HttpBody as _;
        let hint = req.body().size_hint();
        let n = hint.exact().or(hint.upper()).unwrap_or(u64::MAX);
        // Over the limit: refused with 413 before this layer (or by the reader); clamp anyway. A body larger than the
        // whole budget takes all of it: it runs alone.
        usize::try_from(n).unwrap_or(usize::MAX).min(self.body_limit).min(self.total)
    }

    /// Reserves `n` bytes now or refuses; never waits (a waiting request would hold its connection and buffers).
    fn try_reserve(&self, n: usize) -> Result<BodyReservation, ApiError> {
        let want = u32::try_from(n).unwrap_or(u32::MAX);
        match self.sem.clone().try_acquire_many_owned(want) {
            Ok(permit) => {
                let held = Held { budget: self.clone(), permit: Some(permit) };
                self.publish();
                Ok(BodyReservation(Arc::new(held)))
            }
            Err(_) => {
                metrics::counter!(audit_core::metrics::LOAD_SHED, "reason" => "body_budget").increment(1);
                Err(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "overloaded",
                    "Too much work waiting",
                    format!(
                        "body: {n} bytes do not fit in the in-flight body budget (api.inflightBodyBytes = {} bytes, \
                         {} in use); retry after Retry-After; nothing was stored",
                        self.total,
                        self.in_use()
                    ),
                ))
            }
        }
    }
}

/// The layer: reserves the request's body bytes or answers 429 before the body is read; the reservation lives in
/// the request's extensions (a streaming handler keeps a clone) and is returned when the answer is complete.
pub(crate) async fn reserve_body(State(budget): State<BodyBudget>, mut req: Request, next: Next) -> Response {
    let n = budget.wanted(&req);
    if n == 0 {
        return next.run(req).await;
    }
    let held = match budget.try_reserve(n) {
        Ok(h) => h,
        Err(e) => return refuse_unbuffered(req, e, budget.body_limit).await,
    };
    req.extensions_mut().insert(held.clone());
    let r = next.run(req).await;
    drop(held);
    r
}

/// Answers `e` after discarding the body chunk by chunk (nothing kept: the client, still sending, then reads the
/// 429 instead of a connection reset); a body longer than `limit` is cut and the connection closed.
async fn refuse_unbuffered(req: Request, e: ApiError, limit: usize) -> Response {
    use futures::StreamExt as _;
    let mut body = req.into_body().into_data_stream();
    let mut seen = 0usize;
    let mut r = e.into_response();
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(c) => {
                seen += c.len();
                if seen > limit {
                    r.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
                    break;
                }
            }
            Err(_) => break,
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_are_bounded_and_returned_when_the_last_clone_drops() {
        let b = BodyBudget::new(100, 60);
        let a = b.try_reserve(60).unwrap();
        let a2 = a.clone();
        assert_eq!(b.in_use(), 60);
        let e = b.try_reserve(41).unwrap_err();
        assert_eq!(e.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(e.problem().detail.contains("api.inflightBodyBytes"), "{:?}", e.problem());
        let c = b.try_reserve(40).unwrap();
        drop(a);
        assert_eq!(b.in_use(), 100, "a clone still holds the bytes");
        drop(a2);
        assert_eq!(b.in_use(), 40);
        drop(c);
        assert_eq!(b.in_use(), 0);
    }
}
