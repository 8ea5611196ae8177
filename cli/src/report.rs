//! What `tunefleet run` shows: live progress on stderr, then the leaderboard and the ensemble
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
            self.num_done = counts.succeeded + counts.failed + counts.cancelled;
            self.num_planned = sweep.num_trials_planned;
            if let Some(objective) = &sweep.objective {
                self.objective_metric.clone_from(&objective.metric);
            }
        }
        let kind = EventKind::try_from(event.kind).unwrap_or(EventKind::Unspecified);
        for trial in &event.trials {
            let status = TrialStatus::try_from(trial.status).unwrap_or(TrialStatus::Unspecified);
            match (kind, status) {
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
        eprintln!("{line}");
        self.draw_status();
    }

    /// Clears the status line for good.
    pub fn finish(&mut self) {
        self.clear_status();
    }

    fn clear_status(&mut self) {
        if self.status_shown {
            eprint!("\r\x1b[2K");
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
        eprint!("{line}");
        let _ = std::io::stderr().flush();
        self.status_shown = true;
    }
}

fn is_terminal(status: TrialStatus) -> bool {
    matches!(
        status,
        TrialStatus::Succeeded | TrialStatus::Failed | TrialStatus::Cancelled
    )
}

fn status_name(status: TrialStatus) -> &'static str {
    match status {
        TrialStatus::Unspecified => "unknown",
        TrialStatus::Pending => "pending",
        TrialStatus::Running => "running",
        TrialStatus::Succeeded => "succeeded",
        TrialStatus::Failed => "failed",
        TrialStatus::Cancelled => "cancelled",
    }
}

fn sweep_status_name(status: i32) -> &'static str {
    match SweepStatus::try_from(status).unwrap_or(SweepStatus::Unspecified) {
        SweepStatus::Unspecified => "unknown",
        SweepStatus::Running => "running",
        SweepStatus::Succeeded => "succeeded",
        SweepStatus::Failed => "failed",
        SweepStatus::Cancelled => "cancelled",
    }
}

fn format_params(params: &[v1::Param]) -> String {
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

fn duration_seconds(trial: &v1::Trial) -> f64 {
    if trial.started_at_ms == 0 || trial.ended_at_ms < trial.started_at_ms {
        return 0.0;
    }
    (trial.ended_at_ms - trial.started_at_ms) as f64 / 1000.0
}

fn final_metric(trial: &v1::Trial, name: &str) -> Option<f64> {
    trial
        .final_metrics
        .iter()
        .find(|m| m.name == name)
        .map(|m| m.value)
}

/// Orders trials for the leaderboard: succeeded ones by objective, best first, then the rest
/// by index.
fn leaderboard_order(report: &RunReport) -> Vec<&v1::Trial> {
    let maximize = report
        .sweep
        .objective
        .as_ref()
        .is_none_or(|o| o.goal != Goal::Minimize as i32);
    let mut trials: Vec<&v1::Trial> = report.trials.iter().collect();
    trials.sort_by(|a, b| match (a.objective, b.objective) {
        (Some(x), Some(y)) => {
            let order = if maximize {
                y.total_cmp(&x)
            } else {
                x.total_cmp(&y)
            };
            order.then(a.index.cmp(&b.index))
        }
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => a.index.cmp(&b.index),
    });
    trials
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
        "\nsweep {} ({}) {} in {:.1} s: {} succeeded, {} failed, {} cancelled",
        sweep.name,
        sweep.sweep_id,
        sweep_status_name(sweep.status),
        report.wall_seconds,
        counts.succeeded,
        counts.failed,
        counts.cancelled
    );
    if !sweep.reason.is_empty() {
        let _ = writeln!(out, "reason: {}", sweep.reason);
    }
    let _ = writeln!(out, "objective: {} ({goal})\n", objective.metric);

    let mut rows = vec![vec![
        "rank".to_string(),
        "trial".to_string(),
        objective.metric.clone(),
        "test_accuracy".to_string(),
        "status".to_string(),
        "duration".to_string(),
        "parameters".to_string(),
    ]];
    for (rank, trial) in leaderboard_order(report).into_iter().enumerate() {
        let status = TrialStatus::try_from(trial.status).unwrap_or(TrialStatus::Unspecified);
        rows.push(vec![
            (rank + 1).to_string(),
            format!("#{}", trial.index),
            trial
                .objective
                .map_or("-".to_string(), |v| format!("{v:.4}")),
            final_metric(trial, "test_accuracy").map_or("-".to_string(), |v| format!("{v:.4}")),
            status_name(status).to_string(),
            format!("{:.1} s", duration_seconds(trial)),
            format_params(&trial.params),
        ]);
    }
    out.push_str(&table(&rows));

    match &report.ensemble {
        Some(ensemble) => render_ensemble(&mut out, ensemble),
        None => out.push_str("\nno ensemble: no trial succeeded\n"),
    }
    out
}

fn render_ensemble(out: &mut String, ensemble: &v1::EnsembleSummary) {
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
        ],
        vec![
            format!("best trial #{}", ensemble.best_trial_index),
            format!("{:.4}", ensemble.best_val_accuracy),
            format!("{:.4}", ensemble.best_val_loss),
            format!("{:.4}", ensemble.best_test_accuracy),
            format!("{:.4}", ensemble.best_test_loss),
        ],
        vec![
            "ensemble".to_string(),
            format!("{:.4}", ensemble.val_accuracy),
            format!("{:.4}", ensemble.val_loss),
            format!("{:.4}", ensemble.test_accuracy),
            format!("{:.4}", ensemble.test_loss),
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

fn trial_json(trial: &v1::Trial) -> serde_json::Value {
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
        "test_accuracy": final_metric(trial, "test_accuracy"),
        "test_loss": final_metric(trial, "test_loss"),
        "epochs": trial.history.len(),
        "attempts": trial.attempts.iter().map(attempt_json).collect::<Vec<_>>(),
        "duration_seconds": duration_seconds(trial),
        "reason": trial.reason,
    })
}

fn attempt_json(attempt: &v1::Attempt) -> serde_json::Value {
    let status =
        v1::AttemptStatus::try_from(attempt.status).unwrap_or(v1::AttemptStatus::Unspecified);
    let status = status
        .as_str_name()
        .trim_start_matches("ATTEMPT_STATUS_")
        .to_lowercase();
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
    let sweep = &report.sweep;
    let counts = sweep.counts.unwrap_or_default();
    let objective = sweep.objective.clone().unwrap_or_default();
    let leaderboard: Vec<serde_json::Value> = leaderboard_order(report)
        .into_iter()
        .map(trial_json)
        .collect();
    let ensemble = report.ensemble.as_ref().map(|e| {
        let members: Vec<serde_json::Value> = e
            .members
            .iter()
            .map(|m| json!({"trial_id": m.trial_id, "trial_index": m.trial_index, "count": m.count, "weight": m.weight}))
            .collect();
        json!({
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
            },
        })
    });
    json!({
        "sweep": {
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
            },
            "num_trials_planned": sweep.num_trials_planned,
            "wall_seconds": report.wall_seconds,
        },
        "leaderboard": leaderboard,
        "ensemble": ensemble,
    })
}
