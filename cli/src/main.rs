//! The `tunefleet` command.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

mod certs;
mod client;
mod doctor;
mod export;
mod report;
mod run;
mod serve;

/// Exit code for a sweep that ended failed, and for a service that failed while running.
const EXIT_FAILED: u8 = 1;
/// Exit code for invalid input: a bad spec, flag or config file, or a missing file.
const EXIT_INVALID: u8 = 2;
/// Exit code for a sweep cancelled by Ctrl-C or SIGTERM (128 + SIGINT, as shells report it).
const EXIT_CANCELLED: u8 = 130;

#[derive(Debug, Parser)]
#[command(
    name = "tunefleet",
    version,
    about = "Distributed hyperparameter sweeps on libtorch, ending in an ensemble"
)]
struct Cli {
    /// Log filter for logs on stderr, in RUST_LOG syntax (for example "info" or
    /// "tunefleet_coordinator=debug") [default: "warn", and "info" for the services].
    #[arg(long, global = true, env = "TUNEFLEET_LOG")]
    log: Option<String>,

    /// Format of the logs on stderr: "text" for people, or "json" for one JSON object a line
    /// with the message and the event's fields as top-level keys.
    #[arg(
        long,
        global = true,
        env = "TUNEFLEET_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

/// The format of the logs on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a sweep on this machine: an in-process coordinator and local worker slots.
    Run(run::RunArgs),
    /// Serve a coordinator for a fleet of workers.
    Coordinator(serve::CoordinatorArgs),
    /// Run a worker agent that trains trials from a coordinator.
    Worker(serve::WorkerArgs),
    /// Launch, list, inspect, watch, cancel or resume sweeps on a coordinator.
    Sweep {
        #[command(flatten)]
        connection: client::Connection,
        #[command(subcommand)]
        command: client::SweepCommand,
    },
    /// List a sweep's trials.
    Trials {
        #[command(flatten)]
        connection: client::Connection,
        #[command(flatten)]
        args: client::TrialsArgs,
    },
    /// Inspect one trial.
    Trial {
        #[command(flatten)]
        connection: client::Connection,
        #[command(subcommand)]
        command: client::TrialCommand,
    },
    /// Write the weights of a sweep's best trial and ensemble members with a manifest.
    Export {
        #[command(flatten)]
        connection: client::Connection,
        #[command(flatten)]
        args: export::ExportArgs,
    },
    /// Show a sweep's ensemble beside its best trial.
    Ensemble {
        #[command(flatten)]
        connection: client::Connection,
        sweep_id: String,
        #[arg(long)]
        json: bool,
    },
    /// List the workers registered with a coordinator.
    Workers {
        #[command(flatten)]
        connection: client::Connection,
        #[arg(long)]
        json: bool,
    },
    /// Check this host: libtorch, CUDA, NVML, the coordinator and TLS certificates.
    Doctor(doctor::DoctorArgs),
    /// Generate certificates and tokens for a fleet with TLS, mutual TLS and tokens.
    Certs {
        #[command(subcommand)]
        command: certs::CertsCommand,
    },
    /// Train one attempt, reading the request on stdin (started by workers, not by people).
    #[command(hide = true)]
    TrainTrial,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::TrainTrial = cli.command {
        // No runtime and no log subscriber: the trainer's stdout carries its protocol.
        return ExitCode::from(tunefleet_worker::trainer_process::run() as u8);
    }
    let is_service = matches!(cli.command, Command::Coordinator(_) | Command::Worker(_));
    let default_filter = if is_service { "info" } else { "warn" };
    let filter_text = cli
        .log
        .clone()
        .unwrap_or_else(|| default_filter.to_string());
    let filter = EnvFilter::try_new(&filter_text).unwrap_or_else(|err| {
        crate::report::stderr_line(format_args!(
            "warning: invalid --log filter {filter_text:?} ({err}); using {default_filter:?}"
        ));
        EnvFilter::new(default_filter)
    });
    match cli.log_format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
    }

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            crate::report::stderr_line(format_args!(
                "error: failed to start the async runtime: {err}"
            ));
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let result = runtime.block_on(dispatch(cli.command));
    match result {
        Ok(code) => code,
        Err(err) => {
            crate::report::stderr_line(format_args!("error: {err:#}"));
            if is_service && err.downcast_ref::<serve::ConfigError>().is_none() {
                ExitCode::from(EXIT_FAILED)
            } else {
                ExitCode::from(EXIT_INVALID)
            }
        }
    }
}

async fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run(args) => return run::run(args).await,
        Command::Coordinator(args) => serve::run_coordinator(args).await?,
        Command::Worker(args) => serve::run_worker(args).await?,
        Command::Sweep {
            connection,
            command,
        } => client::sweep(connection, command).await?,
        Command::Trials { connection, args } => client::trials(connection, args).await?,
        Command::Trial {
            connection,
            command,
        } => client::trial(connection, command).await?,
        Command::Ensemble {
            connection,
            sweep_id,
            json,
        } => client::ensemble(connection, sweep_id, json).await?,
        Command::Workers { connection, json } => client::workers(connection, json).await?,
        Command::Doctor(args) => return doctor::run(args).await,
        Command::Certs { command } => certs::certs(command)?,
        Command::Export { connection, args } => export::export(connection, args).await?,
        Command::TrainTrial => unreachable!("handled before the runtime starts"),
    }
    Ok(ExitCode::SUCCESS)
}
