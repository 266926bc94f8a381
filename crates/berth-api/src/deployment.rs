//! Deployment objects and the bodies of the deployment endpoints.

use berth_core::Deployment;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// The deployment object, as every deployment endpoint returns it. Optional fields are omitted
/// when unset, never `null`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DeploymentObject {
    pub deployed_model: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub model_name: String,
    pub base_model: String,
    /// `PENDING`, `UPDATING`, `RUNNING`, `STOPPED`, `DELETING` or `FAILED`.
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    pub charge_type: String,
    pub capacity: u32,
    pub base_capacity: u32,
    pub ready_capacity: u32,
    pub workspace_id: String,
    pub creator: String,
    pub modifier: String,
    /// `YYYY-MM-DDTHH:MM:SS.fff`, UTC.
    pub gmt_create: String,
    pub gmt_modified: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_unit_spec: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_context_length: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enable_thinking: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpm_limit: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tpm_limit: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fail_reason: Option<String>,
    /// Why replicas are waiting (berth addition), e.g. no free capacity units on the node, or
    /// that the autoscaler scaled the deployment to zero.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_message: Option<String>,
    /// Autoscaling (berth addition), when it is on; then `capacity` is the target the
    /// autoscaler chose.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingObject>,
}

/// Autoscaling of a deployment (berth addition): `capacity` follows the calls in flight and
/// queued, between `min_capacity` and `max_capacity`. In requests, every field but
/// `max_capacity` may be left out for its default.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AutoscalingObject {
    /// Fewest capacity units (a multiple of `base_capacity`); 0 allows scale to zero.
    #[schema(minimum = 0, maximum = 999, default = 0)]
    pub min_capacity: u32,
    /// Most capacity units (a multiple of `base_capacity`, at least one replica's).
    #[schema(minimum = 1, maximum = 999)]
    pub max_capacity: u32,
    /// Calls in flight plus queued that one replica is meant to carry.
    #[schema(minimum = 1, maximum = 1000, default = 4)]
    pub target_inflight_per_replica: u32,
    /// How long demand must stay lower before a replica is removed, seconds.
    #[schema(minimum = 0, maximum = 86400, default = 60)]
    pub scale_down_delay_secs: u32,
    /// With `min_capacity` 0: how long without a call before the last replica is removed.
    #[schema(minimum = 1, maximum = 86400, default = 300)]
    pub scale_to_zero_after_secs: u32,
}

impl From<&berth_core::Autoscaling> for AutoscalingObject {
    fn from(a: &berth_core::Autoscaling) -> Self {
        Self {
            min_capacity: a.min_capacity,
            max_capacity: a.max_capacity,
            target_inflight_per_replica: a.target_inflight_per_replica,
            scale_down_delay_secs: a.scale_down_delay_secs,
            scale_to_zero_after_secs: a.scale_to_zero_after_secs,
        }
    }
}

/// Deserializes a field that may be present as `null`: absent is `None`, present (`null`
/// included) is `Some`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(d).map(Some)
}

impl From<&Deployment> for DeploymentObject {
    fn from(d: &Deployment) -> Self {
        Self {
            deployed_model: d.deployed_model.clone(),
            name: d.name.clone(),
            model_name: d.model_name.clone(),
            base_model: d.base_model.clone(),
            status: d.status.as_str().to_owned(),
            plan: d.plan.clone(),
            charge_type: "post_paid".to_owned(),
            capacity: d.capacity,
            base_capacity: d.base_capacity,
            ready_capacity: d.ready_capacity,
            workspace_id: d.workspace_id.clone(),
            creator: d.creator.clone(),
            modifier: d.modifier.clone(),
            gmt_create: d.gmt_create.to_gmt_string(),
            gmt_modified: d.gmt_modified.to_gmt_string(),
            model_unit_spec: d.model_unit_spec.clone(),
            max_context_length: d.max_context_length,
            enable_thinking: d.enable_thinking,
            rpm_limit: d.rpm_limit,
            tpm_limit: d.tpm_limit,
            fail_reason: d.fail_reason.clone(),
            status_message: d.status_message.clone(),
            autoscaling: d.autoscaling.as_ref().map(AutoscalingObject::from),
        }
    }
}

/// A page of deployments.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeploymentsPage {
    pub page_no: u64,
    pub page_size: u64,
    pub total: u64,
    pub deployments: Vec<DeploymentObject>,
}

/// Body of `POST /api/v1/deployments`. Unknown fields are ignored.
///
/// `capacity` is kept as raw JSON so that a non-integer gets the upstream capacity message.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateDeploymentRequest {
    /// A model of the catalog (`GET /api/v1/deployments/models`).
    #[schema(min_length = 1, max_length = 64)]
    pub model_name: String,
    /// Capacity units: a multiple of the model's `base_capacity`, below 1000.
    #[schema(value_type = i64, required = true, minimum = 0, maximum = 999)]
    pub capacity: Option<serde_json::Value>,
    /// Appended to `model_name` (with `-`) to make `deployed_model`.
    #[schema(pattern = "^[a-z0-9]{1,8}$")]
    pub suffix: Option<String>,
    /// A display name, up to 128 characters.
    #[schema(max_length = 128)]
    pub name: Option<String>,
    /// `mu` or absent.
    #[schema(pattern = "^mu$")]
    pub plan: Option<String>,
    /// Model-unit spec for `plan: mu`, e.g. `MU1`; up to 64 characters.
    #[schema(max_length = 64)]
    pub deploy_spec: Option<String>,
    /// At most the model's `context_length`.
    #[schema(minimum = 1, maximum = 4294967295_u64)]
    #[serde(default, deserialize_with = "crate::integer::integer")]
    pub max_context_length: Option<u32>,
    pub enable_thinking: Option<bool>,
    #[schema(minimum = 1, maximum = 1000000000000_u64)]
    #[serde(default, deserialize_with = "crate::integer::integer")]
    pub rpm_limit: Option<u64>,
    #[schema(minimum = 1, maximum = 1000000000000_u64)]
    #[serde(default, deserialize_with = "crate::integer::integer")]
    pub tpm_limit: Option<u64>,
    /// Autoscaling (berth addition); absent or null: off. `capacity` is then the first
    /// target and must be within the bounds.
    #[schema(value_type = Option<AutoscalingObject>, nullable)]
    pub autoscaling: Option<serde_json::Value>,
}

/// Body of `PUT /api/v1/deployments/{deployed_model}/scale`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ScaleRequest {
    /// Capacity units: a multiple of the model's `base_capacity`, below 1000.
    #[schema(value_type = i64, required = true, minimum = 0, maximum = 999)]
    pub capacity: Option<serde_json::Value>,
}

/// Body of `PUT /api/v1/deployments/{deployed_model}/update`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct UpdateRequest {
    /// Requests per minute; null or absent leaves it as it is. At least one limit is given.
    #[schema(value_type = Option<i64>, minimum = 1, maximum = 1000000000000_u64)]
    pub rpm_limit: Option<serde_json::Value>,
    /// Tokens per minute; null or absent leaves it as it is.
    #[schema(value_type = Option<i64>, minimum = 1, maximum = 1000000000000_u64)]
    pub tpm_limit: Option<serde_json::Value>,
    /// Autoscaling (berth addition): an object sets it (and brings `capacity` within its
    /// bounds), `null` turns it off, absent leaves it as it is.
    #[schema(value_type = Option<AutoscalingObject>, nullable)]
    #[serde(default, deserialize_with = "present")]
    pub autoscaling: Option<serde_json::Value>,
}

/// Paging query of the list endpoints. Kept as text so that bad values get a clear message.
#[derive(Debug, Default, Deserialize, IntoParams)]
pub struct PageQuery {
    /// Page number, from 1.
    #[param(value_type = Option<u64>, minimum = 1, maximum = 4294967295_u64)]
    pub page_no: Option<String>,
    /// Items per page, 1 to 200.
    #[param(value_type = Option<u64>, minimum = 1, maximum = 200)]
    pub page_size: Option<String>,
}
