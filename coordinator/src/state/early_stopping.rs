//! Early stopping inside the state machine: judging an epoch report with `crate::pruning` and
//! ending the trial as pruned when the rule decides to stop it.

use tunefleet_proto::v1::{self, sweep_event::Kind as EventKind, AttemptStatus, TrialStatus};
use tunefleet_proto::{SweepId, TrialId};

use super::Scheduler;
use crate::pruning::{self, Curve, Judgement};
use crate::spec::EarlyStoppingSpec;

impl Scheduler {
    /// Judges a running trial's latest epoch report against the other trials of its sweep.
    /// Returns `None` when the sweep has no `[early_stopping]` or the rule takes no decision.
    pub(super) fn judge_epoch(&self, trial_id: TrialId, epoch: u32) -> Option<Judgement> {
        let trial = &self.trials[&trial_id];
        let sweep_id: SweepId = trial.sweep_id.parse().expect("stored ids are valid");
        let entry = &self.sweeps[&sweep_id];
        let rule = entry.spec.early_stopping.as_ref()?;
        let metric = &entry.spec.objective.metric;

        // NOTE: every report rebuilds the curves of all the sweep's trials, which costs
        // O(trials x epochs) under the scheduler's lock. Sweeps of many thousands of trials would
        // need the rung results kept incrementally instead.
        let others: Vec<Curve> = entry
            .trial_ids
            .iter()
            .filter(|id| **id != trial_id)
            .map(|id| objective_curve(&self.trials[id], metric))
            .collect();
        let curve = objective_curve(trial, metric);
        let judgement = pruning::judge(rule, entry.spec.objective.goal, &curve, &others, epoch)?;

        tracing::info!(
            %sweep_id,
            %trial_id,
            epoch,
            method = method_name(rule),
            rung = judgement.rung,
            bracket = judgement.bracket,
            num_samples = judgement.num_samples,
            threshold = judgement.threshold,
            value = judgement.value,
            stop = judgement.stop,
            "early stopping decision"
        );
        Some(judgement)
    }

    /// Ends a running trial as pruned at once, so its slot is free for `max_concurrent` before
    /// the worker confirms. The trial keeps its history, and its objective is the value at its
    /// last reported epoch.
    pub(super) fn prune(&mut self, trial_id: TrialId, judgement: &Judgement, now_ms: i64) {
        let metric = self.objective_metric(trial_id);
        let reason = judgement.reason();
        self.leases.remove(&trial_id);
        let trial = self.trials.get_mut(&trial_id).expect("judged trials exist");
        let attempt = trial
            .attempts
            .last_mut()
            .expect("a running trial has an attempt");
        attempt.status = AttemptStatus::Pruned as i32;
        attempt.ended_at_ms = now_ms;
        attempt.reason = reason.clone();
        let number = attempt.number;
        trial.status = TrialStatus::Pruned as i32;
        trial.reason = reason;
        trial.ended_at_ms = now_ms;
        trial.objective = last_objective(trial, &metric);
        let sweep_id: SweepId = trial.sweep_id.parse().expect("stored ids are valid");
        tracing::info!(%sweep_id, %trial_id, attempt = number, epoch = judgement.epoch, "trial pruned");
        self.touch_trial(trial_id, EventKind::TrialEnded);
        self.after_trial_change(sweep_id, now_ms);
    }
}

/// Names the rule as the spec writes it, for logs.
fn method_name(rule: &EarlyStoppingSpec) -> &'static str {
    match rule {
        EarlyStoppingSpec::Median(_) => "median",
        EarlyStoppingSpec::Asha(_) => "asha",
        EarlyStoppingSpec::Hyperband(_) => "hyperband",
    }
}

/// Collects a trial's finite objective values by epoch from its metric history.
fn objective_curve(trial: &v1::Trial, metric: &str) -> Curve {
    let values = trial
        .history
        .iter()
        .filter_map(|epoch| {
            let found = epoch.metrics.iter().find(|m| m.name == metric)?;
            found
                .value
                .is_finite()
                .then_some((epoch.epoch, found.value))
        })
        .collect();
    Curve {
        index: trial.index,
        values,
    }
}

fn last_objective(trial: &v1::Trial, metric: &str) -> Option<f64> {
    let last = trial.history.last()?;
    let found = last.metrics.iter().find(|m| m.name == metric)?;
    Some(found.value)
}
