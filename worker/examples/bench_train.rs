//! Measures the trainer's training throughput on synthetic CIFAR-sized images, for
//! `scripts/bench_train`, which runs the same model in a PyTorch eager loop beside it.
//!
//! Usage: bench_train MODEL BATCH_SIZE THREADS ROWS EPOCHS
//! Prints one JSON line: the samples per second over every epoch after the first.

use std::time::Instant;

use tch::{Device, Kind, Tensor};
use tunefleet_proto::hyper::TrainConfig;
use tunefleet_proto::Value;
use tunefleet_worker::train::{train, DataOptions, TrainJob};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, batch_size, threads, rows, epochs] = args.as_slice() else {
        eprintln!("usage: bench_train MODEL BATCH_SIZE THREADS ROWS EPOCHS");
        std::process::exit(2);
    };
    let batch_size: i64 = batch_size.parse().expect("BATCH_SIZE is an int");
    let threads: u32 = threads.parse().expect("THREADS is an int");
    let rows: i64 = rows.parse().expect("ROWS is an int");
    let epochs: u32 = epochs.parse().expect("EPOCHS is an int");
    assert!(
        epochs >= 2,
        "EPOCHS must be at least 2: the first epoch is a warmup"
    );

    let dir = tempfile::tempdir().unwrap();
    let dataset = dir.path().join("bench.npz");
    tch::manual_seed(0);
    let images = |n: i64| Tensor::randn([n, 3, 32, 32], (Kind::Float, Device::Cpu));
    let labels = |n: i64| Tensor::randint(10, [n], (Kind::Int64, Device::Cpu));
    let arrays = [
        ("train_x", images(rows)),
        ("train_y", labels(rows)),
        ("val_x", images(32)),
        ("val_y", labels(32)),
        ("test_x", images(32)),
        ("test_y", labels(32)),
    ];
    Tensor::write_npz(&arrays, &dataset).unwrap();

    let mut params = vec![
        ("batch_size".to_string(), Value::Int(batch_size)),
        ("optimizer".to_string(), Value::String("sgd".into())),
        ("lr".to_string(), Value::Float(0.01)),
        ("momentum".to_string(), Value::Float(0.9)),
    ];
    if model == "cnn" {
        params.push(("channels".to_string(), Value::Int(16)));
    }
    let job = TrainJob {
        dataset,
        data: DataOptions::default(),
        pretrained: None,
        module: None,
        epochs,
        config: TrainConfig::from_params(model, &params).unwrap(),
        objective: None,
        seed: 0,
        device: Device::Cpu,
        num_threads: threads,
    };
    let mut epoch_ends = Vec::new();
    let start = Instant::now();
    train(&job, &mut |_| {
        epoch_ends.push(start.elapsed().as_secs_f64());
        true
    })
    .unwrap();
    let timed_seconds = epoch_ends[epoch_ends.len() - 1] - epoch_ends[0];
    let samples = rows as f64 * f64::from(epochs - 1);
    println!(
        "{{\"impl\": \"tch\", \"model\": \"{model}\", \"batch_size\": {batch_size}, \
         \"threads\": {threads}, \"samples_per_s\": {:.1}}}",
        samples / timed_seconds
    );
}
