//! Runs the `tunefleet` binary as a child process: whole sweeps on `examples/data/digits.npz` and
//! on a generated image folder, the exit codes and messages for bad input, failing and diverging trials, and cancellation by
//! SIGINT (Ctrl-C) or SIGTERM.
//!
//! Every test has its own temporary data directory, so the tests can run in parallel.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;
use tunefleet_coordinator::store::{EmbeddedStore, StateStore};
use tunefleet_proto::v1::SweepStatus;

const EXIT_SWEEP_FAILED: i32 = 1;
const EXIT_ERROR: i32 = 2;
const EXIT_CANCELLED: i32 = 130;

/// How long a cancelled run may take to exit after SIGINT or SIGTERM.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(20);
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// What one `tunefleet` run printed and how it exited.
struct RunOutput {
    /// `None` when a signal ended the process.
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl RunOutput {
    /// Parses stdout as the `--json` report, failing the test with both streams if it is not.
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|err| {
            panic!(
                "stdout is not JSON ({err}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

fn repo_path(relative: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative);
    path.canonicalize()
        .unwrap_or_else(|err| panic!("{} not found: {err}", path.display()))
}

fn digits_path() -> PathBuf {
    repo_path("examples/data/digits.npz")
}

fn tunefleet() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tunefleet"));
    // Keeps ANSI color codes out of the stderr that assertion messages print.
    command.env("NO_COLOR", "1").env_remove("TUNEFLEET_LOG");
    command
}

/// Runs `tunefleet run SPEC --data-dir DATA_DIR EXTRA...` to its end.
fn run_sweep(spec: &Path, data_dir: &Path, extra: &[&str]) -> RunOutput {
    let output = tunefleet()
        .arg("run")
        .arg(spec)
        .arg("--data-dir")
        .arg(data_dir)
        .args(extra)
        .output()
        .expect("failed to start tunefleet");
    RunOutput {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn write_spec(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("failed to write the spec");
    path
}

/// Keys of a spec beyond its name, dataset, `lr` grid and epochs.
#[derive(Default)]
struct Extra<'a> {
    /// More lines of `[search]`.
    search: &'a str,
    /// Tables appended at the end.
    tables: &'a str,
}

/// Builds the spec of a grid sweep over `lr` on an mlp.
fn grid_spec(name: &str, dataset: &Path, lrs: &str, epochs: u32, extra: Extra) -> String {
    format!(
        "name = \"{name}\"\n\
         [objective]\nmetric = \"val_accuracy\"\n\
         [search]\nmethod = \"grid\"\nseed = 0\n{}\
         [parameters]\nlr = {lrs}\n\
         [task]\nmodel = \"mlp\"\ndataset = \"{}\"\nepochs = {epochs}\n\
         {}",
        extra.search,
        dataset.display(),
        extra.tables
    )
}

fn str_field<'a>(value: &'a Value, key: &str) -> &'a str {
    value[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} is not a string in {value}"))
}

fn f64_field(value: &Value, key: &str) -> f64 {
    value[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} is not a number in {value}"))
}

fn leaderboard(report: &Value) -> &Vec<Value> {
    report["leaderboard"]
        .as_array()
        .unwrap_or_else(|| panic!("no leaderboard array in {report}"))
}

/// Returns the leaderboard entry of trial `index`.
fn trial(report: &Value, index: u64) -> &Value {
    leaderboard(report)
        .iter()
        .find(|entry| entry["index"].as_u64() == Some(index))
        .unwrap_or_else(|| panic!("no trial {index} in {report}"))
}

#[test]
fn quick_grid_succeeds_with_json() {
    let data_dir = TempDir::new().unwrap();
    let run = run_sweep(
        &repo_path("examples/quick.toml"),
        data_dir.path(),
        &["--json"],
    );
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    let report = run.json();
    let sweep = &report["sweep"];
    assert_eq!(str_field(sweep, "status"), "succeeded", "{sweep}");
    assert_eq!(sweep["counts"]["succeeded"], 4, "{sweep}");

    let entries = leaderboard(&report);
    assert_eq!(entries.len(), 4, "{report}");
    for entry in entries {
        assert_eq!(str_field(entry, "status"), "succeeded", "{entry}");
        let objective = f64_field(entry, "objective");
        assert!(objective > 0.0, "{entry}");
        assert!(objective <= 1.0, "{entry}");
        assert!(entry["params"]["lr"].is_f64(), "lr is not a float: {entry}");
        assert!(
            entry["params"]["hidden_size"].is_i64(),
            "hidden_size is not an int: {entry}"
        );
    }
    let objectives: Vec<f64> = entries.iter().map(|e| f64_field(e, "objective")).collect();
    assert!(
        objectives.windows(2).all(|pair| pair[0] >= pair[1]),
        "leaderboard not sorted best first: {objectives:?}"
    );
    let mut points: Vec<(f64, i64)> = entries
        .iter()
        .map(|e| {
            let lr = e["params"]["lr"].as_f64().unwrap();
            (lr, e["params"]["hidden_size"].as_i64().unwrap())
        })
        .collect();
    points.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    assert_eq!(points, [(0.01, 32), (0.01, 64), (0.03, 32), (0.03, 64)]);

    let ensemble = &report["ensemble"];
    let members = ensemble["members"]
        .as_array()
        .unwrap_or_else(|| panic!("no ensemble members in {report}"));
    let size = ensemble["size"].as_u64().unwrap();
    assert!(!members.is_empty(), "{ensemble}");
    assert!(members.len() as u64 <= size, "{ensemble}");
    let weight_sum: f64 = members.iter().map(|m| f64_field(m, "weight")).sum();
    assert!(
        (weight_sum - 1.0).abs() < 1e-9,
        "weights sum to {weight_sum}"
    );
    let count_sum: u64 = members.iter().map(|m| m["count"].as_u64().unwrap()).sum();
    assert_eq!(count_sum, size, "{ensemble}");
    assert!(f64_field(ensemble, "test_accuracy") > 0.5, "{ensemble}");
    let best = &ensemble["best_trial"];
    assert!(f64_field(best, "test_accuracy") > 0.5, "{ensemble}");
    assert_eq!(best["trial_index"], entries[0]["index"], "{report}");
}

/// Runs a 4-trial ASHA grid of 4 epochs, two trials at a time. With reduction factor 2 the
/// rungs are epochs 1 and 2, and a rung decides once 2 other trials reached it, so the first two
/// trials (lr 0.01 and 0.03 with adam) always finish. The last two (lr 1e-5 and 3e-5) start
/// when one of those ended and barely learn, so each stops at rung 1, or at rung 2 when fewer
/// than 2 other trials had reported epoch 1 by then.
#[test]
fn asha_sweep_prunes_slow_trials() {
    let dir = TempDir::new().unwrap();
    let extra = Extra {
        search: "max_concurrent = 2\n",
        tables: "[early_stopping]\nmethod = \"asha\"\nreduction_factor = 2\nmin_samples = 2\n",
    };
    let lrs = "[0.01, 0.03, 1e-5, 3e-5]";
    let spec = grid_spec("asha", &digits_path(), lrs, 4, extra);
    let spec = write_spec(dir.path(), "asha.toml", &spec);
    let run = run_sweep(
        &spec,
        &dir.path().join("store"),
        &["--json", "--slots", "2"],
    );
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    let report = run.json();
    let sweep = &report["sweep"];
    assert_eq!(str_field(sweep, "status"), "succeeded", "{sweep}");
    assert_eq!(sweep["counts"]["succeeded"], 2, "{sweep}");
    assert_eq!(sweep["counts"]["pruned"], 2, "{sweep}");

    for index in [0, 1] {
        let entry = trial(&report, index);
        assert_eq!(str_field(entry, "status"), "succeeded", "{entry}");
        assert_eq!(entry["epochs"], 4, "{entry}");
    }
    let rungs = [1, 2];
    for index in [2, 3] {
        let entry = trial(&report, index);
        assert_eq!(str_field(entry, "status"), "pruned", "{entry}");
        let epochs = entry["epochs"].as_u64().unwrap();
        assert!(rungs.contains(&epochs), "stopped off a rung: {entry}");
        assert!(
            str_field(entry, "reason").starts_with(&format!("pruned at epoch {epochs}:")),
            "{entry}"
        );
        assert_eq!(
            str_field(&entry["attempts"][0], "status"),
            "pruned",
            "{entry}"
        );
        assert!(entry["test_accuracy"].is_null(), "{entry}");
    }
    let spent = sweep["num_trial_epochs"].as_u64().unwrap();
    let expected: u64 = (0..4)
        .map(|i| trial(&report, i)["epochs"].as_u64().unwrap())
        .sum();
    assert_eq!(spent, expected, "{sweep}");
    assert!(spent <= 12, "pruning saved no epochs: {sweep}");
    // The ensemble and its best trial come from the succeeded trials only.
    let best = report["ensemble"]["best_trial"]["trial_index"].as_u64();
    assert!(matches!(best, Some(0 | 1)), "{report}");
    assert_eq!(report["ensemble"]["num_candidates"], 2, "{report}");
}

#[test]
fn data_dir_reopens_and_accumulates() {
    let dir = TempDir::new().unwrap();
    let data_dir = dir.path().join("store");
    let spec = grid_spec("reopen", &digits_path(), "[0.01]", 1, Extra::default());
    let spec = write_spec(dir.path(), "reopen.toml", &spec);

    let first = run_sweep(&spec, &data_dir, &["--json"]);
    assert_eq!(first.code, Some(0), "first run, stderr:\n{}", first.stderr);
    let second = run_sweep(&spec, &data_dir, &["--json"]);
    assert_eq!(
        second.code,
        Some(0),
        "second run, stderr:\n{}",
        second.stderr
    );

    let first_id = str_field(&first.json()["sweep"], "sweep_id").to_string();
    let second_id = str_field(&second.json()["sweep"], "sweep_id").to_string();
    assert_ne!(first_id, second_id);
    let store = EmbeddedStore::open(&data_dir).expect("failed to reopen the store");
    let snapshot = store.load().expect("failed to load the store");
    let stored: BTreeSet<String> = snapshot.sweeps.iter().map(|s| s.sweep_id.clone()).collect();
    assert_eq!(stored, BTreeSet::from([first_id, second_id]));
    for sweep in &snapshot.sweeps {
        assert_eq!(sweep.status, SweepStatus::Succeeded as i32, "{sweep:?}");
    }
    assert_eq!(snapshot.trials.len(), 2);
    assert_eq!(snapshot.ensembles.len(), 2);
}

#[test]
fn wandb_yaml_spec_runs_tpe_sweep() {
    let dir = TempDir::new().unwrap();
    let yaml = format!(
        "name: yaml-tpe\nmethod: bayes\nrun_cap: 3\nmetric:\n  name: val_accuracy\n\
         parameters:\n  optimizer:\n    values: [adam, sgd]\n  momentum:\n    min: 0.5\n\
         \x20   max: 0.9\n    when:\n      optimizer: [sgd]\n  lr:\n\
         \x20   distribution: log_uniform_values\n    min: 0.01\n    max: 0.1\n\
         search:\n  max_concurrent: 1\n  tpe:\n    n_startup_trials: 2\n\
         task:\n  model: mlp\n  dataset: {}\n  epochs: 1\n",
        digits_path().display()
    );
    let spec = write_spec(dir.path(), "sweep.yaml", &yaml);

    let run = run_sweep(&spec, &dir.path().join("store"), &["--json"]);
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    let report = run.json();
    let sweep = &report["sweep"];
    assert_eq!(str_field(sweep, "status"), "succeeded", "{sweep}");
    assert_eq!(sweep["counts"]["succeeded"], 3, "{sweep}");
    for entry in leaderboard(&report) {
        let params = &entry["params"];
        let lr = params["lr"]
            .as_f64()
            .unwrap_or_else(|| panic!("lr missing: {entry}"));
        assert!((0.01..=0.1).contains(&lr), "{entry}");
        let sgd = params["optimizer"] == "sgd";
        assert_eq!(params["momentum"].is_f64(), sgd, "{entry}");
    }
}

#[test]
fn wandb_yaml_with_program_exits_2() {
    let dir = TempDir::new().unwrap();
    let yaml = format!(
        "name: yaml\nprogram: train.py\nmetric:\n  name: val_accuracy\n\
         task:\n  model: mlp\n  dataset: {}\n",
        digits_path().display()
    );
    let spec = write_spec(dir.path(), "sweep.yml", &yaml);

    let run = run_sweep(&spec, &dir.path().join("store"), &[]);
    assert_eq!(run.code, Some(EXIT_ERROR), "stderr:\n{}", run.stderr);
    assert!(
        run.stderr.contains("unsupported key program"),
        "{}",
        run.stderr
    );
}

#[test]
fn invalid_spec_value_exits_2() {
    let dir = TempDir::new().unwrap();
    let extra = Extra {
        search: "max_trials = 0\n",
        ..Extra::default()
    };
    let spec = grid_spec("bad", &digits_path(), "[0.01]", 1, extra);
    let spec = write_spec(dir.path(), "bad.toml", &spec);

    let run = run_sweep(&spec, &dir.path().join("store"), &[]);
    assert_eq!(run.code, Some(EXIT_ERROR), "stderr:\n{}", run.stderr);
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "stderr:\n{}", run.stderr);
    assert!(
        lines[0].starts_with("error: invalid spec"),
        "{}",
        run.stderr
    );
    assert!(lines[0].contains("search.max_trials"), "{}", run.stderr);
    assert!(lines[0].contains("got 0"), "{}", run.stderr);
    assert!(run.stdout.is_empty(), "stdout:\n{}", run.stdout);
}

#[test]
fn unknown_spec_key_exits_2() {
    let dir = TempDir::new().unwrap();
    let spec = grid_spec("bad", &digits_path(), "[0.01]", 1, Extra::default());
    let spec = format!("colour = \"red\"\n{spec}");
    let spec = write_spec(dir.path(), "unknown.toml", &spec);

    let run = run_sweep(&spec, &dir.path().join("store"), &[]);
    assert_eq!(run.code, Some(EXIT_ERROR), "stderr:\n{}", run.stderr);
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "stderr:\n{}", run.stderr);
    assert!(
        lines[0].starts_with("error: invalid spec"),
        "{}",
        run.stderr
    );
    assert!(lines[0].contains("unknown key colour"), "{}", run.stderr);
}

#[test]
fn missing_spec_file_exits_2() {
    let dir = TempDir::new().unwrap();
    let spec = dir.path().join("absent.toml");

    let run = run_sweep(&spec, &dir.path().join("store"), &[]);
    assert_eq!(run.code, Some(EXIT_ERROR), "stderr:\n{}", run.stderr);
    assert!(run.stderr.starts_with("error: "), "{}", run.stderr);
    assert!(
        run.stderr.contains(&spec.display().to_string()),
        "{}",
        run.stderr
    );
}

#[test]
fn missing_dataset_exits_2() {
    let dir = TempDir::new().unwrap();
    let dataset = dir.path().join("absent.npz");
    let spec = grid_spec("no-data", &dataset, "[0.01]", 1, Extra::default());
    let spec = write_spec(dir.path(), "no-data.toml", &spec);

    let run = run_sweep(&spec, &dir.path().join("store"), &[]);
    assert_eq!(run.code, Some(EXIT_ERROR), "stderr:\n{}", run.stderr);
    assert!(run.stderr.starts_with("error: "), "{}", run.stderr);
    assert!(
        run.stderr.contains(&dataset.display().to_string()),
        "{}",
        run.stderr
    );
}

#[test]
fn zero_slots_exits_2() {
    let dir = TempDir::new().unwrap();
    let spec = repo_path("examples/quick.toml");

    let run = run_sweep(&spec, &dir.path().join("store"), &["--slots", "0"]);
    assert_eq!(run.code, Some(EXIT_ERROR), "stderr:\n{}", run.stderr);
    assert!(run.stderr.contains("--slots 0"), "{}", run.stderr);
}

#[test]
fn zero_threads_per_slot_exits_2() {
    let dir = TempDir::new().unwrap();
    let spec = repo_path("examples/quick.toml");

    let run = run_sweep(
        &spec,
        &dir.path().join("store"),
        &["--threads-per-slot", "0"],
    );
    assert_eq!(run.code, Some(EXIT_ERROR), "stderr:\n{}", run.stderr);
    assert!(
        run.stderr.contains("--threads-per-slot 0"),
        "{}",
        run.stderr
    );
}

#[test]
fn invalid_dataset_rejected_before_trials() {
    let dir = TempDir::new().unwrap();
    let dataset = dir.path().join("not-an-archive.npz");
    std::fs::write(&dataset, "these bytes are not a zip archive\n").unwrap();
    let spec = grid_spec("bad-data", &dataset, "[0.01, 0.03]", 1, Extra::default());
    let spec = write_spec(dir.path(), "bad-data.toml", &spec);

    let run = run_sweep(&spec, &dir.path().join("store"), &["--json"]);
    assert_eq!(run.code, Some(EXIT_ERROR), "stderr:\n{}", run.stderr);
    assert!(
        run.stderr.starts_with("error: invalid task.dataset"),
        "stderr:\n{}",
        run.stderr
    );
    assert!(
        run.stderr.contains(&dataset.display().to_string()),
        "stderr:\n{}",
        run.stderr
    );
    assert!(run.stdout.is_empty(), "stdout:\n{}", run.stdout);
}

/// Writes an image folder of 12 x 12 PNGs, 16 per class in train/ and 4 in test/: class
/// "blue" is mostly blue and class "red" mostly red, with pixel noise from a fixed generator.
fn write_image_folder(dir: &Path) {
    let mut state = 7_u32;
    let mut noise = move || {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        (state >> 16) as u8 % 64
    };
    for (split, num_images) in [("train", 16), ("test", 4)] {
        for (class, colour) in [("blue", [0, 0, 160]), ("red", [160, 0, 0])] {
            let class_dir = dir.join(split).join(class);
            std::fs::create_dir_all(&class_dir).unwrap();
            for i in 0..num_images {
                let image = image::RgbImage::from_fn(12, 12, |_, _| {
                    image::Rgb(colour.map(|c: u8| c + noise()))
                });
                image.save(class_dir.join(format!("{i}.png"))).unwrap();
            }
        }
    }
}

#[test]
fn image_folder_sweep_succeeds() {
    let dir = TempDir::new().unwrap();
    let dataset = dir.path().join("colours");
    write_image_folder(&dataset);
    let spec = format!(
        "name = \"colours\"\n\
         [objective]\nmetric = \"val_accuracy\"\n\
         [search]\nmethod = \"grid\"\n\
         [parameters]\nlr = [0.01]\n\
         [task]\nmodel = \"cnn\"\ndataset = \"{}\"\nepochs = 3\nimage_size = 8\n\
         normalize_mean = [0.5, 0.5, 0.5]\nnormalize_std = [0.25, 0.25, 0.25]\n",
        dataset.display()
    );
    let spec = write_spec(dir.path(), "colours.toml", &spec);

    let run = run_sweep(&spec, &dir.path().join("store"), &["--json"]);
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    let report = run.json();
    assert_eq!(
        str_field(&report["sweep"], "status"),
        "succeeded",
        "{report}"
    );
    let entry = trial(&report, 0);
    assert_eq!(str_field(entry, "status"), "succeeded", "{entry}");
    // Blue and red images differ in two channels, so even three epochs separate them.
    assert_eq!(
        f64_field(&report["ensemble"], "test_accuracy"),
        1.0,
        "{report}"
    );
}

#[test]
fn image_folder_unknown_class_rejected_before_trials() {
    let dir = TempDir::new().unwrap();
    let dataset = dir.path().join("colours");
    write_image_folder(&dataset);
    let green = dataset.join("test/green");
    std::fs::create_dir_all(&green).unwrap();
    image::RgbImage::new(12, 12)
        .save(green.join("0.png"))
        .unwrap();
    let spec = grid_spec("bad-class", &dataset, "[0.01]", 1, Extra::default());
    let spec = write_spec(dir.path(), "bad-class.toml", &spec);

    let run = run_sweep(&spec, &dir.path().join("store"), &["--json"]);
    assert_eq!(run.code, Some(EXIT_ERROR), "stderr:\n{}", run.stderr);
    let expected = format!(
        "invalid dataset {}: class \"green\" is not a class folder of train/, which has \
         [\"blue\", \"red\"]",
        green.display()
    );
    assert!(run.stderr.contains(&expected), "stderr:\n{}", run.stderr);
    assert!(run.stdout.is_empty(), "stdout:\n{}", run.stdout);
}

#[test]
fn all_trials_failing_fails_sweep() {
    let dir = TempDir::new().unwrap();
    let extra = Extra {
        search: "",
        tables: "[task.hyperparameters]\noptimizer = \"sgd\"\nmomentum = 0.9\nhidden_layers = 4\n",
    };
    let spec = grid_spec("all-fail", &digits_path(), "[10.0]", 2, extra);
    let spec = write_spec(dir.path(), "all-fail.toml", &spec);

    let run = run_sweep(&spec, &dir.path().join("store"), &["--json"]);
    assert_eq!(run.code, Some(EXIT_SWEEP_FAILED), "stderr:\n{}", run.stderr);
    assert!(
        run.stderr.contains("error: sweep failed"),
        "stderr:\n{}",
        run.stderr
    );
    let report = run.json();
    let reason = str_field(&report["sweep"], "reason");
    assert!(
        reason.starts_with("no trial succeeded (1 failed); first failure: training diverged"),
        "{reason}"
    );
    assert!(report["ensemble"].is_null(), "{report}");
    assert_eq!(str_field(trial(&report, 0), "status"), "failed");
}

/// Builds a grid where trial 1 (sgd, lr 10, momentum 0.9, 4 hidden layers) reaches a NaN loss
/// in epoch 1 with the training seed that search seed 0 gives it, and trial 0 (lr 0.01) trains.
fn diverging_spec(name: &str, search: &str) -> String {
    let extra = Extra {
        search,
        tables: "[task.hyperparameters]\noptimizer = \"sgd\"\nmomentum = 0.9\nhidden_layers = 4\n",
    };
    grid_spec(name, &digits_path(), "[0.01, 10.0]", 2, extra)
}

#[test]
fn diverging_trial_fails_alone() {
    let dir = TempDir::new().unwrap();
    let spec = write_spec(dir.path(), "diverge.toml", &diverging_spec("diverge", ""));

    let run = run_sweep(&spec, &dir.path().join("store"), &["--json"]);
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    let report = run.json();
    assert_eq!(
        str_field(&report["sweep"], "status"),
        "succeeded",
        "{report}"
    );
    let diverged = trial(&report, 1);
    assert_eq!(str_field(diverged, "status"), "failed", "{diverged}");
    assert!(
        str_field(diverged, "reason").contains("non-finite"),
        "{diverged}"
    );
    let trained = trial(&report, 0);
    assert_eq!(str_field(trained, "status"), "succeeded", "{trained}");
}

#[test]
fn diverging_trial_fails_sweep_without_budget() {
    let dir = TempDir::new().unwrap();
    let spec = diverging_spec("diverge-strict", "max_failed = 0\n");
    let spec = write_spec(dir.path(), "diverge.toml", &spec);

    let run = run_sweep(&spec, &dir.path().join("store"), &["--json"]);
    assert_eq!(run.code, Some(EXIT_SWEEP_FAILED), "stderr:\n{}", run.stderr);
    assert!(
        run.stderr.contains("error: sweep failed"),
        "stderr:\n{}",
        run.stderr
    );
    let report = run.json();
    let sweep = &report["sweep"];
    assert_eq!(str_field(sweep, "status"), "failed", "{sweep}");
    assert!(
        str_field(sweep, "reason").contains("max_failed = 0"),
        "{sweep}"
    );
    let diverged = trial(&report, 1);
    assert_eq!(str_field(diverged, "status"), "failed", "{diverged}");
    assert!(
        str_field(diverged, "reason").contains("non-finite"),
        "{diverged}"
    );
    // Trial 0 either finished before trial 1 failed or was cancelled when the sweep failed.
    let other = str_field(trial(&report, 0), "status");
    assert!(other == "succeeded" || other == "cancelled", "{report}");
}

/// Lists the `tunefleet train-trial` processes among the children of any thread of `pid`.
fn trainer_children(pid: u32) -> BTreeSet<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return BTreeSet::new();
    };
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("children")).ok())
        .flat_map(|children| {
            children
                .split_whitespace()
                .filter_map(|child| child.parse().ok())
                .collect::<Vec<u32>>()
        })
        .filter(|child| is_trainer(*child))
        .collect()
}

/// Reports whether `pid` is a live `train-trial` process; a zombie's cmdline is empty.
fn is_trainer(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains("train-trial"))
}

#[test]
fn ctrl_c_cancels_and_stops_trainers() {
    cancel_with_signal("INT");
}

#[test]
fn sigterm_cancels_and_stops_trainers() {
    cancel_with_signal("TERM");
}

/// Sends `signal` (a name for `kill -s`) to a run whose two trainers are busy, then checks
/// that the sweep ends cancelled and that no trainer outlives the run.
fn cancel_with_signal(signal: &str) {
    let dir = TempDir::new().unwrap();
    // 10000 epochs take far longer than this test (an epoch takes about 0.3 s), so no trial
    // ends before the signal.
    let spec = grid_spec(
        "long",
        &digits_path(),
        "[0.01, 0.02, 0.03]",
        10_000,
        Extra::default(),
    );
    let spec = write_spec(dir.path(), "long.toml", &spec);
    let mut child = tunefleet()
        .arg("run")
        .arg(&spec)
        .arg("--data-dir")
        .arg(dir.path().join("store"))
        .args(["--slots", "2", "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("failed to start tunefleet");
    let pid = child.id();
    let mut stdout = child.stdout.take().unwrap();
    let stdout_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let (line_tx, line_rx) = mpsc::channel();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if line_tx.send(line).is_err() {
                break;
            }
        }
    });

    let mut stderr_lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let started = |line: &String| {
        line.starts_with("trial") && (line.contains(" started") || line.contains(" running"))
    };
    while !stderr_lines.iter().any(started) {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match line_rx.recv_timeout(remaining) {
            Ok(line) => stderr_lines.push(line),
            Err(_) => {
                let _ = child.kill();
                panic!("no trial started; stderr:\n{}", stderr_lines.join("\n"));
            }
        }
    }
    // Both slots are busy once two trainers run; the third trial waits.
    let mut trainers = trainer_children(pid);
    while trainers.len() < 2 && Instant::now() < deadline {
        std::thread::sleep(POLL_INTERVAL);
        trainers = trainer_children(pid);
    }
    assert_eq!(trainers.len(), 2, "trainers {trainers:?}");

    let kill = Command::new("kill")
        .args(["-s", signal, &pid.to_string()])
        .status()
        .expect("failed to run kill");
    assert!(kill.success(), "kill -s {signal} {pid} failed");
    let deadline = Instant::now() + CANCEL_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tunefleet did not exit within {CANCEL_TIMEOUT:?} of SIG{signal}");
        }
        std::thread::sleep(POLL_INTERVAL);
    };
    stderr_lines.extend(line_rx.iter());
    let stderr = stderr_lines.join("\n");
    let run = RunOutput {
        code: status.code(),
        stdout: stdout_reader.join().unwrap(),
        stderr,
    };

    assert_eq!(run.code, Some(EXIT_CANCELLED), "stderr:\n{}", run.stderr);
    assert!(
        run.stderr.contains("error: sweep cancelled"),
        "stderr:\n{}",
        run.stderr
    );
    let report = run.json();
    assert_eq!(
        str_field(&report["sweep"], "status"),
        "cancelled",
        "{report}"
    );
    let entries = leaderboard(&report);
    assert_eq!(entries.len(), trainers.len(), "{report}");
    for entry in entries {
        assert_eq!(str_field(entry, "status"), "cancelled", "{entry}");
    }
    for trainer in trainers {
        assert!(
            !is_trainer(trainer),
            "trainer {trainer} outlived tunefleet; stderr:\n{}",
            run.stderr
        );
    }
}
