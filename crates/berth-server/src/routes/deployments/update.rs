//! `PUT /api/v1/deployments/{deployed_model}/update`: rate limits and autoscaling.

use axum::extract::State;
use axum::Json as AxumJson;
use berth_api::deployment::{DeploymentObject, UpdateRequest};
use berth_api::envelope::{ErrorBody, Success};
use berth_core::Timestamp;
use berth_store::DesiredChange;

use super::{
    check_quota, load, object, parse_autoscaling, quota_units, rate_limit, refuse_if_deleting,
};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{Json, Path};
use crate::request_id::RequestId;
use crate::state::AppState;

/// Changes `rpm_limit` and/or `tpm_limit`, and turns autoscaling on (an object: `capacity` is
/// brought within its bounds), changes it, or off (`null`); nothing restarts.
#[utoipa::path(put, path = "/api/v1/deployments/{deployed_model}/update", tag = "deployments",
    params(("deployed_model" = String, Path, min_length = 1, max_length = 73, description = "The deployment's `deployed_model`.")), request_body = UpdateRequest,
    responses((status = 200, body = inline(Success<DeploymentObject>)), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    RequestId(request_id): RequestId,
    Path(name): Path<String>,
    Json(req): Json<UpdateRequest>,
) -> Result<AxumJson<Success<DeploymentObject>>, ApiError> {
    let current = load(&state, &caller, &name).await?;
    let rpm_limit = rate_limit(req.rpm_limit.as_ref(), "rpm_limit")?;
    let tpm_limit = rate_limit(req.tpm_limit.as_ref(), "tpm_limit")?;
    let autoscaling = req
        .autoscaling
        .as_ref()
        .map(|raw| parse_autoscaling(Some(raw), current.base_capacity))
        .transpose()?;
    if rpm_limit.is_none() && tpm_limit.is_none() && autoscaling.is_none() {
        return Err(ApiError::invalid(
            "Required parameter(rpm_limit, tpm_limit or autoscaling) missing or invalid, please check the request parameters.",
        ));
    }
    refuse_if_deleting(&current)?;
    // Autoscaling that may grow the deployment is checked against the quota, as a scale is.
    let quota_held = state.quotas.lock.lock().await;
    if let Some(Some(a)) = &autoscaling {
        let units = quota_units(a.clamp(current.capacity), Some(a));
        if units > quota_units(current.capacity, current.autoscaling.as_ref()) {
            check_quota(&state, &caller, false, Some(&name), units).await?;
        }
    }
    let updated = state
        .store
        .change_deployment(
            &caller.workspace_id,
            &name,
            DesiredChange::Limits {
                rpm_limit,
                tpm_limit,
                autoscaling,
            },
            &caller.key_id,
            Timestamp::now(),
        )
        .await?
        .ok_or_else(|| ApiError::model_not_found(&name))?;
    drop(quota_held);
    state.nudge.nudge();
    Ok(AxumJson(Success {
        request_id,
        output: object(&updated),
    }))
}
