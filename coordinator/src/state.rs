//! The scheduler's state machine: sweeps, trials, attempts and leases, with no I/O.
//!
//! Trial states: pending -> running -> succeeded | failed | cancelled | pruned, and running ->
//! pending when an attempt is lost or handed back and the retry budget allows another attempt.
//! A trial becomes pruned when early stopping decides on one of its epoch reports. Every
//! operation records which sweeps and trials it changed and the events it caused. The service
//! persists those records before it replies, so nothing a client saw is lost on restart.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use tunefleet_proto::v1::{
    self, sweep_event::Kind as EventKind, AttemptStatus, Outcome, SweepStatus, TrialStatus,
};
use tunefleet_proto::{params_from_proto, params_to_proto, SweepId, TrialId, WorkerId};

use crate::error::CoordinatorError;
use crate::search;
use crate::spec::{Goal, Method, SweepSpec};
use crate::store::Snapshot;

/// Tunables of the state machine.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// How long an attempt's lease lasts without a heartbeat or report, in milliseconds.
    pub lease_ttl_ms: i64,
    /// Lost attempts after which a trial fails instead of getting another attempt. Attempts a
    /// worker handed back on shutdown do not count.
    pub max_attempts: u32,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            lease_ttl_ms: 10_000,
            max_attempts: 3,
        }
    }
}

struct SweepEntry {
    sweep: v1::Sweep,
    spec: SweepSpec,
    /// Trial ids by trial index.
    trial_ids: Vec<TrialId>,
}

/// Records and events an operation produced, taken by the service after each call.
#[derive(Debug, Default)]
pub struct Changes {
    pub sweeps: BTreeSet<SweepId>,
    pub trials: BTreeSet<TrialId>,
    pub workers: BTreeSet<WorkerId>,
    pub events: Vec<v1::SweepEvent>,
    /// Sweeps that reached a terminal state; their ensemble is selected next.
    pub ended_sweeps: Vec<SweepId>,
}

impl Changes {
    /// Reports whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.sweeps.is_empty()
            && self.trials.is_empty()
            && self.workers.is_empty()
            && self.events.is_empty()
            && self.ended_sweeps.is_empty()
    }

    /// Appends later changes to these.
    pub fn merge(&mut self, later: Changes) {
        self.sweeps.extend(later.sweeps);
        self.trials.extend(later.trials);
        self.workers.extend(later.workers);
        self.events.extend(later.events);
        self.ended_sweeps.extend(later.ended_sweeps);
    }
}

/// The worker's next step for an attempt it reported on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportVerdict {
    Continue,
    /// The sweep was cancelled or has ended.
    Stop {
        reason: String,
    },
    /// Early stopping ended the trial as pruned.
    Pruned {
        reason: String,
    },
}

/// The in-memory state of every sweep, trial, lease and worker.
pub struct Scheduler {
    config: SchedulerConfig,
    sweep_order: Vec<SweepId>,
    sweeps: HashMap<SweepId, SweepEntry>,
    trials: HashMap<TrialId, v1::Trial>,
    /// Lease expiry time of each running trial's current attempt.
    leases: HashMap<TrialId, i64>,
    /// Registered workers; `last_heartbeat_ms` is kept in memory only.
    workers: HashMap<WorkerId, v1::Worker>,
    changes: Changes,
}

enum AttemptCheck {
    Current,
    /// The trial was cancelled while the attempt ran; the reason is the trial's.
    Cancelled(String),
    /// Early stopping pruned the trial on this attempt's report; the reason is the trial's.
    Pruned(String),
}

fn sweep_status(sweep: &v1::Sweep) -> SweepStatus {
    SweepStatus::try_from(sweep.status).unwrap_or(SweepStatus::Unspecified)
}

fn trial_status(trial: &v1::Trial) -> TrialStatus {
    TrialStatus::try_from(trial.status).unwrap_or(TrialStatus::Unspecified)
}

/// Names a sweep status the way logs and messages print it.
pub fn sweep_status_name(status: SweepStatus) -> &'static str {
    match status {
        SweepStatus::Unspecified => "unspecified",
        SweepStatus::Running => "running",
        SweepStatus::Succeeded => "succeeded",
        SweepStatus::Failed => "failed",
        SweepStatus::Cancelled => "cancelled",
    }
}

/// Returns a copy of the trial without its metric history except the latest epoch.
pub fn trial_summary(trial: &v1::Trial) -> v1::Trial {
    let mut summary = trial.clone();
    let keep_from = summary.history.len().saturating_sub(1);
    summary.history.drain(..keep_from);
    summary
}

impl Scheduler {
    /// Creates an empty scheduler.
    pub fn new(config: SchedulerConfig) -> Self {
        Self {
            config,
            sweep_order: Vec::new(),
            sweeps: HashMap::new(),
            trials: HashMap::new(),
            leases: HashMap::new(),
            workers: HashMap::new(),
            changes: Changes::default(),
        }
    }

    /// Rebuilds the state from stored records. Running attempts get a fresh lease so their
    /// workers can carry on reporting; if they never do, the lease expires as usual.
    pub fn restore(
        config: SchedulerConfig,
        snapshot: Snapshot,
        now_ms: i64,
    ) -> Result<Self, CoordinatorError> {
        let Snapshot {
            sweeps,
            trials,
            workers,
            ..
        } = snapshot;
        let mut scheduler = Self::new(config);
        for worker in workers {
            // The stored heartbeat time is the registration's, so a worker is listed as lost
            // until its next heartbeat proves it alive. Its running attempts keep fresh leases.
            scheduler.workers.insert(worker.worker_id.parse()?, worker);
        }
        let mut sweeps = sweeps;
        sweeps.sort_by_key(|s| (s.created_at_ms, s.sweep_id.clone()));
        for sweep in sweeps {
            let sweep_id: SweepId = sweep.sweep_id.parse()?;
            let spec = SweepSpec::parse(&sweep.spec_toml, Path::new(&sweep.base_dir))?;
            scheduler.sweep_order.push(sweep_id);
            let entry = SweepEntry {
                sweep,
                spec,
                trial_ids: Vec::new(),
            };
            scheduler.sweeps.insert(sweep_id, entry);
        }
        let mut trials = trials;
        trials.sort_by_key(|t| t.index);
        for trial in trials {
            let trial_id: TrialId = trial.trial_id.parse()?;
            let sweep_id: SweepId = trial.sweep_id.parse()?;
            let Some(entry) = scheduler.sweeps.get_mut(&sweep_id) else {
                return Err(CoordinatorError::SweepNotFound(sweep_id));
            };
            entry.trial_ids.push(trial_id);
            if trial_status(&trial) == TrialStatus::Running {
                scheduler
                    .leases
                    .insert(trial_id, now_ms + scheduler.config.lease_ttl_ms);
            }
            scheduler.trials.insert(trial_id, trial);
        }
        Ok(scheduler)
    }

    /// Takes the records and events changed since the last call.
    pub fn take_changes(&mut self) -> Changes {
        std::mem::take(&mut self.changes)
    }

    /// Returns the stored form of a sweep.
    pub fn sweep(&self, sweep_id: SweepId) -> Result<&v1::Sweep, CoordinatorError> {
        self.sweeps
            .get(&sweep_id)
            .map(|entry| &entry.sweep)
            .ok_or(CoordinatorError::SweepNotFound(sweep_id))
    }

    /// Returns a sweep's validated spec.
    pub fn spec(&self, sweep_id: SweepId) -> Result<&SweepSpec, CoordinatorError> {
        self.sweeps
            .get(&sweep_id)
            .map(|entry| &entry.spec)
            .ok_or(CoordinatorError::SweepNotFound(sweep_id))
    }

    /// Returns every sweep in creation order.
    pub fn sweeps(&self) -> Vec<&v1::Sweep> {
        let entries = self.sweep_order.iter().map(|id| &self.sweeps[id]);
        entries.map(|entry| &entry.sweep).collect()
    }

    /// Returns a trial with its full history.
    pub fn trial(&self, trial_id: TrialId) -> Result<&v1::Trial, CoordinatorError> {
        self.trials
            .get(&trial_id)
            .ok_or(CoordinatorError::TrialNotFound(trial_id))
    }

    /// Returns a sweep's trials in index order.
    pub fn trials_of(&self, sweep_id: SweepId) -> Result<Vec<&v1::Trial>, CoordinatorError> {
        let entry = self
            .sweeps
            .get(&sweep_id)
            .ok_or(CoordinatorError::SweepNotFound(sweep_id))?;
        Ok(entry.trial_ids.iter().map(|id| &self.trials[id]).collect())
    }

    /// Returns the registered workers with their status and running attempts as of `now_ms`.
    pub fn list_workers(&self, now_ms: i64) -> Vec<v1::Worker> {
        let mut workers: Vec<v1::Worker> = self.workers.values().cloned().collect();
        workers.sort_by_key(|w| (w.registered_at_ms, w.worker_id.clone()));
        for worker in &mut workers {
            let silent_ms = now_ms - worker.last_heartbeat_ms;
            let status = if silent_ms > self.config.lease_ttl_ms {
                v1::WorkerStatus::Lost
            } else {
                v1::WorkerStatus::Active
            };
            worker.status = status as i32;
            worker.running = self.running_attempts_of(&worker.worker_id);
        }
        workers
    }

    fn running_attempts_of(&self, worker_id: &str) -> Vec<v1::AttemptRef> {
        let mut running: Vec<v1::AttemptRef> = self
            .leases
            .keys()
            .filter_map(|trial_id| {
                let attempt = self.trials[trial_id].attempts.last()?;
                (attempt.worker_id == worker_id).then(|| v1::AttemptRef {
                    worker_id: worker_id.to_string(),
                    trial_id: trial_id.to_string(),
                    attempt: attempt.number,
                })
            })
            .collect();
        running.sort_by(|a, b| a.trial_id.cmp(&b.trial_id));
        running
    }

    /// Builds the first event of a watch: the sweep and all its trials.
    pub fn snapshot_event(&self, sweep_id: SweepId) -> Result<v1::SweepEvent, CoordinatorError> {
        let trials = self.trials_of(sweep_id)?;
        Ok(v1::SweepEvent {
            kind: EventKind::Snapshot as i32,
            sweep: Some(self.sweep(sweep_id)?.clone()),
            trials: trials.into_iter().map(trial_summary).collect(),
        })
    }

    /// Creates a sweep from a validated spec. No trial exists until a worker requests one.
    pub fn create_sweep(
        &mut self,
        spec: SweepSpec,
        spec_toml: &str,
        base_dir: &str,
        now_ms: i64,
    ) -> SweepId {
        let sweep_id = SweepId::new_random();
        let goal = match spec.objective.goal {
            Goal::Maximize => v1::Goal::Maximize,
            Goal::Minimize => v1::Goal::Minimize,
        };
        let sweep = v1::Sweep {
            sweep_id: sweep_id.to_string(),
            name: spec.name.clone(),
            spec_toml: spec_toml.to_string(),
            status: SweepStatus::Running as i32,
            reason: String::new(),
            objective: Some(v1::Objective {
                metric: spec.objective.metric.clone(),
                goal: goal as i32,
            }),
            created_at_ms: now_ms,
            ended_at_ms: 0,
            num_trials_created: 0,
            num_trials_planned: search::planned_trials(&spec),
            counts: Some(v1::TrialCounts::default()),
            max_concurrent: spec.search.max_concurrent.unwrap_or(0),
            base_dir: base_dir.to_string(),
        };
        self.sweep_order.push(sweep_id);
        let entry = SweepEntry {
            sweep,
            spec,
            trial_ids: Vec::new(),
        };
        self.sweeps.insert(sweep_id, entry);
        self.changes.sweeps.insert(sweep_id);
        sweep_id
    }

    /// Registers a worker and returns its new id. A worker that restarts registers again and
    /// gets a new id, so the attempts it held before can never report again.
    pub fn register_worker(&mut self, request: v1::RegisterWorkerRequest, now_ms: i64) -> WorkerId {
        self.register_worker_as(request, String::new(), now_ms)
    }

    /// Registers a worker that authenticated with the certificate identity `identity`.
    pub fn register_worker_as(
        &mut self,
        request: v1::RegisterWorkerRequest,
        identity: String,
        now_ms: i64,
    ) -> WorkerId {
        let worker_id = WorkerId::new_random();
        let worker = v1::Worker {
            worker_id: worker_id.to_string(),
            hostname: request.hostname,
            slots: request.slots,
            labels: request.labels,
            version: request.version,
            registered_at_ms: now_ms,
            last_heartbeat_ms: now_ms,
            status: v1::WorkerStatus::Active as i32,
            running: Vec::new(),
            identity,
        };
        self.workers.insert(worker_id, worker);
        self.changes.workers.insert(worker_id);
        worker_id
    }

    /// Returns a registered worker's record.
    pub fn worker(&self, worker_id: WorkerId) -> Result<&v1::Worker, CoordinatorError> {
        self.workers
            .get(&worker_id)
            .ok_or(CoordinatorError::WorkerNotFound(worker_id))
    }

    /// Records a worker's heartbeat: renews the leases of the attempts it still runs and
    /// returns the attempts it must stop.
    pub fn heartbeat(
        &mut self,
        worker_id: WorkerId,
        running: &[v1::AttemptRef],
        now_ms: i64,
    ) -> Result<Vec<v1::AttemptRef>, CoordinatorError> {
        let worker = self
            .workers
            .get_mut(&worker_id)
            .ok_or(CoordinatorError::WorkerNotFound(worker_id))?;
        worker.last_heartbeat_ms = now_ms;
        let mut stop = Vec::new();
        for attempt in running {
            match self.check_attempt(attempt) {
                Ok((trial_id, AttemptCheck::Current)) => {
                    self.leases
                        .insert(trial_id, now_ms + self.config.lease_ttl_ms);
                }
                Ok((_, AttemptCheck::Cancelled(_) | AttemptCheck::Pruned(_))) | Err(_) => {
                    stop.push(attempt.clone())
                }
            }
        }
        Ok(stop)
    }

    /// Hands the worker's slot a trial to run: a pending retry first, else the search's next
    /// trial, from the running sweep with the fewest running trials that has room and work.
    pub fn acquire(
        &mut self,
        worker_id: WorkerId,
        slot: u32,
        now_ms: i64,
    ) -> Result<Option<v1::Assignment>, CoordinatorError> {
        if !self.workers.contains_key(&worker_id) {
            return Err(CoordinatorError::WorkerNotFound(worker_id));
        }
        let Some(sweep_id) = self.pick_sweep() else {
            return Ok(None);
        };
        let trial_id = match self.first_pending_trial(sweep_id) {
            Some(trial_id) => trial_id,
            None => self.create_trial(sweep_id, now_ms),
        };
        let trial = self.trials.get_mut(&trial_id).expect("trial exists");
        let number = trial.attempts.len() as u32 + 1;
        // Metrics and artifacts belong to the attempt that produced them: a new attempt
        // trains from scratch, so it starts a fresh history.
        trial.history.clear();
        trial.final_metrics.clear();
        trial.confusion_matrices.clear();
        trial.artifacts.clear();
        trial.objective = None;
        trial.attempts.push(v1::Attempt {
            number,
            worker_id: worker_id.to_string(),
            slot,
            status: AttemptStatus::Running as i32,
            started_at_ms: now_ms,
            exit_code: -1,
            ..Default::default()
        });
        trial.status = TrialStatus::Running as i32;
        if trial.started_at_ms == 0 {
            trial.started_at_ms = now_ms;
        }
        self.leases
            .insert(trial_id, now_ms + self.config.lease_ttl_ms);
        tracing::info!(%sweep_id, %trial_id, attempt = number, %worker_id, slot, "trial started");
        self.touch_trial(trial_id, EventKind::TrialStarted);
        Ok(Some(self.assignment(sweep_id, trial_id)))
    }

    /// Records one epoch's metrics and returns whether the worker should go on.
    pub fn report_epoch(
        &mut self,
        attempt: &v1::AttemptRef,
        metrics: v1::EpochMetrics,
        now_ms: i64,
    ) -> Result<ReportVerdict, CoordinatorError> {
        let trial_id = match self.check_attempt(attempt)? {
            (_, AttemptCheck::Cancelled(reason)) => return Ok(ReportVerdict::Stop { reason }),
            (_, AttemptCheck::Pruned(reason)) => return Ok(ReportVerdict::Pruned { reason }),
            (trial_id, AttemptCheck::Current) => trial_id,
        };
        let trial = self.trials.get_mut(&trial_id).expect("checked");
        let last_epoch = trial.history.last().map_or(0, |m| m.epoch);
        if metrics.epoch == last_epoch {
            // A worker resends a report whose reply it lost, for example across a
            // coordinator restart; the first copy is already stored.
            self.leases
                .insert(trial_id, now_ms + self.config.lease_ttl_ms);
            return Ok(ReportVerdict::Continue);
        }
        if metrics.epoch < last_epoch {
            return Err(CoordinatorError::InvalidArgument(format!(
                "epoch {} of trial {trial_id} reported after epoch {last_epoch}: epochs must increase",
                metrics.epoch
            )));
        }
        tracing::debug!(%trial_id, epoch = metrics.epoch, "epoch reported");
        let epoch = metrics.epoch;
        trial.history.push(v1::EpochMetrics {
            reported_at_ms: now_ms,
            ..metrics
        });
        self.leases
            .insert(trial_id, now_ms + self.config.lease_ttl_ms);
        self.touch_trial(trial_id, EventKind::EpochReported);
        match self.judge_epoch(trial_id, epoch) {
            Some(judgement) if judgement.stop => {
                self.prune(trial_id, &judgement, now_ms);
                Ok(ReportVerdict::Pruned {
                    reason: judgement.reason(),
                })
            }
            _ => Ok(ReportVerdict::Continue),
        }
    }

    /// Attaches an uploaded artifact to the attempt's trial, replacing one of the same name.
    pub fn add_artifact(
        &mut self,
        attempt: &v1::AttemptRef,
        artifact: v1::ArtifactRef,
    ) -> Result<(), CoordinatorError> {
        let (trial_id, _) = self.check_attempt(attempt)?;
        let trial = self.trials.get_mut(&trial_id).expect("checked");
        trial.artifacts.retain(|a| a.name != artifact.name);
        trial.artifacts.push(artifact);
        self.changes.trials.insert(trial_id);
        Ok(())
    }

    /// Checks that an attempt may upload an artifact and returns its sweep and trial ids.
    pub fn artifact_owner(
        &self,
        attempt: &v1::AttemptRef,
    ) -> Result<(SweepId, TrialId), CoordinatorError> {
        let (trial_id, check) = self.check_attempt(attempt)?;
        if let AttemptCheck::Cancelled(reason) | AttemptCheck::Pruned(reason) = check {
            return Err(CoordinatorError::StaleAttempt {
                trial_id,
                attempt: attempt.attempt,
                detail: reason,
            });
        }
        let sweep_id = self.trials[&trial_id].sweep_id.parse()?;
        Ok((sweep_id, trial_id))
    }

    /// Ends an attempt as the worker reports it, which ends the trial or re-queues it.
    pub fn complete_attempt(
        &mut self,
        request: v1::CompleteAttemptRequest,
        now_ms: i64,
    ) -> Result<(), CoordinatorError> {
        let attempt_ref = request.attempt.clone().unwrap_or_default();
        let trial_id = match self.check_attempt(&attempt_ref)? {
            // The trial already ended as cancelled or pruned; the worker confirms that its child
            // stopped, whatever outcome it reports.
            (_, AttemptCheck::Cancelled(_) | AttemptCheck::Pruned(_)) => return Ok(()),
            (trial_id, AttemptCheck::Current) => trial_id,
        };
        self.leases.remove(&trial_id);
        let outcome = Outcome::try_from(request.outcome).unwrap_or(Outcome::Unspecified);
        let objective_metric = self.objective_metric(trial_id);
        let trial = self.trials.get_mut(&trial_id).expect("checked");
        let attempt = trial.attempts.last_mut().expect("checked");
        attempt.ended_at_ms = now_ms;
        attempt.exit_code = request.exit_code;
        attempt.stderr_tail = request.stderr_tail;
        attempt.reason = request.reason.clone();
        trial.final_metrics = request.final_metrics;
        trial.confusion_matrices = request.confusion_matrices;

        let (trial_state, attempt_state, reason) = match outcome {
            Outcome::Succeeded => match final_objective(trial, &objective_metric) {
                Ok(value) => {
                    trial.objective = Some(value);
                    (TrialStatus::Succeeded, AttemptStatus::Succeeded, String::new())
                }
                Err(reason) => (TrialStatus::Failed, AttemptStatus::Failed, reason),
            },
            Outcome::Failed => {
                let reason = if request.reason.is_empty() {
                    "the worker reported a failure without a reason".to_string()
                } else {
                    request.reason
                };
                (TrialStatus::Failed, AttemptStatus::Failed, reason)
            }
            Outcome::Cancelled => {
                let reason = "the worker handed the attempt back".to_string();
                (TrialStatus::Pending, AttemptStatus::Cancelled, reason)
            }
            Outcome::Unspecified => {
                return Err(CoordinatorError::InvalidArgument(format!(
                    "outcome {} of attempt {} of trial {trial_id}: expected succeeded, failed or cancelled",
                    request.outcome, attempt_ref.attempt
                )))
            }
        };
        let attempt = trial.attempts.last_mut().expect("checked");
        attempt.status = attempt_state as i32;
        if attempt.reason.is_empty() {
            attempt.reason = reason.clone();
        }
        trial.status = trial_state as i32;
        trial.reason = reason;
        if trial_state != TrialStatus::Pending {
            trial.ended_at_ms = now_ms;
        }
        let sweep_id: SweepId = trial.sweep_id.parse()?;
        match trial_state {
            TrialStatus::Pending => {
                tracing::info!(%sweep_id, %trial_id, attempt = attempt_ref.attempt, "attempt handed back; trial pending again")
            }
            TrialStatus::Failed => {
                tracing::warn!(%sweep_id, %trial_id, attempt = attempt_ref.attempt, reason = %trial.reason, "trial failed")
            }
            _ => {
                tracing::info!(%sweep_id, %trial_id, attempt = attempt_ref.attempt, objective = ?trial.objective, "trial succeeded")
            }
        }
        let kind = if trial_state == TrialStatus::Pending {
            EventKind::EpochReported
        } else {
            EventKind::TrialEnded
        };
        self.touch_trial(trial_id, kind);
        self.after_trial_change(sweep_id, now_ms);
        Ok(())
    }

    /// Cancels a sweep: its running and pending trials end as cancelled and no new trial starts.
    pub fn cancel_sweep(&mut self, sweep_id: SweepId, now_ms: i64) -> Result<(), CoordinatorError> {
        let status = sweep_status(self.sweep(sweep_id)?);
        match status {
            SweepStatus::Cancelled => Ok(()),
            SweepStatus::Running => {
                tracing::info!(%sweep_id, "sweep cancelled");
                self.end_sweep(
                    sweep_id,
                    SweepStatus::Cancelled,
                    "cancelled by a client",
                    now_ms,
                );
                Ok(())
            }
            _ => Err(CoordinatorError::SweepEnded {
                sweep_id,
                action: "cancelled",
                status: sweep_status_name(status),
            }),
        }
    }

    /// Re-queues an ended sweep's failed and cancelled trials and runs it again. Succeeded and
    /// pruned trials keep their results and never run again, because early stopping already
    /// judged a pruned trial. Trials the search had not created yet are created as usual.
    pub fn resume_sweep(&mut self, sweep_id: SweepId, now_ms: i64) -> Result<(), CoordinatorError> {
        let status = sweep_status(self.sweep(sweep_id)?);
        if status == SweepStatus::Running {
            return Err(CoordinatorError::SweepRunning(sweep_id));
        }
        let trial_ids = self.sweeps[&sweep_id].trial_ids.clone();
        let mut num_requeued = 0;
        for trial_id in trial_ids {
            let trial = self.trials.get_mut(&trial_id).expect("trial exists");
            if !matches!(
                trial_status(trial),
                TrialStatus::Failed | TrialStatus::Cancelled
            ) {
                continue;
            }
            trial.status = TrialStatus::Pending as i32;
            trial.reason = String::new();
            trial.ended_at_ms = 0;
            trial.objective = None;
            trial.history.clear();
            trial.final_metrics.clear();
            trial.confusion_matrices.clear();
            trial.confusion_matrices.clear();
            trial.artifacts.clear();
            num_requeued += 1;
            self.touch_trial(trial_id, EventKind::EpochReported);
        }
        let entry = self.sweeps.get_mut(&sweep_id).expect("sweep exists");
        entry.sweep.status = SweepStatus::Running as i32;
        entry.sweep.reason = String::new();
        entry.sweep.ended_at_ms = 0;
        self.changes.sweeps.insert(sweep_id);
        tracing::info!(%sweep_id, num_requeued, "sweep resumed");
        self.refresh_counts(sweep_id);
        // A sweep with nothing left to run ends again at once.
        self.after_trial_change(sweep_id, now_ms);
        Ok(())
    }

    /// Expires every lease older than `now_ms`: the attempt is lost and its trial goes back to
    /// pending, or fails once `max_attempts` of its attempts were lost. Returns how many
    /// leases expired.
    pub fn expire_leases(&mut self, now_ms: i64) -> usize {
        let mut expired: Vec<TrialId> = self
            .leases
            .iter()
            .filter(|(_, expires)| **expires <= now_ms)
            .map(|(trial_id, _)| *trial_id)
            .collect();
        expired.sort();
        let num_expired = expired.len();
        for trial_id in expired {
            self.leases.remove(&trial_id);
            let max_attempts = self.config.max_attempts;
            let trial = self.trials.get_mut(&trial_id).expect("leased trials exist");
            let attempt = trial
                .attempts
                .last_mut()
                .expect("a running trial has an attempt");
            attempt.status = AttemptStatus::Lost as i32;
            attempt.ended_at_ms = now_ms;
            attempt.reason = format!(
                "lease expired: no heartbeat from worker {} for {} ms",
                attempt.worker_id, self.config.lease_ttl_ms
            );
            let number = attempt.number;
            let worker_id = attempt.worker_id.clone();
            // Only lost attempts use up the retry budget: a handed-back attempt does not.
            let num_lost = trial
                .attempts
                .iter()
                .filter(|a| a.status == AttemptStatus::Lost as i32)
                .count() as u32;
            let exhausted = num_lost >= max_attempts;
            if exhausted {
                trial.status = TrialStatus::Failed as i32;
                trial.ended_at_ms = now_ms;
                trial.reason =
                    format!("lost {num_lost} attempts; the retry budget is {max_attempts}");
            } else {
                trial.status = TrialStatus::Pending as i32;
            }
            tracing::warn!(%trial_id, attempt = number, %worker_id, "lease expired; attempt lost");
            let sweep_id: SweepId = trial.sweep_id.parse().expect("stored ids are valid");
            let kind = if exhausted {
                EventKind::TrialEnded
            } else {
                EventKind::EpochReported
            };
            self.touch_trial(trial_id, kind);
            self.after_trial_change(sweep_id, now_ms);
        }
        num_expired
    }

    /// Returns how many attempts hold a lease.
    pub fn num_leases(&self) -> usize {
        self.leases.len()
    }

    fn objective_metric(&self, trial_id: TrialId) -> String {
        let sweep_id: SweepId = self.trials[&trial_id].sweep_id.parse().expect("valid id");
        self.sweeps[&sweep_id].spec.objective.metric.clone()
    }

    /// Finds the running sweep that gets the next trial: fewest running trials first, so that
    /// concurrent sweeps share the slots, then the oldest.
    fn pick_sweep(&self) -> Option<SweepId> {
        self.sweep_order
            .iter()
            .filter(|id| self.has_room_and_work(**id))
            .min_by_key(|id| {
                let counts = self.sweeps[*id].sweep.counts.unwrap_or_default();
                counts.running
            })
            .copied()
    }

    fn has_room_and_work(&self, sweep_id: SweepId) -> bool {
        let sweep = &self.sweeps[&sweep_id].sweep;
        if sweep_status(sweep) != SweepStatus::Running {
            return false;
        }
        let counts = sweep.counts.unwrap_or_default();
        let room = sweep.max_concurrent == 0 || counts.running < sweep.max_concurrent;
        let work = counts.pending > 0 || sweep.num_trials_created < sweep.num_trials_planned;
        room && work
    }

    fn first_pending_trial(&self, sweep_id: SweepId) -> Option<TrialId> {
        let entry = &self.sweeps[&sweep_id];
        entry
            .trial_ids
            .iter()
            .find(|id| trial_status(&self.trials[id]) == TrialStatus::Pending)
            .copied()
    }

    fn create_trial(&mut self, sweep_id: SweepId, now_ms: i64) -> TrialId {
        let observations = match self.sweeps[&sweep_id].spec.search.method {
            Method::Tpe => self.observations(sweep_id),
            Method::Grid | Method::Random | Method::Sobol => Vec::new(),
        };
        let entry = self.sweeps.get_mut(&sweep_id).expect("picked sweep exists");
        let index = entry.sweep.num_trials_created;
        let params = search::trial_params(&entry.spec, index, &observations)
            .expect("the search plans every index below num_trials_planned");
        let trial_id = TrialId::new_random();
        let trial = v1::Trial {
            trial_id: trial_id.to_string(),
            sweep_id: sweep_id.to_string(),
            index,
            params: params_to_proto(&params),
            status: TrialStatus::Pending as i32,
            created_at_ms: now_ms,
            ..Default::default()
        };
        entry.sweep.num_trials_created += 1;
        entry.trial_ids.push(trial_id);
        self.trials.insert(trial_id, trial);
        self.changes.sweeps.insert(sweep_id);
        trial_id
    }

    /// Gathers what the search has learnt from a sweep: the parameters and objective value of
    /// each succeeded or pruned trial, in index order. It reads only stored trials, so a restarted
    /// coordinator gathers the same list.
    pub fn observations(&self, sweep_id: SweepId) -> Vec<search::Observation> {
        let Some(entry) = self.sweeps.get(&sweep_id) else {
            return Vec::new();
        };
        let metric = &entry.spec.objective.metric;
        entry
            .trial_ids
            .iter()
            .map(|id| &self.trials[id])
            .filter_map(|trial| {
                let (value, pruned_at_epoch) = match trial_status(trial) {
                    TrialStatus::Succeeded => (final_objective(trial, metric).ok()?, None),
                    TrialStatus::Pruned => (trial.objective?, Some(trial.history.last()?.epoch)),
                    _ => return None,
                };
                Some(search::Observation {
                    index: trial.index,
                    params: params_from_proto(&trial.params).ok()?,
                    value,
                    pruned_at_epoch,
                })
            })
            .collect()
    }

    fn assignment(&self, sweep_id: SweepId, trial_id: TrialId) -> v1::Assignment {
        let entry = &self.sweeps[&sweep_id];
        let trial = &self.trials[&trial_id];
        let attempt = trial.attempts.last().expect("just started");
        let task = &entry.spec.task;
        let mut hyperparameters = params_to_proto(&task.hyperparameters);
        hyperparameters.extend(trial.params.iter().cloned());
        v1::Assignment {
            attempt: Some(v1::AttemptRef {
                worker_id: attempt.worker_id.clone(),
                trial_id: trial_id.to_string(),
                attempt: attempt.number,
            }),
            sweep_id: sweep_id.to_string(),
            trial_index: trial.index,
            model: entry.spec.task.model.clone(),
            dataset: entry.spec.task.dataset.display().to_string(),
            epochs: entry.spec.task.epochs,
            hyperparameters,
            seed: search::trial_seed(&entry.spec, trial.index),
            objective: entry.sweep.objective.clone(),
            format: task.format.clone().unwrap_or_default(),
            pretrained: path_string(task.pretrained.as_deref()),
            label_column: task.label_column.clone().unwrap_or_default(),
            module: path_string(task.module.as_deref()),
            image_size: task.image_size,
            normalize_mean: task
                .normalize
                .as_ref()
                .map_or_else(Vec::new, |n| n.mean.clone()),
            normalize_std: task
                .normalize
                .as_ref()
                .map_or_else(Vec::new, |n| n.std.clone()),
        }
    }

    /// Checks an attempt reference against the trial's attempts.
    fn check_attempt(
        &self,
        attempt: &v1::AttemptRef,
    ) -> Result<(TrialId, AttemptCheck), CoordinatorError> {
        let trial_id: TrialId = attempt.trial_id.parse()?;
        let trial = self
            .trials
            .get(&trial_id)
            .ok_or(CoordinatorError::TrialNotFound(trial_id))?;
        let stale = |detail: String| CoordinatorError::StaleAttempt {
            trial_id,
            attempt: attempt.attempt,
            detail,
        };
        let Some(record) = trial.attempts.iter().find(|a| a.number == attempt.attempt) else {
            return Err(stale("no such attempt".to_string()));
        };
        if record.worker_id != attempt.worker_id {
            return Err(stale(format!("it belongs to worker {}", record.worker_id)));
        }
        let status = AttemptStatus::try_from(record.status).unwrap_or(AttemptStatus::Unspecified);
        match status {
            AttemptStatus::Running => Ok((trial_id, AttemptCheck::Current)),
            AttemptStatus::Cancelled if trial_status(trial) == TrialStatus::Cancelled => {
                Ok((trial_id, AttemptCheck::Cancelled(trial.reason.clone())))
            }
            AttemptStatus::Pruned => Ok((trial_id, AttemptCheck::Pruned(trial.reason.clone()))),
            AttemptStatus::Lost => Err(stale(format!(
                "it was lost ({}); the trial has {} attempts",
                record.reason,
                trial.attempts.len()
            ))),
            _ => Err(stale(format!("it already ended: {}", status.as_str_name()))),
        }
    }

    /// Marks a trial changed and queues an event about it.
    fn touch_trial(&mut self, trial_id: TrialId, kind: EventKind) {
        self.changes.trials.insert(trial_id);
        let sweep_id: SweepId = self.trials[&trial_id].sweep_id.parse().expect("valid id");
        // An epoch report changes no trial's status, so the counts stay as they are.
        if kind != EventKind::EpochReported
            || trial_status(&self.trials[&trial_id]) != TrialStatus::Running
        {
            self.refresh_counts(sweep_id);
        }
        let trial = &self.trials[&trial_id];
        let event = v1::SweepEvent {
            kind: kind as i32,
            sweep: Some(self.sweeps[&sweep_id].sweep.clone()),
            trials: vec![trial_summary(trial)],
        };
        self.changes.events.push(event);
    }

    fn refresh_counts(&mut self, sweep_id: SweepId) {
        let entry = self.sweeps.get_mut(&sweep_id).expect("sweep exists");
        let mut counts = v1::TrialCounts::default();
        for trial_id in &entry.trial_ids {
            match trial_status(&self.trials[trial_id]) {
                TrialStatus::Pending => counts.pending += 1,
                TrialStatus::Running => counts.running += 1,
                TrialStatus::Succeeded => counts.succeeded += 1,
                TrialStatus::Failed => counts.failed += 1,
                TrialStatus::Cancelled => counts.cancelled += 1,
                TrialStatus::Pruned => counts.pruned += 1,
                TrialStatus::Unspecified => {}
            }
        }
        if entry.sweep.counts != Some(counts) {
            entry.sweep.counts = Some(counts);
            self.changes.sweeps.insert(sweep_id);
        }
    }

    /// Applies the failure budget and ends the sweep once no trial is left to run.
    fn after_trial_change(&mut self, sweep_id: SweepId, now_ms: i64) {
        self.refresh_counts(sweep_id);
        let entry = &self.sweeps[&sweep_id];
        if sweep_status(&entry.sweep) != SweepStatus::Running {
            return;
        }
        let counts = entry.sweep.counts.unwrap_or_default();
        if let Some(max_failed) = entry.spec.search.max_failed {
            if counts.failed > max_failed {
                let noun = if counts.failed == 1 {
                    "trial"
                } else {
                    "trials"
                };
                let reason = format!(
                    "{} {noun} failed, more than search.max_failed = {max_failed}",
                    counts.failed
                );
                tracing::error!(%sweep_id, %reason, "sweep failed");
                self.end_sweep(sweep_id, SweepStatus::Failed, &reason, now_ms);
                return;
            }
        }
        let all_created = entry.sweep.num_trials_created >= entry.sweep.num_trials_planned;
        if all_created && counts.pending == 0 && counts.running == 0 {
            if counts.succeeded > 0 {
                tracing::info!(%sweep_id, succeeded = counts.succeeded, failed = counts.failed, pruned = counts.pruned, "sweep succeeded");
                self.end_sweep(sweep_id, SweepStatus::Succeeded, "", now_ms);
            } else {
                let mut reason = if counts.pruned > 0 {
                    let (failed, pruned) = (counts.failed, counts.pruned);
                    format!("no trial succeeded ({failed} failed, {pruned} pruned)")
                } else {
                    format!("no trial succeeded ({} failed)", counts.failed)
                };
                if let Some(first) = self.first_failure(sweep_id) {
                    reason.push_str("; first failure: ");
                    reason.push_str(&first);
                }
                tracing::error!(%sweep_id, %reason, "sweep failed");
                self.end_sweep(sweep_id, SweepStatus::Failed, &reason, now_ms);
            }
        }
    }

    /// Returns the reason of the failed trial with the lowest index.
    fn first_failure(&self, sweep_id: SweepId) -> Option<String> {
        let entry = &self.sweeps[&sweep_id];
        entry
            .trial_ids
            .iter()
            .map(|id| &self.trials[id])
            .find(|t| trial_status(t) == TrialStatus::Failed)
            .map(|t| t.reason.clone())
    }

    /// Ends a sweep, cancelling its running and pending trials.
    fn end_sweep(&mut self, sweep_id: SweepId, status: SweepStatus, reason: &str, now_ms: i64) {
        let trial_ids = self.sweeps[&sweep_id].trial_ids.clone();
        let trial_reason = match status {
            SweepStatus::Cancelled => "sweep cancelled".to_string(),
            _ => format!("sweep {}: {reason}", sweep_status_name(status)),
        };
        for trial_id in trial_ids {
            let trial = self.trials.get_mut(&trial_id).expect("trial exists");
            let state = trial_status(trial);
            if state != TrialStatus::Running && state != TrialStatus::Pending {
                continue;
            }
            if state == TrialStatus::Running {
                let attempt = trial
                    .attempts
                    .last_mut()
                    .expect("running trials have an attempt");
                attempt.status = AttemptStatus::Cancelled as i32;
                attempt.ended_at_ms = now_ms;
                attempt.reason = trial_reason.clone();
                self.leases.remove(&trial_id);
            }
            trial.status = TrialStatus::Cancelled as i32;
            trial.reason = trial_reason.clone();
            trial.ended_at_ms = now_ms;
            self.touch_trial(trial_id, EventKind::TrialEnded);
        }
        self.refresh_counts(sweep_id);
        let entry = self.sweeps.get_mut(&sweep_id).expect("sweep exists");
        entry.sweep.status = status as i32;
        entry.sweep.reason = reason.to_string();
        entry.sweep.ended_at_ms = now_ms;
        self.changes.sweeps.insert(sweep_id);
        self.changes.ended_sweeps.push(sweep_id);
    }
}

fn path_string(path: Option<&std::path::Path>) -> String {
    path.map(|p| p.display().to_string()).unwrap_or_default()
}

/// Reads a succeeded trial's objective: a final metric of that name, else the last epoch's.
fn final_objective(trial: &v1::Trial, metric: &str) -> Result<f64, String> {
    let from_final = trial.final_metrics.iter().find(|m| m.name == metric);
    let from_history = || {
        let last = trial.history.last()?;
        last.metrics.iter().find(|m| m.name == metric)
    };
    let Some(found) = from_final.or_else(from_history) else {
        return Err(format!("objective metric {metric:?} was never reported"));
    };
    if !found.value.is_finite() {
        return Err(format!(
            "objective metric {metric:?} is not finite: {}",
            found.value
        ));
    }
    Ok(found.value)
}

mod early_stopping;
#[cfg(test)]
mod tests;
