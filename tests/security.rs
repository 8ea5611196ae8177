//! Security tests on loopback with certificates from `tunefleet certs init`. They cover TLS,
//! mutual TLS for the worker API, bearer tokens and their roles for the sweep API, worker
//! identities bound to their attempts, message size limits and the non-loopback start check.
//! The last runs one sweep end to end through the real binaries with all of them on.

#[path = "support/etcd.rs"]
mod etcd;
#[path = "support/fleet.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use etcd::EtcdServer;
use support::{assert_all_succeeded_once, binary, digits_path, wait_until, Process};
use tokio::sync::oneshot;
use tonic::transport::{Channel, ClientTlsConfig};
use tonic::Code;
use tunefleet_coordinator::security::{ServerSecurity, ServerTls, TokenSet};
use tunefleet_coordinator::{Coordinator, CoordinatorConfig};
use tunefleet_proto::v1::sweep_service_client::SweepServiceClient;
use tunefleet_proto::v1::worker_service_client::WorkerServiceClient;
use tunefleet_proto::v1::{self, SweepStatus};
use tunefleet_proto::{AuthChannel, ClientSecurity};

/// Runs `tunefleet certs init` into `out`.
fn certs_init(out: &Path, num_workers: u32) {
    let output = Command::new(binary())
        .args(["certs", "init", "--out", out.to_str().unwrap()])
        .args(["--workers", &num_workers.to_string()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "certs init failed: {stderr}");
}

/// Certificates shared by the in-process tests, made once per test binary because each run of
/// the binary loads libtorch: `certs/` from the fleet CA, with worker-2 from `certs add-worker`,
/// and `other/` from an unrelated CA.
/// NOTE: a static is never dropped, so this directory stays in the temporary directory.
fn shared_certs() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        certs_init(&dir.path().join("certs"), 1);
        add_worker(&dir.path().join("certs"), "worker-2");
        certs_init(&dir.path().join("other"), 1);
        dir
    });
    dir.path()
}

/// Runs `tunefleet certs add-worker` in `dir`.
fn add_worker(dir: &Path, name: &str) {
    let output = Command::new(binary())
        .args(["certs", "add-worker", "--dir", dir.to_str().unwrap(), name])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "certs add-worker failed: {stderr}");
}

fn read_token(certs: &Path, name: &str) -> String {
    std::fs::read_to_string(certs.join(format!("{name}.token"))).unwrap()
}

fn grid_spec(dir: &Path, num_trials: usize, epochs: u32) -> String {
    let lrs: Vec<String> = (0..num_trials)
        .map(|i| format!("{:.3}", 0.01 + 0.005 * i as f64))
        .collect();
    let spec = format!(
        r#"
name = "secured"
[objective]
metric = "val_accuracy"
[search]
method = "grid"
max_concurrent = 2
[parameters]
lr = [{}]
[task]
model = "mlp"
dataset = "{}"
epochs = {epochs}
[ensemble]
size = 2
"#,
        lrs.join(", "),
        digits_path().display()
    );
    std::fs::write(dir.join("spec.toml"), &spec).unwrap();
    spec
}

/// An in-process coordinator with TLS, mutual TLS for workers and tokens, on 127.0.0.1.
struct Secured {
    dir: tempfile::TempDir,
    url: String,
    stop_tx: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
}

impl Secured {
    async fn start() -> Secured {
        let dir = tempfile::tempdir().unwrap();
        let certs = shared_certs().join("certs");
        let security = ServerSecurity {
            tls: Some(ServerTls {
                cert_pem: std::fs::read(certs.join("coordinator.pem")).unwrap(),
                key_pem: std::fs::read(certs.join("coordinator.key")).unwrap(),
                client_ca_pem: Some(std::fs::read(certs.join("ca.pem")).unwrap()),
            }),
            tokens: Some(Arc::new(
                TokenSet::load(&certs.join("tokens.toml")).unwrap(),
            )),
        };
        let policy = security.access_policy().unwrap();
        let coordinator =
            Coordinator::open(CoordinatorConfig::new(dir.path().join("data"))).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "https://127.0.0.1:{}",
            listener.local_addr().unwrap().port()
        );
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let stop = async {
                let _ = stop_rx.await;
            };
            coordinator
                .serve_secured(listener, &security, policy, None, stop)
                .await
                .unwrap();
        });
        Secured {
            dir,
            url,
            stop_tx: Some(stop_tx),
            server,
        }
    }

    fn certs(&self) -> PathBuf {
        shared_certs().join("certs")
    }

    /// TLS settings trusting the fleet CA, with the named certificate from `certs_dir`.
    fn tls(&self, certs_dir: &str, identity: Option<&str>) -> ClientTlsConfig {
        let ca = self.certs().join("ca.pem");
        let certs = shared_certs().join(certs_dir);
        let cert = identity.map(|name| certs.join(format!("{name}.pem")));
        let key = identity.map(|name| certs.join(format!("{name}.key")));
        ClientSecurity::tls_from_files(Some(&ca), cert.as_deref(), key.as_deref())
            .unwrap()
            .unwrap()
    }

    async fn channel(&self, certs_dir: &str, identity: Option<&str>) -> Result<Channel, String> {
        tunefleet_proto::connect_coordinator(&self.url, Some(&self.tls(certs_dir, identity))).await
    }

    /// Connects a sweep API client with the named token (`admin`, `viewer`) or none.
    async fn sweeps(&self, token: Option<&str>) -> SweepServiceClient<AuthChannel> {
        let security = ClientSecurity {
            tls: Some(self.tls("certs", None)),
            token: token.map(|name| read_token(&self.certs(), name)),
        };
        SweepServiceClient::new(security.connect(&self.url).await.unwrap())
    }

    /// Connects a worker API client presenting the named certificate of the fleet CA.
    async fn worker(&self, identity: &str) -> WorkerServiceClient<Channel> {
        WorkerServiceClient::new(self.channel("certs", Some(identity)).await.unwrap())
    }

    async fn create_sweep(&self, num_trials: usize) -> v1::Sweep {
        let spec = grid_spec(self.dir.path(), num_trials, 1);
        let request = v1::CreateSweepRequest {
            spec_toml: spec,
            base_dir: self.dir.path().display().to_string(),
        };
        let mut admin = self.sweeps(Some("admin")).await;
        admin.create_sweep(request).await.unwrap().into_inner()
    }

    async fn stop(mut self) {
        let _ = self.stop_tx.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), &mut self.server)
            .await
            .expect("the coordinator did not stop")
            .unwrap();
    }
}

fn register_request(hostname: &str) -> v1::RegisterWorkerRequest {
    v1::RegisterWorkerRequest {
        hostname: hostname.to_string(),
        slots: vec![v1::Slot {
            index: 0,
            device: "cpu".to_string(),
            num_threads: 1,
        }],
        version: "test".to_string(),
        labels: Default::default(),
    }
}

async fn register(client: &mut WorkerServiceClient<Channel>, hostname: &str) -> String {
    let response = client.register_worker(register_request(hostname)).await;
    response.unwrap().into_inner().worker_id
}

#[tokio::test]
async fn worker_api_rejects_missing_certificate() {
    let fleet = Secured::start().await;
    let mut anonymous = WorkerServiceClient::new(fleet.channel("certs", None).await.unwrap());

    let status = anonymous
        .register_worker(register_request("nobody"))
        .await
        .unwrap_err();

    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().contains("missing client certificate"),
        "{status:?}"
    );
    fleet.stop().await;
}

#[tokio::test]
async fn sweep_api_rejects_missing_or_wrong_token() {
    let fleet = Secured::start().await;
    let mut anonymous = fleet.sweeps(None).await;
    let status = anonymous
        .list_sweeps(v1::ListSweepsRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    let security = ClientSecurity {
        tls: Some(fleet.tls("certs", None)),
        token: Some("not-a-token".to_string()),
    };
    let mut wrong = SweepServiceClient::new(security.connect(&fleet.url).await.unwrap());
    let status = wrong
        .list_sweeps(v1::ListSweepsRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        !status.message().contains("not-a-token"),
        "the refusal repeats the token: {status:?}"
    );
    fleet.stop().await;
}

#[tokio::test]
async fn read_only_token_cannot_write() {
    let fleet = Secured::start().await;
    let sweep = fleet.create_sweep(2).await;
    let mut viewer = fleet.sweeps(Some("viewer")).await;

    let listed = viewer.list_sweeps(v1::ListSweepsRequest {}).await.unwrap();
    assert_eq!(listed.into_inner().sweeps.len(), 1);
    let create = v1::CreateSweepRequest {
        spec_toml: grid_spec(fleet.dir.path(), 1, 1),
        base_dir: fleet.dir.path().display().to_string(),
    };
    let status = viewer.create_sweep(create).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("read-only"), "{status:?}");
    let cancel = v1::CancelSweepRequest {
        sweep_id: sweep.sweep_id.clone(),
    };
    let status = viewer.cancel_sweep(cancel).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    let get = v1::GetSweepRequest {
        sweep_id: sweep.sweep_id,
    };
    let unchanged = viewer.get_sweep(get).await.unwrap().into_inner();
    assert_eq!(unchanged.status, SweepStatus::Running as i32);
    fleet.stop().await;
}

#[tokio::test]
async fn worker_certificate_cannot_create_sweep() {
    let fleet = Secured::start().await;
    let channel = fleet.channel("certs", Some("worker-1")).await.unwrap();
    let mut as_worker = SweepServiceClient::new(channel);

    let create = v1::CreateSweepRequest {
        spec_toml: grid_spec(fleet.dir.path(), 1, 1),
        base_dir: fleet.dir.path().display().to_string(),
    };
    let status = as_worker.create_sweep(create).await.unwrap_err();

    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    fleet.stop().await;
}

#[tokio::test]
async fn token_cannot_act_as_worker() {
    let fleet = Secured::start().await;
    let security = ClientSecurity {
        tls: Some(fleet.tls("certs", None)),
        token: Some(read_token(&fleet.certs(), "admin")),
    };
    let mut as_client = WorkerServiceClient::new(security.connect(&fleet.url).await.unwrap());

    let status = as_client
        .register_worker(register_request("intruder"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let acquire = v1::AcquireTrialRequest {
        worker_id: uuid_like(),
        slot: 0,
        wait_ms: 0,
    };
    let status = as_client.acquire_trial(acquire).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    fleet.stop().await;
}

fn uuid_like() -> String {
    "00000000-0000-4000-8000-000000000001".to_string()
}

#[tokio::test]
async fn worker_cannot_act_on_another_workers_attempt() {
    let fleet = Secured::start().await;
    fleet.create_sweep(2).await;
    let mut worker_a = fleet.worker("worker-1").await;
    let mut worker_b = fleet.worker("worker-2").await;
    let id_a = register(&mut worker_a, "a").await;
    let id_b = register(&mut worker_b, "b").await;
    let acquire = v1::AcquireTrialRequest {
        worker_id: id_a.clone(),
        slot: 0,
        wait_ms: 1_000,
    };
    let assignment = worker_a.acquire_trial(acquire).await.unwrap().into_inner();
    let attempt = assignment.assignment.unwrap().attempt.unwrap();
    let report = |attempt: &v1::AttemptRef| v1::ReportEpochRequest {
        attempt: Some(attempt.clone()),
        metrics: Some(v1::EpochMetrics {
            epoch: 1,
            metrics: vec![v1::Metric {
                name: "val_accuracy".to_string(),
                value: 0.5,
            }],
            reported_at_ms: tunefleet_proto::now_ms(),
        }),
    };

    let status = worker_b.report_epoch(report(&attempt)).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let steal = v1::AcquireTrialRequest {
        worker_id: id_a.clone(),
        slot: 0,
        wait_ms: 0,
    };
    let status = worker_b.acquire_trial(steal).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let heartbeat = v1::HeartbeatRequest {
        worker_id: id_a.clone(),
        running: vec![attempt.clone()],
    };
    let status = worker_b.heartbeat(heartbeat).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let own = v1::HeartbeatRequest {
        worker_id: id_b,
        running: Vec::new(),
    };
    assert!(worker_b.heartbeat(own).await.is_ok());

    let accepted = worker_a.report_epoch(report(&attempt)).await.unwrap();
    assert!(!accepted.into_inner().stop);
    fleet.stop().await;
}

#[tokio::test]
async fn certificate_from_other_ca_is_rejected() {
    let fleet = Secured::start().await;

    let outcome = match fleet.channel("other", Some("worker-1")).await {
        Err(err) => Err(err),
        Ok(channel) => WorkerServiceClient::new(channel)
            .register_worker(register_request("forged"))
            .await
            .map(|_| ())
            .map_err(|status| format!("{status:?}")),
    };

    assert!(outcome.is_err(), "a certificate of another CA registered");
    let mut worker = fleet.worker("worker-1").await;
    assert!(!register(&mut worker, "real").await.is_empty());
    fleet.stop().await;
}

#[tokio::test]
async fn oversized_request_is_rejected_and_server_lives() {
    let fleet = Secured::start().await;
    let mut admin = fleet.sweeps(Some("admin")).await;

    let huge = v1::CreateSweepRequest {
        spec_toml: "#".repeat(5 * 1024 * 1024),
        base_dir: "/".to_string(),
    };
    let status = admin.create_sweep(huge).await.unwrap_err();

    assert!(
        matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{status:?}"
    );
    assert!(status.message().contains("too large"), "{status:?}");
    let listed = admin.list_sweeps(v1::ListSweepsRequest {}).await;
    assert!(listed.is_ok(), "the server stopped serving: {listed:?}");
    fleet.stop().await;
}

/// Calls `path` with a message whose field 3 contains bytes that are not UTF-8, where
/// `RegisterWorkerRequest` has its version string.
async fn send_garbage(
    channel: &Channel,
    path: &'static str,
) -> Result<tonic::Response<v1::RegisterWorkerResponse>, tonic::Status> {
    let garbage = v1::UploadArtifactRequest {
        attempt: None,
        name: String::new(),
        content: vec![0xff, 0xfe, 0xfd],
    };
    let codec =
        tonic_prost::ProstCodec::<v1::UploadArtifactRequest, v1::RegisterWorkerResponse>::default();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    grpc.unary(tonic::Request::new(garbage), path, codec).await
}

#[tokio::test]
async fn malformed_messages_are_rejected_and_server_lives() {
    let fleet = Secured::start().await;
    let channel = fleet.channel("certs", Some("worker-1")).await.unwrap();
    let status = send_garbage(&channel, "/tunefleet.v1.WorkerService/RegisterWorker")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert!(status.message().contains("UTF-8"), "{status:?}");
    let status = send_garbage(&channel, "/tunefleet.v1.WorkerService/ReportEpoch")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let mut worker = WorkerServiceClient::new(channel);
    assert!(!register(&mut worker, "after-garbage").await.is_empty());
    fleet.stop().await;
}

#[tokio::test]
async fn tokens_apply_on_loopback_without_tls() {
    let dir = tempfile::tempdir().unwrap();
    let certs = shared_certs().join("certs");
    let security = ServerSecurity {
        tls: None,
        tokens: Some(Arc::new(
            TokenSet::load(&certs.join("tokens.toml")).unwrap(),
        )),
    };
    let policy = security.access_policy().unwrap();
    let coordinator = Coordinator::open(CoordinatorConfig::new(dir.path().join("data"))).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let stop = async {
            let _ = stop_rx.await;
        };
        coordinator
            .serve_secured(listener, &security, policy, None, stop)
            .await
            .unwrap();
    });
    let client = |token: Option<String>| {
        let url = url.clone();
        async move {
            let security = ClientSecurity { tls: None, token };
            SweepServiceClient::new(security.connect(&url).await.unwrap())
        }
    };

    let status = client(None)
        .await
        .list_sweeps(v1::ListSweepsRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let mut admin = client(Some(read_token(&certs, "admin"))).await;
    assert!(admin.list_sweeps(v1::ListSweepsRequest {}).await.is_ok());
    let channel = tunefleet_proto::connect_coordinator(&url, None)
        .await
        .unwrap();
    let mut worker = WorkerServiceClient::new(channel);
    assert!(!register(&mut worker, "plain").await.is_empty());

    let _ = stop_tx.send(());
    server.await.unwrap();
}

#[test]
fn non_loopback_listen_is_refused_before_binding() {
    let dir = tempfile::tempdir().unwrap();
    // 192.0.2.1 is TEST-NET-1 (RFC 5737): no host owns it, so even a bind attempt would fail
    // with a different error than the refusal checked here.
    let output = Command::new(binary())
        .args(["coordinator", "--listen", "192.0.2.1:7800", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("invalid listen address 192.0.2.1:7800"),
        "{stderr}"
    );
    assert!(
        stderr.contains("set --tls-cert, --tls-key, --tls-client-ca, --tokens ("),
        "{stderr}"
    );
    assert!(stderr.contains("--allow-insecure"), "{stderr}");
    assert!(!stderr.contains("failed to listen"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_completes_with_tls_and_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    certs_init(&certs, 1);
    let path = |name: &str| certs.join(name).display().to_string();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let listen = format!("127.0.0.1:{port}");
    let url = format!("https://127.0.0.1:{port}");
    let data_dir = dir.path().join("data").display().to_string();
    let coordinator_args = [
        "coordinator",
        "--listen",
        &listen,
        "--data-dir",
        &data_dir,
        "--heartbeat-interval-ms",
        "300",
        "--tls-cert",
        &path("coordinator.pem"),
        "--tls-key",
        &path("coordinator.key"),
        "--tls-client-ca",
        &path("ca.pem"),
        "--tokens",
        &path("tokens.toml"),
    ];
    let _coordinator = Process::spawn("coordinator", &coordinator_args, dir.path());
    let security = ClientSecurity {
        tls: Some(
            ClientSecurity::tls_from_files(Some(&certs.join("ca.pem")), None, None)
                .unwrap()
                .unwrap(),
        ),
        token: Some(read_token(&certs, "viewer")),
    };
    wait_until(
        "the coordinator serves TLS",
        Duration::from_secs(20),
        || {
            let (security, url) = (security.clone(), url.clone());
            async move {
                let Ok(channel) = security.connect(&url).await else {
                    return false;
                };
                let mut client = SweepServiceClient::new(channel);
                client.list_sweeps(v1::ListSweepsRequest {}).await.is_ok()
            }
        },
    )
    .await;
    let mut viewer = SweepServiceClient::new(security.connect(&url).await.unwrap());
    let worker_args = [
        "worker",
        "--coordinator",
        &url,
        "--gpus",
        "none",
        "--cpu-slots",
        "2",
        "--threads-per-slot",
        "1",
        "--grace-period-secs",
        "0",
        "--tls-ca",
        &path("ca.pem"),
        "--tls-cert",
        &path("worker-1.pem"),
        "--tls-key",
        &path("worker-1.key"),
    ];
    let _worker = Process::spawn("worker", &worker_args, dir.path());
    grid_spec(dir.path(), 2, 1);

    let spec = dir.path().join("spec.toml").display().to_string();
    let launch = Command::new(binary())
        .args(["sweep", "launch", &spec, "--coordinator", &url])
        .args([
            "--tls-ca",
            &path("ca.pem"),
            "--token-file",
            &path("admin.token"),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&launch.stderr);
    assert!(launch.status.success(), "sweep launch failed: {stderr}");
    let sweep_id = String::from_utf8(launch.stdout).unwrap().trim().to_string();
    let watch = Command::new(binary())
        .args(["sweep", "watch", &sweep_id, "--json", "--coordinator", &url])
        .args(["--tls-ca", &path("ca.pem")])
        .env("TUNEFLEET_TOKEN", read_token(&certs, "viewer"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&watch.stderr);
    assert!(watch.status.success(), "sweep watch failed: {stderr}");

    let all = trials_of(&mut viewer, &sweep_id).await;
    assert_all_succeeded_once(&all, 2);
    let workers = viewer.list_workers(v1::ListWorkersRequest {}).await;
    let workers = workers.unwrap().into_inner().workers;
    assert_eq!(workers.len(), 1);
    assert_eq!(workers[0].identity, "worker-1");
}

async fn trials_of(client: &mut SweepServiceClient<AuthChannel>, sweep_id: &str) -> Vec<v1::Trial> {
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

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Starts `tunefleet coordinator` with TLS, mutual TLS and tokens on an etcd store.
fn start_tls_coordinator(dir: &Path, name: &str, port: u16, store: &str) -> Process {
    let certs = shared_certs().join("certs");
    let path = |file: &str| certs.join(file).display().to_string();
    let listen = format!("127.0.0.1:{port}");
    let data_dir = dir.join(name).display().to_string();
    let artifacts = format!("file://{}", dir.join("artifacts").display());
    let args = [
        "coordinator",
        "--listen",
        &listen,
        "--data-dir",
        &data_dir,
        "--store",
        store,
        "--artifacts",
        &artifacts,
        "--tls-cert",
        &path("coordinator.pem"),
        "--tls-key",
        &path("coordinator.key"),
        "--tls-client-ca",
        &path("ca.pem"),
        "--tokens",
        &path("tokens.toml"),
    ];
    Process::spawn(name, &args, dir)
}

async fn wait_for_log(dir: &Path, name: &str, line: &str) {
    let path = dir.join(format!("{name}.log"));
    wait_until(
        &format!("{name} logs {line:?}"),
        Duration::from_secs(30),
        || {
            let path = path.clone();
            async move {
                std::fs::read_to_string(path)
                    .unwrap_or_default()
                    .contains(line)
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_forwards_callers_over_tls() {
    let etcd = EtcdServer::start();
    let dir = tempfile::tempdir().unwrap();
    let store = format!(
        "etcd://{}/tunefleet-tls",
        etcd.endpoint().trim_start_matches("http://")
    );
    let (leader_port, follower_port) = (free_port(), free_port());
    let _leader = start_tls_coordinator(dir.path(), "c0", leader_port, &store);
    wait_for_log(dir.path(), "c0", "became the leader").await;
    let _follower = start_tls_coordinator(dir.path(), "c1", follower_port, &store);
    wait_for_log(dir.path(), "c1", "following the leader").await;
    let certs = shared_certs().join("certs");
    let tls = ClientSecurity::tls_from_files(Some(&certs.join("ca.pem")), None, None)
        .unwrap()
        .unwrap();
    let follower = format!("https://127.0.0.1:{follower_port}");
    let connect = |token: Option<&str>| {
        let security = ClientSecurity {
            tls: Some(tls.clone()),
            token: token.map(|name| read_token(&certs, name)),
        };
        let follower = follower.clone();
        async move { SweepServiceClient::new(security.connect(&follower).await.unwrap()) }
    };
    let mut admin = connect(Some("admin")).await;
    let mut viewer = connect(Some("viewer")).await;
    let mut anonymous = connect(None).await;

    let create = |num_trials| v1::CreateSweepRequest {
        spec_toml: grid_spec(dir.path(), num_trials, 1),
        base_dir: dir.path().display().to_string(),
    };
    let sweep = admin.create_sweep(create(2)).await.unwrap().into_inner();
    let status = viewer.create_sweep(create(1)).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let status = anonymous
        .list_sweeps(v1::ListSweepsRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let listed = viewer.list_sweeps(v1::ListSweepsRequest {}).await.unwrap();
    let sweep_ids: Vec<String> = listed
        .into_inner()
        .sweeps
        .into_iter()
        .map(|s| s.sweep_id)
        .collect();
    assert_eq!(sweep_ids, vec![sweep.sweep_id]);

    let worker_tls = |identity: &str| {
        ClientSecurity::tls_from_files(
            Some(&certs.join("ca.pem")),
            Some(&certs.join(format!("{identity}.pem"))),
            Some(&certs.join(format!("{identity}.key"))),
        )
        .unwrap()
        .unwrap()
    };
    let channel = |identity: &str| {
        let tls = worker_tls(identity);
        let follower = follower.clone();
        async move {
            tunefleet_proto::connect_coordinator(&follower, Some(&tls))
                .await
                .unwrap()
        }
    };
    let mut worker_1 = WorkerServiceClient::new(channel("worker-1").await);
    let mut worker_2 = WorkerServiceClient::new(channel("worker-2").await);
    let id_1 = register(&mut worker_1, "w1").await;
    let heartbeat = v1::HeartbeatRequest {
        worker_id: id_1.clone(),
        running: Vec::new(),
    };
    let status = worker_2.heartbeat(heartbeat.clone()).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(worker_1.heartbeat(heartbeat).await.is_ok());
    let workers = viewer.list_workers(v1::ListWorkersRequest {}).await;
    let workers = workers.unwrap().into_inner().workers;
    let identities: Vec<&str> = workers.iter().map(|w| w.identity.as_str()).collect();
    assert_eq!(identities, vec!["worker-1"]);
}
