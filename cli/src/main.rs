//! The `tunefleet` command.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

mod report;
mod run;

/// Exit code for a sweep that ended failed.
const EXIT_SWEEP_FAILED: u8 = 1;
/// Exit code for invalid input or an error before or around the sweep.
const EXIT_ERROR: u8 = 2;
/// Exit code for a sweep cancelled by Ctrl-C or SIGTERM (128 + SIGINT, as shells report it).
const EXIT_CANCELLED: u8 = 130;

#[derive(Debug, Parser)]
#[command(
    name = "tunefleet",
    version,
    about = "Distributed hyperparameter sweeps on libtorch, ending in an ensemble"
)]
struct Cli {
    /// Log filter for the services' logs on stderr, in RUST_LOG syntax (for example "info" or
    /// "tunefleet_coordinator=debug").
    #[arg(long, global = true, env = "TUNEFLEET_LOG", default_value = "warn")]
    log: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a sweep on this machine: an in-process coordinator and local worker slots.
    Run(run::RunArgs),
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
    let filter = EnvFilter::try_new(&cli.log).unwrap_or_else(|err| {
        eprintln!(
            "warning: invalid --log filter {:?} ({err}); using \"warn\"",
            cli.log
        );
        EnvFilter::new("warn")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: failed to start the async runtime: {err}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    let result = match cli.command {
        Command::Run(args) => runtime.block_on(run::run(args)),
        Command::TrainTrial => unreachable!("handled above"),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}
