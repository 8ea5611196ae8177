//! tunefleet's worker: an agent that registers its slots with a coordinator, takes trials and
//! trains each one in a child process through libtorch.

pub mod agent;
pub mod metrics;
pub mod train;
pub mod trainer_process;

pub use agent::{plan_slots, GpuSelection, SlotConfig, WorkerConfig};
pub use metrics::WorkerMetrics;
