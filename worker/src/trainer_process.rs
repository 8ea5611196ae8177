//! The trainer process: the child a worker starts for each attempt.
//!
//! It reads one length-delimited `TrainRequest` from stdin, trains, and writes length-delimited
//! `TrainerEvent`s to stdout. Running training in a child keeps a crash, an abort or an
//! out-of-memory kill inside that attempt, and the agent lives on.

use std::io::{Read, Write};
use std::path::PathBuf;

use prost::Message;
use tunefleet_proto::hyper::TrainConfig;
use tunefleet_proto::v1::{self, trainer_event::Event};
use tunefleet_proto::{now_ms, params_from_proto};

use crate::train::{
    self, DataOptions, EpochReport, Normalize, Objective, SplitMetrics, SplitPredictions,
    TrainError, TrainJob, TrainResult,
};

/// Exit code for a run that failed with a reason written to stdout.
pub const EXIT_TRAINING_FAILED: i32 = 1;
/// Exit code for a request that could not be read or was invalid.
pub const EXIT_BAD_REQUEST: i32 = 2;
/// Exit code when stdin closed early, which means the worker went away.
pub const EXIT_ORPHANED: i32 = 3;
/// The largest checkpoint the trainer hands to the worker. An artifact travels in one gRPC
/// message of at most `MAX_ARTIFACT_MESSAGE_BYTES` (256 MiB), and this leaves room for the rest
/// of the upload, so larger weights are not uploaded.
const MAX_CHECKPOINT_BYTES: usize = 250 * 1024 * 1024;
/// The artifact name of the best epoch's weights.
pub const CHECKPOINT_ARTIFACT: &str = "checkpoint.safetensors";

/// Runs the trainer process to completion and returns its exit code.
pub fn run() -> i32 {
    let request = match read_request() {
        Ok(request) => request,
        Err(reason) => {
            eprintln!("tunefleet trainer: {reason}");
            return EXIT_BAD_REQUEST;
        }
    };
    // Exit when the worker goes away: its end of our stdin closes.
    std::thread::spawn(|| {
        let mut sink = [0u8; 64];
        while matches!(std::io::stdin().read(&mut sink), Ok(n) if n > 0) {}
        std::process::exit(EXIT_ORPHANED);
    });
    let job = match job_from_request(&request) {
        Ok(job) => job,
        Err(reason) => {
            write_event(Event::Error(reason));
            return EXIT_BAD_REQUEST;
        }
    };
    let mut on_epoch = |report: &EpochReport| {
        write_event(Event::Epoch(epoch_metrics(report)));
        true
    };
    match train::train(&job, &mut on_epoch).and_then(trainer_result) {
        Ok(result) => {
            write_event(Event::Result(result));
            0
        }
        Err(err) => {
            write_event(Event::Error(failure_reason(&err)));
            EXIT_TRAINING_FAILED
        }
    }
}

/// Builds the result event: the best epoch's metrics, predictions and artifacts.
fn trainer_result(result: TrainResult) -> Result<v1::TrainerResult, TrainError> {
    let mut final_metrics = vec![
        metric("best_epoch", f64::from(result.best_epoch)),
        metric("num_epochs", f64::from(result.num_epochs)),
        metric("train_loss", result.best_train_loss),
    ];
    final_metrics.extend(split_metrics("val", &result.val_metrics));
    final_metrics.extend(split_metrics("test", &result.test_metrics));

    let mut artifacts = vec![v1::TrainerArtifact {
        name: "evaluation.json".to_string(),
        content: evaluation_json(&result),
    }];
    if let Some(report) = &result.pretrained {
        final_metrics.push(metric("pretrained_loaded", report.loaded.len() as f64));
        final_metrics.push(metric("pretrained_skipped", report.skipped.len() as f64));
        final_metrics.push(metric(
            "pretrained_initialised",
            report.initialised.len() as f64,
        ));
        artifacts.push(v1::TrainerArtifact {
            name: "pretrained.json".to_string(),
            content: serde_json::to_vec_pretty(report).expect("the report serializes"),
        });
    }
    let checkpoint = checkpoint_bytes(&result)?;
    if checkpoint.len() <= MAX_CHECKPOINT_BYTES {
        artifacts.push(v1::TrainerArtifact {
            name: CHECKPOINT_ARTIFACT.to_string(),
            content: checkpoint,
        });
    } else {
        eprintln!(
            "tunefleet trainer: the checkpoint has {} bytes, more than the {MAX_CHECKPOINT_BYTES} \
             an artifact may have, so it is not uploaded",
            checkpoint.len()
        );
    }
    let confusion_matrices = vec![
        confusion_matrix("val", &result.val_metrics),
        confusion_matrix("test", &result.test_metrics),
    ];
    Ok(v1::TrainerResult {
        final_metrics,
        val: Some(predictions(result.val)),
        test: Some(predictions(result.test)),
        artifacts,
        confusion_matrices,
    })
}

fn split_metrics(split: &str, metrics: &SplitMetrics) -> Vec<v1::Metric> {
    let class = &metrics.metrics;
    vec![
        metric(&format!("{split}_loss"), metrics.loss),
        metric(&format!("{split}_accuracy"), class.accuracy),
        metric(&format!("{split}_macro_precision"), class.macro_precision),
        metric(&format!("{split}_macro_recall"), class.macro_recall),
        metric(&format!("{split}_macro_f1"), class.macro_f1),
    ]
}

fn confusion_matrix(split: &str, metrics: &SplitMetrics) -> v1::ConfusionMatrix {
    let confusion = &metrics.metrics.confusion;
    v1::ConfusionMatrix {
        split: split.to_string(),
        num_classes: confusion.len() as u32,
        counts: confusion.iter().flatten().copied().collect(),
    }
}

/// Serializes the best epoch's metrics and confusion matrices of both splits.
fn evaluation_json(result: &TrainResult) -> Vec<u8> {
    let split = |metrics: &SplitMetrics| {
        serde_json::json!({
            "loss": metrics.loss,
            "accuracy": metrics.metrics.accuracy,
            "macro_precision": metrics.metrics.macro_precision,
            "macro_recall": metrics.metrics.macro_recall,
            "macro_f1": metrics.metrics.macro_f1,
            "confusion_matrix": metrics.metrics.confusion,
        })
    };
    let evaluation = serde_json::json!({
        "best_epoch": result.best_epoch,
        "val": split(&result.val_metrics),
        "test": split(&result.test_metrics),
    });
    serde_json::to_vec_pretty(&evaluation).expect("the evaluation serializes")
}

fn checkpoint_bytes(result: &TrainResult) -> Result<Vec<u8>, TrainError> {
    let dir = tempfile::tempdir().map_err(|err| {
        TrainError::Checkpoint(format!("failed to create a temporary directory: {err}"))
    })?;
    let path = dir.path().join(CHECKPOINT_ARTIFACT);
    result.save_weights(&path)?;
    std::fs::read(&path)
        .map_err(|err| TrainError::Checkpoint(format!("failed to read {}: {err}", path.display())))
}

fn failure_reason(err: &TrainError) -> String {
    match err {
        TrainError::NonFinite { .. } => format!("training diverged: {err}"),
        _ => err.to_string(),
    }
}

fn read_request() -> Result<v1::TrainRequest, String> {
    let mut stdin = std::io::stdin().lock();
    let length = read_varint(&mut stdin)?;
    let mut buffer = vec![0u8; length];
    stdin
        .read_exact(&mut buffer)
        .map_err(|err| format!("failed to read the train request: {err}"))?;
    v1::TrainRequest::decode(buffer.as_slice())
        .map_err(|err| format!("invalid train request: {err}"))
}

/// Reads a protobuf varint length prefix one byte at a time, so nothing past it is consumed.
fn read_varint(reader: &mut impl Read) -> Result<usize, String> {
    let mut value: u64 = 0;
    for shift in (0..64).step_by(7) {
        let mut byte = [0u8; 1];
        reader
            .read_exact(&mut byte)
            .map_err(|err| format!("failed to read the train request length: {err}"))?;
        value |= u64::from(byte[0] & 0x7f) << shift;
        if byte[0] & 0x80 == 0 {
            return usize::try_from(value)
                .map_err(|_| format!("train request length {value} is too large"));
        }
    }
    Err("invalid train request length prefix".to_string())
}

fn job_from_request(request: &v1::TrainRequest) -> Result<TrainJob, String> {
    let params = params_from_proto(&request.hyperparameters)?;
    let config = TrainConfig::from_params(&request.model, &params).map_err(|e| e.to_string())?;
    let device = parse_device(&request.device)?;
    let non_empty = |s: &String| (!s.is_empty()).then(|| s.clone());
    let objective = request.objective.as_ref().map(|objective| Objective {
        metric: objective.metric.clone(),
        maximize: objective.goal() == v1::Goal::Maximize,
    });
    Ok(TrainJob {
        dataset: PathBuf::from(&request.dataset),
        data: DataOptions {
            format: non_empty(&request.format),
            label_column: non_empty(&request.label_column),
            image_size: (request.image_size > 0).then_some(request.image_size),
            normalize: normalize_from_request(request),
        },
        pretrained: non_empty(&request.pretrained).map(PathBuf::from),
        module: non_empty(&request.module).map(PathBuf::from),
        epochs: request.epochs,
        objective,
        config,
        seed: request.seed,
        device,
        num_threads: request.num_threads.max(1),
    })
}

/// Reads the request's normalisation; both lists empty keep the format's default.
fn normalize_from_request(request: &v1::TrainRequest) -> Option<Normalize> {
    if request.normalize_mean.is_empty() && request.normalize_std.is_empty() {
        return None;
    }
    Some(Normalize {
        mean: request.normalize_mean.clone(),
        std: request.normalize_std.clone(),
    })
}

/// Parses "cpu" or "cuda:N".
pub fn parse_device(name: &str) -> Result<tch::Device, String> {
    if name == "cpu" {
        return Ok(tch::Device::Cpu);
    }
    let index = name
        .strip_prefix("cuda:")
        .and_then(|n| n.parse::<usize>().ok())
        .ok_or_else(|| format!("invalid device {name:?}: expected \"cpu\" or \"cuda:N\""))?;
    Ok(tch::Device::Cuda(index))
}

fn metric(name: &str, value: f64) -> v1::Metric {
    v1::Metric {
        name: name.to_string(),
        value,
    }
}

fn epoch_metrics(report: &EpochReport) -> v1::EpochMetrics {
    v1::EpochMetrics {
        epoch: report.epoch,
        metrics: report
            .metrics()
            .iter()
            .map(|(name, value)| metric(name, *value))
            .collect(),
        reported_at_ms: now_ms(),
    }
}

fn predictions(split: SplitPredictions) -> v1::Predictions {
    v1::Predictions {
        num_classes: split.num_classes as u32,
        probabilities: split.probabilities,
        labels: split.labels,
    }
}

fn write_event(event: Event) {
    let message = v1::TrainerEvent { event: Some(event) };
    let mut stdout = std::io::stdout().lock();
    let written = stdout
        .write_all(&message.encode_length_delimited_to_vec())
        .and_then(|()| stdout.flush());
    if let Err(err) = written {
        // The worker reads stdout until we exit; if it cannot, it has gone away.
        eprintln!("tunefleet trainer: failed to write to the worker: {err}");
        std::process::exit(EXIT_ORPHANED);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> v1::TrainRequest {
        v1::TrainRequest {
            model: "cnn".to_string(),
            dataset: "/data/flowers".to_string(),
            epochs: 1,
            device: "cpu".to_string(),
            ..v1::TrainRequest::default()
        }
    }

    #[test]
    fn job_takes_image_keys() {
        let request = v1::TrainRequest {
            image_size: 224,
            normalize_mean: vec![0.5, 0.4, 0.3],
            normalize_std: vec![0.2, 0.2, 0.1],
            ..request()
        };
        let job = job_from_request(&request).unwrap();
        assert_eq!(job.data.image_size, Some(224));
        let expected = Normalize {
            mean: vec![0.5, 0.4, 0.3],
            std: vec![0.2, 0.2, 0.1],
        };
        assert_eq!(job.data.normalize, Some(expected));
    }

    #[test]
    fn job_leaves_unset_image_keys_to_defaults() {
        let job = job_from_request(&request()).unwrap();
        assert_eq!(job.data.image_size, None);
        assert_eq!(job.data.normalize, None);
    }
}
