use std::path::Path;

use tunefleet_proto::v1::{self, AttemptStatus, Outcome, SweepStatus, TrialStatus};
use tunefleet_proto::{SweepId, WorkerId};

use super::{ReportVerdict, Scheduler, SchedulerConfig};
use crate::error::CoordinatorError;
use crate::spec::SweepSpec;

const TTL_MS: i64 = 1_000;

fn grid_spec(extra_search: &str) -> String {
    format!(
        r#"
name = "grid"
[objective]
metric = "val_accuracy"
[search]
method = "grid"
{extra_search}
[parameters]
lr = [0.01, 0.02]
hidden_size = [16, 32]
[task]
model = "mlp"
dataset = "/data/digits.npz"
epochs = 2
"#
    )
}

fn scheduler() -> Scheduler {
    Scheduler::new(SchedulerConfig {
        lease_ttl_ms: TTL_MS,
        max_attempts: 2,
    })
}

fn create(scheduler: &mut Scheduler, toml: &str) -> SweepId {
    let spec = SweepSpec::parse(toml, Path::new("/")).unwrap();
    scheduler.create_sweep(spec, toml, "/", 0)
}

fn worker(scheduler: &mut Scheduler) -> WorkerId {
    let slot = v1::Slot {
        index: 0,
        device: "cpu".into(),
        num_threads: 1,
    };
    let request = v1::RegisterWorkerRequest {
        hostname: "host".into(),
        slots: vec![slot],
        ..Default::default()
    };
    scheduler.register_worker(request, 0)
}

fn attempt_of(assignment: &v1::Assignment) -> v1::AttemptRef {
    assignment.attempt.clone().unwrap()
}

fn epoch(number: u32, accuracy: f64) -> v1::EpochMetrics {
    v1::EpochMetrics {
        epoch: number,
        metrics: vec![v1::Metric {
            name: "val_accuracy".into(),
            value: accuracy,
        }],
        reported_at_ms: 0,
    }
}

fn complete(scheduler: &mut Scheduler, assignment: &v1::Assignment, outcome: Outcome) {
    let request = v1::CompleteAttemptRequest {
        attempt: assignment.attempt.clone(),
        outcome: outcome as i32,
        reason: "trainer failed".into(),
        ..Default::default()
    };
    scheduler.complete_attempt(request, 10).unwrap();
}

fn succeed(scheduler: &mut Scheduler, assignment: &v1::Assignment, accuracy: f64) {
    let attempt = attempt_of(assignment);
    scheduler
        .report_epoch(&attempt, epoch(1, accuracy), 5)
        .unwrap();
    complete(scheduler, assignment, Outcome::Succeeded);
}

fn status_of(scheduler: &Scheduler, sweep_id: SweepId) -> SweepStatus {
    SweepStatus::try_from(scheduler.sweep(sweep_id).unwrap().status).unwrap()
}

fn trial_statuses(scheduler: &Scheduler, sweep_id: SweepId) -> Vec<TrialStatus> {
    let trials = scheduler.trials_of(sweep_id).unwrap();
    trials
        .iter()
        .map(|t| TrialStatus::try_from(t.status).unwrap())
        .collect()
}

#[test]
fn acquire_respects_max_concurrent() {
    let mut s = scheduler();
    let sweep_id = create(&mut s, &grid_spec("max_concurrent = 2"));
    let w = worker(&mut s);
    let first = s.acquire(w, 0, 1).unwrap().unwrap();
    assert!(s.acquire(w, 0, 1).unwrap().is_some());
    assert!(s.acquire(w, 0, 1).unwrap().is_none());
    succeed(&mut s, &first, 0.9);
    assert!(s.acquire(w, 0, 2).unwrap().is_some());
    assert_eq!(s.sweep(sweep_id).unwrap().counts.unwrap().running, 2);
}

#[test]
fn sweep_succeeds_after_every_trial_ends() {
    let mut s = scheduler();
    let sweep_id = create(&mut s, &grid_spec(""));
    let w = worker(&mut s);
    let assignments: Vec<_> = (0..4)
        .map(|_| s.acquire(w, 0, 1).unwrap().unwrap())
        .collect();
    assert!(
        s.acquire(w, 0, 1).unwrap().is_none(),
        "a fifth trial was handed out"
    );
    for (i, assignment) in assignments.iter().enumerate() {
        assert_eq!(status_of(&s, sweep_id), SweepStatus::Running);
        succeed(&mut s, assignment, 0.5 + i as f64 / 10.0);
    }
    assert_eq!(status_of(&s, sweep_id), SweepStatus::Succeeded);
    assert_eq!(
        trial_statuses(&s, sweep_id),
        vec![TrialStatus::Succeeded; 4]
    );
    assert_eq!(s.take_changes().ended_sweeps, vec![sweep_id]);
}

#[test]
fn trial_objective_is_last_epoch_value() {
    let mut s = scheduler();
    let sweep_id = create(&mut s, &grid_spec(""));
    let w = worker(&mut s);
    let assignment = s.acquire(w, 0, 1).unwrap().unwrap();
    let attempt = attempt_of(&assignment);
    s.report_epoch(&attempt, epoch(1, 0.5), 2).unwrap();
    s.report_epoch(&attempt, epoch(2, 0.7), 3).unwrap();
    complete(&mut s, &assignment, Outcome::Succeeded);
    let trial = &s.trials_of(sweep_id).unwrap()[0];
    assert_eq!(trial.objective, Some(0.7));
    assert_eq!(trial.history.len(), 2);
}

#[test]
fn assignment_carries_typed_params() {
    let mut s = scheduler();
    create(&mut s, &grid_spec(""));
    let w = worker(&mut s);
    let assignment = s.acquire(w, 0, 1).unwrap().unwrap();
    let params = tunefleet_proto::params_from_proto(&assignment.hyperparameters).unwrap();
    let expected = vec![
        ("lr".to_string(), tunefleet_proto::Value::Float(0.01)),
        ("hidden_size".to_string(), tunefleet_proto::Value::Int(16)),
    ];
    assert_eq!(params, expected);
    assert_eq!(assignment.epochs, 2);
    assert_eq!(assignment.dataset, "/data/digits.npz");
}

#[test]
fn success_without_objective_fails_trial() {
    let mut s = scheduler();
    let sweep_id = create(&mut s, &grid_spec(""));
    let w = worker(&mut s);
    let assignment = s.acquire(w, 0, 1).unwrap().unwrap();
    complete(&mut s, &assignment, Outcome::Succeeded);
    let trial = &s.trials_of(sweep_id).unwrap()[0];
    assert_eq!(trial.status, TrialStatus::Failed as i32);
    assert_eq!(
        trial.reason,
        "objective metric \"val_accuracy\" was never reported"
    );
}

#[test]
fn sweep_fails_when_no_trial_succeeds() {
    let mut s = scheduler();
    let sweep_id = create(&mut s, &grid_spec(""));
    let w = worker(&mut s);
    for _ in 0..4 {
        let assignment = s.acquire(w, 0, 1).unwrap().unwrap();
        complete(&mut s, &assignment, Outcome::Failed);
    }
    assert_eq!(status_of(&s, sweep_id), SweepStatus::Failed);
    assert_eq!(
        s.sweep(sweep_id).unwrap().reason,
        "no trial succeeded (4 failed); first failure: trainer failed"
    );
}

#[test]
fn failure_budget_ends_sweep() {
    let mut s = scheduler();
    let sweep_id = create(&mut s, &grid_spec("max_failed = 1"));
    let w = worker(&mut s);
    let a = s.acquire(w, 0, 1).unwrap().unwrap();
    let b = s.acquire(w, 0, 1).unwrap().unwrap();
    let running = s.acquire(w, 0, 1).unwrap().unwrap();
    complete(&mut s, &a, Outcome::Failed);
    assert_eq!(status_of(&s, sweep_id), SweepStatus::Running);
    complete(&mut s, &b, Outcome::Failed);
    assert_eq!(status_of(&s, sweep_id), SweepStatus::Failed);
    assert_eq!(
        s.sweep(sweep_id).unwrap().reason,
        "2 trials failed, more than search.max_failed = 1"
    );
    let statuses = trial_statuses(&s, sweep_id);
    assert_eq!(
        statuses,
        vec![
            TrialStatus::Failed,
            TrialStatus::Failed,
            TrialStatus::Cancelled
        ]
    );
    assert!(s.acquire(w, 0, 2).unwrap().is_none());
    let verdict = s
        .report_epoch(&attempt_of(&running), epoch(1, 0.5), 3)
        .unwrap();
    assert!(matches!(verdict, ReportVerdict::Stop { .. }));
}

#[test]
fn cancel_ends_running_trials() {
    let mut s = scheduler();
    let sweep_id = create(&mut s, &grid_spec(""));
    let w = worker(&mut s);
    let running = s.acquire(w, 0, 1).unwrap().unwrap();
    s.cancel_sweep(sweep_id, 2).unwrap();
    assert_eq!(status_of(&s, sweep_id), SweepStatus::Cancelled);
    assert_eq!(trial_statuses(&s, sweep_id), vec![TrialStatus::Cancelled]);
    assert!(s.acquire(w, 0, 3).unwrap().is_none());

    let stop = s.heartbeat(w, &[attempt_of(&running)], 3).unwrap();
    assert_eq!(stop, vec![attempt_of(&running)]);
    // The worker confirms the stop; the trial stays cancelled.
    complete(&mut s, &running, Outcome::Cancelled);
    assert_eq!(trial_statuses(&s, sweep_id), vec![TrialStatus::Cancelled]);
}

#[test]
fn cancel_of_finished_sweep_is_rejected() {
    let mut s = scheduler();
    let sweep_id = create(&mut s, &grid_spec("max_trials = 1"));
    let w = worker(&mut s);
    let assignment = s.acquire(w, 0, 1).unwrap().unwrap();
    succeed(&mut s, &assignment, 0.9);
    let err = s.cancel_sweep(sweep_id, 5).unwrap_err();
    assert!(
        matches!(
            err,
            CoordinatorError::SweepEnded {
                status: "succeeded",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn expired_lease_requeues_trial() {
    let mut s = scheduler();
    let sweep_id = create(&mut s, &grid_spec("max_trials = 1"));
    let w = worker(&mut s);
    let first = s.acquire(w, 0, 0).unwrap().unwrap();
    s.expire_leases(TTL_MS - 1);
    assert_eq!(trial_statuses(&s, sweep_id), vec![TrialStatus::Running]);
    s.expire_leases(TTL_MS);
    assert_eq!(trial_statuses(&s, sweep_id), vec![TrialStatus::Pending]);

    let err = s
        .report_epoch(&attempt_of(&first), epoch(1, 0.5), TTL_MS + 1)
        .unwrap_err();
    assert!(
        matches!(err, CoordinatorError::StaleAttempt { attempt: 1, .. }),
        "{err}"
    );

    let second = s.acquire(w, 0, TTL_MS + 2).unwrap().unwrap();
    assert_eq!(attempt_of(&second).attempt, 2);
    assert_eq!(second.trial_index, first.trial_index);
    let trial = &s.trials_of(sweep_id).unwrap()[0];
    assert_eq!(trial.attempts[0].status, AttemptStatus::Lost as i32);
}

#[test]
fn stale_completion_never_changes_trial() {
    let mut s = scheduler();
    let sweep_id = create(&mut s, &grid_spec("max_trials = 1"));
    let w = worker(&mut s);
    let first = s.acquire(w, 0, 0).unwrap().unwrap();
    s.expire_leases(TTL_MS);
    let second = s.acquire(w, 0, TTL_MS + 1).unwrap().unwrap();
    let request = v1::CompleteAttemptRequest {
        attempt: first.attempt.clone(),
        outcome: Outcome::Succeeded as i32,
        ..Default::default()
    };
    assert!(s.complete_attempt(request, TTL_MS + 2).is_err());
    assert_eq!(trial_statuses(&s, sweep_id), vec![TrialStatus::Running]);
    succeed(&mut s, &second, 0.8);
    assert_eq!(status_of(&s, sweep_id), SweepStatus::Succeeded);
}

#[test]
fn lost_attempts_exhaust_retry_budget() {
    let mut s = scheduler();
    let sweep_id = create(&mut s, &grid_spec("max_trials = 1"));
    let w = worker(&mut s);
    s.acquire(w, 0, 0).unwrap().unwrap();
    s.expire_leases(TTL_MS);
    s.acquire(w, 0, TTL_MS).unwrap().unwrap();
    s.expire_leases(3 * TTL_MS);
    assert_eq!(trial_statuses(&s, sweep_id), vec![TrialStatus::Failed]);
    assert_eq!(status_of(&s, sweep_id), SweepStatus::Failed);
    let trial = &s.trials_of(sweep_id).unwrap()[0];
    assert_eq!(trial.reason, "lost 2 attempts; the retry budget is 2");
}

#[test]
fn heartbeat_renews_lease() {
    let mut s = scheduler();
    let sweep_id = create(&mut s, &grid_spec("max_trials = 1"));
    let w = worker(&mut s);
    let assignment = s.acquire(w, 0, 0).unwrap().unwrap();
    let stop = s
        .heartbeat(w, &[attempt_of(&assignment)], TTL_MS - 1)
        .unwrap();
    assert!(stop.is_empty());
    s.expire_leases(TTL_MS + 10);
    assert_eq!(trial_statuses(&s, sweep_id), vec![TrialStatus::Running]);
}

#[test]
fn heartbeat_from_unknown_worker_fails() {
    let mut s = scheduler();
    let err = s.heartbeat(WorkerId::new_random(), &[], 0).unwrap_err();
    assert!(matches!(err, CoordinatorError::WorkerNotFound(_)));
}

#[test]
fn handed_back_attempt_retries_trial() {
    let mut s = scheduler();
    let sweep_id = create(&mut s, &grid_spec("max_trials = 1"));
    let w = worker(&mut s);
    let first = s.acquire(w, 0, 0).unwrap().unwrap();
    complete(&mut s, &first, Outcome::Cancelled);
    assert_eq!(trial_statuses(&s, sweep_id), vec![TrialStatus::Pending]);
    let second = s.acquire(w, 0, 1).unwrap().unwrap();
    assert_eq!(attempt_of(&second).attempt, 2);
}

#[test]
fn epochs_must_increase() {
    let mut s = scheduler();
    create(&mut s, &grid_spec(""));
    let w = worker(&mut s);
    let attempt = attempt_of(&s.acquire(w, 0, 0).unwrap().unwrap());
    s.report_epoch(&attempt, epoch(2, 0.5), 1).unwrap();
    let err = s.report_epoch(&attempt, epoch(1, 0.6), 2).unwrap_err();
    assert!(err.to_string().contains("epochs must increase"), "{err}");
}

#[test]
fn report_from_other_worker_is_stale() {
    let mut s = scheduler();
    create(&mut s, &grid_spec(""));
    let w = worker(&mut s);
    let mut attempt = attempt_of(&s.acquire(w, 0, 0).unwrap().unwrap());
    attempt.worker_id = WorkerId::new_random().to_string();
    let err = s.report_epoch(&attempt, epoch(1, 0.5), 1).unwrap_err();
    assert!(
        matches!(err, CoordinatorError::StaleAttempt { .. }),
        "{err}"
    );
}

#[test]
fn concurrent_sweeps_share_slots() {
    let mut s = scheduler();
    let first = create(&mut s, &grid_spec(""));
    let second = create(&mut s, &grid_spec(""));
    let w = worker(&mut s);
    let sweeps: Vec<String> = (0..4)
        .map(|_| s.acquire(w, 0, 0).unwrap().unwrap().sweep_id)
        .collect();
    let expected = [first, second, first, second].map(|id| id.to_string());
    assert_eq!(sweeps, expected);
}

#[test]
fn restore_keeps_every_record() {
    let mut s = scheduler();
    let sweep_id = create(&mut s, &grid_spec(""));
    let w = worker(&mut s);
    let done = s.acquire(w, 0, 0).unwrap().unwrap();
    let running = s.acquire(w, 0, 0).unwrap().unwrap();
    succeed(&mut s, &done, 0.9);
    let snapshot = crate::store::Snapshot {
        sweeps: s.sweeps().into_iter().cloned().collect(),
        trials: s
            .trials_of(sweep_id)
            .unwrap()
            .into_iter()
            .cloned()
            .collect(),
        workers: s.list_workers(0),
        ensembles: Vec::new(),
    };

    let mut restored = Scheduler::restore(
        SchedulerConfig {
            lease_ttl_ms: TTL_MS,
            max_attempts: 2,
        },
        snapshot,
        100,
    )
    .unwrap();
    assert_eq!(
        trial_statuses(&restored, sweep_id),
        vec![TrialStatus::Succeeded, TrialStatus::Running]
    );
    assert_eq!(restored.sweep(sweep_id).unwrap().num_trials_created, 2);
    // The running attempt keeps a fresh lease and can still report after the restart.
    let verdict = restored
        .report_epoch(&attempt_of(&running), epoch(1, 0.8), 101)
        .unwrap();
    assert_eq!(verdict, ReportVerdict::Continue);
    // The search goes on where it stopped: the next trial is index 2.
    let w2 = worker(&mut restored);
    assert_eq!(
        restored.acquire(w2, 0, 102).unwrap().unwrap().trial_index,
        2
    );
}

#[test]
fn resume_requeues_failed_and_cancelled_only() {
    let mut s = scheduler();
    let sweep_id = create(&mut s, &grid_spec("max_concurrent = 3"));
    let w = worker(&mut s);
    let ok = s.acquire(w, 0, 0).unwrap().unwrap();
    let bad = s.acquire(w, 0, 0).unwrap().unwrap();
    s.acquire(w, 0, 0).unwrap().unwrap();
    succeed(&mut s, &ok, 0.9);
    complete(&mut s, &bad, Outcome::Failed);
    s.cancel_sweep(sweep_id, 20).unwrap();
    let before = trial_statuses(&s, sweep_id);
    assert_eq!(
        before,
        vec![
            TrialStatus::Succeeded,
            TrialStatus::Failed,
            TrialStatus::Cancelled
        ]
    );

    s.resume_sweep(sweep_id, 30).unwrap();
    assert_eq!(status_of(&s, sweep_id), SweepStatus::Running);
    let after = trial_statuses(&s, sweep_id);
    assert_eq!(
        after,
        vec![
            TrialStatus::Succeeded,
            TrialStatus::Pending,
            TrialStatus::Pending
        ]
    );

    // Pending retries go first, then the trial the search had not created yet.
    let indexes: Vec<u32> = (0..3)
        .map(|_| s.acquire(w, 0, 31).unwrap().unwrap().trial_index)
        .collect();
    assert_eq!(indexes, vec![1, 2, 3]);
    assert!(s.acquire(w, 0, 31).unwrap().is_none());
}

#[test]
fn resume_of_running_sweep_is_rejected() {
    let mut s = scheduler();
    let sweep_id = create(&mut s, &grid_spec(""));
    let err = s.resume_sweep(sweep_id, 1).unwrap_err();
    assert!(matches!(err, CoordinatorError::SweepRunning(_)), "{err}");
}

#[test]
fn silent_worker_is_listed_lost() {
    let mut s = scheduler();
    let w = worker(&mut s);
    let workers = s.list_workers(TTL_MS + 1);
    assert_eq!(workers.len(), 1);
    assert_eq!(workers[0].worker_id, w.to_string());
    assert_eq!(workers[0].status, v1::WorkerStatus::Lost as i32);
    s.heartbeat(w, &[], TTL_MS + 1).unwrap();
    assert_eq!(
        s.list_workers(TTL_MS + 2)[0].status,
        v1::WorkerStatus::Active as i32
    );
}

#[test]
fn repeated_epoch_report_is_ignored() {
    let mut s = scheduler();
    let sweep_id = create(&mut s, &grid_spec(""));
    let w = worker(&mut s);
    let attempt = attempt_of(&s.acquire(w, 0, 0).unwrap().unwrap());
    s.report_epoch(&attempt, epoch(1, 0.5), 1).unwrap();
    let verdict = s.report_epoch(&attempt, epoch(1, 0.5), 2).unwrap();
    assert_eq!(verdict, ReportVerdict::Continue);
    assert_eq!(s.trials_of(sweep_id).unwrap()[0].history.len(), 1);
}

#[test]
fn retried_trial_starts_fresh_history() {
    let mut s = scheduler();
    let sweep_id = create(&mut s, &grid_spec("max_trials = 1"));
    let w = worker(&mut s);
    let first = attempt_of(&s.acquire(w, 0, 0).unwrap().unwrap());
    s.report_epoch(&first, epoch(1, 0.5), 1).unwrap();
    s.report_epoch(&first, epoch(2, 0.6), 2).unwrap();
    s.expire_leases(TTL_MS + 10);
    let second = s.acquire(w, 0, TTL_MS + 11).unwrap().unwrap();
    assert!(s.trials_of(sweep_id).unwrap()[0].history.is_empty());
    let verdict = s
        .report_epoch(&attempt_of(&second), epoch(1, 0.7), TTL_MS + 12)
        .unwrap();
    assert_eq!(verdict, ReportVerdict::Continue);
    complete(&mut s, &second, Outcome::Succeeded);
    let trial = &s.trials_of(sweep_id).unwrap()[0];
    assert_eq!(trial.history.len(), 1);
    assert_eq!(trial.objective, Some(0.7));
}

fn tpe_spec() -> String {
    r#"
name = "tpe"
[objective]
metric = "val_accuracy"
[search]
method = "tpe"
max_trials = 8
seed = 11
[search.tpe]
n_startup_trials = 2
[parameters]
optimizer = ["sgd", "adam"]
momentum = { distribution = "uniform", min = 0.5, max = 0.9, when = { optimizer = ["sgd"] } }
lr = { distribution = "log_uniform", min = 1e-4, max = 1e-1 }
[task]
model = "mlp"
dataset = "/data/digits.npz"
"#
    .to_string()
}

fn snapshot_of(scheduler: &Scheduler, sweep_id: SweepId) -> crate::store::Snapshot {
    crate::store::Snapshot {
        sweeps: scheduler.sweeps().into_iter().cloned().collect(),
        trials: scheduler
            .trials_of(sweep_id)
            .unwrap()
            .into_iter()
            .cloned()
            .collect(),
        workers: scheduler.list_workers(0),
        ensembles: Vec::new(),
    }
}

#[test]
fn observations_list_succeeded_trials() {
    let mut s = scheduler();
    let sweep_id = create(&mut s, &tpe_spec());
    let w = worker(&mut s);
    let first = s.acquire(w, 0, 0).unwrap().unwrap();
    let failed = s.acquire(w, 0, 0).unwrap().unwrap();
    let third = s.acquire(w, 0, 0).unwrap().unwrap();
    succeed(&mut s, &third, 0.7);
    complete(&mut s, &failed, Outcome::Failed);
    succeed(&mut s, &first, 0.9);

    let observations = s.observations(sweep_id);
    let summary: Vec<(u32, f64)> = observations.iter().map(|o| (o.index, o.value)).collect();
    assert_eq!(summary, [(0, 0.9), (2, 0.7)]);
    let stored = tunefleet_proto::params_from_proto(
        &s.trial(first.attempt.unwrap().trial_id.parse().unwrap())
            .unwrap()
            .params,
    )
    .unwrap();
    assert_eq!(observations[0].params, stored);
}

#[test]
fn restore_continues_tpe_search() {
    let mut s = scheduler();
    let sweep_id = create(&mut s, &tpe_spec());
    let w = worker(&mut s);
    for i in 0..4 {
        let assignment = s.acquire(w, 0, 0).unwrap().unwrap();
        succeed(&mut s, &assignment, 0.5 + 0.1 * f64::from(i));
    }
    let mut restored = Scheduler::restore(
        SchedulerConfig {
            lease_ttl_ms: TTL_MS,
            max_attempts: 2,
        },
        snapshot_of(&s, sweep_id),
        100,
    )
    .unwrap();
    let w2 = worker(&mut restored);
    for index in 4..8 {
        let original = s.acquire(w, 0, 100).unwrap().unwrap();
        let after_restart = restored.acquire(w2, 0, 100).unwrap().unwrap();
        assert_eq!(original.trial_index, index);
        assert_eq!(after_restart.trial_index, index);
        assert_eq!(
            original.hyperparameters, after_restart.hyperparameters,
            "trial {index}"
        );
        succeed(&mut s, &original, 0.6);
        succeed(&mut restored, &after_restart, 0.6);
    }
}

#[test]
fn tpe_trials_depend_on_observations() {
    // Two sweeps with one spec: after the startup trials, different results lead to different
    // parameters for the same trial index.
    let mut s = scheduler();
    let w = worker(&mut s);
    let mut next_params = Vec::new();
    for accuracies in [[0.9, 0.1], [0.1, 0.9]] {
        let sweep_id = create(&mut s, &tpe_spec());
        for accuracy in accuracies {
            let assignment = s.acquire(w, 0, 0).unwrap().unwrap();
            succeed(&mut s, &assignment, accuracy);
        }
        let third = s.acquire(w, 0, 0).unwrap().unwrap();
        assert_eq!(third.sweep_id, sweep_id.to_string());
        next_params.push(third.hyperparameters);
        s.cancel_sweep(sweep_id, 1).unwrap();
    }
    assert_ne!(next_params[0], next_params[1]);
}

/// Builds a 4-trial grid of 2 epochs, one trial at a time, with ASHA judging at epoch 1. With
/// eta 2, a trial goes on only if it is the best at epoch 1 of the trials that reached it.
fn asha_spec(extra_search: &str) -> String {
    let search = format!("max_concurrent = 1\n{extra_search}");
    format!(
        "{}\n[early_stopping]\nmethod = \"asha\"\nreduction_factor = 2\nmin_samples = 1\n",
        grid_spec(&search)
    )
}

/// Runs trial 0 to success at 0.9, then starts trial 1 and reports 0.1 at epoch 1, which ASHA
/// prunes. Returns trial 1's assignment and the verdict on that report.
fn prune_second_trial(s: &mut Scheduler, w: WorkerId) -> (v1::Assignment, ReportVerdict) {
    let first = s.acquire(w, 0, 1).unwrap().unwrap();
    succeed(s, &first, 0.9);
    let second = s.acquire(w, 0, 2).unwrap().unwrap();
    let verdict = s
        .report_epoch(&attempt_of(&second), epoch(1, 0.1), 3)
        .unwrap();
    (second, verdict)
}

#[test]
fn asha_prunes_worse_trial_at_rung() {
    let mut s = scheduler();
    let sweep_id = create(&mut s, &asha_spec(""));
    let w = worker(&mut s);
    let (_, verdict) = prune_second_trial(&mut s, w);
    let ReportVerdict::Pruned { reason } = verdict else {
        panic!("expected a pruned verdict, got {verdict:?}");
    };
    assert_eq!(
        reason,
        "pruned at epoch 1: objective 0.100000 is worse than 0.900000 at rung 1 (1 other trials)"
    );
    let trial = &s.trials_of(sweep_id).unwrap()[1];
    assert_eq!(trial.status, TrialStatus::Pruned as i32);
    assert_eq!(trial.attempts[0].status, AttemptStatus::Pruned as i32);
    assert_eq!(trial.reason, reason);
    assert_eq!(trial.objective, Some(0.1));
    assert_eq!(trial.history.len(), 1);
    assert_eq!(trial.ended_at_ms, 3);
}

#[test]
fn asha_keeps_better_trial() {
    let mut s = scheduler();
    create(&mut s, &asha_spec(""));
    let w = worker(&mut s);
    let first = s.acquire(w, 0, 1).unwrap().unwrap();
    succeed(&mut s, &first, 0.5);
    let second = s.acquire(w, 0, 2).unwrap().unwrap();
    let verdict = s.report_epoch(&attempt_of(&second), epoch(1, 0.6), 3);
    assert_eq!(verdict.unwrap(), ReportVerdict::Continue);
}

#[test]
fn first_trial_is_never_pruned() {
    let mut s = scheduler();
    create(&mut s, &asha_spec(""));
    let w = worker(&mut s);
    let first = s.acquire(w, 0, 1).unwrap().unwrap();
    let verdict = s.report_epoch(&attempt_of(&first), epoch(1, 0.0), 2);
    assert_eq!(verdict.unwrap(), ReportVerdict::Continue);
}

#[test]
fn pruned_trial_frees_slot_at_once() {
    let mut s = scheduler();
    let sweep_id = create(&mut s, &asha_spec(""));
    let w = worker(&mut s);
    prune_second_trial(&mut s, w);
    // The worker has not confirmed yet, but max_concurrent = 1 already has room.
    let counts = s.sweep(sweep_id).unwrap().counts.unwrap();
    assert_eq!(counts.running, 0);
    assert_eq!(counts.pruned, 1);
    assert_eq!(counts.succeeded, 1);
    let third = s.acquire(w, 0, 4).unwrap();
    assert_eq!(third.unwrap().trial_index, 2);
}

#[test]
fn late_completion_of_pruned_trial_is_confirmation() {
    let mut s = scheduler();
    let sweep_id = create(&mut s, &asha_spec(""));
    let w = worker(&mut s);
    let (second, _) = prune_second_trial(&mut s, w);
    let attempt = attempt_of(&second);
    // A resent report gets the same verdict, and a heartbeat names the attempt to stop.
    let resent = s.report_epoch(&attempt, epoch(1, 0.1), 4).unwrap();
    assert!(matches!(resent, ReportVerdict::Pruned { .. }), "{resent:?}");
    let stop = s.heartbeat(w, std::slice::from_ref(&attempt), 4).unwrap();
    assert_eq!(stop, vec![attempt.clone()]);
    complete(&mut s, &second, Outcome::Cancelled);
    let trial = &s.trials_of(sweep_id).unwrap()[1];
    assert_eq!(trial.status, TrialStatus::Pruned as i32);
    assert_eq!(trial.attempts.len(), 1);
    assert_eq!(trial.attempts[0].status, AttemptStatus::Pruned as i32);
    assert_eq!(trial.objective, Some(0.1));
}

#[test]
fn sweep_with_pruned_trials_succeeds() {
    let mut s = scheduler();
    let sweep_id = create(&mut s, &asha_spec("max_failed = 0"));
    let w = worker(&mut s);
    prune_second_trial(&mut s, w);
    for accuracy in [0.2, 0.95] {
        let next = s.acquire(w, 0, 5).unwrap().unwrap();
        let attempt = attempt_of(&next);
        let verdict = s.report_epoch(&attempt, epoch(1, accuracy), 6).unwrap();
        if verdict == ReportVerdict::Continue {
            s.report_epoch(&attempt, epoch(2, accuracy), 7).unwrap();
            complete(&mut s, &next, Outcome::Succeeded);
        }
    }
    assert_eq!(status_of(&s, sweep_id), SweepStatus::Succeeded);
    assert_eq!(
        trial_statuses(&s, sweep_id),
        vec![
            TrialStatus::Succeeded,
            TrialStatus::Pruned,
            TrialStatus::Pruned,
            TrialStatus::Succeeded
        ]
    );
    let counts = s.sweep(sweep_id).unwrap().counts.unwrap();
    assert_eq!(counts.pruned, 2);
    assert_eq!(counts.failed, 0);
}

#[test]
fn resume_keeps_pruned_trials() {
    let mut s = scheduler();
    let sweep_id = create(&mut s, &asha_spec(""));
    let w = worker(&mut s);
    prune_second_trial(&mut s, w);
    s.cancel_sweep(sweep_id, 10).unwrap();
    s.resume_sweep(sweep_id, 11).unwrap();
    assert_eq!(
        trial_statuses(&s, sweep_id),
        vec![TrialStatus::Succeeded, TrialStatus::Pruned]
    );
    let next = s.acquire(w, 0, 12).unwrap().unwrap();
    assert_eq!(next.trial_index, 2);
}

#[test]
fn restored_scheduler_decides_the_same() {
    let mut s = scheduler();
    let sweep_id = create(&mut s, &asha_spec(""));
    let w = worker(&mut s);
    let first = s.acquire(w, 0, 1).unwrap().unwrap();
    succeed(&mut s, &first, 0.9);
    let second = s.acquire(w, 0, 2).unwrap().unwrap();
    let snapshot = crate::store::Snapshot {
        sweeps: s.sweeps().into_iter().cloned().collect(),
        trials: s
            .trials_of(sweep_id)
            .unwrap()
            .into_iter()
            .cloned()
            .collect(),
        workers: s.list_workers(0),
        ensembles: Vec::new(),
    };
    let config = SchedulerConfig {
        lease_ttl_ms: TTL_MS,
        max_attempts: 2,
    };
    let mut restored = Scheduler::restore(config, snapshot, 3).unwrap();
    let attempt = attempt_of(&second);
    let before = s.report_epoch(&attempt, epoch(1, 0.1), 4).unwrap();
    let after = restored.report_epoch(&attempt, epoch(1, 0.1), 4).unwrap();
    assert!(matches!(after, ReportVerdict::Pruned { .. }), "{after:?}");
    assert_eq!(before, after);
}

#[test]
fn observations_include_pruned_trials() {
    let mut s = scheduler();
    let sweep_id = create(&mut s, &asha_spec(""));
    let w = worker(&mut s);
    prune_second_trial(&mut s, w);
    let observations = s.observations(sweep_id);
    let summary: Vec<(u32, f64, Option<u32>)> = observations
        .iter()
        .map(|o| (o.index, o.value, o.pruned_at_epoch))
        .collect();
    assert_eq!(summary, vec![(0, 0.9, None), (1, 0.1, Some(1))]);
}
