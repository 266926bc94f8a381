//! `GET /api/v1/deployments`: the caller's deployments, newest first.

use axum::extract::State;
use axum::Json;
use berth_api::deployment::{DeploymentsPage, PageQuery};
use berth_api::envelope::{ErrorBody, Success};

use super::{object, Page};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::Query;
use crate::request_id::RequestId;
use crate::state::AppState;

/// Lists the workspace's deployments.
#[utoipa::path(get, path = "/api/v1/deployments", tag = "deployments", params(PageQuery),
    responses((status = 200, body = inline(Success<DeploymentsPage>)), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    RequestId(request_id): RequestId,
    Query(q): Query<PageQuery>,
) -> Result<Json<Success<DeploymentsPage>>, ApiError> {
    let page = Page::parse(&q, 10)?;
    let (rows, total) = state
        .store
        .list_deployments(&caller.workspace_id, page.offset(), page.size)
        .await?;
    Ok(Json(Success {
        request_id,
        output: DeploymentsPage {
            page_no: page.no,
            page_size: page.size,
            total,
            deployments: rows.iter().map(object).collect(),
        },
    }))
}
