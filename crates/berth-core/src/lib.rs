//! berth's domain: the types every other crate speaks in.
//!
//! Nothing here knows HTTP, SQL or async runtimes; wire types live in `berth-api`, storage in
//! `berth-store`. Validation happens here, once, so the edges can "parse, don't validate".

pub mod catalog;
pub mod deployment;
pub mod error;
pub mod keys;
pub mod replica;
pub mod time;

pub use catalog::{CatalogModel, EngineArgs, ModelCatalog};
pub use deployment::{
    Autoscaling, Capacity, DeployedModel, Deployment, NewDeployment, Status, Suffix, WorkspaceId,
};
pub use error::ErrorCode;
pub use keys::{ApiKeyRecord, KeyHash};
pub use replica::{Endpoint, ReplicaRecord, RoutingEntry, RoutingTable};
pub use time::Timestamp;
