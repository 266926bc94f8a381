//! The OpenAPI document: served, complete, and in sync with `docs/openapi.json`.

use crate::support::TestApp;

#[tokio::test]
async fn served_document_lists_every_route() {
    let app = TestApp::spawn().await;
    let doc: serde_json::Value = reqwest::get(format!("{}/openapi.json", app.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/api/v1/deployments",
        "/api/v1/deployments/models",
        "/api/v1/deployments/{deployed_model}",
        "/api/v1/deployments/{deployed_model}/scale",
        "/api/v1/deployments/{deployed_model}/update",
        "/api/v1/services/aigc/text-generation/generation",
        "/compatible-mode/v1/chat/completions",
        "/compatible-mode/v1/models",
        "/healthz",
        "/openapi.json",
    ] {
        assert!(paths.contains_key(p), "missing {p}");
    }
    // Every authenticated operation documents the answers of authentication, and the bound
    // that depends on the catalog is this node's (the test catalog's models have 2048).
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            let responses = op["responses"].as_object().unwrap();
            if op.get("security").is_none() {
                for status in ["401", "403"] {
                    assert!(
                        responses.contains_key(status),
                        "{method} {path}: no {status}"
                    );
                }
            }
        }
    }
    let ctx = &doc["components"]["schemas"]["CreateDeploymentRequest"]["properties"]
        ["max_context_length"]["maximum"];
    assert_eq!(ctx, 2048);
}

/// `docs/openapi.json` is generated; regenerate with
/// `BERTH_UPDATE_OPENAPI=1 cargo test -p berth-server --test it openapi`.
#[test]
fn checked_in_document_is_current() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
    let current = berth_server::openapi::document_json();
    #[allow(clippy::disallowed_methods)] // a test switch, not configuration
    let update = std::env::var_os("BERTH_UPDATE_OPENAPI").is_some();
    if update {
        std::fs::write(&path, &current).unwrap();
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(on_disk == current, "docs/openapi.json is stale: run BERTH_UPDATE_OPENAPI=1 cargo test -p berth-server --test it openapi");
}
