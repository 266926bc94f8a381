//! `/api/v1/deployments`: the Model Studio deployments API.

mod create;
mod delete;
mod get;
mod list;
mod logs;
mod models;
mod replicas;
mod scale;
mod stats;
mod stream;
mod update;

use axum::routing::{get, put};
use axum::Router;
use berth_api::deployment::{DeploymentObject, PageQuery};
use berth_core::deployment::MAX_CAPACITY;
use berth_core::{Autoscaling, Deployment, ErrorCode, Status};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

pub use create::__path_create;
pub use delete::__path_delete;
pub use get::__path_get;
pub use list::__path_list;
pub use logs::__path_logs;
pub use models::__path_models;
pub use replicas::__path_replicas;
pub use scale::__path_scale;
pub use stats::__path_stats;
pub use stream::{__path_stream, __path_workspace_events};
pub use update::__path_update;

/// Longest `model_name` (the catalog's rule).
pub(crate) const MAX_MODEL_NAME: usize = 64;
/// Longest `deployed_model`: a model name, `-` and a suffix of up to 8.
pub(crate) const MAX_DEPLOYED_MODEL: usize = MAX_MODEL_NAME + 1 + 8;
/// Longest display `name`, in characters.
pub(crate) const MAX_NAME: usize = 128;
/// Longest `deploy_spec`.
pub(crate) const MAX_DEPLOY_SPEC: usize = 64;
/// Largest `rpm_limit` / `tpm_limit`.
pub(crate) const MAX_RATE_LIMIT: u64 = 1_000_000_000_000;

/// The deployment routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/deployments/models", get(models::models))
        .route("/api/v1/deployments", get(list::list).post(create::create))
        .route(
            "/api/v1/deployments/{deployed_model}",
            get(get::get).delete(delete::delete),
        )
        .route(
            "/api/v1/deployments/{deployed_model}/scale",
            put(scale::scale),
        )
        .route(
            "/api/v1/deployments/{deployed_model}/update",
            put(update::update),
        )
        .route(
            "/api/v1/deployments/{deployed_model}/stream",
            get(stream::stream),
        )
        .route("/api/v1/events", get(stream::workspace_events))
        .route("/api/v1/deployments/{deployed_model}/logs", get(logs::logs))
        .route(
            "/api/v1/deployments/{deployed_model}/replicas",
            get(replicas::replicas),
        )
        .route(
            "/api/v1/deployments/{deployed_model}/stats",
            get(stats::stats),
        )
}

/// Validated paging: page number from 1, page size 1..=200.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Page {
    pub no: u64,
    pub size: u64,
}

impl Page {
    pub const MAX_SIZE: u64 = 200;

    pub fn parse(q: &PageQuery, default_size: u64) -> Result<Self, ApiError> {
        fn field(
            raw: &Option<String>,
            name: &str,
            default: u64,
            max: u64,
        ) -> Result<u64, ApiError> {
            let Some(raw) = raw else { return Ok(default) };
            // `3` or `3.0`: a number with no fraction is an integer.
            let raw_int = raw.trim().strip_suffix(".0").unwrap_or(raw.trim());
            match raw_int.parse::<u64>() {
                Ok(v) if (1..=max).contains(&v) => Ok(v),
                _ => Err(ApiError::invalid(format!(
                    "Required parameter({name}) missing or invalid, please check the request parameters: {name} must be an integer from 1 to {max}, got {raw:?}."
                ))),
            }
        }
        Ok(Self {
            no: field(&q.page_no, "page_no", 1, u64::from(u32::MAX))?,
            size: field(&q.page_size, "page_size", default_size, Self::MAX_SIZE)?,
        })
    }

    pub fn offset(self) -> u64 {
        (self.no - 1).saturating_mul(self.size)
    }
}

/// Loads a deployment of the caller's workspace, or the upstream 404.
pub(crate) async fn load(
    state: &AppState,
    caller: &Caller,
    name: &str,
) -> Result<Deployment, ApiError> {
    check_length("deployed_model", name, MAX_DEPLOYED_MODEL)?;
    state
        .store
        .get_deployment(&caller.workspace_id, name)
        .await?
        .ok_or_else(|| ApiError::model_not_found(name))
}

/// 400 when `value` is longer than `max` characters; the value itself is not repeated.
pub(crate) fn check_length(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
    if value.chars().count() > max {
        return Err(ApiError::invalid(format!(
            "Invalid {field}: at most {max} characters."
        )));
    }
    Ok(())
}

/// A rate limit as sent: absent or null for none, else an integer from 1 to
/// [`MAX_RATE_LIMIT`].
pub(crate) fn rate_limit(
    raw: Option<&serde_json::Value>,
    field: &str,
) -> Result<Option<u64>, ApiError> {
    match raw {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v) => match v.as_number().and_then(berth_api::integer::of) {
            Some(n) if (1..=i128::from(MAX_RATE_LIMIT)).contains(&n) => Ok(Some(n as u64)),
            _ => Err(ApiError::invalid(format!(
                "Invalid {field} ({}): it must be an integer from 1 to {MAX_RATE_LIMIT}.",
                shown(v)
            ))),
        },
    }
}

/// A client's JSON value in a message, cut short when long.
fn shown(v: &serde_json::Value) -> String {
    berth_core::deployment::shorten(&v.to_string()).into_owned()
}

/// What a workspace's deployments hold against its quotas: deployments not being deleted, and
/// their capacity units, leaving out `except` (the one a scale changes).
async fn usage(
    state: &AppState,
    workspace_id: &str,
    except: Option<&str>,
) -> Result<(u64, u64), ApiError> {
    let (rows, _) = state
        .store
        .list_deployments(workspace_id, 0, u64::from(u32::MAX))
        .await?;
    let live = rows
        .iter()
        .filter(|d| d.status != Status::Deleting && Some(d.deployed_model.as_str()) != except);
    Ok(live.fold((0, 0), |(n, units), d| {
        (
            n + 1,
            units + u64::from(quota_units(d.capacity, d.autoscaling.as_ref())),
        )
    }))
}

/// 429 `Throttling.AllocationQuota` when the caller's workspace would go over a quota with
/// `units` more capacity units, in one more deployment when `new` (or in the deployment
/// `except` when scaling it). Call with `state.quotas.lock` held until the write is done.
pub(crate) async fn check_quota(
    state: &AppState,
    caller: &Caller,
    new: bool,
    except: Option<&str>,
    units: u32,
) -> Result<(), ApiError> {
    let ws = &caller.workspace_id;
    let quota = state.quotas.config.of(ws);
    let (count, used) = usage(state, ws, except).await?;
    let over = |message: String| Err(ApiError::new(ErrorCode::ThrottlingAllocationQuota, message));
    if new && count >= u64::from(quota.max_deployments) {
        return over(format!(
            "Allocation quota exceeded: workspace {ws} may have at most {} deployments (max_deployments), and has {count}.",
            quota.max_deployments
        ));
    }
    if let Some(max) = quota.max_capacity_units {
        if used + u64::from(units) > u64::from(max) {
            return over(format!(
                "Allocation quota exceeded: workspace {ws} may use at most {max} capacity units (max_capacity_units); its other deployments use {used}, and this asks for {units}."
            ));
        }
    }
    Ok(())
}

/// 409 for writes other than delete on a deployment being deleted.
pub(crate) fn refuse_if_deleting(d: &Deployment) -> Result<(), ApiError> {
    if d.status == Status::Deleting {
        return Err(ApiError::new(
            berth_core::ErrorCode::Conflict,
            format!("Deployed model {} is being deleted.", d.deployed_model),
        ));
    }
    Ok(())
}

/// Parses a capacity given as raw JSON against a base capacity.
pub(crate) fn parse_capacity(
    raw: Option<&serde_json::Value>,
    base_capacity: u32,
) -> Result<berth_core::Capacity, ApiError> {
    let raw = raw.ok_or_else(|| {
        ApiError::invalid(
            "Required parameter(capacity) missing or invalid, please check the request parameters.",
        )
    })?;
    match raw
        .as_number()
        .and_then(berth_api::integer::of)
        .and_then(|v| i64::try_from(v).ok())
    {
        Some(v) => berth_core::Capacity::new(v, base_capacity).map_err(ApiError::invalid),
        None => Err(ApiError::invalid(
            berth_core::deployment::invalid_capacity_message(&raw.to_string(), base_capacity),
        )),
    }
}

/// Autoscaling as sent (a berth extension): absent or `null` is `None`, else an object whose
/// fields are checked one by one, each with its own message. `max_capacity` is required; the
/// others have defaults. Capacities follow the rules of `capacity` (multiples of the model's
/// base capacity, below 1000), `max_capacity` is at least one replica, `min_capacity` at most
/// `max_capacity`.
pub(crate) fn parse_autoscaling(
    raw: Option<&serde_json::Value>,
    base_capacity: u32,
) -> Result<Option<Autoscaling>, ApiError> {
    let fields = match raw {
        None | Some(serde_json::Value::Null) => return Ok(None),
        Some(serde_json::Value::Object(fields)) => fields,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "Invalid autoscaling ({}): it must be an object or null.",
                shown(other)
            )))
        }
    };
    let base = base_capacity.max(1);
    let top = (MAX_CAPACITY as u32 - 1) / base * base;
    // An integer field from `lo` to `hi` (a multiple of `step`), or its default when absent.
    let field = |name: &str, default: Option<u32>, lo: u32, hi: u32, step: u32| {
        let Some(v) = fields.get(name) else {
            return default.ok_or_else(|| {
                ApiError::invalid(format!(
                    "Required parameter(autoscaling.{name}) missing or invalid, please check the request parameters."
                ))
            });
        };
        match v.as_number().and_then(berth_api::integer::of) {
            Some(n) if (i128::from(lo)..=i128::from(hi)).contains(&n) && n % i128::from(step) == 0 => {
                Ok(n as u32)
            }
            _ if step > 1 => Err(ApiError::invalid(format!(
                "Invalid autoscaling.{name} ({}): it must be a multiple of {step} from {lo} to {hi}.",
                shown(v)
            ))),
            _ => Err(ApiError::invalid(format!(
                "Invalid autoscaling.{name} ({}): it must be an integer from {lo} to {hi}.",
                shown(v)
            ))),
        }
    };
    let a = Autoscaling {
        min_capacity: field("min_capacity", Some(0), 0, top, base)?,
        max_capacity: field("max_capacity", None, base, top, base)?,
        target_inflight_per_replica: field(
            "target_inflight_per_replica",
            Some(Autoscaling::DEFAULT_TARGET_INFLIGHT),
            1,
            Autoscaling::MAX_TARGET_INFLIGHT,
            1,
        )?,
        scale_down_delay_secs: field(
            "scale_down_delay_secs",
            Some(Autoscaling::DEFAULT_SCALE_DOWN_DELAY_SECS),
            0,
            Autoscaling::MAX_DELAY_SECS,
            1,
        )?,
        scale_to_zero_after_secs: field(
            "scale_to_zero_after_secs",
            Some(Autoscaling::DEFAULT_SCALE_TO_ZERO_AFTER_SECS),
            1,
            Autoscaling::MAX_DELAY_SECS,
            1,
        )?,
    };
    if a.min_capacity > a.max_capacity {
        return Err(ApiError::invalid(format!(
            "Invalid autoscaling: min_capacity ({}) must not be larger than max_capacity ({}).",
            a.min_capacity, a.max_capacity
        )));
    }
    Ok(Some(a))
}

/// 400 when a capacity target is outside the autoscaling bounds.
pub(crate) fn check_within(capacity: u32, a: &Autoscaling) -> Result<(), ApiError> {
    if a.clamp(capacity) != capacity {
        return Err(ApiError::invalid(format!(
            "Invalid capacity ({capacity}): autoscaling keeps this deployment from min_capacity ({}) to max_capacity ({}); change the bounds with update, or turn autoscaling off with \"autoscaling\": null.",
            a.min_capacity, a.max_capacity
        )));
    }
    Ok(())
}

/// Capacity units a deployment holds against its workspace's quota: with autoscaling, what it
/// may grow to.
pub(crate) fn quota_units(capacity: u32, autoscaling: Option<&Autoscaling>) -> u32 {
    autoscaling.map_or(capacity, |a| capacity.max(a.max_capacity))
}

pub(crate) fn object(d: &Deployment) -> DeploymentObject {
    DeploymentObject::from(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(no: Option<&str>, size: Option<&str>) -> PageQuery {
        PageQuery {
            page_no: no.map(Into::into),
            page_size: size.map(Into::into),
        }
    }

    #[test]
    fn paging_bounds() {
        assert_eq!(
            Page::parse(&q(None, None), 10).unwrap(),
            Page { no: 1, size: 10 }
        );
        assert_eq!(
            Page::parse(&q(Some("3"), Some("200")), 10).unwrap(),
            Page { no: 3, size: 200 }
        );
        for (no, size) in [
            (Some("0"), None),
            (None, Some("0")),
            (None, Some("201")),
            (Some("x"), None),
            (Some("-1"), None),
        ] {
            assert!(Page::parse(&q(no, size), 10).is_err(), "{no:?} {size:?}");
        }
        assert_eq!(Page { no: 3, size: 20 }.offset(), 40);
    }

    #[test]
    fn autoscaling_from_json() {
        use serde_json::json;
        assert_eq!(parse_autoscaling(None, 1).unwrap(), None);
        assert_eq!(parse_autoscaling(Some(&json!(null)), 1).unwrap(), None);
        assert_eq!(
            parse_autoscaling(Some(&json!({"max_capacity": 4.0})), 1).unwrap(),
            Some(Autoscaling {
                min_capacity: 0,
                max_capacity: 4,
                target_inflight_per_replica: 4,
                scale_down_delay_secs: 60,
                scale_to_zero_after_secs: 300,
            })
        );
        let a = parse_autoscaling(
            Some(
                &json!({"min_capacity": 2, "max_capacity": 6, "target_inflight_per_replica": 1,
                         "scale_down_delay_secs": 0, "scale_to_zero_after_secs": 1, "x": 1}),
            ),
            2,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (a.min_capacity, a.max_capacity, a.scale_down_delay_secs),
            (2, 6, 0)
        );
        let table = [
            (json!(3), 1, "Invalid autoscaling (3): it must be an object or null."),
            (json!({}), 1, "Required parameter(autoscaling.max_capacity) missing or invalid, please check the request parameters."),
            (json!({"max_capacity": 0}), 1, "Invalid autoscaling.max_capacity (0): it must be an integer from 1 to 999."),
            (json!({"max_capacity": 1000}), 1, "Invalid autoscaling.max_capacity (1000): it must be an integer from 1 to 999."),
            (json!({"max_capacity": 3}), 2, "Invalid autoscaling.max_capacity (3): it must be a multiple of 2 from 2 to 998."),
            (json!({"max_capacity": "2"}), 1, "Invalid autoscaling.max_capacity (\"2\"): it must be an integer from 1 to 999."),
            (json!({"max_capacity": 2, "min_capacity": -1}), 1, "Invalid autoscaling.min_capacity (-1): it must be an integer from 0 to 999."),
            (json!({"max_capacity": 2, "min_capacity": 3}), 1, "Invalid autoscaling: min_capacity (3) must not be larger than max_capacity (2)."),
            (json!({"max_capacity": 2, "target_inflight_per_replica": 0}), 1, "Invalid autoscaling.target_inflight_per_replica (0): it must be an integer from 1 to 1000."),
            (json!({"max_capacity": 2, "target_inflight_per_replica": 1.5}), 1, "Invalid autoscaling.target_inflight_per_replica (1.5): it must be an integer from 1 to 1000."),
            (json!({"max_capacity": 2, "scale_down_delay_secs": 86401}), 1, "Invalid autoscaling.scale_down_delay_secs (86401): it must be an integer from 0 to 86400."),
            (json!({"max_capacity": 2, "scale_to_zero_after_secs": 0}), 1, "Invalid autoscaling.scale_to_zero_after_secs (0): it must be an integer from 1 to 86400."),
            (json!({"max_capacity": 2, "scale_to_zero_after_secs": null}), 1, "Invalid autoscaling.scale_to_zero_after_secs (null): it must be an integer from 1 to 86400."),
        ];
        for (raw, base, want) in table {
            assert_eq!(
                parse_autoscaling(Some(&raw), base).unwrap_err().message,
                want,
                "{raw}"
            );
        }
        let a = parse_autoscaling(Some(&json!({"min_capacity": 1, "max_capacity": 2})), 1)
            .unwrap()
            .unwrap();
        assert!(check_within(1, &a).is_ok() && check_within(2, &a).is_ok());
        assert!(check_within(0, &a)
            .unwrap_err()
            .message
            .starts_with("Invalid capacity (0): autoscaling keeps this deployment from min_capacity (1) to max_capacity (2)"));
        assert_eq!(quota_units(1, Some(&a)), 2);
        assert_eq!(quota_units(1, None), 1);
    }

    #[test]
    fn capacity_from_json() {
        use serde_json::json;
        assert_eq!(parse_capacity(Some(&json!(2)), 1).unwrap().get(), 2);
        assert_eq!(parse_capacity(Some(&json!(2.0)), 1).unwrap().get(), 2);
        for bad in [
            json!(1.5),
            json!("2"),
            json!(-1),
            json!(1000),
            json!(null),
            json!(1e300),
        ] {
            let e = parse_capacity(Some(&bad), 1).unwrap_err();
            assert!(
                e.message.starts_with("Invalid capacity ("),
                "{bad}: {}",
                e.message
            );
        }
        assert!(parse_capacity(None, 1)
            .unwrap_err()
            .message
            .contains("capacity"));
    }
}
