//! `GET /api/v1/deployments/{deployed_model}/stats`: a deployment's recent calls, in fixed
//! intervals, for the caller's own workspace (the console's charts). The admin listener's
//! `/metrics` has the same figures for every workspace; this is the tenant's view.

use serde::Serialize;
use utoipa::ToSchema;

/// Seconds one point covers.
pub const INTERVAL_SECS: u64 = 10;
/// Points answered: the last five minutes.
pub const POINTS: usize = 30;

/// The recent calls of one deployment, oldest interval first, up to the current one.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct DeploymentStats {
    pub deployed_model: String,
    /// Seconds each point covers.
    pub interval_secs: u64,
    pub points: Vec<StatsPoint>,
}

/// Calls that ended in one interval. Intervals without calls are answered as zeros.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, ToSchema)]
pub struct StatsPoint {
    /// Start of the interval, Unix seconds.
    pub start: u64,
    /// Calls that ended in the interval, whatever their outcome.
    pub requests: u64,
    /// Calls answered with an error status (429 excluded: see `throttled`).
    pub errors: u64,
    /// Calls refused by the deployment's `rpm_limit` or `tpm_limit`.
    pub throttled: u64,
    /// Mean time to the first streamed chunk, in milliseconds (streamed calls only).
    pub ttft_ms: Option<f64>,
    /// Mean time from the call's arrival to its last byte, in milliseconds.
    pub duration_ms: Option<f64>,
    pub input_tokens: u64,
    pub output_tokens: u64,
}

/// The starts of the [`POINTS`] intervals up to the one holding `now` (Unix seconds), oldest
/// first.
pub fn interval_starts(now: u64) -> impl Iterator<Item = u64> {
    let current = now - now % INTERVAL_SECS;
    (0..POINTS as u64)
        .rev()
        .map(move |back| current.saturating_sub(back * INTERVAL_SECS))
}
