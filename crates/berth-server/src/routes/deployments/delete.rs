//! `DELETE /api/v1/deployments/{deployed_model}`.

use axum::extract::State;
use axum::Json;
use berth_api::deployment::DeploymentObject;
use berth_api::envelope::{ErrorBody, Success};
use berth_core::{Status, Timestamp};
use berth_store::DesiredChange;

use super::{load, object};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::Path;
use crate::request_id::RequestId;
use crate::state::AppState;

/// Marks the deployment `DELETING`; the reconciler stops its replicas and then removes it.
/// A second delete while deleting returns the same object.
#[utoipa::path(delete, path = "/api/v1/deployments/{deployed_model}", tag = "deployments",
    params(("deployed_model" = String, Path, min_length = 1, max_length = 73, description = "The deployment's `deployed_model`.")),
    responses((status = 200, body = inline(Success<DeploymentObject>)), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    RequestId(request_id): RequestId,
    Path(name): Path<String>,
) -> Result<Json<Success<DeploymentObject>>, ApiError> {
    let current = load(&state, &caller, &name).await?;
    if current.status == Status::Deleting {
        return Ok(Json(Success {
            request_id,
            output: object(&current),
        }));
    }
    let updated = state
        .store
        .change_deployment(
            &caller.workspace_id,
            &name,
            DesiredChange::Delete,
            &caller.key_id,
            Timestamp::now(),
        )
        .await?
        .ok_or_else(|| ApiError::model_not_found(&name))?;
    tracing::info!(deployment = %name, "deployment deleting");
    state.nudge.nudge();
    Ok(Json(Success {
        request_id,
        output: object(&updated),
    }))
}
