//! Limits on what clients may ask for: per-workspace quotas, the length of every string field,
//! the range of every number. Each is a 4xx in the native envelope, never a 500.

use std::collections::BTreeMap;

use berth_server::config::{QuotaConfig, WorkspaceQuota};
use reqwest::Method;
use serde_json::json;

use crate::support::{TestApp, KEY, OTHER_KEY};

fn quotas() -> QuotaConfig {
    QuotaConfig {
        max_deployments: 2,
        max_capacity_units: Some(4),
        workspaces: BTreeMap::from([(
            "other".to_owned(),
            WorkspaceQuota {
                max_deployments: Some(5),
                max_capacity_units: Some(5000),
            },
        )]),
    }
}

async fn create(app: &TestApp, key: &str, suffix: &str, capacity: u32) -> crate::support::Reply {
    app.call(
        Method::POST,
        "/api/v1/deployments",
        Some(key),
        Some(json!({"model_name": "tiny", "capacity": capacity, "suffix": suffix})),
    )
    .await
}

#[tokio::test]
async fn deployments_over_the_workspace_quota_are_refused_with_429() {
    let app = TestApp::spawn_with_quotas(quotas()).await;
    create(&app, KEY, "a", 1).await.output();
    create(&app, KEY, "b", 1).await.output();
    let r = create(&app, KEY, "c", 1).await;
    r.assert_error(429, "Throttling.AllocationQuota", None);
    let message = r.body["message"].as_str().unwrap();
    assert!(
        message.contains("max_deployments") && message.contains("at most 2"),
        "{message}"
    );

    // Another workspace has its own quota (overridden in the config) and its own count.
    for (i, suffix) in ["a", "b", "c", "d", "e"].iter().enumerate() {
        let r = create(&app, OTHER_KEY, suffix, 1).await;
        assert_eq!(r.status.as_u16(), 200, "{i}: {}", r.body);
    }
    create(&app, OTHER_KEY, "f", 1)
        .await
        .assert_error(429, "Throttling.AllocationQuota", None);

    // A deployment being deleted no longer counts.
    app.delete("/api/v1/deployments/tiny-a").await.output();
    create(&app, KEY, "c", 1).await.output();
}

#[tokio::test]
async fn capacity_over_the_workspace_quota_is_refused_and_scaling_down_always_allowed() {
    let app = TestApp::spawn_with_quotas(quotas()).await;
    create(&app, KEY, "a", 3).await.output();
    let r = create(&app, KEY, "b", 2).await;
    r.assert_error(429, "Throttling.AllocationQuota", None);
    let message = r.body["message"].as_str().unwrap();
    assert!(
        message.contains("max_capacity_units") && message.contains("at most 4"),
        "{message}"
    );
    create(&app, KEY, "b", 1).await.output();
    app.put("/api/v1/deployments/tiny-b/scale", json!({"capacity": 2}))
        .await
        .assert_error(429, "Throttling.AllocationQuota", None);
    app.put("/api/v1/deployments/tiny-a/scale", json!({"capacity": 0}))
        .await
        .output();
    app.put("/api/v1/deployments/tiny-b/scale", json!({"capacity": 4}))
        .await
        .output();
    // Workspace `other` has a capacity quota of its own.
    create(&app, OTHER_KEY, "a", 999).await.output();
}

#[tokio::test]
async fn messages_never_tell_of_other_workspaces() {
    let app = TestApp::spawn_with_quotas(quotas()).await;
    create(&app, OTHER_KEY, "a", 999).await.output();
    create(&app, KEY, "a", 3).await.output();
    let r = create(&app, KEY, "b", 2).await;
    let message = r.body["message"].as_str().unwrap();
    assert!(
        !message.contains("999") && !message.contains("workspace other"),
        "{message}"
    );
    assert!(message.contains("use 3"), "{message}");
}

#[tokio::test]
async fn every_string_field_has_a_length_limit() {
    let app = TestApp::spawn().await;
    let long = "x".repeat(100_000);
    for field in [
        "model_name",
        "name",
        "deploy_spec",
        "suffix",
        "plan",
        "capacity",
    ] {
        let mut body = json!({"model_name": "tiny", "capacity": 1});
        body[field] = json!(long);
        let r = app.post("/api/v1/deployments", body).await;
        r.assert_error(400, "InvalidParameter", None);
        let message = r.body["message"].as_str().unwrap();
        assert!(
            message.contains(field),
            "{field}: {}",
            &message[..message.len().min(300)]
        );
        assert!(
            message.len() < 300,
            "{field}: the value is not repeated: {}",
            &message[..300]
        );
    }
    // Path parameters too: a long name is not repeated back.
    for (method, suffix, body) in [
        (Method::GET, "", None),
        (Method::DELETE, "", None),
        (Method::PUT, "/scale", Some(json!({"capacity": 1}))),
        (Method::PUT, "/update", Some(json!({"rpm_limit": 1}))),
    ] {
        let path = format!("/api/v1/deployments/{}{suffix}", "y".repeat(5000));
        let r = app.call(method.clone(), &path, Some(KEY), body).await;
        r.assert_error(400, "InvalidParameter", None);
        assert!(r.body["message"].as_str().unwrap().len() < 300, "{method}");
    }
    // The workspace header is repeated only when it is a workspace name.
    let r = app
        .raw(
            app.client
                .get(format!("{}/api/v1/deployments", app.base))
                .bearer_auth(KEY)
                .header("x-dashscope-workspace", "z".repeat(10_000)),
        )
        .await;
    r.assert_error(403, "AccessDenied", None);
    assert!(r.body["message"].as_str().unwrap().len() < 300);
}

#[tokio::test]
async fn numbers_out_of_range_are_400_never_500() {
    let app = TestApp::spawn().await;
    let huge = u64::MAX;
    for body in [
        json!({"model_name": "tiny", "capacity": 1, "rpm_limit": huge}),
        json!({"model_name": "tiny", "capacity": 1, "tpm_limit": 9_223_372_036_854_775_808u64}),
        json!({"model_name": "tiny", "capacity": 1, "rpm_limit": 1e30}),
        json!({"model_name": "tiny", "capacity": 1, "max_context_length": 5_000_000_000u64}),
        json!({"model_name": "tiny", "capacity": 1e30}),
        json!({"model_name": "tiny", "capacity": -9_223_372_036_854_775_807i64}),
        json!({"model_name": "tiny", "capacity": 18_446_744_073_709_551_615u64}),
    ] {
        let r = app.post("/api/v1/deployments", body.clone()).await;
        r.assert_error(400, "InvalidParameter", None);
    }
    app.post(
        "/api/v1/deployments",
        json!({"model_name": "tiny", "capacity": 1, "rpm_limit": 1_000_000_000_000u64}),
    )
    .await
    .output();
    for body in [
        json!({"rpm_limit": huge}),
        json!({"tpm_limit": 9_223_372_036_854_775_808u64}),
        json!({"rpm_limit": 1_000_000_000_001u64}),
        json!({"tpm_limit": 1.5}),
    ] {
        let r = app
            .put("/api/v1/deployments/tiny/update", body.clone())
            .await;
        r.assert_error(400, "InvalidParameter", None);
    }
    app.put(
        "/api/v1/deployments/tiny/update",
        json!({"tpm_limit": 1_000_000_000_000u64}),
    )
    .await
    .output();
    for q in [
        "page_no=18446744073709551616",
        "page_size=-1",
        "page_no=1e3",
    ] {
        app.get(&format!("/api/v1/deployments?{q}"))
            .await
            .assert_error(400, "InvalidParameter", None);
    }
}
