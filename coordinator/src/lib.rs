//! tunefleet's coordinator: it turns sweep specs into trials, hands them to workers over gRPC,
//! keeps every sweep, trial and attempt in a durable store and selects the final ensemble.

pub mod artifacts;
pub mod election;
pub mod ensemble;
pub mod error;
pub mod observe;
pub mod pruning;
pub mod search;
pub mod security;
pub mod service;
pub mod spec;
pub mod state;
pub mod store;
pub mod summary;

pub use error::CoordinatorError;
pub use observe::{CoordinatorMetrics, MetricsEndpoint};
pub use service::{Coordinator, CoordinatorConfig};
