//! The libtorch trainer: builds a model with `tch::nn`, optionally from pretrained weights,
//! trains it on a dataset and reports per-epoch metrics, then the metrics, class probabilities
//! and weights of its best epoch.

// The one place that calls C++: the autocast shim that build.rs compiles.
#[allow(unsafe_code)]
mod autocast;
mod data;
mod formats;
mod imagefolder;
mod loader;
mod metrics;
mod model;
mod pretrained;
mod schedule;
mod shuffle;

use std::path::PathBuf;

use tch::nn;
use tch::{Device, Kind, Reduction, Tensor};
use tracing::{debug, info};
use tunefleet_proto::hyper::TrainConfig;

pub use self::autocast::{bf16_enabled, Bf16Autocast};
pub use self::data::{infer_format, DataOptions, Normalize, FORMATS};
pub use self::formats::{CIFAR_MEAN, CIFAR_STD};
pub use self::metrics::{class_metrics, ClassMetrics};
pub use self::pretrained::{PretrainedReport, SkippedTensor};
pub use self::schedule::Schedule;

use self::data::{Dataset, Split};
use self::loader::{Augmentation, EpochBatches};
use self::model::{Network, BACKBONE_GROUP, HEAD_GROUP};

/// Rows per forward pass when evaluating a split, which bounds memory on large splits.
const EVAL_BATCH_ROWS: i64 = 1024;

/// Everything one training run needs.
#[derive(Debug, Clone)]
pub struct TrainJob {
    pub dataset: PathBuf,
    pub data: DataOptions,
    /// A safetensors or `.ot` file of weights to start from.
    pub pretrained: Option<PathBuf>,
    /// The TorchScript module that model "torchscript" trains.
    pub module: Option<PathBuf>,
    pub epochs: u32,
    pub config: TrainConfig,
    /// The metric that picks the best epoch and drives early stopping; `None` keeps the model
    /// of the last epoch.
    pub objective: Option<Objective>,
    /// Seeds weight initialisation, dropout, shuffling and augmentation.
    pub seed: u64,
    pub device: tch::Device,
    /// Intra-op threads for libtorch on a CPU device; 0 keeps libtorch's default. The setting
    /// applies to the whole process.
    pub num_threads: u32,
}

/// An epoch metric and whether higher is better.
#[derive(Debug, Clone, PartialEq)]
pub struct Objective {
    /// A name that [`EpochReport::metric`] returns a value for.
    pub metric: String,
    pub maximize: bool,
}

/// Metrics after one epoch (epochs count from 1).
#[derive(Debug, Clone, PartialEq)]
pub struct EpochReport {
    pub epoch: u32,
    pub train_loss: f64,
    pub val_loss: f64,
    pub val_accuracy: f64,
    pub val_macro_precision: f64,
    pub val_macro_recall: f64,
    pub val_macro_f1: f64,
    /// The head's learning rate during the epoch.
    pub lr: f64,
}

impl EpochReport {
    /// Returns the metrics by name, in the order the trainer reports them.
    pub fn metrics(&self) -> [(&'static str, f64); 7] {
        [
            ("train_loss", self.train_loss),
            ("val_loss", self.val_loss),
            ("val_accuracy", self.val_accuracy),
            ("val_macro_precision", self.val_macro_precision),
            ("val_macro_recall", self.val_macro_recall),
            ("val_macro_f1", self.val_macro_f1),
            ("lr", self.lr),
        ]
    }

    /// Returns the metric called `name`, if the report has one.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let metrics = self.metrics();
        metrics.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }
}

/// Class probabilities of one split, row-major `rows x num_classes`, with the true labels.
#[derive(Debug, Clone, PartialEq)]
pub struct SplitPredictions {
    pub num_classes: usize,
    pub probabilities: Vec<f32>,
    pub labels: Vec<i64>,
}

/// Loss and classification metrics of one split.
#[derive(Debug, Clone, PartialEq)]
pub struct SplitMetrics {
    pub loss: f64,
    pub metrics: ClassMetrics,
}

/// The result of a finished run, from the model of its best epoch (the last epoch when the
/// job has no objective).
#[derive(Debug)]
pub struct TrainResult {
    /// The epoch whose model the result describes.
    pub best_epoch: u32,
    /// Epochs trained, fewer than the job's when early stopping ended the run.
    pub num_epochs: u32,
    /// The best epoch's mean training loss.
    pub best_train_loss: f64,
    pub val_metrics: SplitMetrics,
    pub test_metrics: SplitMetrics,
    pub val: SplitPredictions,
    pub test: SplitPredictions,
    /// The best epoch's variables by name, on the CPU.
    pub weights: Vec<(String, Tensor)>,
    pub pretrained: Option<PretrainedReport>,
}

impl TrainResult {
    pub fn test_loss(&self) -> f64 {
        self.test_metrics.loss
    }

    pub fn test_accuracy(&self) -> f64 {
        self.test_metrics.metrics.accuracy
    }

    /// Writes the best epoch's weights as a safetensors file.
    pub fn save_weights(&self, path: &std::path::Path) -> Result<(), tch::TchError> {
        Tensor::write_safetensors(&self.weights, path)
    }
}

/// The reason a run could not finish.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("invalid dataset {path}: {detail}")]
    Dataset { path: PathBuf, detail: String },
    #[error("invalid pretrained weights {path}: {detail}")]
    Pretrained { path: PathBuf, detail: String },
    #[error("invalid training config: {0}")]
    Config(String),
    #[error("failed to save the checkpoint: {0}")]
    Checkpoint(String),
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

/// Reads and validates a dataset for `model` without training, so that a bad file is
/// reported before any trial starts. It loads the whole dataset into memory on the CPU.
pub fn check_dataset(
    path: &std::path::Path,
    options: &DataOptions,
    model: &str,
) -> Result<(), TrainError> {
    let dataset = data::Dataset::load(path, options, tch::Device::Cpu)?;
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
    check_job(job)?;
    // NOTE: the tests run only on a CPU device. The same code runs on CUDA, but no test covers it.
    if job.device == Device::Cpu && job.num_threads > 0 {
        tch::set_num_threads(i32::try_from(job.num_threads).unwrap_or(i32::MAX));
    }
    let dataset = Dataset::load(&job.dataset, &job.data, job.device)?;
    dataset.check_input_for(&job.config.model)?;

    // The seed is reinterpreted as i64, so seeds above i64::MAX stay distinct.
    tch::manual_seed(job.seed as i64);
    let vars = nn::VarStore::new(job.device);
    let net = model::build(
        &vars.root(),
        &job.config,
        &dataset.row_shape,
        dataset.num_classes,
        job.module.as_deref(),
    )?;
    let pretrained = match &job.pretrained {
        Some(path) => Some(load_pretrained(&vars, path)?),
        None => None,
    };
    let mut optimizer = model::optimizer(&vars, &job.config)?;
    let schedule = Schedule::new(&job.config, job.epochs);
    debug!(
        model = %job.config.model,
        optimizer = %job.config.optimizer,
        num_classes = dataset.num_classes,
        num_train_rows = dataset.train.num_rows(),
        "training started"
    );

    let mut best: Option<Best> = None;
    let mut num_epochs = 0;
    for epoch in 1..=job.epochs {
        let lr = schedule.lr(epoch);
        optimizer.set_lr_group(HEAD_GROUP, lr);
        optimizer.set_lr_group(BACKBONE_GROUP, lr * job.config.backbone_lr_factor);
        let frozen = backbone_frozen(&job.config, epoch);
        let train_loss = train_epoch(&net, &mut optimizer, &dataset.train, job, epoch, frozen)?;
        let val = evaluate(&net, &dataset.val, dataset.num_classes, job)?;
        check_finite("val_loss", val.loss, epoch)?;
        let report = EpochReport {
            epoch,
            train_loss,
            val_loss: val.loss,
            val_accuracy: val.metrics.accuracy,
            val_macro_precision: val.metrics.macro_precision,
            val_macro_recall: val.metrics.macro_recall,
            val_macro_f1: val.metrics.macro_f1,
            lr,
        };
        debug!(
            epoch,
            train_loss,
            val_loss = val.loss,
            val_accuracy = val.metrics.accuracy,
            lr,
            frozen,
            "epoch finished"
        );
        num_epochs = epoch;
        if !on_epoch(&report) {
            return Err(TrainError::Stopped { epoch });
        }
        if Best::improves(best.as_ref(), job.objective.as_ref(), &report) {
            best = Some(Best::snapshot(&vars, &report, job.objective.as_ref())?);
        }
        let since_best = epoch - best.as_ref().map_or(epoch, |b| b.epoch);
        if job.config.patience > 0 && i64::from(since_best) >= job.config.patience {
            info!(
                epoch,
                best_epoch = best.as_ref().map_or(epoch, |b| b.epoch),
                "early stopping"
            );
            break;
        }
    }

    let best = best.expect("the job has at least one epoch");
    best.restore(&vars)?;
    let val = evaluate(&net, &dataset.val, dataset.num_classes, job)?;
    check_finite("val_loss", val.loss, best.epoch)?;
    let test = evaluate(&net, &dataset.test, dataset.num_classes, job)?;
    check_finite("test_loss", test.loss, best.epoch)?;
    Ok(TrainResult {
        best_epoch: best.epoch,
        num_epochs,
        best_train_loss: best.train_loss,
        val: val.predictions(&dataset.val, dataset.num_classes)?,
        test: test.predictions(&dataset.test, dataset.num_classes)?,
        val_metrics: val.split_metrics(),
        test_metrics: test.split_metrics(),
        weights: best.weights,
        pretrained,
    })
}

fn check_job(job: &TrainJob) -> Result<(), TrainError> {
    if job.config.batch_size < 1 {
        return Err(TrainError::Config(format!(
            "invalid batch_size {}: expected an int >= 1",
            job.config.batch_size
        )));
    }
    if job.epochs < 1 {
        return Err(TrainError::Config(format!(
            "invalid epochs {}: expected at least 1",
            job.epochs
        )));
    }
    if job.config.freeze_backbone && job.config.model == "torchscript" {
        return Err(TrainError::Config(
            "freeze_backbone needs a model with a separate head, but model \"torchscript\" \
             trains the module as a whole"
                .to_string(),
        ));
    }
    if job.config.patience > 0 && job.objective.is_none() {
        return Err(TrainError::Config(
            "patience needs an objective metric to watch".to_string(),
        ));
    }
    if job.config.precision == "bf16" && !matches!(job.device, Device::Cpu | Device::Cuda(_)) {
        return Err(TrainError::Config(format!(
            "precision \"bf16\" needs the CPU or a CUDA device, got {:?}",
            job.device
        )));
    }
    Ok(())
}

fn load_pretrained(
    vars: &nn::VarStore,
    path: &std::path::Path,
) -> Result<PretrainedReport, TrainError> {
    let report = pretrained::load(vars, path)?;
    info!(
        path = %path.display(),
        num_loaded = report.loaded.len(),
        num_skipped = report.skipped.len(),
        num_initialised = report.initialised.len(),
        "pretrained weights loaded"
    );
    for skipped in &report.skipped {
        debug!(tensor = %skipped.name, reason = %skipped.reason, "pretrained tensor skipped");
    }
    Ok(report)
}

/// Tells whether the backbone stays frozen during `epoch`.
pub fn backbone_frozen(config: &TrainConfig, epoch: u32) -> bool {
    config.freeze_backbone
        && (config.unfreeze_epoch == 0 || i64::from(epoch) < config.unfreeze_epoch)
}

/// The best epoch so far and a copy of its variables.
struct Best {
    epoch: u32,
    train_loss: f64,
    value: f64,
    weights: Vec<(String, Tensor)>,
}

impl Best {
    /// Tells whether `report` should replace `best`: always without an objective (so the last
    /// epoch wins), otherwise when it improves the objective strictly.
    fn improves(best: Option<&Best>, objective: Option<&Objective>, report: &EpochReport) -> bool {
        let (Some(best), Some(objective)) = (best, objective) else {
            return true;
        };
        let Some(value) = report.metric(&objective.metric) else {
            return false;
        };
        if objective.maximize {
            value > best.value
        } else {
            value < best.value
        }
    }

    fn snapshot(
        vars: &nn::VarStore,
        report: &EpochReport,
        objective: Option<&Objective>,
    ) -> Result<Best, TrainError> {
        let mut weights = Vec::new();
        for (name, variable) in vars.variables() {
            let copy = variable.f_detach()?.f_to_device(Device::Cpu)?.copy();
            weights.push((name, copy));
        }
        weights.sort_by(|a, b| a.0.cmp(&b.0));
        let value = objective
            .and_then(|o| report.metric(&o.metric))
            .unwrap_or(f64::NAN);
        Ok(Best {
            epoch: report.epoch,
            train_loss: report.train_loss,
            value,
            weights,
        })
    }

    fn restore(&self, vars: &nn::VarStore) -> Result<(), TrainError> {
        let variables = vars.variables();
        tch::no_grad(|| -> Result<(), TrainError> {
            for (name, saved) in &self.weights {
                let mut variable = variables[name].shallow_clone();
                variable.f_copy_(&saved.f_to_device(variable.device())?)?;
            }
            Ok(())
        })
    }
}

/// Runs one epoch of mini-batch updates over `split` and returns the mean of the batch losses.
fn train_epoch(
    net: &Network,
    optimizer: &mut nn::Optimizer,
    split: &Split,
    job: &TrainJob,
    epoch: u32,
    frozen: bool,
) -> Result<f64, TrainError> {
    let augmentation = job.config.augment.then_some(Augmentation {
        crop_padding: job.config.crop_padding,
        horizontal_flip: true,
    });
    let batches = loader::spawn(EpochBatches {
        x: split.x.shallow_clone(),
        y: split.y.shallow_clone(),
        batch_size: job.config.batch_size,
        seed: job.seed,
        epoch,
        augmentation,
    });
    let mut loss_sum = 0.0;
    let mut num_batches = 0;

    for batch in batches {
        let (x, y) = batch?;
        let loss = {
            let _autocast = autocast(job);
            let logits = net.forward(&x, true, frozen);
            logits.f_cross_entropy_loss::<Tensor>(
                &y,
                None,
                Reduction::Mean,
                -100,
                job.config.label_smoothing,
            )?
        };
        let loss_value = loss.f_double_value(&[])?;
        // Stops at the first bad batch, before a NaN reaches the weights or wastes an epoch.
        check_finite("train_loss", loss_value, epoch)?;
        if job.config.grad_clip_norm > 0.0 {
            optimizer.backward_step_clip_norm(&loss, job.config.grad_clip_norm);
        } else {
            optimizer.backward_step(&loss);
        }
        loss_sum += loss_value;
        num_batches += 1;
    }
    Ok(loss_sum / f64::from(num_batches))
}

/// Loss, classification metrics and class probabilities of a model on one split.
struct Evaluation {
    /// Mean cross entropy per row.
    loss: f64,
    metrics: ClassMetrics,
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

    fn split_metrics(&self) -> SplitMetrics {
        SplitMetrics {
            loss: self.loss,
            metrics: self.metrics.clone(),
        }
    }
}

/// Evaluates `net` on `split` in eval mode (no dropout) without recording gradients.
fn evaluate(
    net: &Network,
    split: &Split,
    num_classes: i64,
    job: &TrainJob,
) -> Result<Evaluation, TrainError> {
    let _no_grad = tch::no_grad_guard();
    let _autocast = autocast(job);
    let num_rows = split.num_rows();
    let mut loss_sum = 0.0;
    let mut probabilities = Vec::new();
    let mut predicted = Vec::new();

    for start in (0..num_rows).step_by(EVAL_BATCH_ROWS as usize) {
        let len = EVAL_BATCH_ROWS.min(num_rows - start);
        let x = split.x.f_narrow(0, start, len)?;
        let y = split.y.f_narrow(0, start, len)?;
        let logits = net.forward(&x, false, false);
        let loss = logits.f_cross_entropy_loss::<Tensor>(&y, None, Reduction::Sum, -100, 0.0)?;
        loss_sum += loss.f_double_value(&[])?;
        predicted.push(logits.f_argmax(-1, false)?);
        probabilities.push(logits.f_softmax(-1, Kind::Float)?);
    }
    let predicted = Tensor::f_cat(&predicted, 0)?.f_to_device(Device::Cpu)?;
    let labels = split.y.f_to_device(Device::Cpu)?;
    let metrics = class_metrics(
        &Vec::<i64>::try_from(&predicted)?,
        &Vec::<i64>::try_from(&labels)?,
        num_classes as usize,
    );
    Ok(Evaluation {
        loss: loss_sum / num_rows as f64,
        metrics,
        probabilities: Tensor::f_cat(&probabilities, 0)?,
    })
}

/// Enables bf16 autocast for the job's device until the guard is dropped when the job's
/// precision is "bf16". The weights, gradients and optimizer state stay float32; only the
/// operations that autocast selects, such as matmuls and convolutions, run in bfloat16.
fn autocast(job: &TrainJob) -> Option<Bf16Autocast> {
    (job.config.precision == "bf16").then(|| Bf16Autocast::new(job.device))
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

/// Wraps a config problem found while building the model as a torch error, the type the model
/// builders return.
fn invalid_config(detail: String) -> tch::TchError {
    tch::TchError::Convert(detail)
}
