//! `tunefleet run SPEC`: a coordinator and local worker slots in this process, talking over
//! the same loopback gRPC API as a multi-host fleet, driving one sweep to its end.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::oneshot;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tunefleet_coordinator::{Coordinator, CoordinatorConfig};
use tunefleet_proto::v1::sweep_service_client::SweepServiceClient;
use tunefleet_proto::v1::{self, sweep_event::Kind as EventKind, SweepStatus};
use tunefleet_worker::{plan_slots, GpuSelection, SlotConfig, WorkerConfig};

use crate::report::{self, Progress, RunReport};
use crate::{EXIT_CANCELLED, EXIT_FAILED};

/// How long the local worker waits at shutdown for attempts that are still stopping: a trainer
/// gets its stop at the next epoch report or heartbeat (2 s apart) and is then killed.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The sweep spec (TOML); relative paths in it resolve against its directory.
    spec: PathBuf,

    /// Directory of the coordinator's store and artifacts; sweeps accumulate there.
    #[arg(long, default_value = ".tunefleet")]
    data_dir: PathBuf,

    /// CPU slots, that is trials run at once when no GPU is present [default: CPU cores
    /// divided by --threads-per-slot]. Ignored when libtorch finds CUDA devices: then each
    /// device is one slot.
    #[arg(long)]
    slots: Option<u32>,

    /// libtorch intra-op threads per slot.
    #[arg(long, default_value_t = 1)]
    threads_per_slot: u32,

    /// Print the result as JSON on stdout instead of tables.
    #[arg(long)]
    json: bool,
}

/// SIGINT and SIGTERM streams, installed before anything starts so that neither signal can end
/// the process before the sweep is cancelled cleanly.
struct Signals {
    interrupt: Signal,
    terminate: Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())
                .context("failed to install the SIGINT handler")?,
            terminate: signal(SignalKind::terminate())
                .context("failed to install the SIGTERM handler")?,
        })
    }
}

/// Runs the sweep and returns the exit code: 0 succeeded, 1 failed, 130 cancelled.
pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let mut signals = Signals::install()?;
    let (spec_text, base_dir) = load_spec(&args.spec)?;
    if args.threads_per_slot == 0 {
        bail!("invalid --threads-per-slot 0: expected an int >= 1");
    }
    if args.slots == Some(0) {
        bail!("invalid --slots 0: expected an int >= 1");
    }

    let coordinator = Coordinator::open(CoordinatorConfig::new(&args.data_dir))
        .with_context(|| format!("failed to open the store in {}", args.data_dir.display()))?;
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("failed to bind a loopback port for the coordinator")?;
    let url = format!("http://{}", listener.local_addr()?);
    let (coordinator_stop_tx, coordinator_stop_rx) = oneshot::channel::<()>();
    let coordinator_task = tokio::spawn(coordinator.serve(listener, async {
        let _ = coordinator_stop_rx.await;
    }));

    let worker_config = WorkerConfig {
        coordinator_url: url.clone(),
        security: tunefleet_proto::ClientSecurity::default(),
        slots: local_slots(args.slots, args.threads_per_slot)?,
        trainer_command: vec![
            std::env::current_exe()
                .context("failed to find the tunefleet executable")?
                .into(),
            "train-trial".into(),
        ],
        hostname: "localhost".to_string(),
        labels: Default::default(),
        // A sweep can end while the worker is still stopping the trainer of a trial pruned or
        // cancelled at the end. The grace lets the worker confirm that attempt instead of
        // handing it back. Ctrl-C cancels the sweep first, so nothing else is left running.
        shutdown_grace: SHUTDOWN_GRACE,
    };
    let num_slots = worker_config.slots.len();
    let (worker_stop_tx, worker_stop_rx) = oneshot::channel::<()>();
    let worker_task = tokio::spawn(tunefleet_worker::agent::run(worker_config, async {
        let _ = worker_stop_rx.await;
    }));

    let outcome = drive_sweep(&url, &spec_text, &base_dir, num_slots, &mut signals).await;

    let _ = worker_stop_tx.send(());
    match worker_task.await {
        Ok(Err(err)) => tracing::error!(error = %format!("{err:#}"), "worker failed"),
        Err(err) => tracing::error!(error = %err, "worker task panicked"),
        Ok(Ok(())) => {}
    }
    let _ = coordinator_stop_tx.send(());
    let _ = coordinator_task.await;

    let report = outcome?;
    if args.json {
        crate::report::stdout_line(format_args!(
            "{}",
            serde_json::to_string_pretty(&report::to_json(&report))?
        ));
    } else {
        crate::report::stdout_text(format_args!("{}", report::render_text(&report)));
    }
    let status = SweepStatus::try_from(report.sweep.status).unwrap_or(SweepStatus::Unspecified);
    Ok(match status {
        SweepStatus::Succeeded => ExitCode::SUCCESS,
        SweepStatus::Cancelled => {
            crate::report::stderr_line(format_args!("error: sweep cancelled"));
            ExitCode::from(EXIT_CANCELLED)
        }
        _ => {
            crate::report::stderr_line(format_args!(
                "error: sweep failed: {}",
                report.sweep.reason
            ));
            ExitCode::from(EXIT_FAILED)
        }
    })
}

/// Reads and validates the spec here, before any service starts, so that a bad spec or a
/// missing dataset fails at once with one clear message.
fn load_spec(path: &Path) -> anyhow::Result<(String, String)> {
    let (spec, text, base_dir) = crate::client::read_spec(path)?;
    if !spec.task.dataset.exists() {
        bail!(
            "dataset {} not found (task.dataset in {})",
            spec.task.dataset.display(),
            path.display()
        );
    }
    let options = tunefleet_worker::train::DataOptions {
        format: spec.task.format.clone(),
        label_column: spec.task.label_column.clone(),
        image_size: Some(spec.task.image_size),
        normalize: spec
            .task
            .normalize
            .as_ref()
            .map(|n| tunefleet_worker::train::Normalize {
                mean: n.mean.clone(),
                std: n.std.clone(),
            }),
    };
    tunefleet_worker::train::check_dataset(&spec.task.dataset, &options, &spec.task.model)
        .with_context(|| format!("invalid task.dataset in {}", path.display()))?;
    for (key, file) in [
        ("task.pretrained", &spec.task.pretrained),
        ("task.module", &spec.task.module),
    ] {
        if let Some(file) = file.as_ref().filter(|file| !file.is_file()) {
            bail!("{key} {} not found (in {})", file.display(), path.display());
        }
    }
    Ok((text, base_dir))
}

fn local_slots(num_cpu_slots: Option<u32>, num_threads: u32) -> anyhow::Result<Vec<SlotConfig>> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let default_slots = (cores / num_threads).max(1);
    let slots = plan_slots(
        &GpuSelection::All,
        1,
        num_cpu_slots.unwrap_or(default_slots),
        num_threads,
    );
    slots.map_err(|err| anyhow::anyhow!(err))
}

/// Creates the sweep, shows its progress until it ends (cancelling it on Ctrl-C or SIGTERM),
/// and collects the final report.
async fn drive_sweep(
    url: &str,
    spec_text: &str,
    base_dir: &str,
    num_slots: usize,
    signals: &mut Signals,
) -> anyhow::Result<RunReport> {
    let started = Instant::now();
    let mut client = SweepServiceClient::connect(url.to_string())
        .await
        .context("failed to connect to the in-process coordinator")?;
    let request = v1::CreateSweepRequest {
        spec_toml: spec_text.to_string(),
        base_dir: base_dir.to_string(),
    };
    let sweep = client
        .create_sweep(request)
        .await
        .map_err(|status| anyhow::anyhow!("{}", status.message()))?
        .into_inner();
    let sweep_id = sweep.sweep_id.clone();
    crate::report::stderr_line(format_args!(
        "sweep {} ({sweep_id}): up to {} trials on {num_slots} slot(s)",
        sweep.name, sweep.num_trials_planned
    ));

    watch_until_end(&mut client, &sweep_id, signals).await?;

    let sweep = client
        .get_sweep(v1::GetSweepRequest {
            sweep_id: sweep_id.clone(),
        })
        .await?
        .into_inner();
    let trials = client
        .list_trials(v1::ListTrialsRequest {
            sweep_id: sweep_id.clone(),
        })
        .await?
        .into_inner()
        .trials;
    let ensemble = client
        .get_ensemble(v1::GetEnsembleRequest { sweep_id })
        .await
        .ok()
        .map(|r| r.into_inner());
    Ok(RunReport {
        sweep,
        trials,
        ensemble,
        wall_seconds: started.elapsed().as_secs_f64(),
    })
}

async fn watch_until_end(
    client: &mut SweepServiceClient<Channel>,
    sweep_id: &str,
    signals: &mut Signals,
) -> anyhow::Result<()> {
    let mut events = client
        .watch_sweep(v1::WatchSweepRequest {
            sweep_id: sweep_id.to_string(),
        })
        .await?
        .into_inner();
    let mut progress = Progress::new(std::io::stderr().is_terminal());
    let mut cancel_requested = false;
    loop {
        let event = tokio::select! {
            event = events.next() => event,
            _ = signals.interrupt.recv(), if !cancel_requested => {
                cancel_requested = true;
                cancel(client, sweep_id, &mut progress).await?;
                continue;
            }
            _ = signals.terminate.recv(), if !cancel_requested => {
                cancel_requested = true;
                cancel(client, sweep_id, &mut progress).await?;
                continue;
            }
        };
        let Some(event) = event else {
            bail!("the coordinator closed the watch of sweep {sweep_id} before it ended");
        };
        let event = event
            .map_err(|status| anyhow::anyhow!("watching the sweep failed: {}", status.message()))?;
        progress.show(&event);
        let ended = event.kind == EventKind::SweepEnded as i32
            || event
                .sweep
                .as_ref()
                .is_some_and(|s| s.status != SweepStatus::Running as i32)
                && event.kind == EventKind::Snapshot as i32;
        if ended {
            progress.finish();
            return Ok(());
        }
    }
}

async fn cancel(
    client: &mut SweepServiceClient<Channel>,
    sweep_id: &str,
    progress: &mut Progress,
) -> anyhow::Result<()> {
    progress.message("cancelling the sweep: stopping running trials");
    client
        .cancel_sweep(v1::CancelSweepRequest {
            sweep_id: sweep_id.to_string(),
        })
        .await
        .map_err(|status| {
            anyhow::anyhow!("cancelling sweep {sweep_id} failed: {}", status.message())
        })?;
    Ok(())
}
