//! `GET /api/v1/deployments/{deployed_model}`.

use axum::extract::State;
use axum::Json;
use berth_api::deployment::DeploymentObject;
use berth_api::envelope::{ErrorBody, Success};

use super::{load, object};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::Path;
use crate::request_id::RequestId;
use crate::state::AppState;

/// One deployment of the caller's workspace.
#[utoipa::path(get, path = "/api/v1/deployments/{deployed_model}", tag = "deployments",
    params(("deployed_model" = String, Path, min_length = 1, max_length = 73, description = "The deployment's `deployed_model`.")),
    responses((status = 200, body = inline(Success<DeploymentObject>)), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    RequestId(request_id): RequestId,
    Path(name): Path<String>,
) -> Result<Json<Success<DeploymentObject>>, ApiError> {
    let d = load(&state, &caller, &name).await?;
    Ok(Json(Success {
        request_id,
        output: object(&d),
    }))
}
