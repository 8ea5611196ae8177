//! Coordinators sharing a real etcd: the leader is SIGKILLed mid-sweep, etcd itself is stopped
//! and restarted, and a cluster member is lost. Every sweep still completes with each trial in
//! one terminal state.

#[path = "support/etcd.rs"]
mod etcd;
#[path = "support/fleet.rs"]
mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use etcd::{EtcdCluster, EtcdServer};
use support::{
    assert_all_succeeded_once, assert_succeeded_trials_untouched, assert_sweep_succeeded, binary,
    digits_path, trials, wait_until, Process,
};
use tonic::transport::Channel;
use tunefleet_proto::v1::sweep_service_client::SweepServiceClient;
use tunefleet_proto::v1::{self, SweepStatus, TrialStatus};

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn store_url(endpoints: &[String]) -> String {
    let hosts: Vec<&str> = endpoints
        .iter()
        .map(|e| e.trim_start_matches("http://"))
        .collect();
    format!("etcd://{}/tunefleet-test", hosts.join(","))
}

struct EtcdFleet {
    dir: tempfile::TempDir,
    store: String,
    ports: Vec<u16>,
    coordinators: Vec<Process>,
    workers: Vec<Process>,
}

impl EtcdFleet {
    fn new(endpoints: &[String], num_coordinators: usize) -> EtcdFleet {
        EtcdFleet {
            dir: tempfile::tempdir().unwrap(),
            store: store_url(endpoints),
            ports: (0..num_coordinators).map(|_| free_port()).collect(),
            coordinators: Vec::new(),
            workers: Vec::new(),
        }
    }

    fn urls(&self) -> String {
        let urls: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect();
        urls.join(",")
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    fn start_coordinator(&mut self, index: usize) {
        let listen = format!("127.0.0.1:{}", self.ports[index]);
        let data_dir = self.dir.path().join(format!("c{index}"));
        let artifacts = format!("file://{}", self.dir.path().join("artifacts").display());
        let args = [
            "coordinator",
            "--listen",
            &listen,
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--store",
            &self.store,
            "--artifacts",
            &artifacts,
            "--lease-ttl-ms",
            "5000",
            "--heartbeat-interval-ms",
            "300",
        ];
        let name = format!("c{index}");
        self.coordinators
            .push(Process::spawn(&name, &args, self.dir.path()));
    }

    async fn wait_for_leader(&self, index: usize, limit: Duration) {
        let name = format!("c{index}");
        wait_until(&format!("{name} becomes the leader"), limit, || async {
            self.log(&name).contains("became the leader")
        })
        .await;
    }

    fn start_worker(&mut self, hostname: &str) {
        let urls = self.urls();
        let args = [
            "worker",
            "--coordinator",
            &urls,
            "--gpus",
            "none",
            "--cpu-slots",
            "1",
            "--grace-period-secs",
            "0",
            "--hostname",
            hostname,
        ];
        self.workers
            .push(Process::spawn(hostname, &args, self.dir.path()));
    }

    fn launch(&self, num_trials: usize, epochs: u32) -> String {
        let lrs: Vec<String> = (0..num_trials)
            .map(|i| format!("{:.4}", 0.005 + 0.001 * i as f64))
            .collect();
        let spec = format!(
            "name = \"etcd-fleet\"\n[objective]\nmetric = \"val_accuracy\"\n\
             [search]\nmethod = \"grid\"\nmax_concurrent = 2\n\
             [parameters]\nlr = [{}]\n\
             [task]\nmodel = \"mlp\"\ndataset = \"{}\"\nepochs = {epochs}\n[ensemble]\nsize = 3\n",
            lrs.join(", "),
            digits_path().display()
        );
        let path = self.dir.path().join("spec.toml");
        std::fs::write(&path, spec).unwrap();
        launch_with_retries(&path, &self.urls())
    }

    async fn client(&self) -> SweepServiceClient<Channel> {
        let channel = tunefleet_proto::connect_coordinator(&self.urls(), None).await;
        SweepServiceClient::new(channel.unwrap())
    }
}

/// Launches a sweep, retrying while no coordinator leads yet.
fn launch_with_retries(spec: &Path, urls: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let output = Command::new(binary())
            .args([
                "sweep",
                "launch",
                spec.to_str().unwrap(),
                "--coordinator",
                urls,
            ])
            .output()
            .unwrap();
        if output.status.success() {
            return String::from_utf8(output.stdout).unwrap().trim().to_string();
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            Instant::now() < deadline,
            "sweep launch kept failing: {stderr}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Polls until the sweep ends (retrying while the leader changes) and returns it.
async fn wait_for_end(
    client: &mut SweepServiceClient<Channel>,
    sweep_id: &str,
    limit: Duration,
) -> v1::Sweep {
    let deadline = Instant::now() + limit;
    loop {
        let request = v1::GetSweepRequest {
            sweep_id: sweep_id.to_string(),
        };
        if let Ok(response) = client.get_sweep(request).await {
            let sweep = response.into_inner();
            let running = sweep.counts.unwrap_or_default().running;
            assert!(
                running <= 2,
                "{running} trials running, more than max_concurrent 2"
            );
            if sweep.status != SweepStatus::Running as i32 {
                return sweep;
            }
        }
        assert!(
            Instant::now() < deadline,
            "sweep {sweep_id} did not end within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_for_progress(client: &SweepServiceClient<Channel>, sweep_id: &str) {
    wait_until(
        "a trial succeeds and another runs",
        Duration::from_secs(60),
        || {
            let mut client = client.clone();
            let sweep_id = sweep_id.to_string();
            async move {
                let request = v1::ListTrialsRequest { sweep_id };
                let Ok(response) = client.list_trials(request).await else {
                    return false;
                };
                let all = response.into_inner().trials;
                let succeeded = all
                    .iter()
                    .any(|t| t.status == TrialStatus::Succeeded as i32);
                let running = all.iter().any(|t| t.status == TrialStatus::Running as i32);
                succeeded && running
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_mid_sweep_fails_over() {
    let etcd = EtcdServer::start();
    let mut fleet = EtcdFleet::new(&[etcd.endpoint()], 2);
    fleet.start_coordinator(0);
    fleet.wait_for_leader(0, Duration::from_secs(20)).await;
    fleet.start_coordinator(1);
    fleet.start_worker("w1");
    fleet.start_worker("w2");
    let sweep_id = fleet.launch(6, 40);
    let client = fleet.client().await;
    wait_for_progress(&client, &sweep_id).await;

    fleet.coordinators[0].kill();
    let killed_at = Instant::now();
    fleet.wait_for_leader(1, Duration::from_secs(20)).await;
    let failover = killed_at.elapsed();
    eprintln!("failover: the second coordinator led {failover:?} after the leader was killed");
    assert!(
        failover < Duration::from_secs(10),
        "failover took {failover:?}"
    );

    // Talk to the survivor alone: a balanced channel can still pick the dead address once.
    let survivor = format!("http://127.0.0.1:{}", fleet.ports[1]);
    let channel = tunefleet_proto::connect_coordinator(&survivor, None)
        .await
        .unwrap();
    let mut client = SweepServiceClient::new(channel);
    let sweep = wait_for_end(&mut client, &sweep_id, Duration::from_secs(120)).await;
    assert_sweep_succeeded(&sweep);
    let all = trials(&mut client, &sweep_id).await;
    assert_all_succeeded_once(&all, 6);
    let request = v1::GetEnsembleRequest { sweep_id };
    let ensemble = client.get_ensemble(request).await.unwrap().into_inner();
    assert_eq!(
        ensemble.num_candidates, 6,
        "trials whose predictions the new leader read"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_restart_mid_sweep_loses_nothing() {
    let mut etcd = EtcdServer::start();
    let mut fleet = EtcdFleet::new(&[etcd.endpoint()], 1);
    fleet.start_coordinator(0);
    fleet.wait_for_leader(0, Duration::from_secs(20)).await;
    fleet.start_worker("w1");
    let sweep_id = fleet.launch(4, 40);
    let mut client = fleet.client().await;
    wait_for_progress(&client, &sweep_id).await;
    let before = trials(&mut client, &sweep_id).await;

    etcd.stop();
    tokio::time::sleep(Duration::from_secs(2)).await;
    etcd.restart();

    let sweep = wait_for_end(&mut client, &sweep_id, Duration::from_secs(120)).await;
    assert_sweep_succeeded(&sweep);
    let after = trials(&mut client, &sweep_id).await;
    assert_all_succeeded_once(&after, 4);
    assert_succeeded_trials_untouched(&before, &after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_member_lost_mid_sweep() {
    let mut cluster = EtcdCluster::start(3);
    let mut fleet = EtcdFleet::new(&cluster.endpoints(), 1);
    fleet.start_coordinator(0);
    fleet.wait_for_leader(0, Duration::from_secs(20)).await;
    fleet.start_worker("w1");
    let sweep_id = fleet.launch(4, 40);
    let mut client = fleet.client().await;
    wait_for_progress(&client, &sweep_id).await;

    cluster.kill_member(0);

    let sweep = wait_for_end(&mut client, &sweep_id, Duration::from_secs(120)).await;
    assert_sweep_succeeded(&sweep);
    let all = trials(&mut client, &sweep_id).await;
    assert_all_succeeded_once(&all, 4);
}
