//! HTTP integration tests of `berth-server`: real sockets, a real (in-memory SQLite) store.

mod autoscaling;
mod deployments;
mod errors;
mod inference;
mod limits;
mod openapi;
mod support;
