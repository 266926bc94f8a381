//! API key secrets: generation and hashing. Only the SHA-256 of a secret is ever stored, and a
//! key's id (which the API shows, as a deployment's `creator`) is random: it says nothing about
//! the secret.

use berth_core::{ApiKeyRecord, KeyHash, Timestamp};
use berth_store::Store;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// A freshly made key: the secret (shown once) and the record to store.
#[derive(Debug)]
pub struct NewKey {
    pub secret: String,
    pub record: ApiKeyRecord,
}

/// Makes a key for `workspace_id`: `sk-` + 192 random bits in hex; id `ak-` + 48 random bits.
pub fn generate(workspace_id: &str) -> NewKey {
    let mut secret = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut secret);
    let secret = format!("sk-{}", hex::encode(secret));
    let record = from_secret(&secret, workspace_id);
    NewKey { secret, record }
}

/// A record for a secret chosen by the operator (`BERTH_BOOTSTRAP_KEY`), with a fresh random id;
/// restarts find the key by its hash.
pub fn from_secret(secret: &str, workspace_id: &str) -> ApiKeyRecord {
    let mut id = [0u8; 6];
    rand::thread_rng().fill_bytes(&mut id);
    ApiKeyRecord {
        id: format!("ak-{}", hex::encode(id)),
        workspace_id: workspace_id.to_owned(),
        hash: hash(secret),
        created: Timestamp::now(),
        revoked: false,
    }
}

/// Why the bootstrap key cannot be put in place.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error(
        "the bootstrap key (bootstrap_key / BERTH_BOOTSTRAP_KEY) is key {id}, which was revoked: \
         set a new secret there, or remove the setting and use `berth keys create`"
    )]
    Revoked { id: String },
    #[error(transparent)]
    Store(#[from] berth_store::StoreError),
}

/// Makes sure the bootstrap key `secret` exists in workspace `default`: found by its hash, or
/// added with a random id. A revoked one is an error, never silently brought back.
pub async fn ensure_bootstrap(store: &dyn Store, secret: &str) -> Result<(), BootstrapError> {
    let hash = hash(secret);
    if store.find_api_key(&hash).await?.is_some() {
        return Ok(());
    }
    if let Some(revoked) = store
        .list_api_keys()
        .await?
        .into_iter()
        .find(|k| k.hash == hash)
    {
        return Err(BootstrapError::Revoked { id: revoked.id });
    }
    let record = from_secret(secret, "default");
    store.insert_api_key(&record).await?;
    tracing::info!(key = %record.id, "bootstrap API key added to workspace default");
    Ok(())
}

/// SHA-256 of a secret.
pub fn hash(secret: &str) -> KeyHash {
    Sha256::digest(secret.as_bytes()).into()
}

/// Workspace names: 1 to 64 of `[A-Za-z0-9_-]`, starting with a letter or digit.
pub fn validate_workspace(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid workspace name {name:?}: use 1 to 64 letters, digits, '-' or '_', starting with a letter or digit"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_random_and_hashed() {
        let a = generate("default");
        let b = generate("default");
        assert_ne!(a.secret, b.secret);
        assert!(a.secret.starts_with("sk-") && a.secret.len() == 3 + 48);
        assert_eq!(a.record.hash, hash(&a.secret));
        assert_ne!(a.record.id, b.record.id);
        // An operator's secret gets a random id too: nothing about the secret shows in it.
        let (x, y) = (from_secret("sk-x", "w"), from_secret("sk-x", "w"));
        assert_eq!(x.hash, y.hash);
        assert_ne!(x.id, y.id);
        assert!(!hex::encode(x.hash).starts_with(&x.id[3..]));
    }

    #[tokio::test]
    async fn bootstrap_key_is_kept_across_restarts_and_a_revoked_one_is_refused() {
        let store = berth_store::SqliteStore::open_in_memory().await.unwrap();
        ensure_bootstrap(&store, "sk-bootstrap-1").await.unwrap();
        ensure_bootstrap(&store, "sk-bootstrap-1").await.unwrap();
        let all = store.list_api_keys().await.unwrap();
        assert_eq!(all.len(), 1);
        assert!(store.revoke_api_key(&all[0].id).await.unwrap());
        let err = ensure_bootstrap(&store, "sk-bootstrap-1")
            .await
            .unwrap_err();
        assert!(
            matches!(&err, BootstrapError::Revoked { id } if *id == all[0].id),
            "{err}"
        );
        assert!(err.to_string().contains("revoked"), "{err}");
        // Another secret is fine.
        ensure_bootstrap(&store, "sk-bootstrap-2").await.unwrap();
    }

    #[test]
    fn workspace_names() {
        for ok in ["default", "team-a", "A_1"] {
            assert!(validate_workspace(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a b", "é", &"x".repeat(65)] {
            assert!(validate_workspace(bad).is_err(), "{bad}");
        }
    }
}
