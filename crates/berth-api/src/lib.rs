//! berth's wire types: what goes over HTTP, as serde structs with OpenAPI schemas.
//!
//! Domain types from `berth-core` are converted to and from these at the HTTP edge.

pub mod catalog;
pub mod deployment;
pub mod envelope;
pub mod generation;
pub mod integer;
pub mod openai;
pub mod stats;
