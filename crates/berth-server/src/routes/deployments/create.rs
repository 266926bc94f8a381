//! `POST /api/v1/deployments`: create a deployment.

use axum::extract::State;
use axum::Json as AxumJson;
use berth_api::deployment::{CreateDeploymentRequest, DeploymentObject};
use berth_api::envelope::{ErrorBody, Success};
use berth_core::deployment::deployed_model_name;
use berth_core::{ErrorCode, NewDeployment, Suffix, Timestamp};
use berth_store::StoreError;

use super::{
    check_length, check_quota, check_within, object, parse_autoscaling, parse_capacity,
    quota_units, MAX_DEPLOY_SPEC, MAX_MODEL_NAME, MAX_NAME, MAX_RATE_LIMIT,
};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::Json;
use crate::request_id::RequestId;
use crate::state::AppState;

/// Creates a deployment; it starts `PENDING` and the reconciler brings its replicas up.
#[utoipa::path(post, path = "/api/v1/deployments", tag = "deployments",
    request_body = CreateDeploymentRequest,
    responses((status = 200, body = inline(Success<DeploymentObject>)),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    RequestId(request_id): RequestId,
    Json(req): Json<CreateDeploymentRequest>,
) -> Result<AxumJson<Success<DeploymentObject>>, ApiError> {
    check_length("model_name", &req.model_name, MAX_MODEL_NAME)?;
    let model = state
        .catalog
        .get(&req.model_name)
        .ok_or_else(|| ApiError::model_not_found(&req.model_name))?;
    match req.plan.as_deref() {
        None | Some("mu") => {}
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "Invalid plan ({}): berth supports the `mu` plan or no plan.",
                berth_core::deployment::shorten(other)
            )))
        }
    }
    let capacity = parse_capacity(req.capacity.as_ref(), model.base_capacity)?;
    let autoscaling = parse_autoscaling(req.autoscaling.as_ref(), model.base_capacity)?;
    if let Some(a) = &autoscaling {
        check_within(capacity.get(), a)?;
    }
    let suffix = req
        .suffix
        .as_deref()
        .map(Suffix::new)
        .transpose()
        .map_err(ApiError::invalid)?;
    if let Some(name) = &req.name {
        check_length("name", name, MAX_NAME)?;
    }
    if let Some(spec) = &req.deploy_spec {
        check_length("deploy_spec", spec, MAX_DEPLOY_SPEC)?;
    }
    for (field, v) in [("rpm_limit", req.rpm_limit), ("tpm_limit", req.tpm_limit)] {
        if let Some(v) = v.filter(|v| !(1..=MAX_RATE_LIMIT).contains(v)) {
            return Err(ApiError::invalid(format!(
                "Invalid {field} ({v}): it must be an integer from 1 to {MAX_RATE_LIMIT}."
            )));
        }
    }
    if let Some(n) = req.max_context_length {
        if n == 0 || n > model.context_length {
            return Err(ApiError::invalid(format!(
                "Invalid max_context_length ({n}): it must be from 1 to {}.",
                model.context_length
            )));
        }
    }
    let deployed_model = deployed_model_name(&req.model_name, suffix.as_ref());
    let new = NewDeployment {
        deployed_model: deployed_model.clone(),
        workspace_id: caller.workspace_id.clone(),
        model_name: model.model_name.clone(),
        base_model: model.model_name.clone(),
        name: req.name,
        plan: req.plan,
        model_unit_spec: req.deploy_spec,
        capacity,
        base_capacity: model.base_capacity,
        max_context_length: req.max_context_length,
        enable_thinking: req.enable_thinking,
        rpm_limit: req.rpm_limit,
        tpm_limit: req.tpm_limit,
        autoscaling,
        creator: caller.key_id.clone(),
        now: Timestamp::now(),
    };
    let quota_held = state.quotas.lock.lock().await;
    let units = quota_units(capacity.get(), autoscaling.as_ref());
    check_quota(&state, &caller, true, None, units).await?;
    let created = state.store.create_deployment(new).await;
    drop(quota_held);
    let created = match created {
        Ok(d) => d,
        Err(StoreError::Conflict(_)) => {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("Deployed model {deployed_model} already exists, please specify a suffix."),
            ))
        }
        Err(e) => return Err(e.into()),
    };
    tracing::info!(deployment = %created.deployed_model, workspace = %created.workspace_id, capacity = created.capacity, "deployment created");
    state.nudge.nudge();
    Ok(AxumJson(Success {
        request_id,
        output: object(&created),
    }))
}
