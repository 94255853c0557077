//! The client's side of the personal-data policy: every write path seals through [`PersonalData::protect`] before
//! the leaf hash is computed, every read opens after the cache (so no cache tier ever holds a plaintext personal
//! value, and an erasure is not undone by a cached page), every filter is translated to equality tokens.

use std::sync::Arc;

use audit_core::{AuditResult, EventFilter, NewEvent, Page, PersonalData, StoredEvent};

/// The policy installed on a client, if any.
pub(crate) type Privacy = Option<Arc<dyn PersonalData>>;

pub(crate) async fn protect(p: &Privacy, events: Vec<NewEvent>) -> AuditResult<Vec<NewEvent>> {
    match p {
        Some(p) => p.protect(events).await,
        None => Ok(events),
    }
}

pub(crate) async fn protect_one(p: &Privacy, event: NewEvent) -> AuditResult<NewEvent> {
    match p {
        Some(p) => Ok(p.protect(vec![event]).await?.pop().expect("one event in, one out")),
        None => Ok(event),
    }
}

pub(crate) async fn translate(p: &Privacy, mut filter: EventFilter) -> AuditResult<EventFilter> {
    if let Some(p) = p {
        p.translate_filter(&mut filter).await?;
    }
    Ok(filter)
}

pub(crate) async fn reveal(p: &Privacy, events: Vec<StoredEvent>) -> AuditResult<Vec<StoredEvent>> {
    match p {
        Some(p) => p.reveal(events).await,
        None => Ok(events),
    }
}

pub(crate) async fn reveal_page(p: &Privacy, page: Arc<Page>) -> AuditResult<Arc<Page>> {
    match p {
        Some(_) => {
            let events = reveal(p, page.events.clone()).await?;
            Ok(Arc::new(Page { events, next_cursor: page.next_cursor }))
        }
        None => Ok(page),
    }
}
