//! `TestApp`: berth's router on 127.0.0.1:0 over an in-memory store, with two workspaces' keys.

use std::path::PathBuf;
use std::sync::Arc;

use berth_control::Nudge;
use berth_core::{CatalogModel, ModelCatalog};
use berth_server::auth::KeyRing;
use berth_server::state::{AppInner, AppState};
use berth_server::{front, keys};
use berth_store::{SqliteStore, Store};
use reqwest::{Method, StatusCode};
use serde_json::Value;

pub const KEY: &str = "sk-test-key-default-0001";
pub const OTHER_KEY: &str = "sk-test-key-other-0002";

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub store: Arc<dyn Store>,
    /// The server's key ring, so tests can trigger the periodic refresh.
    pub keys: KeyRing,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

fn model(name: &str, base: u32, weights: PathBuf) -> CatalogModel {
    CatalogModel {
        model_name: name.into(),
        display_name: name.to_uppercase(),
        weights,
        engine_command: vec!["true".into()],
        base_capacity: base,
        context_length: 2048,
        threads: 1,
        parallel: 1,
    }
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with_quotas(Default::default()).await
    }

    /// [`TestApp::spawn`] with these quotas.
    pub async fn spawn_with_quotas(quotas: berth_server::config::QuotaConfig) -> Self {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open_in_memory().await.unwrap());
        store
            .insert_api_key(&keys::from_secret(KEY, "default"))
            .await
            .unwrap();
        store
            .insert_api_key(&keys::from_secret(OTHER_KEY, "other"))
            .await
            .unwrap();
        // A weights file that exists (this test file) and one that does not.
        let present = PathBuf::from(file!())
            .canonicalize()
            .unwrap_or_else(|_| PathBuf::from("Cargo.toml"));
        let catalog = ModelCatalog {
            models: vec![
                model("tiny", 1, present),
                model("big", 2, PathBuf::from("/nonexistent/big.gguf")),
            ],
        };
        let keys = KeyRing::new(store.clone());
        keys.refresh().await.unwrap();
        let ring = keys.clone();
        let state = AppState::new(AppInner {
            store: store.clone(),
            catalog: Arc::new(catalog),
            keys,
            nudge: Nudge::default(),
            gateway: berth_gateway::Gateway::new(Default::default()).unwrap(),
            quotas: berth_server::state::Quotas::new(quotas),
            events: berth_control::EventHub::default(),
            replica_logs: std::path::PathBuf::new(),
            replicas: Arc::new(Vec::new),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(front::serve(listener, state, Default::default()));
        Self {
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
            keys: ring,
            store,
        }
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        Self::reply(resp).await
    }

    pub async fn raw(&self, req: reqwest::RequestBuilder) -> Reply {
        Self::reply(req.send().await.unwrap()).await
    }

    async fn reply(resp: reqwest::Response) -> Reply {
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let body =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"));
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.call(Method::GET, path, Some(KEY), None).await
    }
    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.call(Method::POST, path, Some(KEY), Some(body)).await
    }
    pub async fn put(&self, path: &str, body: Value) -> Reply {
        self.call(Method::PUT, path, Some(KEY), Some(body)).await
    }
    pub async fn delete(&self, path: &str) -> Reply {
        self.call(Method::DELETE, path, Some(KEY), None).await
    }
}

impl Reply {
    /// Asserts a native error: status, code, and (when given) the exact message.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str, message: Option<&str>) {
        assert_eq!(self.status.as_u16(), status, "{}", self.body);
        assert_eq!(self.body["code"], code, "{}", self.body);
        if let Some(m) = message {
            assert_eq!(self.body["message"], m, "{}", self.body);
        }
        self.assert_request_id();
        assert!(self.body.get("output").is_none());
    }

    #[track_caller]
    pub fn assert_request_id(&self) {
        let id = self.body["request_id"].as_str().expect("request_id");
        assert!(!id.is_empty());
        assert_eq!(self.headers["x-request-id"].to_str().unwrap(), id);
    }

    #[track_caller]
    pub fn output(&self) -> &Value {
        assert_eq!(self.status, StatusCode::OK, "{}", self.body);
        assert!(
            self.body.get("code").is_none(),
            "no code on success: {}",
            self.body
        );
        self.assert_request_id();
        &self.body["output"]
    }
}
