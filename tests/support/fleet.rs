//! Helpers shared by the tests that run `tunefleet` processes: child processes that are
//! killed when a test ends, bounded waits, and checks on a finished sweep.

#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use tunefleet_proto::v1::sweep_service_client::SweepServiceClient;
use tunefleet_proto::v1::{self, AttemptStatus, TrialStatus};

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_tunefleet")
}

pub fn digits_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/data/digits.npz")
}

/// A child process that is SIGKILLed when the test ends, however it ends.
pub struct Process {
    child: Child,
    name: String,
}

impl Process {
    pub fn spawn(name: &str, args: &[&str], log_dir: &Path) -> Process {
        let log = File::create(log_dir.join(format!("{name}.log"))).unwrap();
        let child = Command::new(binary())
            .args(args)
            .env("TUNEFLEET_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|err| panic!("failed to start {name}: {err}"));
        Process {
            child,
            name: name.to_string(),
        }
    }

    /// Sends a signal by name (such as "TERM") and waits for the process to exit.
    pub fn signal_and_wait(&mut self, signal: &str, limit: Duration) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -{signal} {pid} failed");
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {limit:?} of SIG{signal}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            eprintln!("stopping {}", self.name);
            self.kill();
        }
    }
}

pub async fn wait_until<F, Fut>(what: &str, limit: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !condition().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Lists a sweep's trials.
pub async fn trials(client: &mut SweepServiceClient<Channel>, sweep_id: &str) -> Vec<v1::Trial> {
    let request = v1::ListTrialsRequest {
        sweep_id: sweep_id.to_string(),
    };
    client
        .list_trials(request)
        .await
        .unwrap()
        .into_inner()
        .trials
}

/// Checks that every trial ended exactly once, succeeded, with exactly one succeeded attempt.
pub fn assert_all_succeeded_once(trials: &[v1::Trial], num_planned: usize) {
    assert_eq!(trials.len(), num_planned, "trials created");
    let mut indexes: Vec<u32> = trials.iter().map(|t| t.index).collect();
    indexes.sort();
    indexes.dedup();
    assert_eq!(
        indexes.len(),
        num_planned,
        "a trial index was created twice"
    );
    for trial in trials {
        assert_eq!(
            trial.status,
            TrialStatus::Succeeded as i32,
            "trial {} ended {:?}: {}",
            trial.index,
            trial.status,
            trial.reason
        );
        let succeeded = trial
            .attempts
            .iter()
            .filter(|a| a.status == AttemptStatus::Succeeded as i32)
            .count();
        assert_eq!(
            succeeded, 1,
            "trial {} has {succeeded} succeeded attempts",
            trial.index
        );
        let running = trial
            .attempts
            .iter()
            .filter(|a| a.status == AttemptStatus::Running as i32)
            .count();
        assert_eq!(
            running, 0,
            "trial {} still has a running attempt",
            trial.index
        );
    }
}

/// Checks that a sweep ended succeeded, showing its reason otherwise.
pub fn assert_sweep_succeeded(sweep: &v1::Sweep) {
    let status = tunefleet_proto::v1::SweepStatus::Succeeded as i32;
    assert_eq!(sweep.status, status, "sweep ended: {}", sweep.reason);
}

/// Checks that every trial that had succeeded in `before` kept its result and ran only once.
pub fn assert_succeeded_trials_untouched(before: &[v1::Trial], after: &[v1::Trial]) {
    let succeeded = TrialStatus::Succeeded as i32;
    for earlier in before.iter().filter(|t| t.status == succeeded) {
        let now = after
            .iter()
            .find(|t| t.trial_id == earlier.trial_id)
            .unwrap();
        assert_eq!(
            now.attempts.len(),
            1,
            "succeeded trial {} ran again",
            now.index
        );
        assert_eq!(
            now.objective, earlier.objective,
            "trial {} changed",
            now.index
        );
    }
}
