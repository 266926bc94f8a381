//! Authentication: `Authorization: Bearer <key>` to a [`Caller`] in one workspace.
//!
//! Keys are looked up by hash in an in-memory [`KeyRing`] (refreshed from the store every few
//! seconds, so keys made or revoked by `berth keys` in another process take effect), falling back
//! to the store on a miss. The final comparison of hashes is constant-time.
//!
//! The ring fails closed: when its refreshes have failed for [`MAX_STALENESS`], it refuses every
//! key (a revoked key must not keep working because the store is unreachable) until a refresh
//! succeeds. Unknown keys are remembered, up to [`MAX_UNKNOWN`], so a client that repeats a
//! wrong key costs no query; and at most [`MAX_MISS_LOOKUPS`] store look-ups a second are made
//! for keys the ring does not hold, so a flood of random keys cannot load the store (a key made
//! meanwhile by `berth keys create` then works from the next refresh, within seconds).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

/// How long the ring keeps answering from its last good copy while refreshes fail.
pub const MAX_STALENESS: Duration = Duration::from_secs(30);
/// Unknown key hashes remembered; when full, the set starts over.
pub const MAX_UNKNOWN: usize = 4096;
/// Store look-ups a second for keys the ring does not hold.
pub const MAX_MISS_LOOKUPS: u32 = 64;
/// One refresh that takes longer than this counts as failed.
const REFRESH_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// Set once refreshes have failed for longer than [`MAX_STALENESS`]: every key is refused.
    stale: Arc<AtomicBool>,
    misses: Arc<Mutex<Misses>>,
}

/// What the ring knows about keys it does not hold.
struct Misses {
    unknown: HashSet<KeyHash>,
    /// Start of the current one-second window of store look-ups, and their count.
    window: Instant,
    lookups: u32,
}

impl KeyRing {
    /// An empty ring over `store`; call [`KeyRing::refresh`] or [`KeyRing::spawn_refresh`].
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            keys: Arc::default(),
            stale: Arc::default(),
            misses: Arc::new(Mutex::new(Misses {
                unknown: HashSet::new(),
                window: Instant::now(),
                lookups: 0,
            })),
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
        self.stale.store(false, Ordering::Relaxed);
        Ok(())
    }

    /// Refreshes every `every` until `stop` is cancelled. Once refreshes have failed for
    /// [`MAX_STALENESS`], the ring refuses every key until one succeeds.
    pub fn spawn_refresh(&self, every: Duration, stop: CancellationToken) {
        let ring = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            let mut last_ok = Instant::now();
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {
                        let refreshed = match tokio::time::timeout(REFRESH_TIMEOUT, ring.refresh()).await {
                            Ok(r) => r.map_err(|e| e.to_string()),
                            Err(_) => Err("the store did not answer in time".to_owned()),
                        };
                        if let Err(e) = &refreshed {
                            tracing::warn!(error = %e, "cannot refresh API keys");
                        }
                        ring.note_refresh(refreshed.is_ok(), &mut last_ok, Instant::now());
                    }
                }
            }
        });
    }

    /// Records the outcome of a refresh at `now`; `last_ok` is when one last succeeded.
    fn note_refresh(&self, ok: bool, last_ok: &mut Instant, now: Instant) {
        if ok {
            *last_ok = now;
            return;
        }
        if now.duration_since(*last_ok) > MAX_STALENESS && !self.stale.swap(true, Ordering::Relaxed)
        {
            tracing::error!(
                "API keys could not be refreshed for {} s: refusing every key until the store answers",
                MAX_STALENESS.as_secs()
            );
        }
    }

    /// The key record for a secret, if it is a valid, unrevoked key.
    pub async fn lookup(&self, secret: &str) -> Result<Option<Arc<ApiKeyRecord>>, ApiError> {
        if self.stale.load(Ordering::Relaxed) {
            return Err(ApiError::new(
                ErrorCode::InternalError,
                "API keys cannot be checked right now, please try again later.",
            ));
        }
        let hash = keys::hash(secret);
        let cached = self.keys.load().get(&hash).cloned();
        let found = match cached {
            Some(k) => Some(k),
            None => self.look_up_missing(hash).await?,
        };
        Ok(found.filter(|k| bool::from(k.hash.ct_eq(&hash))))
    }

    /// A key the ring does not hold: known unknown, or asked of the store within the budget.
    async fn look_up_missing(&self, hash: KeyHash) -> Result<Option<Arc<ApiKeyRecord>>, ApiError> {
        if !self.may_look_up(&hash, Instant::now()) {
            return Ok(None);
        }
        match self.store.find_api_key(&hash).await? {
            Some(k) => {
                let k = Arc::new(k);
                self.keys.rcu(|m| {
                    let mut m = HashMap::clone(m);
                    m.insert(hash, k.clone());
                    m
                });
                Ok(Some(k))
            }
            None => {
                self.remember_unknown(hash);
                Ok(None)
            }
        }
    }

    fn remember_unknown(&self, hash: KeyHash) {
        let mut misses = self.misses.lock().unwrap_or_else(|e| e.into_inner());
        if misses.unknown.len() >= MAX_UNKNOWN {
            misses.unknown.clear();
        }
        misses.unknown.insert(hash);
    }

    /// Whether the store may be asked about `hash` at `now`: not a known unknown, and within the
    /// second's budget of look-ups.
    fn may_look_up(&self, hash: &KeyHash, now: Instant) -> bool {
        let mut misses = self.misses.lock().unwrap_or_else(|e| e.into_inner());
        if misses.unknown.contains(hash) {
            return false;
        }
        if now.duration_since(misses.window) >= Duration::from_secs(1) {
            misses.window = now;
            misses.lookups = 0;
        }
        if misses.lookups >= MAX_MISS_LOOKUPS {
            return false;
        }
        misses.lookups += 1;
        true
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
            // The name is repeated only when it is one: a header is up to 16 KiB of anything.
            let message = if keys::validate_workspace(ws).is_ok() {
                format!("Workspace access denied: the API key does not belong to workspace {ws}.")
            } else {
                "Workspace access denied: the API key does not belong to that workspace.".to_owned()
            };
            return Err(ApiError::new(ErrorCode::AccessDenied, message));
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

#[cfg(test)]
mod tests {
    use super::*;
    use berth_store::SqliteStore;

    async fn ring() -> (KeyRing, Arc<dyn Store>) {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open_in_memory().await.unwrap());
        store
            .insert_api_key(&keys::from_secret("sk-known", "default"))
            .await
            .unwrap();
        let ring = KeyRing::new(store.clone());
        ring.refresh().await.unwrap();
        (ring, store)
    }

    #[tokio::test]
    async fn unknown_keys_are_remembered_and_store_look_ups_bounded() {
        let (ring, store) = ring().await;
        assert!(ring.lookup("sk-wrong").await.unwrap().is_none());
        assert!(ring
            .misses
            .lock()
            .unwrap()
            .unknown
            .contains(&keys::hash("sk-wrong")));
        // A key made after the last refresh is found in the store.
        store
            .insert_api_key(&keys::from_secret("sk-new", "default"))
            .await
            .unwrap();
        assert!(ring.lookup("sk-new").await.unwrap().is_some());
        // A flood of random keys: at most MAX_MISS_LOOKUPS reach the store in a second, and the
        // set of unknown keys stays bounded.
        let t0 = Instant::now();
        let allowed = (0..1000)
            .filter(|i| ring.may_look_up(&keys::hash(&format!("sk-{i}")), t0))
            .count();
        assert!(allowed < MAX_MISS_LOOKUPS as usize, "{allowed}");
        assert!(ring.may_look_up(&keys::hash("sk-later"), t0 + Duration::from_secs(1)));
        for i in 0..(MAX_UNKNOWN + 10) {
            ring.remember_unknown(keys::hash(&format!("x{i}")));
        }
        assert!(ring.misses.lock().unwrap().unknown.len() <= MAX_UNKNOWN);
        // A refresh picks up keys made meanwhile even if they were looked up as unknown.
        store
            .insert_api_key(&keys::from_secret("sk-wrong", "default"))
            .await
            .unwrap();
        ring.refresh().await.unwrap();
        assert!(ring.lookup("sk-wrong").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn the_ring_fails_closed_when_refreshes_keep_failing() {
        let (ring, _store) = ring().await;
        let t0 = Instant::now();
        let mut last_ok = t0;
        ring.note_refresh(false, &mut last_ok, t0 + MAX_STALENESS / 2);
        assert!(
            ring.lookup("sk-known").await.unwrap().is_some(),
            "still within the bound"
        );
        ring.note_refresh(
            false,
            &mut last_ok,
            t0 + MAX_STALENESS + Duration::from_secs(1),
        );
        let e = ring.lookup("sk-known").await.unwrap_err();
        assert_eq!(e.code, ErrorCode::InternalError);
        assert!(e.message.contains("cannot be checked"), "{}", e.message);
        // One good refresh and keys work again.
        ring.refresh().await.unwrap();
        ring.note_refresh(true, &mut last_ok, t0 + MAX_STALENESS * 2);
        assert!(ring.lookup("sk-known").await.unwrap().is_some());
    }
}
