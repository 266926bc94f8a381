//! `PUT /api/v1/deployments/{deployed_model}/scale`.

use axum::extract::State;
use axum::Json as AxumJson;
use berth_api::deployment::{DeploymentObject, ScaleRequest};
use berth_api::envelope::{ErrorBody, Success};
use berth_core::Timestamp;
use berth_store::DesiredChange;

use super::{
    check_quota, check_within, load, object, parse_capacity, quota_units, refuse_if_deleting,
};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{Json, Path};
use crate::request_id::RequestId;
use crate::state::AppState;

/// Sets a new capacity target; the latest target wins. With autoscaling on, the target must
/// be within its bounds; the autoscaler goes on from it.
#[utoipa::path(put, path = "/api/v1/deployments/{deployed_model}/scale", tag = "deployments",
    params(("deployed_model" = String, Path, min_length = 1, max_length = 73, description = "The deployment's `deployed_model`.")), request_body = ScaleRequest,
    responses((status = 200, body = inline(Success<DeploymentObject>)), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn scale(
    State(state): State<AppState>,
    caller: Caller,
    RequestId(request_id): RequestId,
    Path(name): Path<String>,
    Json(req): Json<ScaleRequest>,
) -> Result<AxumJson<Success<DeploymentObject>>, ApiError> {
    let current = load(&state, &caller, &name).await?;
    let capacity = parse_capacity(req.capacity.as_ref(), current.base_capacity)?;
    refuse_if_deleting(&current)?;
    if let Some(a) = &current.autoscaling {
        // Within the bounds it is the autoscaler's new starting point.
        check_within(capacity.get(), a)?;
    }
    let quota_held = state.quotas.lock.lock().await;
    let units = quota_units(capacity.get(), current.autoscaling.as_ref());
    if units > quota_units(current.capacity, current.autoscaling.as_ref()) {
        // Scaling down is always allowed, even over a quota lowered since.
        check_quota(&state, &caller, false, Some(&name), units).await?;
    }
    let updated = state
        .store
        .change_deployment(
            &caller.workspace_id,
            &name,
            DesiredChange::Scale {
                capacity: capacity.get(),
            },
            &caller.key_id,
            Timestamp::now(),
        )
        .await?
        .ok_or_else(|| ApiError::model_not_found(&name))?;
    drop(quota_held);
    tracing::info!(deployment = %name, capacity = capacity.get(), "deployment scaled");
    state.nudge.nudge();
    Ok(AxumJson(Success {
        request_id,
        output: object(&updated),
    }))
}
