//! The inference routes over HTTP: envelopes, headers and streaming as clients see them. The
//! gateway's own behaviour (balancing, holds, limits) is tested in `berth-gateway`.

use std::sync::Arc;

use berth_core::{Endpoint, RoutingEntry, RoutingTable, Status};
use berth_gateway::{Gateway, GatewayConfig};
use berth_server::auth::KeyRing;
use berth_server::state::AppState;
use berth_server::{front, keys};
use berth_store::{SqliteStore, Store};
use serde_json::{json, Value};

use crate::support::{KEY, OTHER_KEY};

struct App {
    base: String,
    client: reqwest::Client,
}

async fn app(rpm_limit: Option<u64>) -> App {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open_in_memory().await.unwrap());
    store
        .insert_api_key(&keys::from_secret(KEY, "default"))
        .await
        .unwrap();
    store
        .insert_api_key(&keys::from_secret(OTHER_KEY, "other"))
        .await
        .unwrap();
    let keys = KeyRing::new(store.clone());
    keys.refresh().await.unwrap();
    let gateway = Gateway::new(GatewayConfig {
        hold: std::time::Duration::from_millis(100),
        ..Default::default()
    })
    .unwrap();
    let replica = berth_stub::spawn(berth_stub::StubArgs {
        tokens: 2,
        ..Default::default()
    })
    .await
    .unwrap();
    let entry = |name: &str, endpoints: Vec<Endpoint>| RoutingEntry {
        workspace_id: "default".into(),
        deployed_model: name.into(),
        model_name: "tiny".into(),
        status: Status::Running,
        endpoints,
        rpm_limit,
        tpm_limit: None,
        created: 1_764_000_000,
        start_secs: None,
    };
    let mut table = RoutingTable::default();
    for e in [
        entry(
            "m1",
            vec![Endpoint {
                replica_id: "r1".into(),
                addr: replica,
                secret: String::new(),
            }],
        ),
        entry("idle", vec![]),
    ] {
        table.entries.insert(
            (e.workspace_id.clone(), e.deployed_model.clone()),
            Arc::new(e),
        );
    }
    gateway.publish(Arc::new(table));
    let state = AppState::inference_only(store, keys, gateway);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(front::serve(listener, state, Default::default()));
    App {
        base: format!("http://{addr}"),
        client: reqwest::Client::new(),
    }
}

impl App {
    fn post(&self, path: &str, key: &str, body: Value) -> reqwest::RequestBuilder {
        self.client
            .post(format!("{}{path}", self.base))
            .bearer_auth(key)
            .json(&body)
    }
}

const NATIVE: &str = "/api/v1/services/aigc/text-generation/generation";
const CHAT: &str = "/compatible-mode/v1/chat/completions";

#[tokio::test]
async fn native_answers_and_streams_with_request_ids() {
    let app = app(None).await;
    let body = json!({"model": "m1", "input": {"prompt": "hi"}, "parameters": {"result_format": "message"}});
    let resp = app
        .post(NATIVE, KEY, body.clone())
        .header("x-request-id", "rid-9")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-request-id"], "rid-9");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["request_id"], "rid-9");
    assert_eq!(v["output"]["choices"][0]["message"]["content"], "tok tok ");
    assert_eq!(
        v["usage"],
        json!({"input_tokens": 10, "output_tokens": 2, "total_tokens": 12})
    );

    let resp = app
        .post(NATIVE, KEY, body)
        .header("X-DashScope-SSE", "enable")
        .header("x-request-id", "rid-10")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let text = resp.text().await.unwrap();
    assert!(
        text.starts_with("id:1\nevent:result\n:HTTP_STATUS/200\ndata:{\"output\":{\"choices\""),
        "{text}"
    );
    assert_eq!(text.matches("event:result").count(), 3);
    assert!(text.contains("\"request_id\":\"rid-10\""));
}

#[tokio::test]
async fn native_errors_use_the_native_envelope() {
    let app = app(Some(1)).await;
    let cases = [
        (
            OTHER_KEY,
            json!({"model": "m1", "input": {"prompt": "x"}}),
            404,
            "ModelNotFound",
        ),
        (
            KEY,
            json!({"model": "m1", "input": {}}),
            400,
            "InvalidParameter",
        ),
        (
            KEY,
            json!({"model": "idle", "input": {"prompt": "x"}}),
            503,
            "ModelUnavailable",
        ),
        (
            "sk-wrong",
            json!({"model": "m1", "input": {"prompt": "x"}}),
            401,
            "InvalidApiKey",
        ),
    ];
    for (key, body, status, code) in cases {
        let resp = app.post(NATIVE, key, body).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), status, "{code}");
        let retry = resp.headers().get("retry-after").cloned();
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["code"], code);
        assert!(v["request_id"].is_string() && v["message"].is_string());
        assert_eq!(retry.is_some(), status == 503, "{code}");
    }
    let ok = json!({"model": "m1", "input": {"prompt": "x"}});
    assert_eq!(
        app.post(NATIVE, KEY, ok.clone())
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let resp = app.post(NATIVE, KEY, ok).send().await.unwrap();
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().contains_key("retry-after"));
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["code"], "Throttling.RateQuota");
}

#[tokio::test]
async fn compatible_mode_speaks_openai_including_errors() {
    let app = app(None).await;
    let chat = json!({"model": "m1", "messages": [{"role": "user", "content": "hi"}]});
    let v: Value = app
        .post(CHAT, KEY, chat.clone())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["object"], "chat.completion");

    let mut stream = chat.clone();
    stream["stream"] = json!(true);
    let resp = app.post(CHAT, KEY, stream).send().await.unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let text = resp.text().await.unwrap();
    assert!(
        text.ends_with("data: [DONE]\n\n") && !text.contains("usage"),
        "{text}"
    );

    let cases = [
        (
            "sk-wrong",
            chat.clone(),
            401,
            "invalid_api_key",
            "authentication_error",
        ),
        (
            OTHER_KEY,
            chat.clone(),
            404,
            "model_not_found",
            "invalid_request_error",
        ),
        (
            KEY,
            json!({"model": "idle", "messages": []}),
            503,
            "model_unavailable",
            "server_error",
        ),
        (
            KEY,
            json!({"messages": []}),
            400,
            "invalid_parameter",
            "invalid_request_error",
        ),
    ];
    for (key, body, status, code, kind) in cases {
        let resp = app.post(CHAT, key, body).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), status, "{code}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["code"], code);
        assert_eq!(v["error"]["type"], kind);
        assert!(v["error"]["message"].is_string());
        assert!(v["error"].get("param").is_some());
    }

    let models = |key: &'static str| {
        app.client
            .get(format!("{}/compatible-mode/v1/models", app.base))
            .bearer_auth(key)
            .send()
    };
    let v: Value = models(KEY).await.unwrap().json().await.unwrap();
    assert_eq!(v["object"], "list");
    let ids: Vec<_> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].clone())
        .collect();
    assert_eq!(ids, [json!("idle"), json!("m1")]);
    assert_eq!(v["data"][0]["created"], 1_764_000_000);
    assert_eq!(v["data"][0]["owned_by"], "default");
    let v: Value = models(OTHER_KEY).await.unwrap().json().await.unwrap();
    assert_eq!(v["data"], json!([]));
    let resp = models("sk-wrong").await.unwrap();
    assert_eq!(resp.status(), 401);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "invalid_api_key");
}
