//! `GET /v1/events/stream`: the store's events as Server-Sent Events, one per event, `id:` its
//! revision so a client that reconnects with `Last-Event-ID` misses nothing and sees nothing
//! twice. Tenant-filtered like `GET /v1/events`, which stays for clients that poll.
//!
//! Bounds: at most [`MAX_STREAMS`] streams at once (503 beyond, the connection slots stay for
//! ordinary calls); each holds at most one page of events ([`PAGE`]) in memory, and reads the
//! next page only once the connection has taken the last, so a slow reader slows only itself.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use drover_api::views::StreamQuery;
use futures_util::stream::unfold;
use tokio_util::sync::CancellationToken;

use crate::api::{ApiError, Tenant};
use crate::daemon::Controller;
use crate::service::ServiceError;
use crate::store::Event;

/// Most event streams open at once.
pub const MAX_STREAMS: usize = 256;
/// Events read from the store at a time for one stream.
pub const PAGE: usize = 500;
/// A comment line this often keeps proxies and the client's idle timers from closing a quiet
/// stream.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Cancelled when the API stops serving (shutdown, or a leader stepping down): open streams end,
/// so the connection can close, and clients resume elsewhere.
#[derive(Debug, Clone)]
pub struct Stopping(pub CancellationToken);

static OPEN: AtomicUsize = AtomicUsize::new(0);

/// Streams open now.
pub fn open_streams() -> usize {
    OPEN.load(Ordering::Acquire)
}

/// Counts a stream as open until dropped.
struct Slot;

impl Slot {
    fn take() -> Option<Self> {
        OPEN.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < MAX_STREAMS).then_some(n + 1))
            .ok()
            .map(|_| Self)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        OPEN.fetch_sub(1, Ordering::AcqRel);
    }
}

struct Cursor {
    controller: Arc<Controller>,
    /// `None` for admin: every tenant's events.
    tenant: Option<String>,
    after: u64,
    ready: VecDeque<Event>,
    revisions: tokio::sync::watch::Receiver<u64>,
    stopping: CancellationToken,
    _slot: Slot,
}

impl Cursor {
    /// The next event, waiting for one if there is none yet; `None` once the controller stops
    /// publishing (it is shutting down or stepping down), which ends the stream.
    async fn next(&mut self) -> Option<Result<Event, ServiceError>> {
        loop {
            if let Some(e) = self.ready.pop_front() {
                return Some(Ok(e));
            }
            // Mark the current revision seen before reading, so a write that lands after the
            // read wakes us.
            self.revisions.borrow_and_update();
            let (after, tenant) = (self.after, self.tenant.clone());
            let page = self.controller.blocking(move |c| c.service().events_page(tenant.as_deref(), after, PAGE)).await;
            match page {
                Err(e) => return Some(Err(e)),
                Ok((events, last)) => {
                    let scanned = last != self.after;
                    self.after = last;
                    self.ready.extend(events);
                    // Other tenants' pages: read on without waiting.
                    if scanned {
                        continue;
                    }
                }
            }
            tokio::select! {
                changed = self.revisions.changed() => changed.ok()?,
                () = self.stopping.cancelled() => return None,
            }
        }
    }
}

/// The revision a client resumes after: `Last-Event-ID` if it sent one, else `?after=`.
fn resume_after(headers: &HeaderMap, query: &StreamQuery) -> Result<u64, ApiError> {
    match headers.get("last-event-id") {
        None => Ok(query.after),
        Some(v) => v.to_str().ok().and_then(|s| s.trim().parse().ok()).ok_or_else(|| {
            ApiError::new(StatusCode::BAD_REQUEST, "Last-Event-ID must be an event's revision (a whole number)")
        }),
    }
}

/// The route's handler.
#[utoipa::path(get, path = "/v1/events/stream", tag = "cluster",
    params(
        drover_api::views::StreamQuery,
        crate::openapi::LastEventIdHeader,
        crate::openapi::TenantHeader,
    ),
    responses(
        (status = 200, description = "Server-Sent Events: `id:` the revision, `data:` the event as JSON (as in `/v1/events`); history first, then live", body = crate::openapi::StreamEvent, content_type = "text/event-stream"),
        (status = 400, description = "`Last-Event-ID` is not a revision", body = drover_api::views::ErrorView),
        (status = 503, description = "Too many streams open", body = drover_api::views::ErrorView),
    )
)]
pub async fn stream(
    State(controller): State<Arc<Controller>>,
    Tenant(tenant): Tenant,
    Extension(Stopping(stopping)): Extension<Stopping>,
    headers: HeaderMap,
    Query(query): Query<StreamQuery>,
) -> Result<Response, ApiError> {
    let after = resume_after(&headers, &query)?;
    let Some(slot) = Slot::take() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{MAX_STREAMS} event streams are open already; poll GET /v1/events?wait_ms=30000 instead"),
        ));
    };
    let cursor = Cursor {
        revisions: controller.watch_revision(),
        controller,
        tenant: crate::api::scope(&tenant).map(str::to_owned),
        after,
        ready: VecDeque::new(),
        stopping,
        _slot: slot,
    };
    let events = unfold(cursor, |mut cursor| async move {
        let event = match cursor.next().await? {
            Ok(e) => e,
            Err(e) => {
                // The store failed: end the stream; the client resumes from its last id.
                tracing::warn!(error = %e, "event stream ended by a store error");
                return None;
            }
        };
        let data = serde_json::to_string(&event).unwrap_or_default();
        let sse = SseEvent::default().id(event.revision.to_string()).data(data);
        Some((Ok::<_, Infallible>(sse), cursor))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive")).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resuming_client_is_taken_at_its_word_and_a_bad_id_refused() {
        let mut h = HeaderMap::new();
        assert_eq!(resume_after(&h, &StreamQuery { after: 5 }).unwrap(), 5);
        h.insert("last-event-id", "42".parse().unwrap());
        assert_eq!(resume_after(&h, &StreamQuery { after: 5 }).unwrap(), 42);
        h.insert("last-event-id", "x".parse().unwrap());
        assert!(resume_after(&h, &StreamQuery::default()).is_err());
    }

    #[test]
    fn streams_are_bounded_and_a_closed_one_frees_its_slot() {
        let held: Vec<Slot> = std::iter::from_fn(Slot::take).take(MAX_STREAMS + 1).collect();
        assert!(held.len() <= MAX_STREAMS);
        assert!(Slot::take().is_none());
        drop(held);
        assert!(Slot::take().is_some());
    }
}
