//! `GET /api/v1/deployments/{deployed_model}/stats`: the deployment's calls over the last five
//! minutes in 10-second intervals (requests, errors, throttled, mean time to first token and
//! duration, tokens), as the gateway measured them. Scoped to the caller's workspace like every
//! deployment route; the console draws its charts from it.

use axum::extract::State;
use axum::Json;
use berth_api::envelope::{ErrorBody, Success};
use berth_api::stats::{interval_starts, DeploymentStats, StatsPoint, INTERVAL_SECS};

use super::load;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::Path;
use crate::request_id::RequestId;
use crate::state::AppState;

/// The deployment's recent calls, oldest interval first.
#[utoipa::path(get, path = "/api/v1/deployments/{deployed_model}/stats", tag = "deployments",
    params(("deployed_model" = String, Path, min_length = 1, max_length = 73, description = "The deployment's `deployed_model`.")),
    responses((status = 200, body = inline(Success<DeploymentStats>)), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn stats(
    State(state): State<AppState>,
    caller: Caller,
    RequestId(request_id): RequestId,
    Path(name): Path<String>,
) -> Result<Json<Success<DeploymentStats>>, ApiError> {
    let d = load(&state, &caller, &name).await?;
    // A deployment the gateway has not routed yet has had no calls.
    let points = state
        .gateway
        .stats(&caller.workspace_id, &d.deployed_model)
        .unwrap_or_else(|| empty(now()));
    Ok(Json(Success {
        request_id,
        output: DeploymentStats {
            deployed_model: d.deployed_model,
            interval_secs: INTERVAL_SECS,
            points,
        },
    }))
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn empty(now: u64) -> Vec<StatsPoint> {
    interval_starts(now)
        .map(|start| StatsPoint {
            start,
            ..StatsPoint::default()
        })
        .collect()
}
