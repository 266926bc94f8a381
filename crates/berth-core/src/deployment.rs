//! Deployments: the desired state a user writes and the status berth reports back.

use crate::time::Timestamp;

/// A workspace id. Every API key and every deployment belongs to exactly one.
pub type WorkspaceId = String;

/// The name a deployment is called by (`deployed_model`), unique within a workspace.
pub type DeployedModel = String;

/// Deployment status, as the wire shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    Pending,
    Updating,
    Running,
    Stopped,
    Deleting,
    Failed,
}

impl Status {
    /// The upper-case wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Updating => "UPDATING",
            Self::Running => "RUNNING",
            Self::Stopped => "STOPPED",
            Self::Deleting => "DELETING",
            Self::Failed => "FAILED",
        }
    }

    /// Parses the wire string; `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "PENDING" => Self::Pending,
            "UPDATING" => Self::Updating,
            "RUNNING" => Self::Running,
            "STOPPED" => Self::Stopped,
            "DELETING" => Self::Deleting,
            "FAILED" => Self::Failed,
            _ => return None,
        })
    }

    /// The status a deployment takes when its capacity target changes.
    ///
    /// A deployment that never came up stays `PENDING`; one that ran (or failed) is `UPDATING`
    /// until it converges again.
    pub fn after_scale(self) -> Self {
        match self {
            Self::Pending => Self::Pending,
            _ => Self::Updating,
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Upper bound (exclusive) on capacity, as upstream enforces.
pub const MAX_CAPACITY: i64 = 1000;

/// A validated capacity: `0 <= capacity < 1000` and a multiple of the model's base capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Capacity(u32);

impl Capacity {
    /// Validates `raw` against `base_capacity`. The error is the exact upstream message.
    pub fn new(raw: i64, base_capacity: u32) -> Result<Self, String> {
        let base = i64::from(base_capacity.max(1));
        if !(0..MAX_CAPACITY).contains(&raw) || raw % base != 0 {
            return Err(invalid_capacity_message(&raw.to_string(), base_capacity));
        }
        Ok(Self(raw as u32))
    }

    /// The number of units.
    pub fn get(self) -> u32 {
        self.0
    }

    /// How many replicas this capacity means for a model with `base_capacity` units a replica.
    pub fn replicas(self, base_capacity: u32) -> u32 {
        self.0 / base_capacity.max(1)
    }
}

/// What a client sent, for a message: cut to 40 characters, so a message never repeats a
/// megabyte back.
pub fn shorten(raw: &str) -> std::borrow::Cow<'_, str> {
    match raw.char_indices().nth(40) {
        None => raw.into(),
        Some((end, _)) => format!("{}...", &raw[..end]).into(),
    }
}

/// The upstream message for a capacity that breaks the rules; `shown` is what the client sent.
pub fn invalid_capacity_message(shown: &str, base_capacity: u32) -> String {
    let shown = shorten(shown);
    format!(
        "Invalid capacity ({shown}), capacity must be larger than or equal to 0 and multiples of {base_capacity} and less than 1000!"
    )
}

/// A validated deployment suffix: `^[a-z0-9]{1,8}$`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Suffix(String);

impl Suffix {
    /// Validates a suffix; the error is the client-facing message.
    pub fn new(raw: &str) -> Result<Self, String> {
        let ok = !raw.is_empty()
            && raw.len() <= 8
            && raw
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(format!(
                "Invalid suffix ({}), suffix must be 1 to 8 characters of lower-case letters and digits!",
                shorten(raw)
            ))
        }
    }

    /// The suffix text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The `deployed_model` for a model and optional suffix: `{model}-{suffix}` or `{model}`.
pub fn deployed_model_name(model_name: &str, suffix: Option<&Suffix>) -> DeployedModel {
    match suffix {
        Some(s) => format!("{model_name}-{}", s.as_str()),
        None => model_name.to_owned(),
    }
}

/// Autoscaling of a deployment (a berth extension): the reconciler sets `capacity` itself,
/// between `min_capacity` and `max_capacity`, from the calls in flight and queued at the
/// gateway. Capacities are in units (multiples of the model's `base_capacity`), like
/// `capacity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Autoscaling {
    pub min_capacity: u32,
    pub max_capacity: u32,
    /// Calls (in flight plus queued) one replica is meant to carry.
    pub target_inflight_per_replica: u32,
    /// How long demand must stay below what the current replicas are for before one goes.
    pub scale_down_delay_secs: u32,
    /// With `min_capacity` 0: how long without any call before the last replica goes.
    pub scale_to_zero_after_secs: u32,
}

impl Autoscaling {
    /// Default `target_inflight_per_replica`.
    pub const DEFAULT_TARGET_INFLIGHT: u32 = 4;
    /// Default `scale_down_delay_secs`.
    pub const DEFAULT_SCALE_DOWN_DELAY_SECS: u32 = 60;
    /// Default `scale_to_zero_after_secs`.
    pub const DEFAULT_SCALE_TO_ZERO_AFTER_SECS: u32 = 300;
    /// Largest `target_inflight_per_replica`.
    pub const MAX_TARGET_INFLIGHT: u32 = 1000;
    /// Largest delay (a day), seconds.
    pub const MAX_DELAY_SECS: u32 = 86_400;

    /// `capacity` brought within the bounds.
    pub fn clamp(&self, capacity: u32) -> u32 {
        capacity.clamp(self.min_capacity, self.max_capacity)
    }
}

/// What the create endpoint hands the store once the request is validated.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDeployment {
    pub deployed_model: DeployedModel,
    pub workspace_id: WorkspaceId,
    pub model_name: String,
    pub base_model: String,
    pub name: Option<String>,
    pub plan: Option<String>,
    pub model_unit_spec: Option<String>,
    pub capacity: Capacity,
    pub base_capacity: u32,
    pub max_context_length: Option<u32>,
    pub enable_thinking: Option<bool>,
    pub rpm_limit: Option<u64>,
    pub tpm_limit: Option<u64>,
    /// `None`: capacity is set by scale only.
    pub autoscaling: Option<Autoscaling>,
    /// Id of the API key that made the request.
    pub creator: String,
    pub now: Timestamp,
}

/// A deployment as stored: desired state plus the last status the reconciler wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct Deployment {
    pub deployed_model: DeployedModel,
    pub workspace_id: WorkspaceId,
    pub model_name: String,
    pub base_model: String,
    pub name: Option<String>,
    pub plan: Option<String>,
    pub model_unit_spec: Option<String>,
    pub status: Status,
    /// Desired capacity (units).
    pub capacity: u32,
    pub base_capacity: u32,
    /// Units backed by replicas that passed readiness.
    pub ready_capacity: u32,
    pub max_context_length: Option<u32>,
    pub enable_thinking: Option<bool>,
    pub rpm_limit: Option<u64>,
    pub tpm_limit: Option<u64>,
    pub fail_reason: Option<String>,
    /// Why replicas are waiting (e.g. no free capacity units on the node); not a failure.
    pub status_message: Option<String>,
    /// When set, `capacity` is the target the autoscaler chose.
    pub autoscaling: Option<Autoscaling>,
    pub creator: String,
    pub modifier: String,
    pub gmt_create: Timestamp,
    pub gmt_modified: Timestamp,
    /// Bumped on every change of desired state; the reconciler only writes a status for the
    /// generation it planned against, so a stale pass never overwrites a newer request.
    pub generation: i64,
}

impl Deployment {
    /// Desired replica count.
    pub fn desired_replicas(&self) -> u32 {
        self.capacity / self.base_capacity.max(1)
    }

    /// The store key: (workspace, deployed_model).
    pub fn key(&self) -> (&str, &str) {
        (&self.workspace_id, &self.deployed_model)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_rules() {
        let table: &[(i64, u32, bool)] = &[
            (0, 1, true),
            (1, 1, true),
            (999, 1, true),
            (1000, 1, false),
            (-1, 1, false),
            (2, 2, true),
            (3, 2, false),
            (0, 4, true),
            (996, 4, true),
            (998, 4, false),
        ];
        for &(raw, base, ok) in table {
            assert_eq!(Capacity::new(raw, base).is_ok(), ok, "{raw} base {base}");
        }
        assert_eq!(
            Capacity::new(3, 2).unwrap_err(),
            "Invalid capacity (3), capacity must be larger than or equal to 0 and multiples of 2 and less than 1000!"
        );
        assert_eq!(Capacity::new(6, 2).unwrap().replicas(2), 3);
    }

    #[test]
    fn suffix_rules() {
        for ok in ["a", "abc123", "12345678"] {
            assert!(Suffix::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "ABC", "a-b", "123456789", "é", "a b"] {
            assert!(Suffix::new(bad).is_err(), "{bad}");
        }
        let s = Suffix::new("v2").unwrap();
        assert_eq!(
            deployed_model_name("smollm2-135m-instruct", Some(&s)),
            "smollm2-135m-instruct-v2"
        );
        assert_eq!(deployed_model_name("m", None), "m");
    }

    #[test]
    fn status_round_trip() {
        for s in [
            Status::Pending,
            Status::Updating,
            Status::Running,
            Status::Stopped,
            Status::Deleting,
            Status::Failed,
        ] {
            assert_eq!(Status::parse(s.as_str()), Some(s));
        }
        assert_eq!(Status::parse("running"), None);
        assert_eq!(Status::Pending.after_scale(), Status::Pending);
        assert_eq!(Status::Running.after_scale(), Status::Updating);
        assert_eq!(Status::Failed.after_scale(), Status::Updating);
    }
}
