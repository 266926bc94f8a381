//! The OpenAPI document of berth's API, served at `GET /openapi.json`: every route, with the
//! constraints berth enforces and every status it can answer. The deployment routes are
//! generated from their handlers (utoipa); the inference routes, whose bodies the gateway reads,
//! are described in [`inference`]. `docs/openapi.json` is a checked-in copy; a test fails when it
//! drifts, and the end-to-end suite runs schemathesis against a running berth with it.

mod inference;

use axum::extract::State;
use axum::Json;
use berth_core::ModelCatalog;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes::deployments;
use crate::state::AppState;

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
        deployments::stats,
    ),
    modifiers(&BearerAuth),
    security(("api_key" = [])),
    tags(
        (name = "deployments", description = "Create, scale, update and delete model deployments"),
        (name = "inference", description = "Call deployed models: the native DashScope API and the OpenAI-compatible one"),
        (name = "server", description = "Health and this document")
    )
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

/// The document for a node with `catalog`: the generated part with [`inference`] added (as
/// JSON: some of its schemas, a `properties` with an `anyOf` beside it, are more than utoipa's
/// model holds), and the bounds that depend on the catalog filled in.
pub fn document(catalog: &ModelCatalog) -> serde_json::Value {
    static BASE: std::sync::LazyLock<serde_json::Value> = std::sync::LazyLock::new(|| {
        let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
        let merge = |into: &mut serde_json::Value, from: serde_json::Value| {
            if let (Some(into), serde_json::Value::Object(from)) = (into.as_object_mut(), from) {
                into.extend(from);
            }
        };
        merge(&mut doc["paths"], inference::paths());
        merge(&mut doc["components"]["schemas"], inference::schemas());
        doc
    });
    let mut doc = BASE.clone();
    // `max_context_length` is at most the model's context: every model of this node takes
    // up to the smallest.
    if let Some(ctx) = catalog.models.iter().map(|m| m.context_length).min() {
        let field = &mut doc["components"]["schemas"]["CreateDeploymentRequest"]["properties"]
            ["max_context_length"];
        if field.is_object() {
            field["maximum"] = ctx.into();
        }
    }
    doc
}

/// The document of a node with the default catalog, as pretty JSON (what `docs/openapi.json`
/// holds).
pub fn document_json() -> String {
    let catalog = crate::config::Config::default().catalog();
    serde_json::to_string_pretty(&document(&catalog)).unwrap_or_default() + "\n"
}

/// `GET /openapi.json`: the document for this node's catalog.
pub async fn serve(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(document(&state.catalog))
}
