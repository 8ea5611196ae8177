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

use crate::train::{self, EpochReport, SplitPredictions, TrainError, TrainJob};

/// Exit code for a run that failed with a reason written to stdout.
pub const EXIT_TRAINING_FAILED: i32 = 1;
/// Exit code for a request that could not be read or was invalid.
pub const EXIT_BAD_REQUEST: i32 = 2;
/// Exit code when stdin closed early, which means the worker went away.
pub const EXIT_ORPHANED: i32 = 3;

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
    match train::train(&job, &mut on_epoch) {
        Ok(result) => {
            let final_metrics = vec![
                metric("test_loss", result.test_loss),
                metric("test_accuracy", result.test_accuracy),
            ];
            write_event(Event::Result(v1::TrainerResult {
                final_metrics,
                val: Some(predictions(result.val)),
                test: Some(predictions(result.test)),
            }));
            0
        }
        Err(err) => {
            write_event(Event::Error(failure_reason(&err)));
            EXIT_TRAINING_FAILED
        }
    }
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
    Ok(TrainJob {
        dataset: PathBuf::from(&request.dataset),
        epochs: request.epochs,
        config,
        seed: request.seed,
        device,
        num_threads: request.num_threads.max(1),
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
        metrics: vec![
            metric("train_loss", report.train_loss),
            metric("val_loss", report.val_loss),
            metric("val_accuracy", report.val_accuracy),
        ],
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
