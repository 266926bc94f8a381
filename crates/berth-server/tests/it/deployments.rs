//! The deployment endpoints' happy paths and state rules.

use serde_json::json;

use crate::support::{TestApp, OTHER_KEY};

fn is_gmt(s: &str) -> bool {
    // YYYY-MM-DDTHH:MM:SS.fff, no zone
    s.len() == 23 && s.as_bytes()[10] == b'T' && !s.ends_with('Z') && s[..4].parse::<u32>().is_ok()
}

#[tokio::test]
async fn create_returns_a_pending_deployment_with_every_field() {
    let app = TestApp::spawn().await;
    let r = app
        .post("/api/v1/deployments", json!({"model_name": "tiny", "capacity": 2, "name": "my tiny", "billing_method": "POST_PAY"}))
        .await;
    let d = r.output();
    assert_eq!(d["deployed_model"], "tiny");
    assert_eq!(d["model_name"], "tiny");
    assert_eq!(d["base_model"], "tiny");
    assert_eq!(d["name"], "my tiny");
    assert_eq!(d["status"], "PENDING");
    assert_eq!(d["capacity"], 2);
    assert_eq!(d["base_capacity"], 1);
    assert_eq!(d["ready_capacity"], 0);
    assert_eq!(d["workspace_id"], "default");
    assert_eq!(d["charge_type"], "post_paid");
    assert!(d["creator"].as_str().unwrap().starts_with("ak-"));
    assert_eq!(d["creator"], d["modifier"]);
    assert!(
        is_gmt(d["gmt_create"].as_str().unwrap()),
        "{}",
        d["gmt_create"]
    );
    assert!(is_gmt(d["gmt_modified"].as_str().unwrap()));
    // Optional fields that are not set are omitted, never null.
    for absent in [
        "plan",
        "rpm_limit",
        "tpm_limit",
        "fail_reason",
        "model_unit_spec",
        "status_message",
    ] {
        assert!(d.get(absent).is_none(), "{absent} should be omitted: {d}");
    }
    assert!(d.as_object().unwrap().values().all(|v| !v.is_null()));
}

#[tokio::test]
async fn create_with_plan_fields_echoes_them() {
    let app = TestApp::spawn().await;
    let r = app
        .post(
            "/api/v1/deployments",
            json!({"model_name": "tiny", "capacity": 1, "plan": "mu", "deploy_spec": "MU1", "rpm_limit": 500, "tpm_limit": 1000, "max_context_length": 1024, "enable_thinking": false}),
        )
        .await;
    let d = r.output();
    assert_eq!(d["plan"], "mu");
    assert_eq!(d["model_unit_spec"], "MU1");
    assert_eq!(d["rpm_limit"], 500);
    assert_eq!(d["tpm_limit"], 1000);
    assert_eq!(d["max_context_length"], 1024);
    assert_eq!(d["enable_thinking"], false);
}

#[tokio::test]
async fn suffix_rule_and_names_free_again_after_removal() {
    let app = TestApp::spawn().await;
    app.post(
        "/api/v1/deployments",
        json!({"model_name": "tiny", "capacity": 1}),
    )
    .await
    .output();
    let r = app
        .post(
            "/api/v1/deployments",
            json!({"model_name": "tiny", "capacity": 1}),
        )
        .await;
    r.assert_error(
        409,
        "Conflict",
        Some("Deployed model tiny already exists, please specify a suffix."),
    );
    let r = app
        .post(
            "/api/v1/deployments",
            json!({"model_name": "tiny", "capacity": 1, "suffix": "v2"}),
        )
        .await;
    assert_eq!(r.output()["deployed_model"], "tiny-v2");
    let r = app
        .post(
            "/api/v1/deployments",
            json!({"model_name": "tiny", "capacity": 1, "suffix": "v2"}),
        )
        .await;
    r.assert_error(
        409,
        "Conflict",
        Some("Deployed model tiny-v2 already exists, please specify a suffix."),
    );
    // Another workspace has its own namespace.
    let r = app
        .call(
            reqwest::Method::POST,
            "/api/v1/deployments",
            Some(OTHER_KEY),
            Some(json!({"model_name": "tiny", "capacity": 1})),
        )
        .await;
    assert_eq!(r.output()["workspace_id"], "other");
    // Fully removed (what the reconciler does at the end of a delete): the name is free.
    let g = app
        .store
        .change_deployment(
            "default",
            "tiny",
            berth_store::DesiredChange::Delete,
            "test",
            berth_core::Timestamp::now(),
        )
        .await
        .unwrap()
        .unwrap()
        .generation;
    assert!(app
        .store
        .remove_deployment("default", "tiny", g)
        .await
        .unwrap());
    app.post(
        "/api/v1/deployments",
        json!({"model_name": "tiny", "capacity": 1}),
    )
    .await
    .output();
}

#[tokio::test]
async fn list_is_newest_first_and_paged() {
    let app = TestApp::spawn().await;
    for s in ["a1", "a2", "a3", "a4", "a5"] {
        app.post(
            "/api/v1/deployments",
            json!({"model_name": "tiny", "capacity": 0, "suffix": s}),
        )
        .await
        .output();
    }
    let r = app.get("/api/v1/deployments").await;
    let out = r.output();
    assert_eq!(out["page_no"], 1);
    assert_eq!(out["page_size"], 10);
    assert_eq!(out["total"], 5);
    let names: Vec<&str> = out["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["deployed_model"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["tiny-a5", "tiny-a4", "tiny-a3", "tiny-a2", "tiny-a1"]
    );
    let r = app.get("/api/v1/deployments?page_no=2&page_size=2").await;
    let out = r.output();
    let names: Vec<&str> = out["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["deployed_model"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["tiny-a3", "tiny-a2"]);
    assert_eq!(out["total"], 5);
    let r = app.get("/api/v1/deployments?page_no=9&page_size=200").await;
    assert_eq!(r.output()["deployments"], json!([]));
    // Other workspace sees none of them.
    let r = app
        .call(
            reqwest::Method::GET,
            "/api/v1/deployments",
            Some(OTHER_KEY),
            None,
        )
        .await;
    assert_eq!(r.output()["total"], 0);
}

#[tokio::test]
async fn get_scale_update_delete_lifecycle() {
    let app = TestApp::spawn().await;
    app.post(
        "/api/v1/deployments",
        json!({"model_name": "big", "capacity": 2}),
    )
    .await
    .output();
    let r = app.get("/api/v1/deployments/big").await;
    assert_eq!(r.output()["base_capacity"], 2);

    // Scale while PENDING: the latest target wins, still PENDING.
    let r = app
        .put(
            "/api/v1/deployments/big/scale",
            json!({"capacity": 4, "deployed_model": "big"}),
        )
        .await;
    let d = r.output();
    assert_eq!(
        (d["capacity"].as_u64(), d["status"].as_str()),
        (Some(4), Some("PENDING"))
    );

    // Once it ran, a scale makes it UPDATING.
    app.store
        .record_status(
            "default",
            "big",
            &berth_store::ObservedStatus {
                generation: 2,
                status: berth_core::Status::Running,
                ready_capacity: 4,
                fail_reason: None,
                status_message: None,
            },
        )
        .await
        .unwrap();
    let r = app
        .put("/api/v1/deployments/big/scale", json!({"capacity": 2}))
        .await;
    let d = r.output();
    assert_eq!(
        (
            d["status"].as_str(),
            d["capacity"].as_u64(),
            d["ready_capacity"].as_u64()
        ),
        (Some("UPDATING"), Some(2), Some(4))
    );

    let r = app
        .put("/api/v1/deployments/big/update", json!({"rpm_limit": 60}))
        .await;
    let d = r.output();
    assert_eq!(d["rpm_limit"], 60);
    assert!(d.get("tpm_limit").is_none());
    assert_eq!(d["status"], "UPDATING", "update does not change status");
    let r = app
        .put("/api/v1/deployments/big/update", json!({"tpm_limit": 5000}))
        .await;
    assert_eq!(
        (
            r.output()["rpm_limit"].as_u64(),
            r.output()["tpm_limit"].as_u64()
        ),
        (Some(60), Some(5000))
    );

    let r = app.delete("/api/v1/deployments/big").await;
    assert_eq!(r.output()["status"], "DELETING");
    let again = app.delete("/api/v1/deployments/big").await;
    assert_eq!(again.output()["status"], "DELETING");
    assert_eq!(again.output()["gmt_modified"], r.output()["gmt_modified"]);
    assert_eq!(
        app.get("/api/v1/deployments/big").await.output()["status"],
        "DELETING"
    );

    let r = app
        .put("/api/v1/deployments/big/scale", json!({"capacity": 2}))
        .await;
    r.assert_error(409, "Conflict", None);
    let r = app
        .put("/api/v1/deployments/big/update", json!({"rpm_limit": 1}))
        .await;
    r.assert_error(409, "Conflict", None);

    let g = app
        .store
        .get_deployment("default", "big")
        .await
        .unwrap()
        .unwrap()
        .generation;
    assert!(app
        .store
        .remove_deployment("default", "big", g)
        .await
        .unwrap());
    app.get("/api/v1/deployments/big").await.assert_error(
        404,
        "NotFound",
        Some("Model: big not found!"),
    );
}

#[tokio::test]
async fn catalog_lists_models_with_availability() {
    let app = TestApp::spawn().await;
    let r = app.get("/api/v1/deployments/models").await;
    let out = r.output();
    assert_eq!(out["total"], 2);
    assert_eq!(out["page_no"], 1);
    let models = out["models"].as_array().unwrap();
    assert_eq!(models[0]["model_name"], "tiny");
    assert_eq!(models[0]["available"], true);
    assert_eq!(models[1]["model_name"], "big");
    assert_eq!(models[1]["base_capacity"], 2);
    assert_eq!(models[1]["available"], false);
    let r = app
        .get("/api/v1/deployments/models?page_size=1&page_no=2")
        .await;
    assert_eq!(r.output()["models"][0]["model_name"], "big");
}

#[tokio::test]
async fn client_request_id_is_echoed() {
    let app = TestApp::spawn().await;
    let r = app
        .raw(
            app.client
                .get(format!("{}/api/v1/deployments", app.base))
                .bearer_auth(crate::support::KEY)
                .header("X-Request-Id", "my-id-123"),
        )
        .await;
    assert_eq!(r.body["request_id"], "my-id-123");
    assert_eq!(r.headers["x-request-id"], "my-id-123");
}
