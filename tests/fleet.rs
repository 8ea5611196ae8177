//! Fleet tests with real processes: a `tunefleet coordinator` and several `tunefleet worker`
//! processes on loopback, SIGKILLed mid-sweep, with every trial accounted for at the end.

#[path = "support/fleet.rs"]
mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::{
    assert_all_succeeded_once, assert_succeeded_trials_untouched, assert_sweep_succeeded, binary,
    digits_path, trials, wait_until, Process,
};

use tonic::transport::Channel;
use tunefleet_proto::v1::sweep_service_client::SweepServiceClient;
use tunefleet_proto::v1::worker_service_client::WorkerServiceClient;
use tunefleet_proto::v1::{self, AttemptStatus, Outcome, SweepStatus, TrialStatus};

const LEASE_TTL_MS: &str = "3000";
const HEARTBEAT_INTERVAL_MS: &str = "300";
const MAX_CONCURRENT: u32 = 2;

struct Fleet {
    dir: tempfile::TempDir,
    port: u16,
    coordinator: Option<Process>,
    workers: HashMap<String, Process>,
}

impl Fleet {
    fn new() -> Fleet {
        // Bind a port to learn a free one; the coordinator binds it right after.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        Fleet {
            dir: tempfile::tempdir().unwrap(),
            port,
            coordinator: None,
            workers: HashMap::new(),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn start_coordinator(&mut self) {
        let listen = format!("127.0.0.1:{}", self.port);
        let data_dir = self.dir.path().join("data");
        let args = [
            "coordinator",
            "--listen",
            &listen,
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--lease-ttl-ms",
            LEASE_TTL_MS,
            "--heartbeat-interval-ms",
            HEARTBEAT_INTERVAL_MS,
        ];
        let name = format!("coordinator-{}", self.coordinator.is_some() as u8);
        self.coordinator = Some(Process::spawn(&name, &args, self.dir.path()));
        wait_until(
            "the coordinator serves",
            Duration::from_secs(20),
            || async {
                match SweepServiceClient::connect(self.url()).await {
                    Ok(mut client) => client.list_sweeps(v1::ListSweepsRequest {}).await.is_ok(),
                    Err(_) => false,
                }
            },
        )
        .await;
    }

    fn start_worker(&mut self, hostname: &str) {
        let url = self.url();
        let args = [
            "worker",
            "--coordinator",
            &url,
            "--gpus",
            "none",
            "--cpu-slots",
            "1",
            "--threads-per-slot",
            "1",
            "--grace-period-secs",
            "0",
            "--hostname",
            hostname,
        ];
        let process = Process::spawn(hostname, &args, self.dir.path());
        self.workers.insert(hostname.to_string(), process);
    }

    async fn client(&self) -> SweepServiceClient<Channel> {
        SweepServiceClient::connect(self.url()).await.unwrap()
    }

    fn write_spec(&self, num_trials: usize, epochs: u32) -> PathBuf {
        let lrs: Vec<String> = (0..num_trials)
            .map(|i| format!("{:.4}", 0.005 + 0.001 * i as f64))
            .collect();
        let spec = format!(
            r#"
name = "fleet"
[objective]
metric = "val_accuracy"
[search]
method = "grid"
max_concurrent = {MAX_CONCURRENT}
[parameters]
lr = [{}]
[task]
model = "mlp"
dataset = "{}"
epochs = {epochs}
[ensemble]
size = 3
"#,
            lrs.join(", "),
            digits_path().display()
        );
        let path = self.dir.path().join("fleet.toml");
        std::fs::write(&path, spec).unwrap();
        path
    }

    fn launch(&self, spec: &Path) -> String {
        let output = Command::new(binary())
            .args([
                "sweep",
                "launch",
                spec.to_str().unwrap(),
                "--coordinator",
                &self.url(),
            ])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "sweep launch failed: {stderr}");
        String::from_utf8(output.stdout).unwrap().trim().to_string()
    }
}

/// Runs a client verb of the binary against the fleet and returns its stdout.
fn run_cli(fleet: &Fleet, args: &[&str]) -> String {
    let output = Command::new(binary())
        .args(args)
        .args(["--coordinator", &fleet.url()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "tunefleet {args:?} failed: {stderr}"
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Waits until a trial of the sweep is running and has reported an epoch, and returns it.
async fn running_trial(client: &mut SweepServiceClient<Channel>, sweep_id: &str) -> v1::Trial {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let running = trials(client, sweep_id)
            .await
            .into_iter()
            .find(|t| t.status == TrialStatus::Running as i32 && !t.history.is_empty());
        if let Some(trial) = running {
            return trial;
        }
        assert!(
            Instant::now() < deadline,
            "no trial reported an epoch within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls the sweep until it ends, checking `max_concurrent` at every poll, and returns it.
async fn wait_for_end(fleet: &Fleet, sweep_id: &str, limit: Duration) -> v1::Sweep {
    let deadline = Instant::now() + limit;
    loop {
        // The coordinator may be restarting; a failed poll is retried.
        if let Ok(mut client) = SweepServiceClient::connect(fleet.url()).await {
            let request = v1::GetSweepRequest {
                sweep_id: sweep_id.to_string(),
            };
            if let Ok(response) = client.get_sweep(request).await {
                let sweep = response.into_inner();
                let running = sweep.counts.unwrap_or_default().running;
                assert!(
                    running <= MAX_CONCURRENT,
                    "{running} trials running, more than max_concurrent {MAX_CONCURRENT}"
                );
                if sweep.status != SweepStatus::Running as i32 {
                    return sweep;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "sweep {sweep_id} did not end within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_worker_trial_retried_elsewhere() {
    let mut fleet = Fleet::new();
    fleet.start_coordinator().await;
    for hostname in ["w1", "w2", "w3"] {
        fleet.start_worker(hostname);
    }
    let mut client = fleet.client().await;
    wait_until("three workers registered", Duration::from_secs(20), || {
        let mut client = client.clone();
        async move {
            let workers = client
                .list_workers(v1::ListWorkersRequest {})
                .await
                .unwrap();
            workers.into_inner().workers.len() == 3
        }
    })
    .await;
    let spec = fleet.write_spec(6, 60);
    let sweep_id = fleet.launch(&spec);

    // Wait for a trial that has reported an epoch, then SIGKILL its worker.
    let deadline = Instant::now() + Duration::from_secs(30);
    let victim = loop {
        let running = trials(&mut client, &sweep_id)
            .await
            .into_iter()
            .find(|t| t.status == TrialStatus::Running as i32 && !t.history.is_empty());
        if let Some(trial) = running {
            break trial;
        }
        assert!(
            Instant::now() < deadline,
            "no trial reported an epoch within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let victim_attempt = victim.attempts.last().unwrap().clone();
    let workers = client
        .list_workers(v1::ListWorkersRequest {})
        .await
        .unwrap()
        .into_inner()
        .workers;
    let hostname = workers
        .iter()
        .find(|w| w.worker_id == victim_attempt.worker_id)
        .map(|w| w.hostname.clone())
        .unwrap();
    fleet.workers.get_mut(&hostname).unwrap().kill();

    let sweep = wait_for_end(&fleet, &sweep_id, Duration::from_secs(120)).await;
    assert_sweep_succeeded(&sweep);
    let all = trials(&mut client, &sweep_id).await;
    assert_all_succeeded_once(&all, 6);

    let retried = all.iter().find(|t| t.trial_id == victim.trial_id).unwrap();
    assert_eq!(
        retried.attempts.len(),
        2,
        "attempts of the killed worker's trial"
    );
    assert_eq!(retried.attempts[0].status, AttemptStatus::Lost as i32);
    assert_eq!(retried.attempts[1].status, AttemptStatus::Succeeded as i32);
    assert_ne!(retried.attempts[1].worker_id, victim_attempt.worker_id);

    // A completion from the lost attempt is rejected and changes nothing.
    let mut worker_client = WorkerServiceClient::connect(fleet.url()).await.unwrap();
    let stale = v1::CompleteAttemptRequest {
        attempt: Some(v1::AttemptRef {
            worker_id: victim_attempt.worker_id.clone(),
            trial_id: victim.trial_id.clone(),
            attempt: victim_attempt.number,
        }),
        outcome: Outcome::Failed as i32,
        reason: "late report".to_string(),
        ..Default::default()
    };
    let status = worker_client.complete_attempt(stale).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status}");
    let after = trials(&mut client, &sweep_id).await;
    let unchanged = after
        .iter()
        .find(|t| t.trial_id == victim.trial_id)
        .unwrap();
    assert_eq!(unchanged, retried);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_coordinator_restarts_and_finishes() {
    let mut fleet = Fleet::new();
    fleet.start_coordinator().await;
    fleet.start_worker("w1");
    fleet.start_worker("w2");
    let spec = fleet.write_spec(6, 40);
    let sweep_id = fleet.launch(&spec);
    let client = fleet.client().await;
    wait_until(
        "a trial succeeds and another runs",
        Duration::from_secs(60),
        || {
            let mut client = client.clone();
            let sweep_id = sweep_id.clone();
            async move {
                let all = trials(&mut client, &sweep_id).await;
                let succeeded = all
                    .iter()
                    .any(|t| t.status == TrialStatus::Succeeded as i32);
                let running = all.iter().any(|t| t.status == TrialStatus::Running as i32);
                succeeded && running
            }
        },
    )
    .await;

    fleet.coordinator.as_mut().unwrap().kill();
    fleet.start_coordinator().await;

    let sweep = wait_for_end(&fleet, &sweep_id, Duration::from_secs(120)).await;
    assert_sweep_succeeded(&sweep);
    assert_eq!(sweep.num_trials_created, 6);
    let mut client = fleet.client().await;
    let all = trials(&mut client, &sweep_id).await;
    assert_all_succeeded_once(&all, 6);
    let ensemble = client
        .get_ensemble(v1::GetEnsembleRequest { sweep_id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ensemble.num_candidates, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_then_resume_never_reruns_success() {
    let mut fleet = Fleet::new();
    fleet.start_coordinator().await;
    fleet.start_worker("w1");
    let spec = fleet.write_spec(3, 200);
    let sweep_id = fleet.launch(&spec);
    let mut client = fleet.client().await;
    wait_until("a trial succeeds", Duration::from_secs(60), || {
        let mut client = client.clone();
        let sweep_id = sweep_id.clone();
        async move {
            let all = trials(&mut client, &sweep_id).await;
            all.iter()
                .any(|t| t.status == TrialStatus::Succeeded as i32)
        }
    })
    .await;
    running_trial(&mut client, &sweep_id).await;

    let output = run_cli(&fleet, &["sweep", "cancel", &sweep_id]);
    assert!(output.contains("cancelled"), "{output}");
    let before_resume = trials(&mut client, &sweep_id).await;
    // The running trial may have finished just before the cancel; nothing is left running.
    let ended = [TrialStatus::Succeeded as i32, TrialStatus::Cancelled as i32];
    for trial in &before_resume {
        assert!(
            ended.contains(&trial.status),
            "trial {} is {} after cancel",
            trial.index,
            trial.status
        );
    }
    // The worker stops the trainer by its next heartbeat and no longer has a lease on the attempt.
    wait_until("the worker runs nothing", Duration::from_secs(5), || {
        let mut client = client.clone();
        async move {
            let workers = client
                .list_workers(v1::ListWorkersRequest {})
                .await
                .unwrap();
            workers
                .into_inner()
                .workers
                .iter()
                .all(|w| w.running.is_empty())
        }
    })
    .await;

    let output = run_cli(&fleet, &["sweep", "resume", &sweep_id]);
    assert!(output.contains("running"), "{output}");
    let sweep = wait_for_end(&fleet, &sweep_id, Duration::from_secs(120)).await;
    assert_sweep_succeeded(&sweep);
    let after = trials(&mut client, &sweep_id).await;
    assert_all_succeeded_once(&after, 3);
    assert_succeeded_trials_untouched(&before_resume, &after);
    for earlier in before_resume
        .iter()
        .filter(|t| t.status == TrialStatus::Cancelled as i32)
    {
        let now = after
            .iter()
            .find(|t| t.trial_id == earlier.trial_id)
            .unwrap();
        // On a loaded machine a lease can also expire, which adds a lost attempt.
        assert!(
            now.attempts.len() >= 2,
            "attempts of resumed trial {}",
            now.index
        );
        assert_eq!(now.attempts[0].status, AttemptStatus::Cancelled as i32);
    }

    let listed = run_cli(
        &fleet,
        &["trials", &sweep_id, "--status", "succeeded", "--json"],
    );
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_worker_hands_back_trial() {
    let mut fleet = Fleet::new();
    fleet.start_coordinator().await;
    fleet.start_worker("w1");
    let spec = fleet.write_spec(2, 60);
    let sweep_id = fleet.launch(&spec);
    let mut client = fleet.client().await;
    let handed_back = running_trial(&mut client, &sweep_id).await;

    let status = fleet
        .workers
        .get_mut("w1")
        .unwrap()
        .signal_and_wait("TERM", Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "worker exit status");
    let after_stop = trials(&mut client, &sweep_id).await;
    let pending = after_stop
        .iter()
        .find(|t| t.trial_id == handed_back.trial_id)
        .unwrap();
    assert_eq!(pending.status, TrialStatus::Pending as i32);

    fleet.start_worker("w2");
    let sweep = wait_for_end(&fleet, &sweep_id, Duration::from_secs(120)).await;
    assert_sweep_succeeded(&sweep);
    let all = trials(&mut client, &sweep_id).await;
    assert_all_succeeded_once(&all, 2);
    let retried = all
        .iter()
        .find(|t| t.trial_id == handed_back.trial_id)
        .unwrap();
    assert_eq!(retried.attempts[0].status, AttemptStatus::Cancelled as i32);
    assert_eq!(retried.attempts[0].reason, "the worker is shutting down");
}
