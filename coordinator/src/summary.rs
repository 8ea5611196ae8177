//! Builds a sweep's ensemble summary from its succeeded trials' prediction artifacts.

use prost::Message;
use tunefleet_proto::v1::{self, TrialStatus};
use tunefleet_proto::SweepId;

use crate::artifacts::ArtifactStore;
use crate::ensemble::{self, Predictions, SelectionMetric};
use crate::error::CoordinatorError;
use crate::spec::{Goal, SweepSpec};

/// Artifact name of the validation split's class probabilities.
pub const VAL_PREDICTIONS: &str = "val_predictions";
/// Artifact name of the test split's class probabilities.
pub const TEST_PREDICTIONS: &str = "test_predictions";

struct Candidate<'a> {
    trial: &'a v1::Trial,
    val: Predictions,
    test: Predictions,
    val_score: f64,
}

fn load_predictions(
    store: &dyn ArtifactStore,
    trial: &v1::Trial,
    name: &str,
) -> Option<Predictions> {
    let artifact = trial.artifacts.iter().find(|a| a.name == name)?;
    let bytes = match store.get(artifact) {
        Ok(bytes) => bytes,
        Err(err) => {
            tracing::warn!(trial_id = %trial.trial_id, artifact = name, error = %err, "cannot read predictions; trial left out of the ensemble");
            return None;
        }
    };
    let decoded = match v1::Predictions::decode(bytes.as_slice()) {
        Ok(decoded) => decoded,
        Err(err) => {
            tracing::warn!(trial_id = %trial.trial_id, artifact = name, error = %err, "corrupt predictions; trial left out of the ensemble");
            return None;
        }
    };
    Some(Predictions {
        num_classes: decoded.num_classes as usize,
        probabilities: decoded.probabilities,
        labels: decoded.labels,
    })
}

/// Returns whether two prediction sets describe the same rows, labels and classes.
fn same_split(a: &Predictions, b: &Predictions) -> bool {
    a.num_classes == b.num_classes
        && a.labels == b.labels
        && a.probabilities.len() == b.probabilities.len()
}

fn score(predictions: &Predictions, metric: SelectionMetric) -> f64 {
    match metric {
        SelectionMetric::Accuracy => ensemble::accuracy(predictions),
        SelectionMetric::Loss => ensemble::log_loss(predictions),
        SelectionMetric::MacroF1 => ensemble::macro_f1(predictions),
    }
}

/// Selects the ensemble of a sweep's succeeded trials and reports it beside the best trial.
pub fn build_summary(
    store: &dyn ArtifactStore,
    sweep_id: SweepId,
    spec: &SweepSpec,
    trials: &[&v1::Trial],
) -> Result<v1::EnsembleSummary, CoordinatorError> {
    let metric = spec.ensemble.metric;
    let mut candidates: Vec<Candidate> = Vec::new();
    for trial in trials {
        if TrialStatus::try_from(trial.status) != Ok(TrialStatus::Succeeded) {
            continue;
        }
        let val = load_predictions(store, trial, VAL_PREDICTIONS);
        let test = load_predictions(store, trial, TEST_PREDICTIONS);
        let (Some(val), Some(test)) = (val, test) else {
            continue;
        };
        if let Some(first) = candidates.first() {
            if !same_split(&first.val, &val) || !same_split(&first.test, &test) {
                tracing::warn!(%sweep_id, trial_id = %trial.trial_id, "predictions differ in rows, labels or classes from the first trial's; trial left out of the ensemble");
                continue;
            }
        }
        let val_score = score(&val, metric);
        candidates.push(Candidate {
            trial,
            val,
            test,
            val_score,
        });
    }
    if candidates.is_empty() {
        return Err(CoordinatorError::NoEnsembleYet(sweep_id));
    }

    // Best single score first, so that selection's ties go to the better trial, then the
    // earlier one.
    candidates.sort_by(|a, b| {
        let order = match metric {
            SelectionMetric::Accuracy | SelectionMetric::MacroF1 => {
                b.val_score.total_cmp(&a.val_score)
            }
            SelectionMetric::Loss => a.val_score.total_cmp(&b.val_score),
        };
        order.then(a.trial.index.cmp(&b.trial.index))
    });
    let vals: Vec<&Predictions> = candidates.iter().map(|c| &c.val).collect();
    let tests: Vec<&Predictions> = candidates.iter().map(|c| &c.test).collect();
    let size = spec.ensemble.size;
    let init_size = spec.ensemble.init_size.min(candidates.len() as u32).max(1);
    let selection = ensemble::select_ensemble(&vals, metric, size, init_size)
        .map_err(|source| CoordinatorError::Ensemble { sweep_id, source })?;
    let val_blend = ensemble::blend(&vals, &selection.counts);
    let test_blend = ensemble::blend(&tests, &selection.counts);

    let members = candidates
        .iter()
        .zip(&selection.counts)
        .filter(|(_, count)| **count > 0)
        .map(|(candidate, count)| v1::EnsembleMember {
            trial_id: candidate.trial.trial_id.clone(),
            trial_index: candidate.trial.index,
            count: *count,
            weight: f64::from(*count) / f64::from(size),
        })
        .collect();

    let best = best_trial(&candidates, spec.objective.goal);
    Ok(v1::EnsembleSummary {
        sweep_id: sweep_id.to_string(),
        selection_metric: match metric {
            SelectionMetric::Accuracy => "accuracy".to_string(),
            SelectionMetric::Loss => "loss".to_string(),
            SelectionMetric::MacroF1 => "macro_f1".to_string(),
        },
        size,
        members,
        val_accuracy: ensemble::accuracy(&val_blend),
        val_loss: ensemble::log_loss(&val_blend),
        test_accuracy: ensemble::accuracy(&test_blend),
        test_loss: ensemble::log_loss(&test_blend),
        best_trial_id: best.trial.trial_id.clone(),
        best_trial_index: best.trial.index,
        best_val_accuracy: ensemble::accuracy(&best.val),
        best_val_loss: ensemble::log_loss(&best.val),
        best_test_accuracy: ensemble::accuracy(&best.test),
        best_test_loss: ensemble::log_loss(&best.test),
        num_candidates: candidates.len() as u32,
        val_macro_f1: ensemble::macro_f1(&val_blend),
        test_macro_f1: ensemble::macro_f1(&test_blend),
        best_val_macro_f1: ensemble::macro_f1(&best.val),
        best_test_macro_f1: ensemble::macro_f1(&best.test),
    })
}

/// Picks the trial with the best objective, the lower index on a tie.
fn best_trial<'a>(candidates: &'a [Candidate<'a>], goal: Goal) -> &'a Candidate<'a> {
    let objective = |c: &Candidate| c.trial.objective.unwrap_or(f64::NAN);
    candidates
        .iter()
        .min_by(|a, b| {
            let order = match goal {
                Goal::Maximize => objective(b).total_cmp(&objective(a)),
                Goal::Minimize => objective(a).total_cmp(&objective(b)),
            };
            order.then(a.trial.index.cmp(&b.trial.index))
        })
        .expect("candidates is not empty")
}
