//! `tunefleet export SWEEP --out DIR`: writes the best trial's and the ensemble members'
//! best-epoch weights with a manifest that describes how to rebuild and combine them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde_json::json;
use tunefleet_coordinator::artifacts::{ArtifactStore, LocalArtifacts};
use tunefleet_coordinator::spec::SweepSpec;
use tunefleet_coordinator::store::{EmbeddedStore, StateStore};
use tunefleet_proto::v1;
use tunefleet_proto::{params_from_proto, Value};

use crate::client::Connection;

/// The artifact name of a trial's best-epoch weights, as the trainer uploads them.
const CHECKPOINT: &str = "checkpoint.safetensors";

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    sweep_id: String,
    /// Directory to write the weights and manifest.json into; it is created if missing.
    #[arg(long)]
    out: PathBuf,
    /// Read a stopped `tunefleet run`'s data directory instead of asking a coordinator.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

/// The records of a sweep that an export reads.
struct SweepRecords {
    sweep: v1::Sweep,
    trials: Vec<v1::Trial>,
    ensemble: v1::EnsembleSummary,
}

/// Runs `tunefleet export`.
pub async fn export(connection: Connection, args: ExportArgs) -> anyhow::Result<()> {
    let records;
    let mut checkpoints = BTreeMap::new();
    match &args.data_dir {
        Some(data_dir) => {
            records = local_records(data_dir, &args.sweep_id)?;
            let artifacts =
                LocalArtifacts::open(data_dir.join("artifacts")).with_context(|| {
                    format!("failed to open the artifacts in {}", data_dir.display())
                })?;
            for trial in exported_trials(&records) {
                let artifact = checkpoint_ref(trial)?;
                let content = artifacts.get(artifact).with_context(|| {
                    format!("failed to read the checkpoint of trial {}", trial.trial_id)
                })?;
                checkpoints.insert(trial.trial_id.clone(), content);
            }
        }
        None => {
            let mut client = crate::client::connect(&connection).await?;
            records = remote_records(&mut client, &args.sweep_id).await?;
            for trial in exported_trials(&records) {
                let request = v1::GetArtifactRequest {
                    trial_id: trial.trial_id.clone(),
                    name: CHECKPOINT.to_string(),
                };
                let response = client
                    .get_artifact(request)
                    .await
                    .map_err(crate::client::status_error)?;
                checkpoints.insert(trial.trial_id.clone(), response.into_inner().content);
            }
        }
    }
    write_export(&args.out, &records, &checkpoints)?;
    crate::report::stdout_line(format_args!(
        "exported {} trials of sweep {} to {}",
        checkpoints.len(),
        records.sweep.sweep_id,
        args.out.display()
    ));
    Ok(())
}

fn local_records(data_dir: &Path, sweep_id: &str) -> anyhow::Result<SweepRecords> {
    let store = EmbeddedStore::open(data_dir)
        .with_context(|| format!("failed to open the store in {}", data_dir.display()))?;
    let snapshot = store.load().context("failed to load the store")?;
    let Some(sweep) = snapshot.sweeps.into_iter().find(|s| s.sweep_id == sweep_id) else {
        bail!("sweep {sweep_id} not found in {}", data_dir.display());
    };
    let Some(ensemble) = snapshot
        .ensembles
        .into_iter()
        .find(|e| e.sweep_id == sweep_id)
    else {
        bail!("sweep {sweep_id} has no ensemble yet: export needs a finished sweep");
    };
    let trials = snapshot
        .trials
        .into_iter()
        .filter(|t| t.sweep_id == sweep_id)
        .collect();
    Ok(SweepRecords {
        sweep,
        trials,
        ensemble,
    })
}

async fn remote_records(
    client: &mut v1::sweep_service_client::SweepServiceClient<tunefleet_proto::AuthChannel>,
    sweep_id: &str,
) -> anyhow::Result<SweepRecords> {
    let id = sweep_id.to_string();
    let sweep = client
        .get_sweep(v1::GetSweepRequest {
            sweep_id: id.clone(),
        })
        .await
        .map_err(crate::client::status_error)?
        .into_inner();
    let trials = client
        .list_trials(v1::ListTrialsRequest {
            sweep_id: id.clone(),
        })
        .await
        .map_err(crate::client::status_error)?
        .into_inner()
        .trials;
    let ensemble = client
        .get_ensemble(v1::GetEnsembleRequest { sweep_id: id })
        .await
        .map_err(crate::client::status_error)?
        .into_inner();
    Ok(SweepRecords {
        sweep,
        trials,
        ensemble,
    })
}

/// Returns the best trial, then the ensemble members in the ensemble's order, each once.
fn exported_trials(records: &SweepRecords) -> Vec<&v1::Trial> {
    let mut ids = vec![records.ensemble.best_trial_id.as_str()];
    for member in &records.ensemble.members {
        if !ids.contains(&member.trial_id.as_str()) {
            ids.push(&member.trial_id);
        }
    }
    ids.iter()
        .filter_map(|id| records.trials.iter().find(|t| t.trial_id == *id))
        .collect()
}

fn checkpoint_ref(trial: &v1::Trial) -> anyhow::Result<&v1::ArtifactRef> {
    let found = trial.artifacts.iter().find(|a| a.name == CHECKPOINT);
    found.with_context(|| {
        format!(
            "trial {} has no {CHECKPOINT}: its weights were too large to upload or it ran \
             before checkpoints existed",
            trial.trial_id
        )
    })
}

fn file_name(trial: &v1::Trial) -> String {
    format!("trial-{}.safetensors", trial.index)
}

fn write_export(
    out: &Path,
    records: &SweepRecords,
    checkpoints: &BTreeMap<String, Vec<u8>>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("failed to create {}", out.display()))?;
    let spec = SweepSpec::parse(&records.sweep.spec_toml, Path::new(&records.sweep.base_dir))
        .map_err(|err| anyhow::anyhow!("the sweep's stored spec is invalid: {err}"))?;
    let mut trials = Vec::new();
    for trial in exported_trials(records) {
        let content = &checkpoints[&trial.trial_id];
        let path = out.join(file_name(trial));
        std::fs::write(&path, content)
            .with_context(|| format!("failed to write {}", path.display()))?;
        trials.push(trial_manifest(trial, &spec));
    }
    let ensemble = &records.ensemble;
    let members: Vec<_> = ensemble
        .members
        .iter()
        .map(|m| {
            json!({
                "trial_id": m.trial_id,
                "trial_index": m.trial_index,
                "weight": m.weight,
                "file": format!("trial-{}.safetensors", m.trial_index),
            })
        })
        .collect();
    let manifest = json!({
        "sweep_id": records.sweep.sweep_id,
        "name": records.sweep.name,
        "architecture": spec.task.model,
        "objective": {"metric": spec.objective.metric, "goal": format!("{:?}", spec.objective.goal).to_lowercase()},
        "best_trial": {
            "trial_id": ensemble.best_trial_id,
            "trial_index": ensemble.best_trial_index,
            "file": format!("trial-{}.safetensors", ensemble.best_trial_index),
            "val_accuracy": ensemble.best_val_accuracy,
            "test_accuracy": ensemble.best_test_accuracy,
        },
        "ensemble": {
            "selection_metric": ensemble.selection_metric,
            "size": ensemble.size,
            "members": members,
            "val_accuracy": ensemble.val_accuracy,
            "test_accuracy": ensemble.test_accuracy,
            "val_macro_f1": ensemble.val_macro_f1,
            "test_macro_f1": ensemble.test_macro_f1,
        },
        "trials": trials,
    });
    let path = out.join("manifest.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&manifest)?)
        .with_context(|| format!("failed to write {}", path.display()))?;
    Ok(())
}

/// Describes one exported trial: its file, every hyperparameter that built it and its metrics.
fn trial_manifest(trial: &v1::Trial, spec: &SweepSpec) -> serde_json::Value {
    let mut parameters = serde_json::Map::new();
    let params = params_from_proto(&trial.params).unwrap_or_default();
    for (name, value) in spec.task.hyperparameters.iter().chain(&params) {
        let value = match value {
            Value::Int(i) => json!(i),
            Value::Float(f) => json!(f),
            Value::String(s) => json!(s),
            Value::Bool(b) => json!(b),
        };
        parameters.insert(name.clone(), value);
    }
    let metrics: serde_json::Map<String, serde_json::Value> = trial
        .final_metrics
        .iter()
        .map(|m| (m.name.clone(), json!(m.value)))
        .collect();
    json!({
        "trial_id": trial.trial_id,
        "trial_index": trial.index,
        "file": file_name(trial),
        "parameters": parameters,
        "metrics": metrics,
    })
}
