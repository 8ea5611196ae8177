//! Runs `examples/cifar10-resnet18.toml` through the `tunefleet` binary on generated CIFAR-10
//! files and ResNet-18 weights exported from PyTorch, shrunk to two trials of two epochs.

use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;
use tunefleet_coordinator::store::{EmbeddedStore, StateStore};
use tunefleet_proto::v1::{self, TrialStatus};

const NUM_CLASSES: usize = 10;

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
}

/// Writes CIFAR-10 binary batches whose classes differ in colour: class `c` has its own mean
/// red, green and blue, and every pixel varies around them.
fn write_cifar(dir: &Path, num_train: usize, num_test: usize) {
    let record = |index: usize| {
        let label = index % NUM_CLASSES;
        let mut bytes = vec![label as u8];
        let means = [label * 25, 250 - label * 25, (label * 75) % 250];
        for mean in means {
            for pixel in 0..1024 {
                let noise = (pixel * 7 + index * 13) % 41;
                bytes.push((mean + noise).min(255) as u8);
            }
        }
        bytes
    };
    std::fs::create_dir_all(dir).unwrap();
    let train: Vec<u8> = (0..num_train).flat_map(record).collect();
    let test: Vec<u8> = (num_train..num_train + num_test).flat_map(record).collect();
    std::fs::write(dir.join("data_batch_1.bin"), train).unwrap();
    std::fs::write(dir.join("test_batch.bin"), test).unwrap();
}

/// Exports an ImageNet-sized (1000-class) ResNet-18 from PyTorch with torchvision's names.
fn export_resnet18(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let status = Command::new(repo_path(".venv/bin/python"))
        .arg(repo_path("scripts/torch_resnet.py"))
        .args(["resnet18", "1000"])
        .arg(path)
        .status()
        .expect("failed to start the venv's python");
    assert!(status.success(), "exporting the PyTorch ResNet-18 failed");
}

/// Returns the recipe shrunk to two trials of two epochs, the backbone unfreezing in epoch 2.
fn shrunk_recipe() -> String {
    let recipe = std::fs::read_to_string(repo_path("examples/cifar10-resnet18.toml")).unwrap();
    let shrunk = recipe
        .replace("unfreeze_epoch = [0, 4]", "unfreeze_epoch = [2]")
        .replace("epochs = 10", "epochs = 2")
        .replace("batch_size = 128", "batch_size = 60");
    assert_ne!(shrunk, recipe);
    assert_eq!(shrunk.matches("epochs = 2").count(), 1, "{shrunk}");
    shrunk
}

fn final_metric(trial: &v1::Trial, name: &str) -> f64 {
    trial
        .final_metrics
        .iter()
        .find(|m| m.name == name)
        .unwrap_or_else(|| panic!("no final metric {name} in {trial:?}"))
        .value
}

fn files_named(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(files_named(&path, name));
        } else if path.file_name().is_some_and(|n| n == name) {
            found.push(path);
        }
    }
    found
}

#[test]
fn cifar10_resnet18_recipe_runs() {
    let work = TempDir::new().unwrap();
    write_cifar(&work.path().join("data/cifar-10-batches-bin"), 200, 40);
    export_resnet18(&work.path().join("weights/resnet18.safetensors"));
    let spec = work.path().join("cifar10-resnet18.toml");
    std::fs::write(&spec, shrunk_recipe()).unwrap();
    let data_dir = work.path().join("state");

    let output = Command::new(env!("CARGO_BIN_EXE_tunefleet"))
        .env("NO_COLOR", "1")
        .env_remove("TUNEFLEET_LOG")
        .arg("run")
        .arg(&spec)
        .arg("--data-dir")
        .arg(&data_dir)
        .arg("--json")
        .output()
        .expect("failed to start tunefleet");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "stderr:\n{stderr}");

    // The store is closed again before `tunefleet export` opens it.
    let trials = {
        let store = EmbeddedStore::open(&data_dir).expect("failed to reopen the store");
        store.load().expect("failed to load the store").trials
    };
    assert_eq!(trials.len(), 2);
    for trial in &trials {
        assert_eq!(trial.status, TrialStatus::Succeeded as i32, "{trial:?}");
        assert_eq!(final_metric(trial, "pretrained_loaded"), 100.0);
        assert_eq!(final_metric(trial, "num_epochs"), 2.0);
        let accuracy = final_metric(trial, "test_accuracy");
        assert!((0.0..=1.0).contains(&accuracy), "{accuracy}");
        assert!(final_metric(trial, "test_macro_f1") <= 1.0);
        let test_matrix = trial
            .confusion_matrices
            .iter()
            .find(|m| m.split == "test")
            .expect("no test confusion matrix");
        assert_eq!(test_matrix.num_classes as usize, NUM_CLASSES);
        assert_eq!(test_matrix.counts.iter().sum::<u64>(), 40);
    }
    let checkpoints = files_named(&data_dir, "checkpoint.safetensors");
    assert_eq!(checkpoints.len(), 2, "{checkpoints:?}");

    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let sweep_id = report["sweep"]["sweep_id"].as_str().unwrap();
    let from_store = work.path().join("export");
    let output = export(
        sweep_id,
        &["--data-dir", data_dir.to_str().unwrap()],
        &from_store,
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "stderr:\n{stderr}");
    check_export(&from_store, &checkpoints);

    let from_coordinator = work.path().join("export-rpc");
    export_through_coordinator(sweep_id, &data_dir, &from_coordinator);
    check_export(&from_coordinator, &checkpoints);
}

/// Runs `tunefleet export SWEEP_ID SOURCE.. --out OUT`.
fn export(sweep_id: &str, source: &[&str], out: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tunefleet"))
        .args(["export", sweep_id])
        .args(source)
        .arg("--out")
        .arg(out)
        .output()
        .expect("failed to start tunefleet")
}

/// Serves `data_dir` with a coordinator on loopback and exports the sweep through its
/// GetArtifact RPC, retrying until the coordinator accepts connections.
fn export_through_coordinator(sweep_id: &str, data_dir: &Path, out: &Path) {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let listen = format!("127.0.0.1:{port}");
    let log = std::fs::File::create(data_dir.join("../coordinator.log")).unwrap();
    let mut coordinator = Command::new(env!("CARGO_BIN_EXE_tunefleet"))
        .args(["coordinator", "--listen", &listen, "--data-dir"])
        .arg(data_dir)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("failed to start the coordinator");
    let url = format!("http://{listen}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let output = loop {
        let output = export(sweep_id, &["--coordinator", &url], out);
        if output.status.success() || std::time::Instant::now() > deadline {
            break output;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    coordinator.kill().unwrap();
    coordinator.wait().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "stderr:\n{stderr}");
}

/// Checks the manifest in `out` and that every exported file is a safetensors file of a
/// 10-class ResNet-18 with the bytes of a stored checkpoint.
fn check_export(out: &Path, checkpoints: &[PathBuf]) {
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["architecture"], "resnet18");
    let members = manifest["ensemble"]["members"].as_array().unwrap();
    assert!(!members.is_empty(), "{manifest}");
    let weight_sum: f64 = members.iter().map(|m| m["weight"].as_f64().unwrap()).sum();
    assert!((weight_sum - 1.0).abs() < 1e-9, "{manifest}");
    let stored: Vec<Vec<u8>> = checkpoints
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    for trial in manifest["trials"].as_array().unwrap() {
        assert_eq!(trial["parameters"]["freeze_backbone"], true, "{trial}");
        assert!(trial["parameters"]["lr"].is_f64(), "{trial}");
        let bytes = std::fs::read(out.join(trial["file"].as_str().unwrap())).unwrap();
        assert!(
            stored.contains(&bytes),
            "{trial} matches no stored checkpoint"
        );
        let header = safetensors_header(&bytes);
        assert_eq!(header["fc.weight"]["shape"], serde_json::json!([10, 512]));
        assert_eq!(header["conv1.weight"]["dtype"], "F32");
    }
}

/// Reads a safetensors header: an 8-byte little-endian length, then that many bytes of JSON.
fn safetensors_header(bytes: &[u8]) -> serde_json::Value {
    let length = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    serde_json::from_slice(&bytes[8..8 + length]).unwrap()
}
