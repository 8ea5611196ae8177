//! The output of `tunefleet run` and the client verbs: live progress on stderr, then the leaderboard and the ensemble
//! as text or JSON on stdout.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;

use serde_json::json;
use tunefleet_proto::v1::{self, sweep_event::Kind as EventKind, Goal, SweepStatus, TrialStatus};
use tunefleet_proto::{params_from_proto, Value};

/// Everything the run collected once the sweep ended.
pub struct RunReport {
    pub sweep: v1::Sweep,
    pub trials: Vec<v1::Trial>,
    /// `None` when no trial succeeded.
    pub ensemble: Option<v1::EnsembleSummary>,
    pub wall_seconds: f64,
}

/// Live progress: a line per trial start and end, and on a terminal a status line of the
/// running trials with their epoch and latest objective value.
pub struct Progress {
    terminal: bool,
    status_shown: bool,
    objective_metric: String,
    running: BTreeMap<u32, String>,
    num_done: u32,
    num_planned: u32,
}

impl Progress {
    /// Creates the display; `terminal` enables the rewritten status line.
    pub fn new(terminal: bool) -> Self {
        Self {
            terminal,
            status_shown: false,
            objective_metric: String::new(),
            running: BTreeMap::new(),
            num_done: 0,
            num_planned: 0,
        }
    }

    /// Updates the display for one event.
    pub fn show(&mut self, event: &v1::SweepEvent) {
        if let Some(sweep) = &event.sweep {
            let counts = sweep.counts.unwrap_or_default();
            self.num_done = counts.succeeded + counts.failed + counts.cancelled + counts.pruned;
            self.num_planned = sweep.num_trials_planned;
            if let Some(objective) = &sweep.objective {
                self.objective_metric.clone_from(&objective.metric);
            }
        }
        let kind = EventKind::try_from(event.kind).unwrap_or(EventKind::Unspecified);
        for trial in &event.trials {
            let status = TrialStatus::try_from(trial.status).unwrap_or(TrialStatus::Unspecified);
            match (kind, status) {
                // A trial that started between a watch's subscription and its snapshot is
                // already shown as running.
                (EventKind::TrialStarted, _) if self.running.contains_key(&trial.index) => {}
                (EventKind::TrialStarted, _) => {
                    let attempt = trial.attempts.len();
                    let retry = if attempt > 1 {
                        format!(" (attempt {attempt})")
                    } else {
                        String::new()
                    };
                    self.message(&format!(
                        "trial {:>3} started{retry}  {}",
                        trial.index,
                        format_params(&trial.params)
                    ));
                    self.running.insert(trial.index, "starting".to_string());
                }
                (EventKind::Snapshot, TrialStatus::Running) => {
                    self.message(&format!(
                        "trial {:>3} running  {}",
                        trial.index,
                        format_params(&trial.params)
                    ));
                    let state = self.epoch_state(trial);
                    self.running.insert(trial.index, state);
                }
                (_, TrialStatus::Running) => {
                    let state = self.epoch_state(trial);
                    self.running.insert(trial.index, state);
                }
                (_, TrialStatus::Pending) => {
                    self.running.remove(&trial.index);
                }
                (EventKind::TrialEnded, _) | (EventKind::Snapshot, _) if is_terminal(status) => {
                    let was_running = self.running.remove(&trial.index).is_some();
                    if kind == EventKind::TrialEnded || was_running {
                        let line = self.end_line(trial, status);
                        self.message(&line);
                    }
                }
                _ => {}
            }
        }
        self.draw_status();
    }

    fn epoch_state(&self, trial: &v1::Trial) -> String {
        let Some(latest) = trial.history.last() else {
            return "starting".to_string();
        };
        let value = latest
            .metrics
            .iter()
            .find(|m| m.name == self.objective_metric);
        match value {
            Some(m) => format!("epoch {} {}={:.4}", latest.epoch, m.name, m.value),
            None => format!("epoch {}", latest.epoch),
        }
    }

    fn end_line(&self, trial: &v1::Trial, status: TrialStatus) -> String {
        let seconds = duration_seconds(trial);
        match status {
            TrialStatus::Succeeded => format!(
                "trial {:>3} succeeded  {}={}  ({seconds:.1} s)",
                trial.index,
                self.objective_metric,
                trial
                    .objective
                    .map_or("-".to_string(), |v| format!("{v:.4}"))
            ),
            // The reason starts with "pruned at epoch N".
            TrialStatus::Pruned => format!("trial {:>3} {}", trial.index, trial.reason),
            _ => format!(
                "trial {:>3} {}: {}",
                trial.index,
                status_name(status),
                trial.reason
            ),
        }
    }

    /// Prints a line above the status line.
    pub fn message(&mut self, line: &str) {
        self.clear_status();
        stderr_line(format_args!("{line}"));
        self.draw_status();
    }

    /// Clears the status line for good.
    pub fn finish(&mut self) {
        self.clear_status();
    }

    fn clear_status(&mut self) {
        if self.status_shown {
            stderr_text(format_args!("\r\x1b[2K"));
            self.status_shown = false;
        }
    }

    fn draw_status(&mut self) {
        if !self.terminal {
            return;
        }
        self.clear_status();
        let running: Vec<String> = self
            .running
            .iter()
            .map(|(index, state)| format!("#{index} {state}"))
            .collect();
        let mut line = format!(
            "[{}/{} done] {}",
            self.num_done,
            self.num_planned,
            running.join(" | ")
        );
        line.truncate(200);
        stderr_text(format_args!("{line}"));
        let _ = std::io::stderr().flush();
        self.status_shown = true;
    }
}

fn is_terminal(status: TrialStatus) -> bool {
    matches!(
        status,
        TrialStatus::Succeeded | TrialStatus::Failed | TrialStatus::Cancelled | TrialStatus::Pruned
    )
}

pub fn status_name(status: TrialStatus) -> &'static str {
    match status {
        TrialStatus::Unspecified => "unknown",
        TrialStatus::Pending => "pending",
        TrialStatus::Running => "running",
        TrialStatus::Succeeded => "succeeded",
        TrialStatus::Failed => "failed",
        TrialStatus::Cancelled => "cancelled",
        TrialStatus::Pruned => "pruned",
    }
}

pub fn sweep_status_name(status: i32) -> &'static str {
    match SweepStatus::try_from(status).unwrap_or(SweepStatus::Unspecified) {
        SweepStatus::Unspecified => "unknown",
        SweepStatus::Running => "running",
        SweepStatus::Succeeded => "succeeded",
        SweepStatus::Failed => "failed",
        SweepStatus::Cancelled => "cancelled",
    }
}

pub fn format_params(params: &[v1::Param]) -> String {
    match params_from_proto(params) {
        Ok(values) => values
            .iter()
            .map(|(name, value)| match value {
                Value::Float(x) => format!("{name}={x:.4e}"),
                other => format!("{name}={other}"),
            })
            .collect::<Vec<_>>()
            .join(" "),
        Err(err) => err,
    }
}

/// Returns how long the trial's last attempt ran, up to now while it still runs.
pub fn duration_seconds(trial: &v1::Trial) -> f64 {
    let Some(attempt) = trial.attempts.last() else {
        return 0.0;
    };
    let end = if attempt.ended_at_ms > 0 {
        attempt.ended_at_ms
    } else {
        tunefleet_proto::now_ms()
    };
    (end - attempt.started_at_ms).max(0) as f64 / 1000.0
}

/// Returns a metric of the trial's last reported epoch.
pub fn last_epoch_metric(trial: &v1::Trial, name: &str) -> Option<f64> {
    let last = trial.history.last()?;
    last.metrics
        .iter()
        .find(|m| m.name == name)
        .map(|m| m.value)
}

pub fn final_metric(trial: &v1::Trial, name: &str) -> Option<f64> {
    trial
        .final_metrics
        .iter()
        .find(|m| m.name == name)
        .map(|m| m.value)
}

/// Orders trials for the leaderboard: succeeded ones by objective, best first, then pruned
/// ones by the objective at their last epoch, then the rest by index.
pub fn leaderboard_order(report: &RunReport) -> Vec<&v1::Trial> {
    let maximize = report
        .sweep
        .objective
        .as_ref()
        .is_none_or(|o| o.goal != Goal::Minimize as i32);
    let mut trials: Vec<&v1::Trial> = report.trials.iter().collect();
    trials.sort_by(|a, b| {
        let group = leaderboard_group(a).cmp(&leaderboard_group(b));
        let by_objective = match (a.objective, b.objective) {
            (Some(x), Some(y)) if maximize => y.total_cmp(&x),
            (Some(x), Some(y)) => x.total_cmp(&y),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        };
        group.then(by_objective).then(a.index.cmp(&b.index))
    });
    trials
}

/// Returns 0 for succeeded trials, 1 for pruned ones and 2 for the rest.
fn leaderboard_group(trial: &v1::Trial) -> u8 {
    match TrialStatus::try_from(trial.status) {
        Ok(TrialStatus::Succeeded) => 0,
        Ok(TrialStatus::Pruned) => 1,
        _ => 2,
    }
}

/// Returns the compute the trials spent: the epochs each trial reported, summed. A retried
/// trial counts only the epochs of its last attempt, because a new attempt clears the history.
pub fn num_trial_epochs(trials: &[v1::Trial]) -> usize {
    trials.iter().map(|trial| trial.history.len()).sum()
}

/// Renders the leaderboard and the ensemble summary for people.
pub fn render_text(report: &RunReport) -> String {
    let mut out = String::new();
    let sweep = &report.sweep;
    let counts = sweep.counts.unwrap_or_default();
    let objective = sweep.objective.clone().unwrap_or_default();
    let goal = if objective.goal == Goal::Minimize as i32 {
        "minimize"
    } else {
        "maximize"
    };
    let _ = writeln!(
        out,
        "\nsweep {} ({}) {} in {:.1} s: {} succeeded, {} failed, {} pruned, {} cancelled; \
         {} trial-epochs",
        sweep.name,
        sweep.sweep_id,
        sweep_status_name(sweep.status),
        report.wall_seconds,
        counts.succeeded,
        counts.failed,
        counts.pruned,
        counts.cancelled,
        num_trial_epochs(&report.trials)
    );
    if !sweep.reason.is_empty() {
        let _ = writeln!(out, "reason: {}", sweep.reason);
    }
    let _ = writeln!(out, "objective: {} ({goal})\n", objective.metric);
    out.push_str(&render_trials(
        &leaderboard_order(report),
        &objective.metric,
    ));

    match &report.ensemble {
        Some(ensemble) => render_ensemble(&mut out, ensemble),
        None => out.push_str("\nno ensemble: no trial succeeded\n"),
    }
    out
}

/// Renders trials as a ranked table in the given order.
pub fn render_trials(trials: &[&v1::Trial], objective_metric: &str) -> String {
    let mut rows = vec![vec![
        "rank".to_string(),
        "trial".to_string(),
        objective_metric.to_string(),
        "test_accuracy".to_string(),
        "status".to_string(),
        "epochs".to_string(),
        "duration".to_string(),
        "parameters".to_string(),
    ]];
    for (rank, trial) in trials.iter().enumerate() {
        let status = TrialStatus::try_from(trial.status).unwrap_or(TrialStatus::Unspecified);
        rows.push(vec![
            // Only succeeded trials are ranked: a pruned trial's objective is from an early
            // epoch, so it does not compete with finished ones.
            if status == TrialStatus::Succeeded && trial.objective.is_some() {
                (rank + 1).to_string()
            } else {
                "-".to_string()
            },
            format!("#{}", trial.index),
            trial
                .objective
                .map_or("-".to_string(), |v| format!("{v:.4}")),
            final_metric(trial, "test_accuracy").map_or("-".to_string(), |v| format!("{v:.4}")),
            status_name(status).to_string(),
            trial.history.len().to_string(),
            format!("{:.1} s", duration_seconds(trial)),
            format_params(&trial.params),
        ]);
    }
    table(&rows)
}

/// Renders a confusion matrix with true classes as rows and predicted classes as columns.
fn render_confusion(matrix: &v1::ConfusionMatrix) -> String {
    let num_classes = matrix.num_classes as usize;
    let mut rows = vec![std::iter::once("true \\ predicted".to_string())
        .chain((0..num_classes).map(|c| c.to_string()))
        .collect::<Vec<_>>()];
    for (class, counts) in matrix.counts.chunks(num_classes.max(1)).enumerate() {
        rows.push(
            std::iter::once(class.to_string())
                .chain(counts.iter().map(u64::to_string))
                .collect(),
        );
    }
    format!("\n{} confusion matrix:\n{}", matrix.split, table(&rows))
}

/// Renders one trial: parameters, attempts and metric history.
pub fn render_trial(trial: &v1::Trial) -> String {
    let mut out = String::new();
    let status = TrialStatus::try_from(trial.status).unwrap_or(TrialStatus::Unspecified);
    let _ = writeln!(
        out,
        "trial #{} ({}) of sweep {}: {}",
        trial.index,
        trial.trial_id,
        trial.sweep_id,
        status_name(status)
    );
    if !trial.reason.is_empty() {
        let _ = writeln!(out, "reason: {}", trial.reason);
    }
    let _ = writeln!(out, "parameters: {}", format_params(&trial.params));
    if let Some(objective) = trial.objective {
        let _ = writeln!(out, "objective: {objective:.4}");
    }
    for metric in &trial.final_metrics {
        let _ = writeln!(out, "{}: {:.4}", metric.name, metric.value);
    }
    for matrix in &trial.confusion_matrices {
        out.push_str(&render_confusion(matrix));
    }
    let mut attempts = vec![vec![
        "attempt".to_string(),
        "worker".into(),
        "slot".into(),
        "status".into(),
        "exit".into(),
        "reason".into(),
    ]];
    for attempt in &trial.attempts {
        let status =
            v1::AttemptStatus::try_from(attempt.status).unwrap_or(v1::AttemptStatus::Unspecified);
        attempts.push(vec![
            attempt.number.to_string(),
            attempt.worker_id.clone(),
            attempt.slot.to_string(),
            attempt_status_name(status),
            attempt.exit_code.to_string(),
            attempt.reason.clone(),
        ]);
    }
    out.push('\n');
    out.push_str(&table(&attempts));
    if let Some(tail) = trial
        .attempts
        .iter()
        .rev()
        .map(|a| &a.stderr_tail)
        .find(|t| !t.is_empty())
    {
        let _ = writeln!(
            out,
            "\nstderr of the last failed attempt:\n{}",
            tail.trim_end()
        );
    }
    let names: Vec<String> = trial
        .history
        .first()
        .map(|e| e.metrics.iter().map(|m| m.name.clone()).collect())
        .unwrap_or_default();
    let mut history = vec![std::iter::once("epoch".to_string())
        .chain(names.iter().cloned())
        .collect::<Vec<_>>()];
    for epoch in &trial.history {
        let mut row = vec![epoch.epoch.to_string()];
        for name in &names {
            let value = epoch.metrics.iter().find(|m| &m.name == name);
            row.push(value.map_or("-".to_string(), |m| format!("{:.4}", m.value)));
        }
        history.push(row);
    }
    out.push('\n');
    out.push_str(&table(&history));
    out
}

/// Names an attempt status in lower case, as tables and JSON show it.
pub fn attempt_status_name(status: v1::AttemptStatus) -> String {
    status
        .as_str_name()
        .trim_start_matches("ATTEMPT_STATUS_")
        .to_lowercase()
}

/// Renders sweeps as a table.
pub fn render_sweeps(sweeps: &[v1::Sweep]) -> String {
    let mut rows = vec![vec![
        "sweep".to_string(),
        "name".into(),
        "status".into(),
        "created".into(),
        "succeeded".into(),
        "failed".into(),
        "pruned".into(),
        "cancelled".into(),
        "running".into(),
        "pending".into(),
        "planned".into(),
        "reason".into(),
    ]];
    for sweep in sweeps {
        let counts = sweep.counts.unwrap_or_default();
        rows.push(vec![
            sweep.sweep_id.clone(),
            sweep.name.clone(),
            sweep_status_name(sweep.status).to_string(),
            format_time(sweep.created_at_ms),
            counts.succeeded.to_string(),
            counts.failed.to_string(),
            counts.pruned.to_string(),
            counts.cancelled.to_string(),
            counts.running.to_string(),
            counts.pending.to_string(),
            sweep.num_trials_planned.to_string(),
            sweep.reason.clone(),
        ]);
    }
    table(&rows)
}

/// Renders workers as a table.
pub fn render_workers(workers: &[v1::Worker]) -> String {
    let now = tunefleet_proto::now_ms();
    let mut rows = vec![vec![
        "worker".to_string(),
        "host".into(),
        "status".into(),
        "slots".into(),
        "devices".into(),
        "running".into(),
        "last heartbeat".into(),
        "labels".into(),
    ]];
    for worker in workers {
        let devices: Vec<&str> = worker.slots.iter().map(|s| s.device.as_str()).collect();
        let mut labels: Vec<String> = worker
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        labels.sort();
        rows.push(vec![
            worker.worker_id.clone(),
            worker.hostname.clone(),
            worker_status_name(worker.status),
            worker.slots.len().to_string(),
            devices.join(" "),
            worker.running.len().to_string(),
            format!(
                "{:.1} s ago",
                (now - worker.last_heartbeat_ms).max(0) as f64 / 1000.0
            ),
            labels.join(" "),
        ]);
    }
    table(&rows)
}

/// Names a worker status in lower case.
pub fn worker_status_name(status: i32) -> String {
    let status = v1::WorkerStatus::try_from(status).unwrap_or(v1::WorkerStatus::Unspecified);
    status
        .as_str_name()
        .trim_start_matches("WORKER_STATUS_")
        .to_lowercase()
}

/// Formats a Unix time in milliseconds as an RFC 3339 UTC time to the second.
fn format_time(ms: i64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(time).to_string()
}

pub fn render_ensemble(out: &mut String, ensemble: &v1::EnsembleSummary) {
    let members: Vec<String> = ensemble
        .members
        .iter()
        .map(|m| format!("#{} x{:.2}", m.trial_index, m.weight))
        .collect();
    let _ = writeln!(
        out,
        "\nensemble: {} of {} candidate trials, {} picks selected on validation {}\n  members: {}\n",
        ensemble.members.len(),
        ensemble.num_candidates,
        ensemble.size,
        ensemble.selection_metric,
        members.join(", ")
    );
    let rows = vec![
        vec![
            "".to_string(),
            "val_accuracy".into(),
            "val_loss".into(),
            "test_accuracy".into(),
            "test_loss".into(),
            "val_macro_f1".into(),
            "test_macro_f1".into(),
        ],
        vec![
            format!("best trial #{}", ensemble.best_trial_index),
            format!("{:.4}", ensemble.best_val_accuracy),
            format!("{:.4}", ensemble.best_val_loss),
            format!("{:.4}", ensemble.best_test_accuracy),
            format!("{:.4}", ensemble.best_test_loss),
            format!("{:.4}", ensemble.best_val_macro_f1),
            format!("{:.4}", ensemble.best_test_macro_f1),
        ],
        vec![
            "ensemble".to_string(),
            format!("{:.4}", ensemble.val_accuracy),
            format!("{:.4}", ensemble.val_loss),
            format!("{:.4}", ensemble.test_accuracy),
            format!("{:.4}", ensemble.test_loss),
            format!("{:.4}", ensemble.val_macro_f1),
            format!("{:.4}", ensemble.test_macro_f1),
        ],
    ];
    out.push_str(&table(&rows));
}

/// Lays out rows in left-aligned columns two spaces apart.
fn table(rows: &[Vec<String>]) -> String {
    let num_columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..num_columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, cell)| format!("{cell:<width$}", width = widths[c]))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn json_value(value: &Value) -> serde_json::Value {
    match value {
        Value::Int(i) => json!(i),
        Value::Float(x) => json!(x),
        Value::String(s) => json!(s),
        Value::Bool(b) => json!(b),
    }
}

pub fn trial_json(trial: &v1::Trial) -> serde_json::Value {
    let status = TrialStatus::try_from(trial.status).unwrap_or(TrialStatus::Unspecified);
    let params: serde_json::Map<String, serde_json::Value> = params_from_proto(&trial.params)
        .unwrap_or_default()
        .iter()
        .map(|(name, value)| (name.clone(), json_value(value)))
        .collect();
    json!({
        "trial_id": trial.trial_id,
        "index": trial.index,
        "status": status_name(status),
        "params": params,
        "objective": trial.objective,
        "val_accuracy": last_epoch_metric(trial, "val_accuracy"),
        "val_loss": last_epoch_metric(trial, "val_loss"),
        "test_accuracy": final_metric(trial, "test_accuracy"),
        "test_loss": final_metric(trial, "test_loss"),
        "epochs": trial.history.len(),
        "attempts": trial.attempts.iter().map(attempt_json).collect::<Vec<_>>(),
        "duration_seconds": duration_seconds(trial),
        "reason": trial.reason,
    })
}

/// Returns the final metrics as an object of name to value.
pub fn final_metrics_json(trial: &v1::Trial) -> serde_json::Value {
    let metrics: serde_json::Map<String, serde_json::Value> = trial
        .final_metrics
        .iter()
        .map(|m| (m.name.clone(), json!(m.value)))
        .collect();
    serde_json::Value::Object(metrics)
}

/// Returns the confusion matrices by split, each a list of rows of counts by predicted class.
pub fn confusion_json(trial: &v1::Trial) -> serde_json::Value {
    let matrices: serde_json::Map<String, serde_json::Value> = trial
        .confusion_matrices
        .iter()
        .map(|matrix| {
            let rows: Vec<&[u64]> = matrix
                .counts
                .chunks((matrix.num_classes as usize).max(1))
                .collect();
            (matrix.split.clone(), json!(rows))
        })
        .collect();
    serde_json::Value::Object(matrices)
}

fn attempt_json(attempt: &v1::Attempt) -> serde_json::Value {
    let status =
        v1::AttemptStatus::try_from(attempt.status).unwrap_or(v1::AttemptStatus::Unspecified);
    let status = attempt_status_name(status);
    json!({
        "number": attempt.number,
        "worker_id": attempt.worker_id,
        "slot": attempt.slot,
        "status": status,
        "started_at_ms": attempt.started_at_ms,
        "ended_at_ms": attempt.ended_at_ms,
        "exit_code": attempt.exit_code,
        "reason": attempt.reason,
    })
}

/// Builds the machine-readable result: the sweep, the leaderboard (best first) and the ensemble.
pub fn to_json(report: &RunReport) -> serde_json::Value {
    let leaderboard: Vec<serde_json::Value> = leaderboard_order(report)
        .into_iter()
        .map(trial_json)
        .collect();
    let mut sweep = sweep_json(&report.sweep);
    sweep["wall_seconds"] = json!(report.wall_seconds);
    sweep["num_trial_epochs"] = json!(num_trial_epochs(&report.trials));
    json!({
        "sweep": sweep,
        "leaderboard": leaderboard,
        "ensemble": report.ensemble.as_ref().map(ensemble_json),
    })
}

/// Builds a sweep's JSON: status, objective and trial counts.
pub fn sweep_json(sweep: &v1::Sweep) -> serde_json::Value {
    let counts = sweep.counts.unwrap_or_default();
    let objective = sweep.objective.clone().unwrap_or_default();
    json!({
        "sweep_id": sweep.sweep_id,
        "name": sweep.name,
        "status": sweep_status_name(sweep.status),
        "reason": sweep.reason,
        "objective": {
            "metric": objective.metric,
            "goal": if objective.goal == Goal::Minimize as i32 { "minimize" } else { "maximize" },
        },
        "counts": {
            "pending": counts.pending,
            "running": counts.running,
            "succeeded": counts.succeeded,
            "failed": counts.failed,
            "cancelled": counts.cancelled,
            "pruned": counts.pruned,
        },
        "num_trials_created": sweep.num_trials_created,
        "num_trials_planned": sweep.num_trials_planned,
        "max_concurrent": sweep.max_concurrent,
        "created_at_ms": sweep.created_at_ms,
        "ended_at_ms": sweep.ended_at_ms,
    })
}

/// Builds an ensemble's JSON, with the best single trial beside it.
pub fn ensemble_json(e: &v1::EnsembleSummary) -> serde_json::Value {
    let members: Vec<serde_json::Value> = e
        .members
        .iter()
        .map(|m| json!({"trial_id": m.trial_id, "trial_index": m.trial_index, "count": m.count, "weight": m.weight}))
        .collect();
    json!({
        "sweep_id": e.sweep_id,
        "selection_metric": e.selection_metric,
        "size": e.size,
        "num_candidates": e.num_candidates,
        "members": members,
        "val_accuracy": e.val_accuracy,
        "val_loss": e.val_loss,
        "test_accuracy": e.test_accuracy,
        "test_loss": e.test_loss,
        "best_trial": {
            "trial_id": e.best_trial_id,
            "trial_index": e.best_trial_index,
            "val_accuracy": e.best_val_accuracy,
            "val_loss": e.best_val_loss,
            "test_accuracy": e.best_test_accuracy,
            "test_loss": e.best_test_loss,
            "val_macro_f1": e.best_val_macro_f1,
            "test_macro_f1": e.best_test_macro_f1,
        },
        "val_macro_f1": e.val_macro_f1,
        "test_macro_f1": e.test_macro_f1,
    })
}

/// Builds a trial's per-epoch metric history as JSON.
pub fn history_json(trial: &v1::Trial) -> serde_json::Value {
    let epochs: Vec<serde_json::Value> = trial
        .history
        .iter()
        .map(|epoch| {
            let mut row = serde_json::Map::new();
            row.insert("epoch".to_string(), json!(epoch.epoch));
            for metric in &epoch.metrics {
                row.insert(metric.name.clone(), json!(metric.value));
            }
            serde_json::Value::Object(row)
        })
        .collect();
    json!(epochs)
}

/// Builds a worker's JSON.
pub fn worker_json(worker: &v1::Worker) -> serde_json::Value {
    let slots: Vec<serde_json::Value> = worker
        .slots
        .iter()
        .map(|s| json!({"index": s.index, "device": s.device, "num_threads": s.num_threads}))
        .collect();
    let running: Vec<serde_json::Value> = worker
        .running
        .iter()
        .map(|a| json!({"trial_id": a.trial_id, "attempt": a.attempt}))
        .collect();
    json!({
        "worker_id": worker.worker_id,
        "hostname": worker.hostname,
        "identity": worker.identity,
        "status": worker_status_name(worker.status),
        "version": worker.version,
        "labels": worker.labels,
        "slots": slots,
        "running": running,
        "registered_at_ms": worker.registered_at_ms,
        "last_heartbeat_ms": worker.last_heartbeat_ms,
    })
}

/// Writes a line to stderr, ignoring a closed stderr instead of panicking as `eprintln!` does.
pub fn stderr_line(args: std::fmt::Arguments) {
    let mut stderr = std::io::stderr().lock();
    let _ = stderr
        .write_fmt(args)
        .and_then(|()| stderr.write_all(b"\n"));
}

/// Writes text to stderr without a newline, ignoring a closed stderr.
pub fn stderr_text(args: std::fmt::Arguments) {
    let _ = std::io::stderr().lock().write_fmt(args);
}

/// Writes a line to stdout, ignoring a closed pipe (as in `tunefleet sweep list | head`).
pub fn stdout_line(args: std::fmt::Arguments) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout
        .write_fmt(args)
        .and_then(|()| stdout.write_all(b"\n"));
}

/// Writes text to stdout without a newline, ignoring a closed pipe.
pub fn stdout_text(args: std::fmt::Arguments) {
    let _ = std::io::stdout().lock().write_fmt(args);
}
