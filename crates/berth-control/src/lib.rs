//! The reconciler: level-triggered, over desired state in the store and replicas observed in the
//! runtime.
//!
//! Each pass reads both, computes [`plan::plan`] (a pure function), applies its actions
//! idempotently, writes every deployment's status and publishes the routing table of ready
//! replicas. Passes run on a nudge from the API, on any replica state change, and periodically.

pub mod autoscale;
pub mod events;
pub mod metrics;
pub mod plan;
pub mod reconciler;

pub use autoscale::{Decision, Demand, Direction, Windows};
pub use events::{Event, EventHub};
pub use metrics::ReconcilerMetrics;
pub use plan::{plan, Action, FailureState, ModelInfo, Plan, PlanInput};
pub use reconciler::{AutoscaleSettings, DemandProbe, Nudge, Reconciler, ReconcilerSettings};
