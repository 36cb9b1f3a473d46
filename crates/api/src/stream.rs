//! The console's live view: `GET /api/v1/overview` (one snapshot) and
//! `GET /api/v1/stream`, server-sent events that carry a new `overview`
//! whenever it changes and every new site `event` (with its id, so a
//! reconnecting browser resumes after the last one it saw).
//!
//! The stream polls rather than subscribes: the overview is assembled from
//! the catalog, the partner monitor and the runners, which change in many
//! places, and a poll every [`TICK`] costs one status pass per open
//! console while keeping any change under a second from the screen.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::stream::Stream;
use offsite_api_types::Overview;
use tokio::sync::mpsc;

use crate::dto::ToDto;
use crate::{ApiResult, ApiState, Failure};

/// How often the stream looks for changes.
const TICK: Duration = Duration::from_millis(400);
/// Events one tick sends at most (a burst beyond waits for the next tick).
const EVENTS_PER_TICK: u32 = 200;

/// Assembles the overview: site, partners, groups.
pub(crate) async fn snapshot(s: &ApiState) -> Result<Overview, Failure> {
    let site = s.site.info().to_dto();
    let engine = s.site.clone();
    let partners = tokio::task::spawn_blocking(move || engine.partners())
        .await
        .map_err(|e| {
            Failure::Engine(offsite_engine::EngineError::Invalid(format!(
                "internal error: overview failed ({e}); see the daemon log"
            )))
        })?
        .map_err(Failure::Engine)?
        .to_dto();
    let partners = crate::dto::with_consoles(partners, &s.repl);
    let groups = s.repl.group_list().await.map_err(Failure::Repl)?.to_dto();
    Ok(Overview {
        site,
        partners,
        groups,
    })
}

#[utoipa::path(get, path = "/api/v1/overview", responses((status = 200, body = Overview)))]
pub(crate) async fn overview(State(s): State<ApiState>) -> ApiResult<Overview> {
    snapshot(&s).await.map(axum::Json)
}

#[utoipa::path(get, path = "/api/v1/stream",
    params(("Last-Event-ID" = Option<i64>, Header, description = "resume after this event id")),
    responses((status = 200, content_type = "text/event-stream",
        description = "server-sent events: `overview` (an Overview, whenever it changes) and `event` (each new site event, with its id)")))]
pub(crate) async fn stream(
    State(s): State<ApiState>,
    headers: HeaderMap,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let resume_after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok());
    let session = s.console.session_id(&headers).map(str::to_string);
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(feed(s, session, resume_after, tx));
    let events =
        futures_util::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) },
        );
    Sse::new(events).keep_alive(KeepAlive::default())
}

/// Feeds one stream until its browser goes away or its session ends.
async fn feed(
    s: ApiState,
    session: Option<String>,
    resume_after: Option<i64>,
    tx: mpsc::Sender<SseEvent>,
) {
    let mut last_overview = String::new();
    let mut last_event = match resume_after {
        Some(id) => id,
        None => newest_event_id(&s).await.unwrap_or(0),
    };
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stopping = s.stopping.clone();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            // The daemon stops: the stream ends (the browser reconnects to
            // the next daemon), so the listener's shutdown need not wait.
            // (`Err`: no listener will ever stop; the branch sleeps.)
            Ok(_) = stopping.wait_for(|stop| *stop) => return,
        }
        if tx.is_closed() {
            return;
        }
        // A logged-out or expired console stops hearing about the site;
        // watching does not count as use, so an unattended console still
        // times out.
        if let Some(id) = &session
            && !s.console.sessions().is_alive(id)
        {
            return;
        }
        match snapshot(&s).await {
            Ok(o) => {
                let json = serde_json::to_string(&o).unwrap_or_default();
                if json != last_overview {
                    let e = SseEvent::default().event("overview").data(&json);
                    if tx.send(e).await.is_err() {
                        return;
                    }
                    last_overview = json;
                }
            }
            Err(e) => tracing::debug!(error = %e.message(), "console stream: overview failed"),
        }
        match new_events(&s, last_event).await {
            Ok(events) => {
                for ev in events {
                    last_event = ev.id;
                    let json = serde_json::to_string(&ev).unwrap_or_default();
                    let e = SseEvent::default()
                        .event("event")
                        .id(ev.id.to_string())
                        .data(json);
                    if tx.send(e).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "console stream: events failed"),
        }
    }
}

async fn newest_event_id(s: &ApiState) -> Option<i64> {
    let site = s.site.clone();
    let newest = tokio::task::spawn_blocking(move || site.events(1))
        .await
        .ok()?;
    Some(newest.ok()?.last().map_or(0, |e| e.id))
}

/// Events newer than `after`, oldest first.
async fn new_events(
    s: &ApiState,
    after: i64,
) -> Result<Vec<offsite_api_types::Event>, offsite_engine::EngineError> {
    let site = s.site.clone();
    let recent = tokio::task::spawn_blocking(move || site.events(EVENTS_PER_TICK))
        .await
        .map_err(|e| offsite_engine::EngineError::Invalid(format!("event read failed ({e})")))??;
    Ok(recent
        .into_iter()
        .filter(|e| e.id > after)
        .map(|e| e.to_dto())
        .collect())
}
