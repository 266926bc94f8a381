//! API key secrets: generation and hashing. Only the SHA-256 of a secret is ever stored.

use berth_core::{ApiKeyRecord, KeyHash, Timestamp};
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
    let mut rng = rand::thread_rng();
    let mut secret = [0u8; 24];
    rng.fill_bytes(&mut secret);
    let mut id = [0u8; 6];
    rng.fill_bytes(&mut id);
    let secret = format!("sk-{}", hex::encode(secret));
    let record = ApiKeyRecord {
        id: format!("ak-{}", hex::encode(id)),
        workspace_id: workspace_id.to_owned(),
        hash: hash(&secret),
        created: Timestamp::now(),
        revoked: false,
    };
    NewKey { secret, record }
}

/// A record for a secret chosen by the operator (`BERTH_BOOTSTRAP_KEY`); its id is derived from
/// the hash so that restarts find the same key.
pub fn from_secret(secret: &str, workspace_id: &str) -> ApiKeyRecord {
    let hash = hash(secret);
    ApiKeyRecord {
        id: format!("ak-{}", hex::encode(&hash[..6])),
        workspace_id: workspace_id.to_owned(),
        hash,
        created: Timestamp::now(),
        revoked: false,
    }
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
        assert_eq!(from_secret("sk-x", "w").id, from_secret("sk-x", "w").id);
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
