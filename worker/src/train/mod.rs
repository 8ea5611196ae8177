//! The libtorch trainer: builds an `mlp` or `cnn` with `tch::nn`, trains it on a dataset file and
//! reports per-epoch metrics, then the test metrics and class probabilities.

mod data;
mod model;
mod shuffle;

use std::path::PathBuf;

use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Reduction, Tensor};
use tracing::debug;
use tunefleet_proto::hyper::TrainConfig;

use self::data::{Dataset, Split};

/// Rows per forward pass when evaluating a split, which bounds memory on large splits.
const EVAL_BATCH_ROWS: i64 = 1024;

/// Everything one training run needs.
#[derive(Debug, Clone)]
pub struct TrainJob {
    pub dataset: PathBuf,
    pub epochs: u32,
    pub config: TrainConfig,
    /// Seeds weight initialisation, dropout and shuffling.
    pub seed: u64,
    pub device: tch::Device,
    /// Intra-op threads for libtorch on a CPU device; 0 keeps libtorch's default. The setting
    /// applies to the whole process.
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

/// The reason a run could not finish.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("invalid dataset {path}: {detail}")]
    Dataset { path: PathBuf, detail: String },
    #[error("non-finite {metric} {value} at epoch {epoch}")]
    NonFinite {
        metric: &'static str,
        value: f64,
        epoch: u32,
    },
    #[error("stopped after epoch {epoch}")]
    Stopped { epoch: u32 },
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

/// Reads and validates a dataset file for `model` without training, so that a bad file is
/// reported before any trial starts. It loads the whole file into memory on the CPU.
pub fn check_dataset(path: &std::path::Path, model: &str) -> Result<(), TrainError> {
    let dataset = data::Dataset::load(path, tch::Device::Cpu)?;
    dataset.check_input_for(model)
}

/// Trains `job`, calling `on_epoch` after each epoch; training stops with
/// [`TrainError::Stopped`] when `on_epoch` returns `false`.
///
/// Seeds libtorch's process-wide generator and, on a CPU device, sets its process-wide thread
/// count, so runs in one process are reproducible only when they do not overlap.
pub fn train(
    job: &TrainJob,
    on_epoch: &mut dyn FnMut(&EpochReport) -> bool,
) -> Result<TrainResult, TrainError> {
    if job.config.batch_size < 1 {
        let detail = format!(
            "invalid batch_size {}: expected an int >= 1",
            job.config.batch_size
        );
        return Err(invalid_config(detail).into());
    }
    // NOTE: the tests run only on a CPU device. The same code runs on CUDA, but no test covers it.
    if job.device == Device::Cpu && job.num_threads > 0 {
        tch::set_num_threads(i32::try_from(job.num_threads).unwrap_or(i32::MAX));
    }
    let dataset = Dataset::load(&job.dataset, job.device)?;
    dataset.check_input_for(&job.config.model)?;

    // The seed is reinterpreted as i64, so seeds above i64::MAX stay distinct.
    tch::manual_seed(job.seed as i64);
    let vars = nn::VarStore::new(job.device);
    let net = model::build(
        &vars.root(),
        &job.config,
        &dataset.row_shape,
        dataset.num_classes,
    )?;
    let mut optimizer = model::optimizer(&vars, &job.config)?;
    debug!(
        model = %job.config.model,
        optimizer = %job.config.optimizer,
        num_classes = dataset.num_classes,
        num_train_rows = dataset.train.num_rows(),
        "training started"
    );

    for epoch in 1..=job.epochs {
        let train_loss = train_epoch(&net, &mut optimizer, &dataset.train, job, epoch)?;
        let val = evaluate(&net, &dataset.val)?;
        check_finite("val_loss", val.loss, epoch)?;
        let report = EpochReport {
            epoch,
            train_loss,
            val_loss: val.loss,
            val_accuracy: val.accuracy,
        };
        debug!(
            epoch,
            train_loss,
            val_loss = val.loss,
            val_accuracy = val.accuracy,
            "epoch finished"
        );
        if !on_epoch(&report) {
            return Err(TrainError::Stopped { epoch });
        }
    }

    let val = evaluate(&net, &dataset.val)?;
    check_finite("val_loss", val.loss, job.epochs)?;
    let test = evaluate(&net, &dataset.test)?;
    check_finite("test_loss", test.loss, job.epochs)?;
    Ok(TrainResult {
        test_loss: test.loss,
        test_accuracy: test.accuracy,
        val: val.predictions(&dataset.val, dataset.num_classes)?,
        test: test.predictions(&dataset.test, dataset.num_classes)?,
    })
}

/// Runs one epoch of mini-batch updates over `split` and returns the mean of the batch losses.
fn train_epoch(
    net: &nn::SequentialT,
    optimizer: &mut nn::Optimizer,
    split: &Split,
    job: &TrainJob,
    epoch: u32,
) -> Result<f64, TrainError> {
    let num_rows = split.num_rows();
    let order = shuffle::permutation(num_rows as usize, job.seed, epoch);
    let order = Tensor::from_slice(&order).f_to_device(job.device)?;
    let batch_size = job.config.batch_size;
    let mut loss_sum = 0.0;
    let mut num_batches = 0;

    for start in (0..num_rows).step_by(batch_size as usize) {
        let rows = order.f_narrow(0, start, batch_size.min(num_rows - start))?;
        let x = split.x.f_index_select(0, &rows)?;
        let y = split.y.f_index_select(0, &rows)?;
        let logits = net.forward_t(&x, true);
        let loss = logits.f_cross_entropy_loss::<Tensor>(&y, None, Reduction::Mean, -100, 0.0)?;
        let loss_value = loss.f_double_value(&[])?;
        // Stops at the first bad batch, before a NaN reaches the weights or wastes an epoch.
        check_finite("train_loss", loss_value, epoch)?;
        optimizer.backward_step(&loss);
        loss_sum += loss_value;
        num_batches += 1;
    }
    Ok(loss_sum / f64::from(num_batches))
}

/// Loss, accuracy and class probabilities of a model on one split.
struct Evaluation {
    /// Mean cross entropy per row.
    loss: f64,
    accuracy: f64,
    /// Softmax of the logits, `rows x num_classes`.
    probabilities: Tensor,
}

impl Evaluation {
    fn predictions(&self, split: &Split, num_classes: i64) -> Result<SplitPredictions, TrainError> {
        let probabilities = self
            .probabilities
            .f_flatten(0, -1)?
            .f_to_device(Device::Cpu)?;
        let labels = split.y.f_to_device(Device::Cpu)?;
        Ok(SplitPredictions {
            num_classes: num_classes as usize,
            probabilities: Vec::<f32>::try_from(&probabilities)?,
            labels: Vec::<i64>::try_from(&labels)?,
        })
    }
}

/// Evaluates `net` on `split` in eval mode (no dropout) without recording gradients.
fn evaluate(net: &nn::SequentialT, split: &Split) -> Result<Evaluation, TrainError> {
    let _no_grad = tch::no_grad_guard();
    let num_rows = split.num_rows();
    let mut loss_sum = 0.0;
    let mut num_correct = 0;
    let mut probabilities = Vec::new();

    for start in (0..num_rows).step_by(EVAL_BATCH_ROWS as usize) {
        let len = EVAL_BATCH_ROWS.min(num_rows - start);
        let x = split.x.f_narrow(0, start, len)?;
        let y = split.y.f_narrow(0, start, len)?;
        let logits = net.forward_t(&x, false);
        let loss = logits.f_cross_entropy_loss::<Tensor>(&y, None, Reduction::Sum, -100, 0.0)?;
        loss_sum += loss.f_double_value(&[])?;
        let correct = logits.f_argmax(-1, false)?.f_eq_tensor(&y)?;
        num_correct += correct.f_sum(Kind::Int64)?.f_int64_value(&[])?;
        probabilities.push(logits.f_softmax(-1, Kind::Float)?);
    }
    Ok(Evaluation {
        loss: loss_sum / num_rows as f64,
        accuracy: num_correct as f64 / num_rows as f64,
        probabilities: Tensor::f_cat(&probabilities, 0)?,
    })
}

fn check_finite(metric: &'static str, value: f64, epoch: u32) -> Result<(), TrainError> {
    if value.is_finite() {
        return Ok(());
    }
    Err(TrainError::NonFinite {
        metric,
        value,
        epoch,
    })
}

// NOTE: TrainError has no variant for an invalid TrainConfig, so a bad model, optimizer or
// batch size reaches the caller as TrainError::Torch. TrainConfig::from_params rejects all three
// before a config exists.
fn invalid_config(detail: String) -> tch::TchError {
    tch::TchError::Convert(detail)
}
