//! Shared state of the HTTP handlers.

use std::ops::Deref;
use std::sync::Arc;

use berth_control::Nudge;
use berth_core::ModelCatalog;
use berth_store::Store;

use crate::auth::KeyRing;

/// What every handler can reach. Cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<AppInner>);

/// The contents of [`AppState`].
pub struct AppInner {
    pub store: Arc<dyn Store>,
    pub catalog: Arc<ModelCatalog>,
    pub keys: KeyRing,
    /// Asks the reconciler for a pass after desired state changed.
    pub nudge: Nudge,
    /// The inference gateway; the reconciler publishes its routing table into it.
    pub gateway: berth_gateway::Gateway,
}

impl AppState {
    pub fn new(inner: AppInner) -> Self {
        Self(Arc::new(inner))
    }
}

impl Deref for AppState {
    type Target = AppInner;

    fn deref(&self) -> &AppInner {
        &self.0
    }
}
