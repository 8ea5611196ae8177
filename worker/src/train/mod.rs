//! The libtorch trainer: builds an `mlp` or `cnn` with `tch::nn`, trains it on a dataset file and
//! reports per-epoch metrics, then the test metrics and class probabilities.

use std::path::PathBuf;

use tunefleet_proto::hyper::TrainConfig;

/// Everything one training run needs.
#[derive(Debug, Clone)]
pub struct TrainJob {
    pub dataset: PathBuf,
    pub epochs: u32,
    pub config: TrainConfig,
    /// Seeds weight initialisation, dropout and shuffling.
    pub seed: u64,
    pub device: tch::Device,
    /// Intra-op threads for libtorch on a CPU device.
    pub num_threads: u32,
}

/// Metrics after one epoch (epochs count from 1).
#[derive(Debug, Clone, PartialEq)]
pub struct EpochReport {
    pub epoch: u32,
    pub train_loss: f64,
    pub val_loss: f64,
    pub val_accuracy: f64,
}

/// Class probabilities of one split, row-major `rows x num_classes`, with the true labels.
#[derive(Debug, Clone, PartialEq)]
pub struct SplitPredictions {
    pub num_classes: usize,
    pub probabilities: Vec<f32>,
    pub labels: Vec<i64>,
}

/// The result of a finished run, from the model after its last epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainResult {
    pub test_loss: f64,
    pub test_accuracy: f64,
    pub val: SplitPredictions,
    pub test: SplitPredictions,
}

/// Why a run could not finish.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("invalid dataset {path}: {detail}")]
    Dataset { path: PathBuf, detail: String },
    #[error("non-finite {metric} {value} at epoch {epoch}")]
    NonFinite { metric: &'static str, value: f64, epoch: u32 },
    #[error("stopped after epoch {epoch}")]
    Stopped { epoch: u32 },
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

/// Trains `job`, calling `on_epoch` after each epoch; training stops with
/// [`TrainError::Stopped`] when `on_epoch` returns `false`.
pub fn train(
    job: &TrainJob,
    on_epoch: &mut dyn FnMut(&EpochReport) -> bool,
) -> Result<TrainResult, TrainError> {
    let _ = (job, on_epoch);
    todo!()
}
