//! `GET /api/v1/deployments/{deployed_model}/replicas`: the deployment's replica processes as
//! the runtime sees them now (what the console's deployment page lists).

use std::collections::HashSet;

use axum::extract::State;
use axum::Json;
use berth_api::envelope::{ErrorBody, Success};
use berth_runtime::ReplicaState;
use serde::Serialize;
use utoipa::ToSchema;

use super::load;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::Path;
use crate::request_id::RequestId;
use crate::state::AppState;

/// One replica of a deployment.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReplicaObject {
    pub replica_id: String,
    /// `starting`, `ready`, `unhealthy` or `exited`.
    pub state: String,
    /// Whether the gateway sends it calls now: it passed readiness (it has generated) and is not
    /// being drained before a stop.
    pub ready: bool,
    /// When its process was started, `YYYY-MM-DDTHH:MM:SS.fff` UTC.
    pub started_at: String,
    /// Why it exited, for `exited`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The replicas of one deployment, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReplicasOutput {
    pub deployed_model: String,
    pub replicas: Vec<ReplicaObject>,
}

/// The deployment's replicas and their states.
#[utoipa::path(get, path = "/api/v1/deployments/{deployed_model}/replicas", tag = "deployments",
    params(("deployed_model" = String, Path, min_length = 1, max_length = 73, description = "The deployment's `deployed_model`.")),
    responses((status = 200, body = inline(Success<ReplicasOutput>)), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn replicas(
    State(state): State<AppState>,
    caller: Caller,
    RequestId(request_id): RequestId,
    Path(name): Path<String>,
) -> Result<Json<Success<ReplicasOutput>>, ApiError> {
    let d = load(&state, &caller, &name).await?;
    let mut seen: Vec<_> = (state.replicas)()
        .into_iter()
        .filter(|r| r.workspace_id == d.workspace_id && r.deployed_model == d.deployed_model)
        .collect();
    seen.sort_by(|a, b| (a.started_at, &a.id).cmp(&(b.started_at, &b.id)));
    // What the gateway routes to: ready replicas, less those being drained before a stop.
    let routed: HashSet<String> = state
        .gateway
        .deployments(&d.workspace_id)
        .iter()
        .filter(|e| e.deployed_model == d.deployed_model)
        .flat_map(|e| e.endpoints.iter().map(|x| x.replica_id.clone()))
        .collect();
    let replicas = seen
        .into_iter()
        .map(|r| {
            let (state, reason) = match r.state {
                ReplicaState::Starting => ("starting", None),
                ReplicaState::Ready => ("ready", None),
                ReplicaState::Unhealthy => ("unhealthy", None),
                ReplicaState::Exited { reason } => ("exited", Some(reason)),
            };
            let ready = routed.contains(&r.id);
            ReplicaObject {
                replica_id: r.id,
                state: state.to_owned(),
                ready,
                started_at: r.started_at.to_gmt_string(),
                reason,
            }
        })
        .collect();
    Ok(Json(Success {
        request_id,
        output: ReplicasOutput {
            deployed_model: d.deployed_model,
            replicas,
        },
    }))
}
