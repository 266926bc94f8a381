//! `GET /api/v1/deployments/models`: the catalog.

use axum::extract::State;
use axum::Json;
use berth_api::catalog::{ModelObject, ModelsPage};
use berth_api::deployment::PageQuery;
use berth_api::envelope::Success;

use super::Page;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::Query;
use crate::request_id::RequestId;
use crate::state::AppState;

/// Lists the models this node can deploy.
#[utoipa::path(get, path = "/api/v1/deployments/models", tag = "deployments",
    params(PageQuery),
    responses((status = 200, body = inline(Success<ModelsPage>)), (status = 400, body = berth_api::envelope::ErrorBody),
        (status = 401, body = berth_api::envelope::ErrorBody), (status = 403, body = berth_api::envelope::ErrorBody)))]
pub async fn models(
    State(state): State<AppState>,
    _caller: Caller,
    RequestId(request_id): RequestId,
    Query(q): Query<PageQuery>,
) -> Result<Json<Success<ModelsPage>>, ApiError> {
    let page = Page::parse(&q, 50)?;
    let all = &state.catalog.models;
    let models = all
        .iter()
        .skip(usize::try_from(page.offset()).unwrap_or(usize::MAX))
        .take(page.size as usize)
        .map(ModelObject::from)
        .collect();
    Ok(Json(Success {
        request_id,
        output: ModelsPage {
            models,
            page_no: page.no,
            page_size: page.size,
            total: all.len() as u64,
        },
    }))
}
