//! Every documented error of the deployment endpoints, in the native envelope.

use reqwest::Method;
use serde_json::json;

use crate::support::{TestApp, KEY, OTHER_KEY};

#[tokio::test]
async fn missing_or_wrong_key_is_401() {
    let app = TestApp::spawn().await;
    for key in [None, Some("sk-nope"), Some("")] {
        let r = app
            .call(Method::GET, "/api/v1/deployments", key, None)
            .await;
        r.assert_error(401, "InvalidApiKey", Some("Invalid API-key provided."));
    }
    let r = app
        .raw(
            app.client
                .get(format!("{}/api/v1/deployments", app.base))
                .header("Authorization", format!("Basic {KEY}")),
        )
        .await;
    r.assert_error(401, "InvalidApiKey", None);
}

#[tokio::test]
async fn revoked_key_is_401() {
    let app = TestApp::spawn().await;
    let rec = berth_server::keys::from_secret("sk-soon-revoked-1", "default");
    app.store.insert_api_key(&rec).await.unwrap();
    let ok = app
        .call(
            Method::GET,
            "/api/v1/deployments",
            Some("sk-soon-revoked-1"),
            None,
        )
        .await;
    ok.output();
    app.store.revoke_api_key(&rec.id).await.unwrap();
    // The ring's periodic refresh (every 2 s in `berth serve`) drops revoked keys.
    app.keys.refresh().await.unwrap();
    let r = app
        .call(
            Method::GET,
            "/api/v1/deployments",
            Some("sk-soon-revoked-1"),
            None,
        )
        .await;
    r.assert_error(401, "InvalidApiKey", None);
}

#[tokio::test]
async fn workspace_header_must_match_the_key() {
    let app = TestApp::spawn().await;
    let url = format!("{}/api/v1/deployments", app.base);
    let r = app
        .raw(
            app.client
                .get(&url)
                .bearer_auth(KEY)
                .header("X-DashScope-WorkSpace", "other"),
        )
        .await;
    r.assert_error(403, "AccessDenied", None);
    let r = app
        .raw(
            app.client
                .get(&url)
                .bearer_auth(KEY)
                .header("X-DashScope-WorkSpace", "default"),
        )
        .await;
    r.output();
}

#[tokio::test]
async fn foreign_workspace_deployment_looks_missing() {
    let app = TestApp::spawn().await;
    app.post(
        "/api/v1/deployments",
        json!({"model_name": "tiny", "capacity": 1}),
    )
    .await
    .output();
    for (method, path, body) in [
        (Method::GET, "/api/v1/deployments/tiny", None),
        (
            Method::PUT,
            "/api/v1/deployments/tiny/scale",
            Some(json!({"capacity": 2})),
        ),
        (
            Method::PUT,
            "/api/v1/deployments/tiny/update",
            Some(json!({"rpm_limit": 2})),
        ),
        (Method::DELETE, "/api/v1/deployments/tiny", None),
    ] {
        let r = app.call(method.clone(), path, Some(OTHER_KEY), body).await;
        r.assert_error(404, "NotFound", Some("Model: tiny not found!"));
    }
    // And it is untouched.
    assert_eq!(
        app.get("/api/v1/deployments/tiny").await.output()["status"],
        "PENDING"
    );
}

#[tokio::test]
async fn unknown_model_is_404_with_the_upstream_message() {
    let app = TestApp::spawn().await;
    let r = app
        .post(
            "/api/v1/deployments",
            json!({"model_name": "qwen-max", "capacity": 1}),
        )
        .await;
    r.assert_error(404, "NotFound", Some("Model: qwen-max not found!"));
    app.get("/api/v1/deployments/nope").await.assert_error(
        404,
        "NotFound",
        Some("Model: nope not found!"),
    );
    app.put("/api/v1/deployments/nope/scale", json!({"capacity": 1}))
        .await
        .assert_error(404, "NotFound", Some("Model: nope not found!"));
    app.delete("/api/v1/deployments/nope").await.assert_error(
        404,
        "NotFound",
        Some("Model: nope not found!"),
    );
}

#[tokio::test]
async fn invalid_capacity_gets_the_exact_message() {
    let app = TestApp::spawn().await;
    let msg = |shown: &str, base: u32| {
        format!("Invalid capacity ({shown}), capacity must be larger than or equal to 0 and multiples of {base} and less than 1000!")
    };
    for (model, cap, shown, base) in [
        ("tiny", json!(-1), "-1", 1),
        ("tiny", json!(1000), "1000", 1),
        ("tiny", json!(1.5), "1.5", 1),
        ("tiny", json!("2"), "\"2\"", 1),
        ("big", json!(3), "3", 2),
    ] {
        let r = app
            .post(
                "/api/v1/deployments",
                json!({"model_name": model, "capacity": cap}),
            )
            .await;
        r.assert_error(400, "InvalidParameter", Some(&msg(shown, base)));
    }
    let r = app
        .post("/api/v1/deployments", json!({"model_name": "tiny"}))
        .await;
    r.assert_error(400, "InvalidParameter", None);
    assert!(r.body["message"].as_str().unwrap().contains("capacity"));

    app.post(
        "/api/v1/deployments",
        json!({"model_name": "big", "capacity": 2}),
    )
    .await
    .output();
    let r = app
        .put("/api/v1/deployments/big/scale", json!({"capacity": 5}))
        .await;
    r.assert_error(400, "InvalidParameter", Some(&msg("5", 2)));
    let r = app.put("/api/v1/deployments/big/scale", json!({})).await;
    r.assert_error(400, "InvalidParameter", None);
}

#[tokio::test]
async fn bad_suffix_name_plan_and_limits() {
    let app = TestApp::spawn().await;
    for suffix in ["", "UPPER", "has-dash", "waytoolong", "é"] {
        let r = app
            .post(
                "/api/v1/deployments",
                json!({"model_name": "tiny", "capacity": 1, "suffix": suffix}),
            )
            .await;
        r.assert_error(400, "InvalidParameter", None);
        assert!(
            r.body["message"].as_str().unwrap().contains("suffix"),
            "{}",
            r.body
        );
    }
    let r = app
        .post(
            "/api/v1/deployments",
            json!({"model_name": "tiny", "capacity": 1, "plan": "ptu"}),
        )
        .await;
    r.assert_error(400, "InvalidParameter", None);
    let r = app
        .post(
            "/api/v1/deployments",
            json!({"model_name": "tiny", "capacity": 1, "rpm_limit": 0}),
        )
        .await;
    r.assert_error(400, "InvalidParameter", None);
    let r = app
        .post(
            "/api/v1/deployments",
            json!({"model_name": "tiny", "capacity": 1, "max_context_length": 999999}),
        )
        .await;
    r.assert_error(400, "InvalidParameter", None);

    app.post(
        "/api/v1/deployments",
        json!({"model_name": "tiny", "capacity": 1}),
    )
    .await
    .output();
    for body in [
        json!({}),
        json!({"rpm_limit": 0}),
        json!({"tpm_limit": -5}),
        json!({"rpm_limit": "10"}),
        json!({"rpm_limit": null}),
    ] {
        let r = app
            .put("/api/v1/deployments/tiny/update", body.clone())
            .await;
        r.assert_error(400, "InvalidParameter", None);
    }
}

#[tokio::test]
async fn paging_bounds() {
    let app = TestApp::spawn().await;
    for q in [
        "page_size=0",
        "page_size=201",
        "page_no=0",
        "page_no=abc",
        "page_size=-1",
        "page_size=1.5",
    ] {
        let r = app.get(&format!("/api/v1/deployments?{q}")).await;
        r.assert_error(400, "InvalidParameter", None);
        let r = app.get(&format!("/api/v1/deployments/models?{q}")).await;
        r.assert_error(400, "InvalidParameter", None);
    }
    app.get("/api/v1/deployments?page_size=200&page_no=1")
        .await
        .output();
}

#[tokio::test]
async fn malformed_bodies_are_400_naming_the_field() {
    let app = TestApp::spawn().await;
    let url = format!("{}/api/v1/deployments", app.base);
    let send = |body: &'static str| {
        app.client
            .post(&url)
            .bearer_auth(KEY)
            .header("content-type", "application/json")
            .body(body)
    };
    let r = app.raw(send("{not json")).await;
    r.assert_error(400, "InvalidParameter", None);
    let r = app.raw(send("")).await;
    r.assert_error(400, "InvalidParameter", None);
    let r = app.raw(send("[1,2]")).await;
    r.assert_error(400, "InvalidParameter", None);
    let r = app.raw(send(r#"{"model_name": 5, "capacity": 1}"#)).await;
    r.assert_error(400, "InvalidParameter", None);
    assert!(
        r.body["message"].as_str().unwrap().contains("model_name"),
        "{}",
        r.body
    );
    let r = app
        .raw(send(
            r#"{"model_name": "tiny", "capacity": 1, "suffix": 7}"#,
        ))
        .await;
    assert!(
        r.body["message"].as_str().unwrap().contains("suffix"),
        "{}",
        r.body
    );
    let r = app.raw(send(r#"{"capacity": 1}"#)).await;
    assert!(
        r.body["message"].as_str().unwrap().contains("model_name"),
        "{}",
        r.body
    );
    // Oversized body.
    let big = format!(
        r#"{{"model_name": "tiny", "capacity": 1, "name": "{}"}}"#,
        "x".repeat(2 * 1024 * 1024)
    );
    let r = app
        .raw(
            app.client
                .post(&url)
                .bearer_auth(KEY)
                .header("content-type", "application/json")
                .body(big),
        )
        .await;
    r.assert_error(400, "InvalidParameter", None);
    assert!(
        r.body["message"].as_str().unwrap().contains("too large"),
        "{}",
        r.body
    );
}

#[tokio::test]
async fn unknown_route_and_wrong_method() {
    let app = TestApp::spawn().await;
    app.get("/api/v1/nothing-here")
        .await
        .assert_error(404, "NotFound", Some("Not found!"));
    let r = app
        .call(
            Method::PATCH,
            "/api/v1/deployments",
            Some(KEY),
            Some(json!({})),
        )
        .await;
    r.assert_error(
        405,
        "MethodNotAllowed",
        Some("Request method 'PATCH' is not supported."),
    );
    let r = app
        .call(
            Method::POST,
            "/api/v1/deployments/x/scale",
            Some(KEY),
            Some(json!({})),
        )
        .await;
    r.assert_error(405, "MethodNotAllowed", None);
}
