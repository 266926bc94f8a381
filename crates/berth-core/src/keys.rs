//! API keys: only a hash of the secret is ever stored.

use crate::time::Timestamp;

/// SHA-256 of an API key secret.
pub type KeyHash = [u8; 32];

/// A stored API key (never the secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    /// Public id, safe to show and to record as `creator`/`modifier`.
    pub id: String,
    pub workspace_id: String,
    pub hash: KeyHash,
    pub created: Timestamp,
    pub revoked: bool,
}
