//! Authentication: `Authorization: Bearer <key>` to a [`Caller`] in one workspace.
//!
//! Keys are looked up by hash in an in-memory [`KeyRing`] (refreshed from the store every few
//! seconds, so keys made or revoked by `berth keys` in another process take effect), falling back
//! to the store on a miss. The final comparison of hashes is constant-time.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::HeaderMap;
use berth_core::{ApiKeyRecord, ErrorCode, KeyHash};
use berth_store::Store;
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;
use crate::keys;
use crate::state::AppState;

/// Who is calling: the key's id and its workspace.
#[derive(Debug, Clone)]
pub struct Caller {
    pub key_id: String,
    pub workspace_id: String,
}

/// The header that selects a workspace.
pub const WORKSPACE_HEADER: &str = "x-dashscope-workspace";

/// Cache of unrevoked keys by hash.
#[derive(Clone)]
pub struct KeyRing {
    store: Arc<dyn Store>,
    keys: Arc<ArcSwap<HashMap<KeyHash, Arc<ApiKeyRecord>>>>,
}

impl KeyRing {
    /// An empty ring over `store`; call [`KeyRing::refresh`] or [`KeyRing::spawn_refresh`].
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            keys: Arc::default(),
        }
    }

    /// Reloads every unrevoked key from the store.
    pub async fn refresh(&self) -> Result<(), berth_store::StoreError> {
        let all = self.store.list_api_keys().await?;
        let map = all
            .into_iter()
            .filter(|k| !k.revoked)
            .map(|k| (k.hash, Arc::new(k)))
            .collect();
        self.keys.store(Arc::new(map));
        Ok(())
    }

    /// Refreshes every `every` until `stop` is cancelled.
    pub fn spawn_refresh(&self, every: Duration, stop: CancellationToken) {
        let ring = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {
                        if let Err(e) = ring.refresh().await {
                            tracing::warn!(error = %e, "cannot refresh API keys");
                        }
                    }
                }
            }
        });
    }

    /// The key record for a secret, if it is a valid, unrevoked key.
    pub async fn lookup(&self, secret: &str) -> Result<Option<Arc<ApiKeyRecord>>, ApiError> {
        let hash = keys::hash(secret);
        let cached = self.keys.load().get(&hash).cloned();
        let found = match cached {
            Some(k) => Some(k),
            None => match self.store.find_api_key(&hash).await? {
                Some(k) => {
                    let k = Arc::new(k);
                    self.keys.rcu(|m| {
                        let mut m = HashMap::clone(m);
                        m.insert(hash, k.clone());
                        m
                    });
                    Some(k)
                }
                None => None,
            },
        };
        Ok(found.filter(|k| bool::from(k.hash.ct_eq(&hash))))
    }
}

/// Authenticates a request from its headers.
pub async fn authenticate(headers: &HeaderMap, state: &AppState) -> Result<Caller, ApiError> {
    authenticate_raw(
        headers
            .get(http::header::AUTHORIZATION)
            .map(|v| v.as_bytes()),
        headers.get(WORKSPACE_HEADER).map(|v| v.as_bytes()),
        state,
    )
    .await
}

/// Authenticates from the raw values of the `Authorization` and workspace headers (the first of
/// each), as [`authenticate`] does from a header map.
pub async fn authenticate_raw(
    authorization: Option<&[u8]>,
    workspace: Option<&[u8]>,
    state: &AppState,
) -> Result<Caller, ApiError> {
    let secret = authorization
        .and_then(header_str)
        .and_then(|v| {
            let v = v.trim();
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or_else(ApiError::invalid_api_key)?;
    let key = state
        .keys
        .lookup(secret)
        .await?
        .ok_or_else(ApiError::invalid_api_key)?;
    if let Some(ws) = workspace {
        let ws = header_str(ws).unwrap_or_default().trim();
        if !ws.is_empty() && ws != key.workspace_id {
            return Err(ApiError::new(
                ErrorCode::AccessDenied,
                format!("Workspace access denied: the API key does not belong to workspace {ws}."),
            ));
        }
    }
    Ok(Caller {
        key_id: key.id.clone(),
        workspace_id: key.workspace_id.clone(),
    })
}

/// A header value as text when it is visible ASCII (tabs allowed), as `HeaderValue::to_str`
/// reads it.
pub fn header_str(v: &[u8]) -> Option<&str> {
    if v.iter().all(|&b| b == b'\t' || (b' '..0x7f).contains(&b)) {
        std::str::from_utf8(v).ok()
    } else {
        None
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        authenticate(&parts.headers, state).await
    }
}
