//! The autoscaling extension on the deployment routes: validated like every other field,
//! stored, shown only when set, explicit scales kept within its bounds, `null` turns it off.

use std::collections::BTreeMap;

use berth_server::config::QuotaConfig;
use serde_json::json;

use crate::support::TestApp;

#[tokio::test]
async fn autoscaling_is_validated_stored_and_shown_only_when_set() {
    let app = TestApp::spawn().await;
    // Without it, the object is exactly what it was: no `autoscaling` key.
    let plain = app
        .post(
            "/api/v1/deployments",
            json!({"model_name": "tiny", "capacity": 1, "suffix": "plain"}),
        )
        .await;
    assert!(
        plain.output().get("autoscaling").is_none(),
        "{}",
        plain.body
    );
    let plain = app
        .post(
            "/api/v1/deployments",
            json!({"model_name": "tiny", "capacity": 1, "suffix": "null", "autoscaling": null}),
        )
        .await;
    assert!(
        plain.output().get("autoscaling").is_none(),
        "{}",
        plain.body
    );

    for (body, message) in [
        (
            json!({"max_capacity": 2, "min_capacity": 3}),
            "Invalid autoscaling: min_capacity (3) must not be larger than max_capacity (2).",
        ),
        (
            json!({"min_capacity": 1}),
            "Required parameter(autoscaling.max_capacity) missing or invalid, please check the request parameters.",
        ),
        (
            json!({"max_capacity": 2, "target_inflight_per_replica": 0}),
            "Invalid autoscaling.target_inflight_per_replica (0): it must be an integer from 1 to 1000.",
        ),
        (json!([1]), "Invalid autoscaling ([1]): it must be an object or null."),
    ] {
        app.post(
            "/api/v1/deployments",
            json!({"model_name": "tiny", "capacity": 1, "autoscaling": body}),
        )
        .await
        .assert_error(400, "InvalidParameter", Some(message));
    }
    // The first target must be within the bounds.
    app.post(
        "/api/v1/deployments",
        json!({"model_name": "tiny", "capacity": 3, "autoscaling": {"max_capacity": 2}}),
    )
    .await
    .assert_error(400, "InvalidParameter", None);

    let created = app
        .post(
            "/api/v1/deployments",
            json!({"model_name": "tiny", "capacity": 0, "suffix": "auto",
                   "autoscaling": {"min_capacity": 0, "max_capacity": 2, "scale_to_zero_after_secs": 30}}),
        )
        .await;
    let want = json!({"min_capacity": 0, "max_capacity": 2, "target_inflight_per_replica": 4,
                      "scale_down_delay_secs": 60, "scale_to_zero_after_secs": 30});
    assert_eq!(created.output()["autoscaling"], want);
    assert_eq!(
        app.get("/api/v1/deployments/tiny-auto").await.output()["autoscaling"],
        want
    );

    // An explicit scale within the bounds sets the target; outside, it is refused.
    let scaled = app
        .put(
            "/api/v1/deployments/tiny-auto/scale",
            json!({"capacity": 2}),
        )
        .await;
    assert_eq!(scaled.output()["capacity"], 2);
    let r = app
        .put(
            "/api/v1/deployments/tiny-auto/scale",
            json!({"capacity": 3}),
        )
        .await;
    r.assert_error(400, "InvalidParameter", None);
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .starts_with("Invalid capacity (3): autoscaling keeps this deployment from min_capacity (0) to max_capacity (2)"),
        "{}",
        r.body
    );

    // Update: new bounds bring capacity within them; limits alone leave autoscaling; null
    // turns it off and a scale is free again.
    let updated = app
        .put(
            "/api/v1/deployments/tiny-auto/update",
            json!({"autoscaling": {"min_capacity": 0, "max_capacity": 1}}),
        )
        .await;
    assert_eq!(updated.output()["capacity"], 1);
    assert_eq!(updated.output()["autoscaling"]["max_capacity"], 1);
    let limited = app
        .put(
            "/api/v1/deployments/tiny-auto/update",
            json!({"rpm_limit": 10}),
        )
        .await;
    assert_eq!(limited.output()["autoscaling"]["max_capacity"], 1);
    app.put(
        "/api/v1/deployments/tiny-auto/update",
        json!({"autoscaling": {"max_capacity": 0}}),
    )
    .await
    .assert_error(
        400,
        "InvalidParameter",
        Some("Invalid autoscaling.max_capacity (0): it must be an integer from 1 to 999."),
    );
    let off = app
        .put(
            "/api/v1/deployments/tiny-auto/update",
            json!({"autoscaling": null}),
        )
        .await;
    assert!(off.output().get("autoscaling").is_none(), "{}", off.body);
    assert_eq!(off.output()["capacity"], 1);
    app.put(
        "/api/v1/deployments/tiny-auto/scale",
        json!({"capacity": 3}),
    )
    .await
    .output();
    app.put("/api/v1/deployments/tiny-auto/update", json!({}))
        .await
        .assert_error(
            400,
            "InvalidParameter",
            Some("Required parameter(rpm_limit, tpm_limit or autoscaling) missing or invalid, please check the request parameters."),
        );
}

#[tokio::test]
async fn autoscaling_counts_its_max_against_the_capacity_quota() {
    let app = TestApp::spawn_with_quotas(QuotaConfig {
        max_deployments: 10,
        max_capacity_units: Some(4),
        workspaces: BTreeMap::new(),
    })
    .await;
    app.post(
        "/api/v1/deployments",
        json!({"model_name": "tiny", "capacity": 0, "suffix": "a", "autoscaling": {"max_capacity": 3}}),
    )
    .await
    .output();
    app.post(
        "/api/v1/deployments",
        json!({"model_name": "tiny", "capacity": 2, "suffix": "b"}),
    )
    .await
    .assert_error(429, "Throttling.AllocationQuota", None);
    app.post(
        "/api/v1/deployments",
        json!({"model_name": "tiny", "capacity": 1, "suffix": "b"}),
    )
    .await
    .output();
    app.put(
        "/api/v1/deployments/tiny-b/update",
        json!({"autoscaling": {"max_capacity": 2}}),
    )
    .await
    .assert_error(429, "Throttling.AllocationQuota", None);
}
