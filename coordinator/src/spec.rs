//! Sweep specs: the TOML a user writes, parsed and validated in full before any trial exists.

use std::path::{Path, PathBuf};

use tunefleet_proto::Value;

use crate::ensemble::SelectionMetric;

/// A validated sweep spec. Every key of `docs/spec.md` maps onto one field.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepSpec {
    pub name: String,
    pub objective: ObjectiveSpec,
    pub search: SearchSpec,
    /// The search space, in the order the spec declares the parameters.
    pub parameters: Vec<ParameterSpec>,
    pub task: TaskSpec,
    pub ensemble: EnsembleSpec,
}

/// The metric a sweep optimises and its direction.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectiveSpec {
    /// One of `val_accuracy`, `val_loss`, `train_loss`.
    pub metric: String,
    pub goal: Goal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Goal {
    Maximize,
    Minimize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Grid,
    Random,
}

/// How trials are generated and how many may run or fail.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchSpec {
    pub method: Method,
    pub max_trials: u32,
    /// `None`: as many as the fleet has free slots.
    pub max_concurrent: Option<u32>,
    /// The sweep fails once more than this many trials have failed; `None`: no limit.
    pub max_failed: Option<u32>,
    pub seed: u64,
}

/// One parameter of the search space.
#[derive(Debug, Clone, PartialEq)]
pub struct ParameterSpec {
    pub name: String,
    pub domain: Domain,
}

/// The values a parameter can take.
#[derive(Debug, Clone, PartialEq)]
pub enum Domain {
    /// An explicit list, each value keeping its TOML type.
    Values(Vec<Value>),
    /// Floats drawn uniformly from [min, max).
    Uniform { min: f64, max: f64 },
    /// Floats whose logarithm is uniform in [ln min, ln max).
    LogUniform { min: f64, max: f64 },
    /// Ints min, min + step, ... up to and including max when it lies on the step.
    Int { min: i64, max: i64, step: i64 },
}

/// The training task every trial runs.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskSpec {
    /// One of `tunefleet_proto::hyper::MODELS`.
    pub model: String,
    /// The dataset file, resolved against the spec's base directory.
    pub dataset: PathBuf,
    pub epochs: u32,
    /// Fixed hyperparameters, in declaration order.
    pub hyperparameters: Vec<(String, Value)>,
}

/// How the final ensemble is selected.
#[derive(Debug, Clone, PartialEq)]
pub struct EnsembleSpec {
    /// Selection rounds; each member's weight is its selection count over this size.
    pub size: u32,
    /// How many of the best single trials start the ensemble (sorted initialisation).
    pub init_size: u32,
    pub metric: SelectionMetric,
}

/// A spec that cannot be used; the message names the key, the value and what is allowed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct SpecError(pub String);

impl SweepSpec {
    /// Parses and validates a spec, resolving a relative dataset path against `base_dir`.
    pub fn parse(toml_text: &str, base_dir: &Path) -> Result<SweepSpec, SpecError> {
        let _ = (toml_text, base_dir);
        todo!("spec parsing")
    }
}
