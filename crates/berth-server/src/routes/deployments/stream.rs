//! `GET /api/v1/deployments/{deployed_model}/stream` (the route the dashscope SDK's
//! `deployments.stream_events()` reads) and `GET /api/v1/events` (every deployment of the
//! caller's workspace): server-sent events of what changes.
//!
//! The first event is the current state, then one per change: `{"type": "deployment",
//! "deployment": {...}}` whenever a visible field changes (status, capacity, ready capacity,
//! limits, `autoscaling`, `status_message`, `fail_reason`), `{"type": "replica", "replica_id",
//! "state", "reason"}` when a replica starts, becomes ready or unhealthy, exits or is stopped,
//! `{"type": "autoscale", ...}` with the signals of each autoscaler decision, and
//! `{"type": "deleted", "deployed_model"}` when the deployment is gone, after which a
//! deployment's stream ends. Each `data:` is one line of JSON; a comment keeps idle streams
//! alive every 15 s. Scoped to the caller's workspace like every other route.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use berth_api::envelope::ErrorBody;
use berth_control::Event;
use futures::stream::Stream;
use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;

use super::{load, object};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::Path;
use crate::state::AppState;

const KEEP_ALIVE: Duration = Duration::from_secs(15);

fn data(v: Value) -> Result<SseEvent, Infallible> {
    Ok(SseEvent::default().data(v.to_string()))
}

fn to_json(event: &Event) -> Value {
    match event {
        Event::Deployment(d) => json!({"type": "deployment", "deployment": object(d)}),
        Event::Replica {
            deployed_model,
            replica_id,
            state,
            reason,
            ..
        } => json!({"type": "replica", "deployed_model": deployed_model,
                    "replica_id": replica_id, "state": state, "reason": reason}),
        Event::Removed { deployed_model, .. } => {
            json!({"type": "deleted", "deployed_model": deployed_model})
        }
        Event::Autoscaled {
            deployed_model,
            from_capacity,
            to_capacity,
            direction,
            reason,
            in_flight,
            queued,
            stable_avg,
            panic_avg,
            ..
        } => json!({"type": "autoscale", "deployed_model": deployed_model,
                    "from_capacity": from_capacity, "to_capacity": to_capacity,
                    "direction": direction, "reason": reason, "in_flight": in_flight,
                    "queued": queued, "stable_avg": stable_avg, "panic_avg": panic_avg}),
    }
}

/// Live events of one deployment, starting with its current state.
#[utoipa::path(get, path = "/api/v1/deployments/{deployed_model}/stream", tag = "deployments",
    params(("deployed_model" = String, Path)),
    responses((status = 200, description = "server-sent events, one JSON object per `data:` line", content_type = "text/event-stream", body = String),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn stream(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    // Subscribe before reading, so no change between the two is missed.
    let mut rx = state.events.subscribe();
    let current = load(&state, &caller, &name).await?;
    let workspace = caller.workspace_id.clone();
    let events = async_stream(move |tx| async move {
        if tx
            .send(data(
                json!({"type": "deployment", "deployment": object(&current)}),
            ))
            .is_err()
        {
            return;
        }
        loop {
            let event = match rx.recv().await {
                Ok(e) => e,
                Err(RecvError::Lagged(_)) => {
                    // Missed some: say where things stand now.
                    match state.store.get_deployment(&workspace, &name).await {
                        Ok(Some(d)) => Event::Deployment(std::sync::Arc::new(d)),
                        _ => Event::Removed {
                            workspace_id: workspace.clone(),
                            deployed_model: name.clone(),
                        },
                    }
                }
                Err(RecvError::Closed) => return,
            };
            if event.key() != (workspace.as_str(), name.as_str()) {
                continue;
            }
            let end = matches!(event, Event::Removed { .. });
            if tx.send(data(to_json(&event))).is_err() || end {
                return;
            }
        }
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

/// Live events of every deployment of the caller's workspace, starting with each one's current
/// state.
#[utoipa::path(get, path = "/api/v1/events", tag = "deployments",
    responses((status = 200, description = "server-sent events, one JSON object per `data:` line", content_type = "text/event-stream", body = String),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn workspace_events(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let mut rx = state.events.subscribe();
    let workspace = caller.workspace_id.clone();
    let (current, _) = state
        .store
        .list_deployments(&workspace, 0, u64::MAX)
        .await?;
    let events = async_stream(move |tx| async move {
        for d in current.iter().rev() {
            if tx
                .send(data(json!({"type": "deployment", "deployment": object(d)})))
                .is_err()
            {
                return;
            }
        }
        loop {
            let event = match rx.recv().await {
                Ok(e) => e,
                Err(RecvError::Lagged(n)) => {
                    let note = json!({"type": "lagged", "missed": n});
                    if tx.send(data(note)).is_err() {
                        return;
                    }
                    continue;
                }
                Err(RecvError::Closed) => return,
            };
            if event.key().0 != workspace {
                continue;
            }
            if tx.send(data(to_json(&event))).is_err() {
                return;
            }
        }
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

/// A stream fed by a task: the task ends when the client goes away (its sends fail).
fn async_stream<F, Fut>(body: F) -> impl Stream<Item = Result<SseEvent, Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::UnboundedSender<Result<SseEvent, Infallible>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(body(tx));
    tokio_stream::wrappers::UnboundedReceiverStream::new(rx)
}
