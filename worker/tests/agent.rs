//! Runs the worker agent against an in-process coordinator on a loopback port. Shell scripts
//! stand in for the trainer, so a test can make it crash, abort, exit with a status or stall.
//!
//! A real training run needs the `tunefleet` binary; `tests/end_to_end.rs` covers that.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::transport::Channel;
use tunefleet_coordinator::{Coordinator, CoordinatorConfig};
use tunefleet_proto::v1::sweep_service_client::SweepServiceClient;
use tunefleet_proto::v1::{self, AttemptStatus, SweepStatus, TrialStatus};
use tunefleet_worker::{SlotConfig, WorkerConfig};

/// The maximum time a test waits for a sweep, a file or a process to reach the expected state.
const WAIT_TIMEOUT: Duration = Duration::from_secs(20);
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// A coordinator and one worker agent with a single CPU slot, both in this process.
struct Fleet {
    dir: TempDir,
    coordinator: Coordinator,
    client: SweepServiceClient<Channel>,
    worker: JoinHandle<anyhow::Result<()>>,
    worker_stop_tx: Option<oneshot::Sender<()>>,
    coordinator_stop_tx: oneshot::Sender<()>,
}

impl Fleet {
    /// Starts a coordinator and an agent whose trainer command is `sh -c SCRIPT`. In the
    /// script, `$1` is the test's temporary directory.
    /// Shutting the agent down stops its running attempts at once.
    async fn start(script: &str) -> Fleet {
        Fleet::start_with(sh(script), Duration::ZERO).await
    }

    async fn start_with(trainer_command: Vec<OsString>, shutdown_grace: Duration) -> Fleet {
        let dir = TempDir::new().unwrap();
        let mut config = CoordinatorConfig::new(dir.path().join("store"));
        // Short heartbeats so that a cancelled attempt is stopped within a fraction of a second.
        config.heartbeat_interval_ms = 100;
        let coordinator = Coordinator::open(config).expect("failed to open the coordinator");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (coordinator_stop_tx, coordinator_stop_rx) = oneshot::channel::<()>();
        tokio::spawn(coordinator.clone().serve(listener, async {
            let _ = coordinator_stop_rx.await;
        }));

        let mut trainer_command = trainer_command;
        if trainer_command
            .first()
            .is_some_and(|program| program == "sh")
        {
            // `sh -c SCRIPT NAME DIR` sets $0 to NAME and $1 to DIR.
            trainer_command.extend(["trainer".into(), dir.path().into()]);
        }
        let worker_config = WorkerConfig {
            coordinator_url: url.clone(),
            security: tunefleet_proto::ClientSecurity::default(),
            slots: vec![SlotConfig {
                index: 0,
                device: "cpu".to_string(),
                num_threads: 1,
            }],
            trainer_command,
            hostname: "agent-test".to_string(),
            labels: HashMap::new(),
            shutdown_grace,
        };
        let (worker_stop_tx, worker_stop_rx) = oneshot::channel::<()>();
        let worker = tokio::spawn(tunefleet_worker::agent::run(worker_config, async {
            let _ = worker_stop_rx.await;
        }));
        let client = SweepServiceClient::connect(url)
            .await
            .expect("failed to connect to the coordinator");
        Fleet {
            dir,
            coordinator,
            client,
            worker,
            worker_stop_tx: Some(worker_stop_tx),
            coordinator_stop_tx,
        }
    }

    /// Creates a grid sweep of one trial per learning rate in `lrs`, a TOML array.
    async fn create_sweep(&self, lrs: &str) -> String {
        let spec = format!(
            "name = \"agent-test\"\n\
             [objective]\nmetric = \"val_accuracy\"\n\
             [search]\nmethod = \"grid\"\n\
             [parameters]\nlr = {lrs}\n\
             [task]\nmodel = \"mlp\"\ndataset = \"unused.npz\"\nepochs = 1\n"
        );
        let base_dir = self.dir.path().display().to_string();
        self.coordinator
            .create_sweep(&spec, &base_dir)
            .await
            .expect("failed to create the sweep")
            .sweep_id
    }

    async fn sweep(&mut self, sweep_id: &str) -> v1::Sweep {
        let request = v1::GetSweepRequest {
            sweep_id: sweep_id.to_string(),
        };
        self.client.get_sweep(request).await.unwrap().into_inner()
    }

    /// Returns the sweep's trials in index order.
    async fn trials(&mut self, sweep_id: &str) -> Vec<v1::Trial> {
        let request = v1::ListTrialsRequest {
            sweep_id: sweep_id.to_string(),
        };
        let mut trials = self
            .client
            .list_trials(request)
            .await
            .unwrap()
            .into_inner()
            .trials;
        trials.sort_by_key(|trial| trial.index);
        trials
    }

    /// Waits until the sweep is no longer running and returns it.
    async fn wait_for_end(&mut self, sweep_id: &str) -> v1::Sweep {
        let deadline = Instant::now() + WAIT_TIMEOUT;
        loop {
            let sweep = self.sweep(sweep_id).await;
            if sweep.status != SweepStatus::Running as i32 {
                return sweep;
            }
            if Instant::now() >= deadline {
                let trials = self.trials(sweep_id).await;
                panic!("sweep still running after {WAIT_TIMEOUT:?}: {sweep:?}\n{trials:#?}");
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Waits until a trial of the sweep has the status and returns it.
    async fn wait_for_trial(&mut self, sweep_id: &str, status: TrialStatus) -> v1::Trial {
        let deadline = Instant::now() + WAIT_TIMEOUT;
        loop {
            let trials = self.trials(sweep_id).await;
            if let Some(trial) = trials.iter().find(|t| t.status == status as i32) {
                return trial.clone();
            }
            if Instant::now() >= deadline {
                panic!("no trial {status:?} after {WAIT_TIMEOUT:?}: {trials:#?}");
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Stops the agent and returns how it ended; the coordinator keeps serving.
    async fn stop_worker(&mut self) -> anyhow::Result<()> {
        if let Some(worker_stop_tx) = self.worker_stop_tx.take() {
            let _ = worker_stop_tx.send(());
        }
        tokio::time::timeout(WAIT_TIMEOUT, &mut self.worker)
            .await
            .expect("the agent did not stop in time")
            .expect("the agent task panicked")
    }

    /// Stops the agent, then the coordinator, and returns how the agent ended.
    async fn stop(mut self) -> anyhow::Result<()> {
        let result = self.stop_worker().await;
        let _ = self.coordinator_stop_tx.send(());
        result
    }
}

fn sh(script: &str) -> Vec<OsString> {
    vec!["sh".into(), "-c".into(), script.into()]
}

/// Runs a one-trial sweep whose trainer runs `script` and returns the ended sweep and trial.
async fn run_one_trial(script: &str) -> (v1::Sweep, v1::Trial) {
    let mut fleet = Fleet::start(script).await;
    let sweep_id = fleet.create_sweep("[0.01]").await;
    let sweep = fleet.wait_for_end(&sweep_id).await;
    let trials = fleet.trials(&sweep_id).await;
    assert_eq!(trials.len(), 1, "{trials:#?}");
    fleet.stop().await.expect("the agent failed");
    (sweep, trials.into_iter().next().unwrap())
}

/// Waits until the file contains a pid that the script wrote, then returns it.
async fn wait_for_pid(path: &Path) -> u32 {
    let deadline = Instant::now() + WAIT_TIMEOUT;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        // The script writes the pid and a newline, so a complete line is a complete pid.
        if let Some(pid) = text.strip_suffix('\n').and_then(|pid| pid.parse().ok()) {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "no pid in {} after {WAIT_TIMEOUT:?}",
            path.display()
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Waits until process `pid` no longer exists; the agent reaps the trainers it stops.
async fn wait_for_exit(pid: u32) {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let deadline = Instant::now() + WAIT_TIMEOUT;
    while proc_dir.exists() {
        assert!(
            Instant::now() < deadline,
            "trainer {pid} still exists after {WAIT_TIMEOUT:?}"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// A trainer that records its pid in `$1/trainer.pid`, then sleeps until it is killed.
const STALLING_TRAINER: &str = "echo $$ > \"$1/trainer.pid\"; exec sleep 60";

#[tokio::test]
async fn sigkill_fails_trial_and_keeps_stderr() {
    let script = "echo 'CUDA out of memory' >&2; kill -KILL $$";
    let (sweep, trial) = run_one_trial(script).await;

    assert_eq!(sweep.status, SweepStatus::Failed as i32, "{sweep:?}");
    assert!(
        sweep.reason.starts_with(
            "no trial succeeded (1 failed); first failure: trainer was killed by signal 9"
        ),
        "{}",
        sweep.reason
    );
    assert_eq!(trial.status, TrialStatus::Failed as i32, "{trial:#?}");
    assert!(trial.reason.contains("signal 9"), "{}", trial.reason);
    assert!(trial.reason.contains("SIGKILL"), "{}", trial.reason);
    assert_eq!(trial.attempts.len(), 1, "{trial:#?}");
    let attempt = &trial.attempts[0];
    assert_eq!(attempt.status, AttemptStatus::Failed as i32, "{attempt:?}");
    assert_eq!(attempt.exit_code, -1, "{attempt:?}");
    assert!(attempt.stderr_tail.contains("out of memory"), "{attempt:?}");
}

#[tokio::test]
async fn sigabrt_fails_trial() {
    // No core file: the shell would write it into the test's working directory.
    let (sweep, trial) = run_one_trial("ulimit -c 0; kill -ABRT $$").await;

    assert_eq!(sweep.status, SweepStatus::Failed as i32, "{sweep:?}");
    assert_eq!(trial.status, TrialStatus::Failed as i32, "{trial:#?}");
    assert!(trial.reason.contains("signal 6"), "{}", trial.reason);
    assert!(trial.reason.contains("SIGABRT"), "{}", trial.reason);
    assert_eq!(trial.attempts[0].exit_code, -1, "{trial:#?}");
}

#[tokio::test]
async fn exit_status_fails_trial() {
    let (sweep, trial) = run_one_trial("echo 'bad input' >&2; exit 7").await;

    assert_eq!(sweep.status, SweepStatus::Failed as i32, "{sweep:?}");
    assert_eq!(trial.status, TrialStatus::Failed as i32, "{trial:#?}");
    assert!(trial.reason.contains("status 7"), "{}", trial.reason);
    let attempt = &trial.attempts[0];
    assert_eq!(attempt.exit_code, 7, "{attempt:?}");
    assert!(attempt.stderr_tail.contains("bad input"), "{attempt:?}");
}

#[tokio::test]
async fn trainer_error_event_is_reason() {
    // One length-delimited TrainerEvent { error: "dataset exploded" }: a length of 18 bytes,
    // then tag 0x1a (field 3, length-delimited), the string's length 16 and its bytes.
    let script = "printf '\\022\\032\\020dataset exploded'; exit 1";
    let (sweep, trial) = run_one_trial(script).await;

    assert_eq!(sweep.status, SweepStatus::Failed as i32, "{sweep:?}");
    assert_eq!(trial.status, TrialStatus::Failed as i32, "{trial:#?}");
    assert_eq!(trial.reason, "dataset exploded");
    assert_eq!(trial.attempts[0].exit_code, 1, "{trial:#?}");
}

#[tokio::test]
async fn missing_trainer_program_fails_trial() {
    let program = "/nonexistent/tunefleet-trainer";
    let mut fleet = Fleet::start_with(vec![program.into()], Duration::ZERO).await;
    let sweep_id = fleet.create_sweep("[0.01]").await;
    let sweep = fleet.wait_for_end(&sweep_id).await;
    let trials = fleet.trials(&sweep_id).await;

    assert_eq!(sweep.status, SweepStatus::Failed as i32, "{sweep:?}");
    let trial = &trials[0];
    assert_eq!(trial.status, TrialStatus::Failed as i32, "{trial:#?}");
    assert!(
        trial.reason.contains("failed to start the trainer"),
        "{}",
        trial.reason
    );
    assert!(trial.reason.contains(program), "{}", trial.reason);
    fleet.stop().await.expect("the agent failed");
}

#[tokio::test]
async fn slot_runs_next_trial_after_crash() {
    let mut fleet = Fleet::start("kill -KILL $$").await;
    let sweep_id = fleet.create_sweep("[0.01, 0.02, 0.03]").await;
    let sweep = fleet.wait_for_end(&sweep_id).await;
    let trials = fleet.trials(&sweep_id).await;

    assert_eq!(sweep.status, SweepStatus::Failed as i32, "{sweep:?}");
    assert_eq!(sweep.reason, "no trial succeeded (3 failed); first failure: trainer was killed by signal 9 (SIGKILL: killed, for example by the kernel's out-of-memory killer)");
    assert_eq!(trials.len(), 3, "{trials:#?}");
    let worker_id = trials[0].attempts[0].worker_id.clone();
    for trial in &trials {
        assert_eq!(trial.status, TrialStatus::Failed as i32, "{trial:#?}");
        assert_eq!(trial.attempts.len(), 1, "{trial:#?}");
        let attempt = &trial.attempts[0];
        assert_eq!(attempt.worker_id, worker_id, "{trial:#?}");
        assert_eq!(attempt.slot, 0, "{trial:#?}");
        assert!(attempt.reason.contains("SIGKILL"), "{trial:#?}");
    }
    assert!(
        !fleet.worker.is_finished(),
        "the agent stopped after the crashes"
    );

    // The same agent still takes work: a new sweep's trial gets an attempt on it too.
    let next_sweep_id = fleet.create_sweep("[0.04]").await;
    fleet.wait_for_end(&next_sweep_id).await;
    let next_trials = fleet.trials(&next_sweep_id).await;
    assert_eq!(next_trials[0].attempts.len(), 1, "{next_trials:#?}");
    assert_eq!(next_trials[0].attempts[0].worker_id, worker_id);
    fleet.stop().await.expect("the agent failed");
}

#[tokio::test]
async fn cancel_stops_running_trainer() {
    let mut fleet = Fleet::start(STALLING_TRAINER).await;
    let sweep_id = fleet.create_sweep("[0.01]").await;
    let pid = wait_for_pid(&fleet.dir.path().join("trainer.pid")).await;
    fleet.wait_for_trial(&sweep_id, TrialStatus::Running).await;

    let request = v1::CancelSweepRequest {
        sweep_id: sweep_id.clone(),
    };
    fleet.client.cancel_sweep(request).await.unwrap();
    wait_for_exit(pid).await;

    let sweep = fleet.sweep(&sweep_id).await;
    assert_eq!(sweep.status, SweepStatus::Cancelled as i32, "{sweep:?}");
    let trials = fleet.trials(&sweep_id).await;
    let trial = &trials[0];
    assert_eq!(trial.status, TrialStatus::Cancelled as i32, "{trial:#?}");
    let attempt = &trial.attempts[0];
    assert_eq!(
        attempt.status,
        AttemptStatus::Cancelled as i32,
        "{attempt:?}"
    );
    assert!(
        !fleet.worker.is_finished(),
        "the agent stopped after the cancel"
    );
    fleet.stop().await.expect("the agent failed");
}

#[tokio::test]
async fn shutdown_hands_back_running_attempt() {
    let mut fleet = Fleet::start(STALLING_TRAINER).await;
    let sweep_id = fleet.create_sweep("[0.01]").await;
    let pid = wait_for_pid(&fleet.dir.path().join("trainer.pid")).await;
    fleet.wait_for_trial(&sweep_id, TrialStatus::Running).await;

    let result = fleet.stop_worker().await;
    assert!(result.is_ok(), "the agent failed: {result:?}");
    wait_for_exit(pid).await;

    let trials = fleet.trials(&sweep_id).await;
    let trial = &trials[0];
    assert_eq!(trial.status, TrialStatus::Pending as i32, "{trial:#?}");
    let attempt = &trial.attempts[0];
    assert_eq!(
        attempt.status,
        AttemptStatus::Cancelled as i32,
        "{attempt:?}"
    );
    let sweep = fleet.sweep(&sweep_id).await;
    assert_eq!(sweep.status, SweepStatus::Running as i32, "{sweep:?}");
    let _ = fleet.coordinator_stop_tx.send(());
}

#[tokio::test]
async fn shutdown_grace_lets_attempt_finish() {
    let script = "echo $$ > \"$1/trainer.pid\"; sleep 1; exit 7";
    let mut fleet = Fleet::start_with(sh(script), WAIT_TIMEOUT).await;
    let sweep_id = fleet.create_sweep("[0.01]").await;
    wait_for_pid(&fleet.dir.path().join("trainer.pid")).await;
    fleet.wait_for_trial(&sweep_id, TrialStatus::Running).await;

    let result = fleet.stop_worker().await;
    assert!(result.is_ok(), "the agent failed: {result:?}");

    // The trainer ran to its own end instead of being stopped and handed back.
    let trials = fleet.trials(&sweep_id).await;
    let trial = &trials[0];
    assert_eq!(trial.status, TrialStatus::Failed as i32, "{trial:#?}");
    assert_eq!(trial.attempts.len(), 1, "{trial:#?}");
    assert_eq!(trial.attempts[0].exit_code, 7, "{trial:#?}");
    let _ = fleet.coordinator_stop_tx.send(());
}
