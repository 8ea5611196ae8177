//! The client verbs: launch, inspect, watch, cancel and resume sweeps on a running coordinator.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use tokio_stream::StreamExt;
use tunefleet_proto::v1::sweep_service_client::SweepServiceClient;
use tunefleet_proto::v1::{self, sweep_event::Kind as EventKind, SweepStatus, TrialStatus};
use tunefleet_proto::{AuthChannel, ClientSecurity};

use tunefleet_coordinator::spec::SweepSpec;

use crate::report::{self, Progress, RunReport};

/// The coordinator address and credentials shared by every client verb.
#[derive(Debug, clap::Args)]
pub struct Connection {
    /// The coordinator's URL, or several separated by commas (https:// with --tls-ca).
    #[arg(
        long,
        env = "TUNEFLEET_COORDINATOR",
        default_value = "http://127.0.0.1:7800",
        global = true
    )]
    coordinator: String,

    /// The CA (PEM) that signed the coordinator's certificate; connects over TLS.
    #[arg(long, env = "TUNEFLEET_TLS_CA", global = true)]
    tls_ca: Option<PathBuf>,

    /// The bearer token of the sweep API. TUNEFLEET_TOKEN or --token-file keep it out of
    /// the process list.
    #[arg(long, env = "TUNEFLEET_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,

    /// A file holding the bearer token; it takes precedence over --token.
    #[arg(long, env = "TUNEFLEET_TOKEN_FILE", global = true)]
    token_file: Option<PathBuf>,
}

impl Connection {
    fn security(&self) -> anyhow::Result<ClientSecurity> {
        let tls = ClientSecurity::tls_from_files(self.tls_ca.as_deref(), None, None)
            .map_err(|err| anyhow::anyhow!(err))?;
        let token = match &self.token_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("failed to read --token-file {}", path.display()))?;
                Some(text.trim().to_string())
            }
            None => self.token.clone(),
        };
        Ok(ClientSecurity { tls, token })
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum SweepCommand {
    /// Create a sweep from a spec and print its id.
    Launch {
        /// The sweep spec (TOML); relative paths in it resolve against its directory and must
        /// exist at the same absolute path on every worker host.
        spec: PathBuf,
    },
    /// List every sweep with its status and trial counts.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one sweep.
    Status {
        sweep_id: String,
        #[arg(long)]
        json: bool,
    },
    /// Show a sweep's progress live until it ends, then its leaderboard and ensemble.
    Watch {
        sweep_id: String,
        #[arg(long)]
        json: bool,
    },
    /// Cancel a sweep: running trials are stopped and end as cancelled.
    Cancel { sweep_id: String },
    /// Run an ended sweep's failed and cancelled trials again; succeeded and pruned trials stay.
    Resume { sweep_id: String },
}

#[derive(Debug, clap::Args)]
pub struct TrialsArgs {
    sweep_id: String,
    /// Only trials in this status: pending, running, succeeded, failed, cancelled or pruned.
    #[arg(long)]
    status: Option<String>,
    /// Order: "objective" (best first) or "index".
    #[arg(long, default_value = "objective")]
    sort: String,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum TrialCommand {
    /// Show a trial's parameters, attempts and metric history.
    Show {
        trial_id: String,
        #[arg(long)]
        json: bool,
    },
}

pub(crate) async fn connect(
    connection: &Connection,
) -> anyhow::Result<SweepServiceClient<AuthChannel>> {
    let security = connection.security()?;
    let channel = security
        .connect(&connection.coordinator)
        .await
        .map_err(|err| anyhow::anyhow!(err))?;
    let client = SweepServiceClient::new(channel);
    Ok(client.max_decoding_message_size(tunefleet_proto::MAX_ARTIFACT_MESSAGE_BYTES))
}

pub(crate) fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", status.message())
}

/// Runs a `sweep` verb.
pub async fn sweep(connection: Connection, command: SweepCommand) -> anyhow::Result<()> {
    let mut client = connect(&connection).await?;
    match command {
        SweepCommand::Launch { spec } => {
            let (_, text, base_dir) = read_spec(&spec)?;
            let request = v1::CreateSweepRequest {
                spec_toml: text,
                base_dir,
            };
            let sweep = client
                .create_sweep(request)
                .await
                .map_err(status_error)?
                .into_inner();
            crate::report::stdout_line(format_args!("{}", sweep.sweep_id));
        }
        SweepCommand::List { json } => {
            let sweeps = client
                .list_sweeps(v1::ListSweepsRequest {})
                .await
                .map_err(status_error)?
                .into_inner()
                .sweeps;
            if json {
                let all: Vec<_> = sweeps.iter().map(report::sweep_json).collect();
                crate::report::stdout_line(format_args!("{}", serde_json::to_string_pretty(&all)?));
            } else {
                crate::report::stdout_text(format_args!("{}", report::render_sweeps(&sweeps)));
            }
        }
        SweepCommand::Status { sweep_id, json } => {
            let sweep = get_sweep(&mut client, &sweep_id).await?;
            if json {
                crate::report::stdout_line(format_args!(
                    "{}",
                    serde_json::to_string_pretty(&report::sweep_json(&sweep))?
                ));
            } else {
                crate::report::stdout_text(format_args!(
                    "{}",
                    report::render_sweeps(std::slice::from_ref(&sweep))
                ));
            }
        }
        SweepCommand::Watch { sweep_id, json } => {
            watch(&mut client, &sweep_id).await?;
            let report = collect_report(&mut client, &sweep_id, 0.0).await?;
            print_report(&report, json)?;
        }
        SweepCommand::Cancel { sweep_id } => {
            let request = v1::CancelSweepRequest { sweep_id };
            let sweep = client
                .cancel_sweep(request)
                .await
                .map_err(status_error)?
                .into_inner();
            crate::report::stdout_line(format_args!(
                "sweep {} {}",
                sweep.sweep_id,
                report::sweep_status_name(sweep.status)
            ));
        }
        SweepCommand::Resume { sweep_id } => {
            let request = v1::ResumeSweepRequest { sweep_id };
            let sweep = client
                .resume_sweep(request)
                .await
                .map_err(status_error)?
                .into_inner();
            let counts = sweep.counts.unwrap_or_default();
            crate::report::stdout_line(format_args!(
                "sweep {} {}: {} trials pending again",
                sweep.sweep_id,
                report::sweep_status_name(sweep.status),
                counts.pending
            ));
        }
    }
    Ok(())
}

/// Reads a spec and validates it locally, returning the parsed spec, its text and its
/// resolved directory.
pub fn read_spec(path: &Path) -> anyhow::Result<(SweepSpec, String, String)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("failed to read spec {}", path.display()))?;
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let base_dir = parent
        .canonicalize()
        .with_context(|| format!("failed to resolve the directory of {}", path.display()))?;
    // The coordinator stores and parses native TOML, so a W&B YAML spec is converted here.
    let text = tunefleet_coordinator::spec::native_spec_text(path, &text)
        .with_context(|| format!("invalid spec {}", path.display()))?;
    let spec = SweepSpec::parse(&text, &base_dir)
        .with_context(|| format!("invalid spec {}", path.display()))?;
    Ok((spec, text, base_dir.display().to_string()))
}

async fn get_sweep(
    client: &mut SweepServiceClient<AuthChannel>,
    sweep_id: &str,
) -> anyhow::Result<v1::Sweep> {
    let request = v1::GetSweepRequest {
        sweep_id: sweep_id.to_string(),
    };
    Ok(client
        .get_sweep(request)
        .await
        .map_err(status_error)?
        .into_inner())
}

/// Shows a sweep's events until it ends.
pub async fn watch(
    client: &mut SweepServiceClient<AuthChannel>,
    sweep_id: &str,
) -> anyhow::Result<()> {
    let request = v1::WatchSweepRequest {
        sweep_id: sweep_id.to_string(),
    };
    let mut events = client
        .watch_sweep(request)
        .await
        .map_err(status_error)?
        .into_inner();
    let mut progress = Progress::new(std::io::stderr().is_terminal());
    while let Some(event) = events.next().await {
        let event = event
            .map_err(|status| anyhow::anyhow!("watching the sweep failed: {}", status.message()))?;
        progress.show(&event);
        let running = event
            .sweep
            .as_ref()
            .is_some_and(|s| s.status == SweepStatus::Running as i32);
        if event.kind == EventKind::SweepEnded as i32
            || (event.kind == EventKind::Snapshot as i32 && !running)
        {
            progress.finish();
            return Ok(());
        }
    }
    bail!("the coordinator closed the watch of sweep {sweep_id} before it ended")
}

/// Fetches the sweep, its trials and its ensemble (none when no trial succeeded).
pub async fn collect_report(
    client: &mut SweepServiceClient<AuthChannel>,
    sweep_id: &str,
    wall_seconds: f64,
) -> anyhow::Result<RunReport> {
    let sweep = get_sweep(client, sweep_id).await?;
    let trials = list_trials(client, sweep_id).await?;
    let request = v1::GetEnsembleRequest {
        sweep_id: sweep_id.to_string(),
    };
    let ensemble = client
        .get_ensemble(request)
        .await
        .ok()
        .map(|r| r.into_inner());
    let wall_seconds = if wall_seconds > 0.0 {
        wall_seconds
    } else {
        sweep_wall_seconds(&sweep)
    };
    Ok(RunReport {
        sweep,
        trials,
        ensemble,
        wall_seconds,
    })
}

fn sweep_wall_seconds(sweep: &v1::Sweep) -> f64 {
    let end = if sweep.ended_at_ms > 0 {
        sweep.ended_at_ms
    } else {
        tunefleet_proto::now_ms()
    };
    (end - sweep.created_at_ms).max(0) as f64 / 1000.0
}

async fn list_trials(
    client: &mut SweepServiceClient<AuthChannel>,
    sweep_id: &str,
) -> anyhow::Result<Vec<v1::Trial>> {
    let request = v1::ListTrialsRequest {
        sweep_id: sweep_id.to_string(),
    };
    Ok(client
        .list_trials(request)
        .await
        .map_err(status_error)?
        .into_inner()
        .trials)
}

/// Prints a report as JSON or as the leaderboard and ensemble tables.
pub fn print_report(report: &RunReport, json: bool) -> anyhow::Result<()> {
    if json {
        crate::report::stdout_line(format_args!(
            "{}",
            serde_json::to_string_pretty(&report::to_json(report))?
        ));
    } else {
        crate::report::stdout_text(format_args!("{}", report::render_text(report)));
    }
    Ok(())
}

fn parse_status(name: &str) -> anyhow::Result<TrialStatus> {
    Ok(match name {
        "pending" => TrialStatus::Pending,
        "running" => TrialStatus::Running,
        "succeeded" => TrialStatus::Succeeded,
        "failed" => TrialStatus::Failed,
        "cancelled" => TrialStatus::Cancelled,
        "pruned" => TrialStatus::Pruned,
        _ => bail!(
            "invalid --status {name:?}: expected pending, running, succeeded, failed, cancelled \
             or pruned"
        ),
    })
}

/// Runs `tunefleet trials SWEEP`.
pub async fn trials(connection: Connection, args: TrialsArgs) -> anyhow::Result<()> {
    let status = args.status.as_deref().map(parse_status).transpose()?;
    if args.sort != "objective" && args.sort != "index" {
        bail!(
            "invalid --sort {:?}: expected \"objective\" or \"index\"",
            args.sort
        );
    }
    let mut client = connect(&connection).await?;
    let mut report = collect_report(&mut client, &args.sweep_id, 0.0).await?;
    if let Some(status) = status {
        report.trials.retain(|t| t.status == status as i32);
    }
    let mut trials = if args.sort == "index" {
        let mut trials: Vec<&v1::Trial> = report.trials.iter().collect();
        trials.sort_by_key(|t| t.index);
        trials
    } else {
        report::leaderboard_order(&report)
    };
    if args.json {
        let all: Vec<_> = trials.drain(..).map(report::trial_json).collect();
        crate::report::stdout_line(format_args!("{}", serde_json::to_string_pretty(&all)?));
    } else {
        let metric = report.sweep.objective.clone().unwrap_or_default().metric;
        crate::report::stdout_text(format_args!("{}", report::render_trials(&trials, &metric)));
    }
    Ok(())
}

/// Runs `tunefleet trial show ID`.
pub async fn trial(connection: Connection, command: TrialCommand) -> anyhow::Result<()> {
    let TrialCommand::Show { trial_id, json } = command;
    let mut client = connect(&connection).await?;
    let trial = client
        .get_trial(v1::GetTrialRequest { trial_id })
        .await
        .map_err(status_error)?
        .into_inner();
    if json {
        let mut value = report::trial_json(&trial);
        value["history"] = report::history_json(&trial);
        value["final_metrics"] = report::final_metrics_json(&trial);
        value["confusion_matrices"] = report::confusion_json(&trial);
        crate::report::stdout_line(format_args!("{}", serde_json::to_string_pretty(&value)?));
    } else {
        crate::report::stdout_text(format_args!("{}", report::render_trial(&trial)));
    }
    Ok(())
}

/// Runs `tunefleet ensemble SWEEP`.
pub async fn ensemble(connection: Connection, sweep_id: String, json: bool) -> anyhow::Result<()> {
    let mut client = connect(&connection).await?;
    let summary = client
        .get_ensemble(v1::GetEnsembleRequest { sweep_id })
        .await
        .map_err(status_error)?
        .into_inner();
    if json {
        crate::report::stdout_line(format_args!(
            "{}",
            serde_json::to_string_pretty(&report::ensemble_json(&summary))?
        ));
    } else {
        let mut out = String::new();
        report::render_ensemble(&mut out, &summary);
        crate::report::stdout_text(format_args!("{out}"));
    }
    Ok(())
}

/// Runs `tunefleet workers`.
pub async fn workers(connection: Connection, json: bool) -> anyhow::Result<()> {
    let mut client = connect(&connection).await?;
    let workers = client
        .list_workers(v1::ListWorkersRequest {})
        .await
        .map_err(status_error)?
        .into_inner()
        .workers;
    if json {
        let all: Vec<_> = workers.iter().map(report::worker_json).collect();
        crate::report::stdout_line(format_args!("{}", serde_json::to_string_pretty(&all)?));
    } else {
        crate::report::stdout_text(format_args!("{}", report::render_workers(&workers)));
    }
    Ok(())
}
