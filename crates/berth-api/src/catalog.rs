//! The deployable-models catalog (`GET /api/v1/deployments/models`).

use berth_core::CatalogModel;
use serde::Serialize;
use utoipa::ToSchema;

/// One catalog model on the wire.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ModelObject {
    pub model_name: String,
    pub base_model: String,
    pub base_capacity: u32,
    pub display_name: String,
    pub context_length: u32,
    /// Whether the weights file is present on this node.
    pub available: bool,
}

impl From<&CatalogModel> for ModelObject {
    fn from(m: &CatalogModel) -> Self {
        Self {
            model_name: m.model_name.clone(),
            base_model: m.model_name.clone(),
            base_capacity: m.base_capacity,
            display_name: m.display_name.clone(),
            context_length: m.context_length,
            available: m.available(),
        }
    }
}

/// A page of catalog models.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelsPage {
    pub models: Vec<ModelObject>,
    pub page_no: u64,
    pub page_size: u64,
    pub total: u64,
}
