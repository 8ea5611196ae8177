//! Fine-tuning through the public `train` function: pretrained weights, a frozen backbone,
//! per-group learning rates, early stopping, ResNets on CIFAR-10 files and TorchScript modules.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tch::{Device, Kind, Tensor};
use tunefleet_proto::hyper::TrainConfig;
use tunefleet_proto::Value;
use tunefleet_worker::train::{
    train, DataOptions, EpochReport, Objective, TrainError, TrainJob, TrainResult,
};

/// Serializes the runs, because `train` seeds libtorch's process-wide generator.
static TORCH: Mutex<()> = Mutex::new(());

/// Writes an npz of 3 x 8 x 8 images in 3 classes, each class brighter in its own channel.
fn write_images(path: &Path) {
    let _guard = TORCH
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    tch::manual_seed(11);
    let split = |rows: i64| {
        let y = Tensor::arange(rows, (Kind::Int64, Device::Cpu)).remainder(3);
        let pattern = y.one_hot(3).to_kind(Kind::Float).view([rows, 3, 1, 1]);
        let x = Tensor::randn([rows, 3, 8, 8], (Kind::Float, Device::Cpu)) * 0.5 + pattern;
        (x, y)
    };
    let (train_x, train_y) = split(60);
    let (val_x, val_y) = split(15);
    let (test_x, test_y) = split(15);
    let arrays = [
        ("train_x", train_x),
        ("train_y", train_y),
        ("val_x", val_x),
        ("val_y", val_y),
        ("test_x", test_x),
        ("test_y", test_y),
    ];
    Tensor::write_npz(&arrays, path).unwrap();
}

fn job(dataset: &Path, model: &str, params: &[(&str, Value)], epochs: u32) -> TrainJob {
    let params: Vec<(String, Value)> = params
        .iter()
        .map(|(name, value)| (name.to_string(), value.clone()))
        .collect();
    TrainJob {
        dataset: dataset.to_path_buf(),
        data: DataOptions::default(),
        pretrained: None,
        module: None,
        epochs,
        config: TrainConfig::from_params(model, &params).unwrap(),
        objective: None,
        seed: 3,
        device: Device::Cpu,
        num_threads: 1,
    }
}

fn cnn_params(extra: &[(&'static str, Value)]) -> Vec<(&'static str, Value)> {
    let mut params = vec![
        ("optimizer", Value::String("sgd".into())),
        ("lr", Value::Float(0.05)),
        ("momentum", Value::Float(0.9)),
        ("batch_size", Value::Int(16)),
        ("channels", Value::Int(4)),
    ];
    params.extend_from_slice(extra);
    params
}

fn run(job: &TrainJob) -> (Vec<EpochReport>, Result<TrainResult, TrainError>) {
    let _guard = TORCH
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut reports = Vec::new();
    let result = train(job, &mut |report| {
        reports.push(report.clone());
        true
    });
    (reports, result)
}

fn weights(result: &TrainResult) -> HashMap<String, Tensor> {
    result
        .weights
        .iter()
        .map(|(name, tensor)| (name.clone(), tensor.shallow_clone()))
        .collect()
}

/// Trains a cnn for one epoch and saves its weights as the pretrained file of the other runs.
fn pretrained_cnn(dir: &Path) -> (PathBuf, PathBuf, HashMap<String, Tensor>) {
    let dataset = dir.join("images.npz");
    write_images(&dataset);
    let (_, result) = run(&job(&dataset, "cnn", &cnn_params(&[]), 1));
    let result = result.unwrap();
    let pretrained = dir.join("cnn.safetensors");
    result.save_weights(&pretrained).unwrap();
    (dataset, pretrained, weights(&result))
}

const BACKBONE: [&str; 6] = [
    "conv1.weight",
    "conv1.bias",
    "conv2.weight",
    "conv2.bias",
    "hidden.weight",
    "hidden.bias",
];

#[test]
fn frozen_backbone_keeps_weights() {
    let dir = tempfile::tempdir().unwrap();
    let (dataset, pretrained, start) = pretrained_cnn(dir.path());
    let params = cnn_params(&[("freeze_backbone", Value::Bool(true))]);
    let mut job = job(&dataset, "cnn", &params, 2);
    job.pretrained = Some(pretrained);

    let (_, result) = run(&job);
    let result = result.unwrap();

    let end = weights(&result);
    for name in BACKBONE {
        assert!(end[name].equal(&start[name]), "{name} changed while frozen");
    }
    assert!(
        !end["head.weight"].equal(&start["head.weight"]),
        "the head did not train"
    );
    let report = result.pretrained.unwrap();
    assert_eq!(report.loaded.len(), 8);
    assert!(report.skipped.is_empty());
}

#[test]
fn unfreeze_epoch_trains_backbone() {
    let dir = tempfile::tempdir().unwrap();
    let (dataset, pretrained, start) = pretrained_cnn(dir.path());
    let params = cnn_params(&[
        ("freeze_backbone", Value::Bool(true)),
        ("unfreeze_epoch", Value::Int(2)),
    ]);
    let mut one_epoch = job(&dataset, "cnn", &params, 1);
    one_epoch.pretrained = Some(pretrained);
    let mut two_epochs = one_epoch.clone();
    two_epochs.epochs = 2;

    let after_one = weights(&run(&one_epoch).1.unwrap());
    let after_two = weights(&run(&two_epochs).1.unwrap());

    for name in BACKBONE {
        assert!(
            after_one[name].equal(&start[name]),
            "{name} changed in epoch 1"
        );
        assert!(
            !after_two[name].equal(&start[name]),
            "{name} did not change in epoch 2"
        );
    }
}

#[test]
fn zero_backbone_lr_factor_keeps_backbone() {
    let dir = tempfile::tempdir().unwrap();
    let (dataset, pretrained, start) = pretrained_cnn(dir.path());
    let params = cnn_params(&[("backbone_lr_factor", Value::Float(0.0))]);
    let mut job = job(&dataset, "cnn", &params, 1);
    job.pretrained = Some(pretrained);

    let end = weights(&run(&job).1.unwrap());

    assert!(end["conv1.weight"].equal(&start["conv1.weight"]));
    assert!(!end["head.weight"].equal(&start["head.weight"]));
}

#[test]
fn early_stopping_keeps_best_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = dir.path().join("images.npz");
    write_images(&dataset);
    // A cosine schedule lowers lr every epoch, so an objective of maximal lr never improves
    // after epoch 1 and patience 2 stops the run after epoch 3.
    let params = cnn_params(&[
        ("lr_schedule", Value::String("cosine".into())),
        ("patience", Value::Int(2)),
    ]);
    let mut job = job(&dataset, "cnn", &params, 6);
    job.objective = Some(Objective {
        metric: "lr".to_string(),
        maximize: true,
    });

    let (reports, result) = run(&job);
    let result = result.unwrap();

    assert_eq!(reports.len(), 3);
    assert_eq!(result.best_epoch, 1);
    assert_eq!(result.num_epochs, 3);
    assert_eq!(result.best_train_loss, reports[0].train_loss);
    assert_eq!(result.val_metrics.loss, reports[0].val_loss);
}

#[test]
fn patience_without_objective_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = dir.path().join("images.npz");
    write_images(&dataset);
    let job = job(
        &dataset,
        "cnn",
        &cnn_params(&[("patience", Value::Int(1))]),
        2,
    );
    let err = run(&job).1.unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid training config: patience needs an objective metric to watch"
    );
}

#[test]
fn bf16_is_rejected_on_mps() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = dir.path().join("images.npz");
    write_images(&dataset);
    let params = cnn_params(&[("precision", Value::String("bf16".into()))]);
    let mut job = job(&dataset, "cnn", &params, 1);
    job.device = Device::Mps;
    let err = run(&job).1.unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid training config: precision \"bf16\" needs the CPU or a CUDA device, got Mps"
    );
}

#[test]
fn epoch_reports_macro_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = dir.path().join("images.npz");
    write_images(&dataset);
    let (reports, result) = run(&job(&dataset, "cnn", &cnn_params(&[]), 2));
    let result = result.unwrap();
    let last = reports.last().unwrap();
    assert!((0.0..=1.0).contains(&last.val_macro_f1));
    assert_eq!(last.val_macro_f1, result.val_metrics.metrics.macro_f1);
    let confusion = &result.test_metrics.metrics.confusion;
    assert_eq!(confusion.len(), 3);
    assert_eq!(confusion.iter().flatten().sum::<u64>(), 15);
}

/// Writes a CIFAR-10 binary directory of 32 x 32 images whose class sets one channel bright.
fn write_cifar(dir: &Path, num_train: usize, num_test: usize) {
    let record = |index: usize| {
        let label = (index % 3) as u8;
        let mut bytes = vec![label];
        for channel in 0..3u8 {
            let value = if channel == label { 220 } else { 30 };
            bytes.extend(std::iter::repeat_n(value, 1024));
        }
        bytes
    };
    let train: Vec<u8> = (0..num_train).flat_map(record).collect();
    let test: Vec<u8> = (0..num_test).flat_map(record).collect();
    std::fs::write(dir.join("data_batch_1.bin"), train).unwrap();
    std::fs::write(dir.join("test_batch.bin"), test).unwrap();
}

#[test]
fn resnet18_trains_on_cifar_files() {
    let dir = tempfile::tempdir().unwrap();
    write_cifar(dir.path(), 40, 12);
    let params = [
        ("optimizer", Value::String("sgd".into())),
        ("lr", Value::Float(0.01)),
        ("batch_size", Value::Int(20)),
        ("augment", Value::Bool(true)),
    ];
    let (reports, result) = run(&job(dir.path(), "resnet18", &params, 1));
    let result = result.unwrap();
    assert_eq!(reports.len(), 1);
    assert_eq!(result.test.labels.len(), 12);
    assert_eq!(result.test.num_classes, 3);
    let end = weights(&result);
    assert_eq!(end["fc.weight"].size(), vec![3, 512]);
    assert!(end.contains_key("layer4.1.bn2.running_mean"));
}

/// Scripts a small module with the venv's PyTorch and saves it with `torch.jit.save`.
fn script_module(path: &Path) {
    let script = format!(
        "import torch\n\
         class Net(torch.nn.Module):\n\
         \x20   def __init__(self):\n\
         \x20       super().__init__()\n\
         \x20       self.fc = torch.nn.Linear(192, 3)\n\
         \x20   def forward(self, x):\n\
         \x20       return self.fc(x.flatten(1))\n\
         torch.manual_seed(0)\n\
         torch.jit.save(torch.jit.script(Net()), {:?})\n",
        path.display().to_string()
    );
    // TorchScript reads the class's source, so the script must be a file.
    let script_path = path.with_extension("py");
    std::fs::write(&script_path, script).unwrap();
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    let status = std::process::Command::new(python)
        .arg(&script_path)
        .status()
        .expect("failed to start the venv's python");
    assert!(status.success(), "scripting the module failed");
}

#[test]
fn torchscript_module_trains() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = dir.path().join("images.npz");
    write_images(&dataset);
    let module = dir.path().join("net.pt");
    script_module(&module);
    let params = [
        ("optimizer", Value::String("sgd".into())),
        ("lr", Value::Float(0.05)),
        ("batch_size", Value::Int(16)),
    ];
    let mut job = job(&dataset, "torchscript", &params, 5);
    job.module = Some(module);

    let (reports, result) = run(&job);
    let result = result.unwrap();

    let names: Vec<&str> = result.weights.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, vec!["fc_bias", "fc_weight"]);
    assert!(reports[4].train_loss < reports[0].train_loss);
    assert!(result.test_accuracy() > 0.6, "{}", result.test_accuracy());
}

#[test]
fn torchscript_rejects_frozen_backbone() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = dir.path().join("images.npz");
    write_images(&dataset);
    // The config is checked before the module is read, so the file need not exist.
    let module = dir.path().join("missing.pt");
    let params = [("freeze_backbone", Value::Bool(true))];
    let mut job = job(&dataset, "torchscript", &params, 1);
    job.module = Some(module);
    let err = run(&job).1.unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid training config: freeze_backbone needs a model with a separate head, but \
         model \"torchscript\" trains the module as a whole"
    );
}

/// Exports a torchvision-style ResNet-18 for `num_classes` classes from PyTorch.
fn export_torch_resnet18(num_classes: u32, path: &Path) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let status = std::process::Command::new(root.join(".venv/bin/python"))
        .arg(root.join("scripts/torch_resnet.py"))
        .args(["resnet18", &num_classes.to_string()])
        .arg(path)
        .status()
        .expect("failed to start the venv's python");
    assert!(status.success(), "exporting the PyTorch ResNet-18 failed");
}

#[test]
fn pytorch_resnet18_weights_load_by_name() {
    let dir = tempfile::tempdir().unwrap();
    write_cifar(dir.path(), 30, 6);
    let pretrained = dir.path().join("resnet18.safetensors");
    export_torch_resnet18(1000, &pretrained);
    let params = [
        ("optimizer", Value::String("sgd".into())),
        ("lr", Value::Float(0.01)),
        ("batch_size", Value::Int(30)),
        ("freeze_backbone", Value::Bool(true)),
    ];
    let mut job = job(dir.path(), "resnet18", &params, 1);
    job.pretrained = Some(pretrained.clone());

    let result = run(&job).1.unwrap();

    let report = result.pretrained.as_ref().unwrap();
    // PyTorch's 122 tensors: 100 match, the 1000-class fc does not, and tch's batch norm keeps
    // no num_batches_tracked (20 of them).
    assert_eq!(report.loaded.len(), 100);
    assert_eq!(report.initialised, vec!["fc.bias", "fc.weight"]);
    assert_eq!(report.skipped.len(), 22);
    let num_batches_tracked = report
        .skipped
        .iter()
        .filter(|s| s.name.ends_with(".num_batches_tracked"))
        .count();
    assert_eq!(num_batches_tracked, 20);
    let file: HashMap<String, Tensor> = Tensor::read_safetensors(&pretrained)
        .unwrap()
        .into_iter()
        .collect();
    let end = weights(&result);
    for name in [
        "conv1.weight",
        "layer3.0.downsample.1.running_var",
        "layer4.1.bn2.bias",
    ] {
        assert!(
            end[name].equal(&file[name]),
            "{name} differs from PyTorch's"
        );
    }
    assert_eq!(end["fc.weight"].size(), vec![3, 512]);
}
