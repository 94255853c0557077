//! `/v1/events`: writing (one, an array, or a streamed NDJSON batch) and reading (filtered pages, one event).

use std::collections::VecDeque;
use std::sync::Arc;

use audit_client::{Ack, BatchItem, BatchReport};
use audit_core::{CommitLsn, NewEvent, ValidationError};
use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use futures::StreamExt as _;
use futures::stream::BoxStream;
use serde_json::{Value, json};

use super::{ApiError, COMMIT_LSN_HEADER, Caller, ServiceState, consistency_of};
use crate::api_keys::Scope;
use crate::filter_params::{FilterParams, ParamNames};

/// Most lines of a streamed batch stored per transaction: the library's own transaction size for `insert_batch`
/// (10,000), so a batch of small events over HTTP costs the database what the same rows cost through the library.
const BATCH_CHUNK: usize = 10_000;
/// Most NDJSON bytes of a streamed batch read ahead of the store: a chunk ends at whichever of this and
/// [`BATCH_CHUNK`] comes first. A parsed event takes several times its text in memory, so this (not the body's
/// length) bounds what one streamed request holds while the rest of its body waits in the socket. Smaller chunks
/// cost throughput: every chunk is a transaction that locks and advances the head of each organisation it holds.
const BATCH_CHUNK_BYTES: usize = 1024 * 1024;

/// A refused JSON body, keeping 413 for an oversized one.
pub(crate) fn json_rejection(e: JsonRejection) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            "Request body too large",
            e.body_text(),
        );
    }
    ApiError::bad_request(format!("body: {}", e.body_text()))
}

/// A refused raw body, keeping 413 for an oversized one (as a problem, like every other error).
pub(crate) fn bytes_rejection(e: BytesRejection) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            "Request body too large",
            format!("body: {}", e.body_text()),
        );
    }
    ApiError::bad_request(format!("body: {}", e.body_text()))
}

/// A refused query string (unknown parameters are named by serde).
pub(crate) fn query_rejection(e: QueryRejection) -> ApiError {
    ApiError::bad_request(format!("query: {}", e.body_text()))
}

/// A refused path parameter.
pub(crate) fn path_rejection(e: PathRejection) -> ApiError {
    ApiError::bad_request(format!("path: {}", e.body_text()))
}

fn with_lsn(mut r: Response, lsn: Option<CommitLsn>) -> Response {
    if let Some(l) = lsn
        && let Ok(v) = HeaderValue::from_str(&l.to_string())
    {
        r.headers_mut().insert(COMMIT_LSN_HEADER, v);
    }
    r
}

/// Applies the key's organisation binding to one JSON event (a missing `organization_id` becomes the key's).
fn bind_org(caller: &Caller, event: &mut Value) -> Result<(), String> {
    let Some(obj) = event.as_object_mut() else { return Ok(()) };
    let given = match obj.get("organization_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Ok(()), // the validator names the wrong type
    };
    if let Some(org) = caller.write_org(given.as_deref())? {
        obj.insert("organization_id".into(), Value::String(org));
    }
    Ok(())
}

fn item_json(index: usize, item: &BatchItem) -> Value {
    let mut v = match item {
        BatchItem::Ok(ack) => serde_json::to_value(ack).unwrap_or_default(),
        BatchItem::Rejected(r) => json!({"result": "rejected", "error": r.reason}),
    };
    v["index"] = json!(index);
    v
}

/// `POST /v1/events`: one event (201 with its ack) or a JSON array (201, or 207 when some were rejected; the
/// valid ones are stored). Answered after the durable commit; `X-Audit-Commit-LSN` carries the commit's position.
#[utoipa::path(post, path = "/v1/events", tag = "events", security(("bearer" = [])),
    request_body(content = super::openapi::EventsInput, description = "One event or an array of events"),
    responses(
        (status = 201, description = "Stored (or already stored)", body = super::openapi::EventsOutput,
         headers(("X-Audit-Commit-LSN" = String, description = "WAL position of the commit"))),
        (status = 207, description = "Some array items rejected, the others stored", body = super::openapi::BatchOutput),
        (status = 400, description = "Invalid event", body = super::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or unknown key", body = super::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Wrong scope or organisation", body = super::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large; nothing stored", body = super::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Insert queue or in-flight body budget full; nothing stored; retry after Retry-After", body = super::Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable", body = super::Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn post_events(
    State(s): State<Arc<ServiceState>>,
    caller: Caller,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Response, ApiError> {
    caller.require(Scope::Ingest)?;
    let Json(body) = body.map_err(json_rejection)?;
    Ok(match body {
        Value::Array(mut items) => {
            for (i, item) in items.iter_mut().enumerate() {
                bind_org(&caller, item).map_err(|e| super::auth::forbidden(format!("[{i}].{e}")))?;
            }
            let report: BatchReport = s.client.insert_batch(items).await?;
            let items: Vec<Value> = report.items.iter().enumerate().map(|(i, it)| item_json(i, it)).collect();
            let code = if report.rejected() > 0 { StatusCode::MULTI_STATUS } else { StatusCode::CREATED };
            let body = json!({
                "accepted": report.accepted(), "duplicates": report.duplicates(), "rejected": report.rejected(),
                "commit_lsn": report.commit_lsn, "items": items,
            });
            with_lsn((code, Json(body)).into_response(), report.commit_lsn)
        }
        mut single => {
            bind_org(&caller, &mut single).map_err(super::auth::forbidden)?;
            let ack: Ack = s.client.insert(single).await?;
            let lsn = ack.commit_lsn();
            with_lsn((StatusCode::CREATED, Json(ack)).into_response(), lsn)
        }
    })
}

/// The state of one streamed batch.
struct BatchStream {
    body: BoxStream<'static, Result<Bytes, axum::Error>>,
    /// This request's bytes of the in-flight body budget, held until the last result line is written.
    _budget: Option<super::budget::BodyReservation>,
    state: Arc<ServiceState>,
    caller: Caller,
    /// Bytes after the last newline.
    partial: Vec<u8>,
    /// Complete lines not stored yet, with their numbers.
    lines: VecDeque<(u64, Vec<u8>)>,
    line_no: u64,
    read: usize,
    eof: bool,
    finished: bool,
    accepted: u64,
    rejected: u64,
    duplicates: u64,
    commit_lsn: Option<CommitLsn>,
}

impl BatchStream {
    fn split(&mut self, bytes: &[u8]) {
        self.partial.extend_from_slice(bytes);
        let Some(last) = self.partial.iter().rposition(|b| *b == b'\n') else { return };
        let rest = self.partial.split_off(last + 1);
        let complete = std::mem::replace(&mut self.partial, rest);
        for line in complete[..complete.len() - 1].split(|b| *b == b'\n') {
            self.line_no += 1;
            self.lines.push_back((self.line_no, line.to_vec()));
        }
    }

    /// NDJSON bytes read and not stored yet (once per body chunk read: a few thousand lines at most).
    fn pending_bytes(&self) -> usize {
        self.lines.iter().map(|(_, l)| l.len()).sum()
    }

    /// Reads until a chunk of lines is ready or the body ends; an error of the body (too large, cut off) is
    /// returned as the problem that ends the stream.
    async fn fill(&mut self) -> Option<ApiError> {
        while self.lines.len() < BATCH_CHUNK && self.pending_bytes() < BATCH_CHUNK_BYTES && !self.eof {
            match self.body.next().await {
                Some(Ok(bytes)) => {
                    self.read += bytes.len();
                    if self.read > self.state.api.body_limit_bytes {
                        self.eof = true;
                        return Some(ApiError::new(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "payload-too-large",
                            "Request body too large",
                            format!(
                                "body: more than {} bytes; lines after {} were not read",
                                self.state.api.body_limit_bytes, self.line_no
                            ),
                        ));
                    }
                    self.split(&bytes);
                }
                Some(Err(e)) => {
                    self.eof = true;
                    return Some(ApiError::bad_request(format!(
                        "body: reading failed after line {}: {e}",
                        self.line_no
                    )));
                }
                None => {
                    self.eof = true;
                    if !self.partial.is_empty() {
                        self.line_no += 1;
                        let last = std::mem::take(&mut self.partial);
                        self.lines.push_back((self.line_no, last));
                    }
                }
            }
        }
        None
    }

    /// Validates, binds and stores the next chunk of lines; returns their result lines.
    async fn store_chunk(&mut self) -> Result<Vec<u8>, ApiError> {
        // Whole lines up to the chunk's bounds (at least one, however long).
        let (mut take, mut bytes) = (0, 0);
        for (_, line) in &self.lines {
            if take == BATCH_CHUNK || (take > 0 && bytes + line.len() > BATCH_CHUNK_BYTES) {
                break;
            }
            take += 1;
            bytes += line.len();
        }
        let now = Utc::now();
        let validator = self.state.client.validator().clone();
        // Each line: `None` when it goes to the store (in order), or why it was refused here.
        let mut numbered: Vec<(u64, Option<String>)> = Vec::with_capacity(take);
        let mut to_store: Vec<Result<NewEvent, ValidationError>> = Vec::with_capacity(take);
        for (n, raw) in self.lines.drain(..take) {
            let Ok(text) = std::str::from_utf8(&raw) else {
                numbered.push((n, Some("line is not UTF-8".into())));
                continue;
            };
            if text.trim().is_empty() {
                continue;
            }
            match validator.validate_str(text, now) {
                Ok(mut e) => match self.caller.write_org(e.organization_id.as_deref()) {
                    Ok(org) => {
                        e.organization_id = org;
                        numbered.push((n, None));
                        to_store.push(Ok(e));
                    }
                    Err(reason) => numbered.push((n, Some(reason))),
                },
                Err(e) => {
                    numbered.push((n, None));
                    to_store.push(Err(e));
                }
            }
        }
        let report = if to_store.is_empty() {
            BatchReport::default()
        } else {
            self.state.client.insert_validated(to_store).await?
        };
        self.commit_lsn = self.commit_lsn.max(report.commit_lsn);
        let mut items = report.items.iter();
        let mut out = Vec::new();
        for (n, l) in &numbered {
            let v = match l {
                Some(reason) => {
                    self.rejected += 1;
                    json!({"line": n, "result": "rejected", "error": format!("line {n}: {reason}")})
                }
                None => {
                    let Some(item) = items.next() else { break };
                    match item {
                        BatchItem::Ok(Ack::Stored { .. }) => self.accepted += 1,
                        BatchItem::Ok(Ack::Duplicate { .. }) => self.duplicates += 1,
                        BatchItem::Rejected(_) => self.rejected += 1,
                    }
                    let mut v = item_json(0, item);
                    if let Some(o) = v.as_object_mut() {
                        o.remove("index");
                        if let Some(e) = o.get("error").and_then(Value::as_str) {
                            let e = format!("line {n}: {e}");
                            o.insert("error".into(), json!(e));
                        }
                    }
                    v["line"] = json!(n);
                    v
                }
            };
            serde_json::to_writer(&mut out, &v)
                .map_err(|e| ApiError::from(audit_core::AuditError::permanent(e.to_string())))?;
            out.push(b'\n');
        }
        Ok(out)
    }

    fn summary(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec(&json!({
            "summary": {"accepted": self.accepted, "rejected": self.rejected, "duplicates": self.duplicates,
                        "commit_lsn": self.commit_lsn},
        }))
        .unwrap_or_default();
        out.push(b'\n');
        out
    }

    fn problem_line(&self, e: &ApiError) -> Vec<u8> {
        let mut out = serde_json::to_vec(&json!({"error": e.problem()})).unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// The next piece of the response: a chunk's result lines, then the summary.
    async fn next_piece(&mut self) -> Option<Vec<u8>> {
        if self.finished {
            return None;
        }
        if let Some(problem) = self.fill().await {
            // Store what was read completely, then report the problem and the summary.
            let mut out = Vec::new();
            while !self.lines.is_empty() {
                match self.store_chunk().await {
                    Ok(b) => out.extend(b),
                    Err(e) => {
                        out.extend(self.problem_line(&e));
                        self.lines.clear();
                    }
                }
            }
            out.extend(self.problem_line(&problem));
            out.extend(self.summary());
            self.finished = true;
            return Some(out);
        }
        if self.lines.is_empty() {
            self.finished = true;
            return Some(self.summary());
        }
        match self.store_chunk().await {
            Ok(b) => Some(b),
            Err(e) => {
                let mut out = self.problem_line(&e);
                out.extend(self.summary());
                self.finished = true;
                Some(out)
            }
        }
    }
}

/// `POST /v1/events:batch`: NDJSON in, streamed NDJSON out — one result line per input line (`line`, `result`,
/// `event_id`, `id`, `seq`, or `error` naming the field) written after that line's transaction committed, then a
/// `summary` line. A bad line never blocks the others.
#[utoipa::path(post, path = "/v1/events:batch", tag = "events", security(("bearer" = [])),
    request_body(content = String, content_type = "application/x-ndjson", description = "One event per line"),
    responses(
        (status = 200, description = "Per-line results, then a summary line", content_type = "application/x-ndjson", body = String),
        (status = 401, description = "No or unknown key", body = super::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Key lacks the ingest scope", body = super::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large; nothing stored", body = super::Problem, content_type = "application/problem+json"),
        (status = 429, description = "In-flight body budget (api.inflightBodyBytes) full; nothing stored; retry after Retry-After", body = super::Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn post_batch(
    State(s): State<Arc<ServiceState>>,
    caller: Caller,
    budget: Option<axum::Extension<super::budget::BodyReservation>>,
    body: Body,
) -> Result<Response, ApiError> {
    caller.require(Scope::Ingest)?;
    let stream = BatchStream {
        body: body.into_data_stream().boxed(),
        _budget: budget.map(|axum::Extension(b)| b),
        state: s,
        caller,
        partial: Vec::new(),
        lines: VecDeque::new(),
        line_no: 0,
        read: 0,
        eof: false,
        finished: false,
        accepted: 0,
        rejected: 0,
        duplicates: 0,
        commit_lsn: None,
    };
    let out = futures::stream::unfold(stream, |mut st| async move {
        st.next_piece().await.map(|b| (Ok::<_, std::convert::Infallible>(Bytes::from(b)), st))
    });
    let mut r = Body::from_stream(out).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    Ok(r)
}

/// The FHIR JSON media type (`Accept` and `Content-Type`).
pub(crate) const FHIR_JSON: &str = "application/fhir+json";
/// Response header of a FHIR page: the cursor of the next page (`after=`), absent on the last.
const NEXT_CURSOR_HEADER: &str = "x-audit-next-cursor";

/// Splits `format` off a query string (it chooses the representation, not the events) and parses the rest as the
/// filter, unknown parameters refused by name as before.
fn split_format(query: Option<&str>) -> Result<(Option<String>, FilterParams), ApiError> {
    let mut format = None;
    let mut rest = Vec::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("format", v)) => format = Some(v.to_ascii_lowercase()),
            None if pair == "format" => format = Some(String::new()),
            _ => rest.push(pair),
        }
    }
    let uri: axum::http::Uri = format!("/?{}", rest.join("&"))
        .parse()
        .map_err(|_| ApiError::bad_request("query: not a valid query string"))?;
    let Query(params) = Query::<FilterParams>::try_from_uri(&uri).map_err(query_rejection)?;
    Ok((format, params))
}

/// `Bundle.link` of a FHIR page: `self` (this page) and, unless it is the last, `next` (the same query after the
/// page's last event), as FHIR search paging gives them. Absolute-path URLs with `format=fhir`, so following one
/// gives FHIR whatever the client's `Accept`; the other parameters exactly as the client sent them.
fn page_links(query: Option<&str>, next: Option<&str>) -> Vec<audit_fhir::BundleLink> {
    let key = |p: &str| p.split_once('=').map_or(p, |(k, _)| k).to_string();
    let pairs: Vec<&str> = query.unwrap_or("").split('&').filter(|p| !p.is_empty()).collect();
    let kept: Vec<&str> = pairs.iter().copied().filter(|p| !matches!(key(p).as_str(), "format" | "after")).collect();
    let current = pairs.iter().find(|p| key(p) == "after").and_then(|p| p.split_once('=')).map(|(_, v)| v);
    let url = |after: Option<&str>| {
        let mut parts: Vec<String> = kept.iter().map(|p| p.to_string()).collect();
        parts.push("format=fhir".into());
        parts.extend(after.map(|c| format!("after={c}")));
        format!("/v1/events?{}", parts.join("&"))
    };
    let mut links = vec![audit_fhir::BundleLink { relation: "self".into(), url: url(current) }];
    if let Some(c) = next {
        links.push(audit_fhir::BundleLink { relation: "next".into(), url: url(Some(c)) });
    }
    links
}

/// `GET /v1/events`: every filter of `audit-db query` under the same names (snake case), newest first, with a
/// keyset cursor. A key sees only its organisation's events; an unknown parameter is refused, naming it.
#[utoipa::path(get, path = "/v1/events", tag = "events", security(("bearer" = [])),
    params(FilterParams,
        ("format" = Option<String>, Query, description = "json (default) or fhir: a FHIR R4 Bundle (type collection) of AuditEvents, as `audit-db export --format fhir`, with paging links (Bundle.link `self`, and `next` unless this is the last page); `Accept: application/fhir+json` asks the same"),
        ("X-Audit-Min-LSN" = Option<String>, Header, description = "WAL position the answer must include"),
        ("X-Audit-Consistency" = Option<String>, Header, description = "strong, read-your-writes, eventual, bounded-staleness:<ms>")),
    responses(
        (status = 200, description = "A page of events (FHIR: the page as a Bundle whose `next` link is the following page; its cursor also in X-Audit-Next-Cursor)",
         content((super::openapi::EventPage = "application/json"), (Object = "application/fhir+json"))),
        (status = 400, description = "Unknown or bad parameter, named", body = super::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or unknown key", body = super::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Wrong scope or another organisation", body = super::Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable", body = super::Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn list_events(
    State(s): State<Arc<ServiceState>>,
    caller: Caller,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    caller.require(Scope::Query)?;
    let (format, mut params) = split_format(query.as_deref())?;
    let fhir = match format.as_deref() {
        Some("fhir") => true,
        Some("json") => false,
        Some(other) => return Err(ApiError::bad_request(format!("format: `{other}` is not json or fhir"))),
        None => headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.split(',').any(|m| m.trim().starts_with(FHIR_JSON))),
    };
    params.org = caller.read_org("org", params.org.as_deref())?;
    let filter = params.to_filter(Utc::now(), ParamNames::Http)?;
    let consistency = consistency_of(&headers)?;
    let a = s.client.query_with(&filter, consistency).await?;
    let mut recorded = params.to_json();
    if fhir {
        recorded["format"] = json!("fhir");
    }
    s.record_access(&caller, "GET /v1/events", recorded).await?;
    if fhir {
        let ctx = audit_fhir::ExportContext { service: "audit-db".into(), bundle_timestamp: Some(Utc::now()) };
        let next = a.page.next_cursor.as_ref().map(|c| c.encode());
        let bundle = audit_fhir::bundle_page(&a.page.events, &ctx, page_links(query.as_deref(), next.as_deref()));
        let mut r = Json(bundle).into_response();
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
        if let Some(c) = a.page.next_cursor.as_ref().and_then(|c| HeaderValue::from_str(&c.encode()).ok()) {
            r.headers_mut().insert(NEXT_CURSOR_HEADER, c);
        }
        return Ok(r);
    }
    Ok(Json(json!({
        "events": a.page.events.iter().map(|e| e.to_json()).collect::<Vec<_>>(),
        "next_cursor": a.page.next_cursor.as_ref().map(|c| c.encode()),
    }))
    .into_response())
}

/// `GET /v1/events/{event_id}`: one event; 404 also when it belongs to another organisation (existence would leak).
#[utoipa::path(get, path = "/v1/events/{event_id}", tag = "events", security(("bearer" = [])),
    params(("event_id" = uuid::Uuid, Path, description = "The event's id"),
        ("X-Audit-Min-LSN" = Option<String>, Header, description = "WAL position the answer must include")),
    responses(
        (status = 200, description = "The event", body = super::openapi::StoredEventDoc),
        (status = 400, description = "Bad id or header", body = super::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or unknown key", body = super::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Key lacks the query scope", body = super::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such event for this key", body = super::Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable", body = super::Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn get_event(
    State(s): State<Arc<ServiceState>>,
    caller: Caller,
    headers: HeaderMap,
    id: Result<Path<uuid::Uuid>, PathRejection>,
) -> Result<Response, ApiError> {
    caller.require(Scope::Query)?;
    let Path(id) = id.map_err(path_rejection)?;
    let consistency = consistency_of(&headers)?;
    let event = visible_event(&s, &caller, id, consistency).await?;
    s.record_access(&caller, "GET /v1/events/{event_id}", json!({"event_id": id})).await?;
    Ok(Json(event.to_json()).into_response())
}

/// `POST /fhir/AuditEvent`: FHIR R4 input — one AuditEvent, a Bundle of them (any type) or bulk NDJSON — mapped as
/// `audit-db ingest --format fhir` maps it, bound to the key's organisation as `POST /v1/events`, and stored. One
/// result per resource (`at`: `resource`, `Bundle.entry[3]`, `line 7`); a bad one is named by its FHIR path and the
/// good ones beside it are stored. 201 when all were stored, 207 when some were rejected.
#[utoipa::path(post, path = "/fhir/AuditEvent", tag = "fhir", security(("bearer" = [])),
    request_body(content = Object, content_type = "application/fhir+json", description = "An AuditEvent, a Bundle of AuditEvents, or NDJSON (one AuditEvent per line)"),
    responses(
        (status = 201, description = "All stored (or already stored); per-resource results", body = Object),
        (status = 207, description = "Some rejected (named), the others stored", body = Object),
        (status = 400, description = "Body is not UTF-8 or holds no resource", body = super::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or unknown key", body = super::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Wrong scope or organisation", body = super::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large; nothing stored", body = super::Problem, content_type = "application/problem+json"),
        (status = 429, description = "In-flight body budget (api.inflightBodyBytes) full; nothing stored; retry after Retry-After", body = super::Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable", body = super::Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn post_fhir_audit_event(
    State(s): State<Arc<ServiceState>>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    caller.require(Scope::Ingest)?;
    let body = body.map_err(bytes_rejection)?;
    let text = std::str::from_utf8(&body).map_err(|_| ApiError::bad_request("body: not UTF-8"))?;
    let mapped = crate::fhir::fhir_events(text);
    if mapped.is_empty() {
        return Err(ApiError::bad_request("body: no AuditEvent resource"));
    }
    // Each resource: its label and either the index of its event in the batch or why it was refused here.
    let mut results: Vec<(String, Result<usize, String>)> = Vec::with_capacity(mapped.len());
    let mut to_store = Vec::new();
    for (at, m) in mapped {
        match m {
            Ok(mut event) => match bind_org(&caller, &mut event) {
                Ok(()) => {
                    results.push((at, Ok(to_store.len())));
                    to_store.push(event);
                }
                Err(e) => return Err(super::auth::forbidden(format!("{at}: {e}"))),
            },
            Err(e) => {
                let reason = format!("{at}: {e}");
                results.push((at, Err(reason)));
            }
        }
    }
    let report: BatchReport =
        if to_store.is_empty() { BatchReport::default() } else { s.client.insert_batch(to_store).await? };
    let (mut accepted, mut duplicates, mut rejected) = (0u64, 0u64, 0u64);
    let items: Vec<Value> = results
        .into_iter()
        .map(|(at, r)| {
            let mut v = match r {
                Ok(i) => match report.items.get(i) {
                    Some(item) => {
                        match item {
                            BatchItem::Ok(Ack::Stored { .. }) => accepted += 1,
                            BatchItem::Ok(Ack::Duplicate { .. }) => duplicates += 1,
                            BatchItem::Rejected(_) => rejected += 1,
                        }
                        let mut v = item_json(i, item);
                        if let Some(o) = v.as_object_mut() {
                            o.remove("index");
                            if let Some(e) = o.get("error").and_then(Value::as_str) {
                                let e = format!("{at}: {e}");
                                o.insert("error".into(), json!(e));
                            }
                        }
                        v
                    }
                    None => {
                        rejected += 1;
                        json!({"result": "rejected", "error": format!("{at}: no result from the store")})
                    }
                },
                Err(reason) => {
                    rejected += 1;
                    json!({"result": "rejected", "error": reason})
                }
            };
            v["at"] = json!(at);
            v
        })
        .collect();
    let code = if rejected > 0 { StatusCode::MULTI_STATUS } else { StatusCode::CREATED };
    let body = json!({"accepted": accepted, "duplicates": duplicates, "rejected": rejected,
                      "commit_lsn": report.commit_lsn, "items": items});
    Ok(with_lsn((code, Json(body)).into_response(), report.commit_lsn))
}

/// The event `id` when the caller may see it; 404 otherwise, the same answer as for an unknown id, so another
/// organisation's event is never confirmed to exist. One rule for every route that names an event.
pub(crate) async fn visible_event(
    s: &ServiceState,
    caller: &Caller,
    id: uuid::Uuid,
    consistency: audit_core::Consistency,
) -> Result<audit_core::StoredEvent, ApiError> {
    s.client
        .get_with(id, consistency)
        .await?
        .filter(|e| caller.may_see(e.event.organization_id.as_deref()))
        .ok_or_else(|| ApiError::from(audit_core::AuditError::not_found(format!("event_id: no event {id}"))))
}
