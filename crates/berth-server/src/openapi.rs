//! The OpenAPI document of berth's API, generated from the handlers (utoipa) and served at
//! `GET /openapi.json`. `docs/openapi.json` is a checked-in copy; a test fails when it drifts.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes::deployments;

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(title = "berth", description = "Self-hosted model deployments with the Model Studio (DashScope) deployments API."),
    paths(
        deployments::models,
        deployments::create,
        deployments::list,
        deployments::get,
        deployments::scale,
        deployments::update,
        deployments::delete,
        deployments::stream,
        deployments::workspace_events,
        deployments::logs,
    ),
    modifiers(&BearerAuth),
    security(("api_key" = [])),
    tags((name = "deployments", description = "Create, scale, update and delete model deployments"))
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document as pretty JSON (what `docs/openapi.json` holds).
pub fn document_json() -> String {
    ApiDoc::openapi().to_pretty_json().unwrap_or_default() + "\n"
}

/// `GET /openapi.json`.
pub async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
