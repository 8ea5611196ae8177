//! Operations tests: the gRPC health and reflection services, Prometheus metrics after a real
//! sweep, JSON logs and `tunefleet doctor`, all on loopback.

#[path = "support/fleet.rs"]
mod support;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::{binary, digits_path, wait_until, Process};
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tunefleet_coordinator::artifacts::LocalArtifacts;
use tunefleet_coordinator::store::{EmbeddedStore, Snapshot, StateStore, StoreError, WriteBatch};
use tunefleet_coordinator::{Coordinator, CoordinatorConfig};
use tunefleet_proto::v1::sweep_service_client::SweepServiceClient;
use tunefleet_proto::v1::{self, SweepStatus};

/// A coordinator served in this process on a loopback port, stopped when dropped.
struct InProcessCoordinator {
    address: SocketAddr,
    _dir: tempfile::TempDir,
    stop_tx: Option<tokio::sync::oneshot::Sender<()>>,
}

impl InProcessCoordinator {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let coordinator = Coordinator::open(CoordinatorConfig::new(dir.path())).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(coordinator.serve(listener, async {
            let _ = stop_rx.await;
        }));
        Self {
            address,
            _dir: dir,
            stop_tx: Some(stop_tx),
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(self.url())
            .unwrap()
            .connect()
            .await
            .unwrap()
    }
}

impl Drop for InProcessCoordinator {
    fn drop(&mut self) {
        if let Some(stop_tx) = self.stop_tx.take() {
            let _ = stop_tx.send(());
        }
    }
}

async fn health_of(channel: Channel, service: &str) -> ServingStatus {
    let request = HealthCheckRequest {
        service: service.to_string(),
    };
    let response = HealthClient::new(channel).check(request).await.unwrap();
    response.into_inner().status()
}

#[tokio::test]
async fn health_reports_serving() {
    let coordinator = InProcessCoordinator::start().await;
    let channel = coordinator.channel().await;
    for service in [
        "",
        "tunefleet.v1.SweepService",
        "tunefleet.v1.WorkerService",
    ] {
        let status = health_of(channel.clone(), service).await;
        assert_eq!(status, ServingStatus::Serving, "service {service:?}");
    }
}

#[tokio::test]
async fn health_rejects_unknown_service() {
    let coordinator = InProcessCoordinator::start().await;
    let request = HealthCheckRequest {
        service: "tunefleet.v1.NoSuchService".to_string(),
    };
    let err = HealthClient::new(coordinator.channel().await)
        .check(request)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
}

/// The embedded store, failing every read and write while `broken` is set.
struct BreakableStore {
    inner: EmbeddedStore,
    broken: Arc<AtomicBool>,
}

impl BreakableStore {
    fn check(&self) -> Result<(), StoreError> {
        if self.broken.load(Ordering::SeqCst) {
            let error = std::io::Error::other("disk unplugged by the test");
            return Err(StoreError::Io {
                path: "state.redb".into(),
                error,
            });
        }
        Ok(())
    }
}

impl StateStore for BreakableStore {
    fn load(&self) -> Result<Snapshot, StoreError> {
        self.check()?;
        self.inner.load()
    }

    fn write(&self, batch: &WriteBatch) -> Result<(), StoreError> {
        self.check()?;
        self.inner.write(batch)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_degraded_mode() {
    let dir = tempfile::tempdir().unwrap();
    let broken = Arc::new(AtomicBool::new(false));
    let store = BreakableStore {
        inner: EmbeddedStore::open(dir.path()).unwrap(),
        broken: broken.clone(),
    };
    let artifacts = LocalArtifacts::open(dir.path().join("artifacts")).unwrap();
    let config = CoordinatorConfig::new(dir.path());
    let coordinator =
        Coordinator::with_stores(config, Box::new(store), Box::new(artifacts)).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(coordinator.serve(listener, async {
        let _ = stop_rx.await;
    }));
    let channel = Channel::from_shared(url).unwrap().connect().await.unwrap();
    let service = "tunefleet.v1.SweepService";
    assert_eq!(
        health_of(channel.clone(), service).await,
        ServingStatus::Serving
    );

    // A write that fails while the store cannot be reloaded either puts the coordinator in
    // degraded mode.
    broken.store(true, Ordering::SeqCst);
    let spec = std::fs::read_to_string(write_spec(dir.path())).unwrap();
    let request = v1::CreateSweepRequest {
        spec_toml: spec,
        base_dir: dir.path().to_str().unwrap().to_string(),
    };
    let created = SweepServiceClient::new(channel.clone())
        .create_sweep(request)
        .await;
    assert_eq!(created.unwrap_err().code(), tonic::Code::Unavailable);
    wait_until(
        "the coordinator reports NOT_SERVING",
        Duration::from_secs(10),
        || {
            let channel = channel.clone();
            async move { health_of(channel, service).await == ServingStatus::NotServing }
        },
    )
    .await;
    assert_eq!(health_of(channel.clone(), "").await, ServingStatus::Serving);

    broken.store(false, Ordering::SeqCst);
    wait_until("the coordinator recovers", Duration::from_secs(10), || {
        let channel = channel.clone();
        async move { health_of(channel, service).await == ServingStatus::Serving }
    })
    .await;
    let _ = stop_tx.send(());
}

#[tokio::test]
async fn reflection_lists_services() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let coordinator = InProcessCoordinator::start().await;
    let mut client = ServerReflectionClient::new(coordinator.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("expected a list of services, got {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "tunefleet.v1.SweepService",
        "tunefleet.v1.WorkerService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
}

#[tokio::test]
async fn reflection_v1alpha_describes_sweep_service() {
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;

    let coordinator = InProcessCoordinator::start().await;
    let mut client = ServerReflectionClient::new(coordinator.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(
            "tunefleet.v1.SweepService".to_string(),
        )),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.next().await.unwrap().unwrap();
    let Some(MessageResponse::FileDescriptorResponse(files)) = response.message_response else {
        panic!("expected file descriptors, got {response:?}");
    };
    assert!(!files.file_descriptor_proto.is_empty());
}

/// Sends `GET path` over HTTP/1.1 and returns the status code and body.
fn http_get(address: &str, path: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

/// Parses Prometheus text exposition (and OpenMetrics) into (series, value) pairs, failing the
/// test on any line that is not a comment, a sample or `# EOF`.
fn parse_exposition(text: &str) -> Vec<(String, f64)> {
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            continue;
        }
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("malformed sample line {line:?}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "invalid metric name in {line:?}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "unterminated labels in {line:?}");
        }
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("invalid value in {line:?}"));
        samples.push((series.to_string(), value));
    }
    samples
}

/// Returns the value of the one series named exactly `series`.
fn sample(samples: &[(String, f64)], series: &str) -> f64 {
    let found: Vec<f64> = samples
        .iter()
        .filter(|(s, _)| s == series)
        .map(|(_, v)| *v)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one series {series}, found {found:?}"
    );
    found[0]
}

/// Returns the sum of every series whose text starts with `prefix`.
fn sum_of(samples: &[(String, f64)], prefix: &str) -> f64 {
    samples
        .iter()
        .filter(|(s, _)| s.starts_with(prefix))
        .map(|(_, v)| v)
        .sum()
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn write_spec(dir: &Path) -> std::path::PathBuf {
    let spec = format!(
        r#"
name = "metrics"
[objective]
metric = "val_accuracy"
[search]
method = "grid"
max_concurrent = 1
[parameters]
lr = [0.01, 0.02]
[task]
model = "mlp"
dataset = "{}"
epochs = 1
[ensemble]
size = 2
"#,
        digits_path().display()
    );
    let path = dir.join("metrics.toml");
    std::fs::write(&path, spec).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_json_logs_after_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let (grpc_port, coordinator_metrics_port, worker_metrics_port) =
        (free_port(), free_port(), free_port());
    let url = format!("http://127.0.0.1:{grpc_port}");
    let coordinator_metrics = format!("127.0.0.1:{coordinator_metrics_port}");
    let worker_metrics = format!("127.0.0.1:{worker_metrics_port}");
    let listen = format!("127.0.0.1:{grpc_port}");
    let data_dir = dir.path().join("data");
    let _coordinator = Process::spawn(
        "coordinator",
        &[
            "--log-format",
            "json",
            "coordinator",
            "--listen",
            &listen,
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--metrics-addr",
            &coordinator_metrics,
        ],
        dir.path(),
    );
    wait_until(
        "the coordinator serves",
        Duration::from_secs(20),
        || async {
            match SweepServiceClient::connect(url.clone()).await {
                Ok(mut client) => client.list_sweeps(v1::ListSweepsRequest {}).await.is_ok(),
                Err(_) => false,
            }
        },
    )
    .await;
    let _worker = Process::spawn(
        "worker",
        &[
            "worker",
            "--coordinator",
            &url,
            "--gpus",
            "none",
            "--cpu-slots",
            "1",
            "--metrics-addr",
            &worker_metrics,
        ],
        dir.path(),
    );
    let spec = write_spec(dir.path());
    let launched = Command::new(binary())
        .args([
            "sweep",
            "launch",
            spec.to_str().unwrap(),
            "--coordinator",
            &url,
        ])
        .output()
        .unwrap();
    assert!(launched.status.success(), "{launched:?}");
    let sweep_id = String::from_utf8(launched.stdout)
        .unwrap()
        .trim()
        .to_string();
    let mut client = SweepServiceClient::connect(url.clone()).await.unwrap();
    wait_until("the sweep ends", Duration::from_secs(120), || {
        let mut client = client.clone();
        let sweep_id = sweep_id.clone();
        async move {
            let request = v1::GetSweepRequest { sweep_id };
            let sweep = client.get_sweep(request).await.unwrap().into_inner();
            sweep.status != SweepStatus::Running as i32
        }
    })
    .await;
    let request = v1::GetSweepRequest {
        sweep_id: sweep_id.clone(),
    };
    let sweep = client.get_sweep(request).await.unwrap().into_inner();
    assert_eq!(sweep.status, SweepStatus::Succeeded as i32, "{sweep:?}");

    let (status, text) = http_get(&coordinator_metrics, "/metrics");
    assert_eq!(status, 200, "{text}");
    let samples = parse_exposition(&text);
    let succeeded = format!(
        "tunefleet_trials{{sweep_id=\"{sweep_id}\",sweep=\"metrics\",state=\"succeeded\"}}"
    );
    assert_eq!(sample(&samples, &succeeded), 2.0, "{text}");
    assert_eq!(sample(&samples, "tunefleet_attempts_started_total"), 2.0);
    assert_eq!(
        sample(
            &samples,
            "tunefleet_attempts_ended_total{outcome=\"succeeded\"}"
        ),
        2.0
    );
    assert_eq!(sample(&samples, "tunefleet_queued_trials"), 0.0);
    assert_eq!(
        sample(&samples, "tunefleet_sweeps{state=\"succeeded\"}"),
        1.0
    );
    assert_eq!(sample(&samples, "tunefleet_workers_active"), 1.0);
    assert_eq!(sample(&samples, "tunefleet_coordinator_leader"), 1.0);
    let completes = "tunefleet_rpc_duration_seconds_count{service=\"tunefleet.v1.WorkerService\",method=\"CompleteAttempt\"}";
    assert_eq!(sample(&samples, completes), 2.0);
    assert!(sample(&samples, "process_resident_memory_bytes") > 0.0);
    assert!(text.ends_with("# EOF\n"), "{text}");

    let (status, text) = http_get(&worker_metrics, "/metrics");
    assert_eq!(status, 200, "{text}");
    let samples = parse_exposition(&text);
    assert_eq!(sample(&samples, "tunefleet_worker_slots"), 1.0);
    assert_eq!(sample(&samples, "tunefleet_worker_busy_slots"), 0.0);
    assert_eq!(
        sample(&samples, "tunefleet_worker_attempts_started_total"),
        2.0
    );
    assert_eq!(
        sum_of(
            &samples,
            "tunefleet_worker_attempts_ended_total{outcome=\"succeeded\"}"
        ),
        2.0
    );
    let busy = "tunefleet_worker_slot_busy_seconds_total{slot=\"0\",device=\"cpu\"}";
    assert!(sample(&samples, busy) > 0.0, "{text}");

    let (status, _) = http_get(&coordinator_metrics, "/nothing");
    assert_eq!(status, 404);
    let (status, body) = http_get(&coordinator_metrics, "/healthz");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, body) = http_get(&coordinator_metrics, "/readyz");
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    let (status, body) = http_get(&worker_metrics, "/readyz");
    assert_eq!((status, body.as_str()), (200, "ready\n"));

    let log = std::fs::read_to_string(dir.path().join("coordinator.log")).unwrap();
    let events: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}")))
        .collect();
    assert!(events.iter().all(|e| e["level"].is_string()), "{log}");
    let created = events
        .iter()
        .find(|e| e["message"] == "sweep created")
        .unwrap_or_else(|| panic!("no \"sweep created\" event in {log}"));
    assert_eq!(created["sweep_id"], sweep_id.as_str());
    assert_eq!(created["level"], "INFO");
}

fn doctor(args: &[&str]) -> Output {
    Command::new(binary())
        .arg("doctor")
        .args(args)
        .env_remove("TUNEFLEET_COORDINATOR")
        .env_remove("TUNEFLEET_TOKEN")
        .output()
        .unwrap()
}

fn stdout_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_passes_with_live_coordinator() {
    let coordinator = InProcessCoordinator::start().await;
    let url = coordinator.url();
    let output = tokio::task::spawn_blocking(move || doctor(&["--coordinator", &url]))
        .await
        .unwrap();
    let stdout = stdout_of(&output);
    assert!(output.status.success(), "{stdout}");
    let expected = format!("ok    coordinator: {} is SERVING", coordinator.url());
    assert!(stdout.contains(&expected), "{stdout}");
    assert!(stdout.contains("ok    libtorch: "), "{stdout}");
}

#[test]
fn doctor_fails_on_closed_port() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let output = doctor(&["--coordinator", &url]);
    let stdout = stdout_of(&output);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    let expected = format!("fail  coordinator: failed to connect to the coordinator at {url}");
    assert!(stdout.contains(&expected), "{stdout}");
}

/// A CA and a certificate it signed, written as PEM files.
struct TestPki {
    dir: tempfile::TempDir,
}

impl TestPki {
    /// Writes ca.pem, cert.pem and key.pem, the certificate valid from `not_before` to
    /// `not_after`, plus other-key.pem, a key of no certificate.
    fn new(not_before: (i32, u8, u8), not_after: (i32, u8, u8)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "tunefleet test CA");
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);

        let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        params.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        let other_key = rcgen::KeyPair::generate().unwrap();

        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();
        std::fs::write(dir.path().join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).unwrap();
        std::fs::write(dir.path().join("other-key.pem"), other_key.serialize_pem()).unwrap();
        Self { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_string()
    }

    fn doctor(&self, key: &str) -> Output {
        doctor(&[
            "--tls-ca",
            &self.path("ca.pem"),
            "--tls-cert",
            &self.path("cert.pem"),
            "--tls-key",
            &self.path(key),
        ])
    }
}

#[test]
fn doctor_accepts_valid_certificates() {
    let pki = TestPki::new((2020, 1, 1), (2090, 1, 1));
    let output = pki.doctor("key.pem");
    let stdout = stdout_of(&output);
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.contains("ok    tls-chain: "), "{stdout}");
    assert!(stdout.contains("ok    tls-key: "), "{stdout}");
    assert!(stdout.contains("ok    tls-cert: "), "{stdout}");
}

#[test]
fn doctor_fails_on_expired_certificate() {
    let pki = TestPki::new((2020, 1, 1), (2021, 1, 1));
    let output = pki.doctor("key.pem");
    let stdout = stdout_of(&output);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    let expected = format!("fail  tls-cert: {} expired at", pki.path("cert.pem"));
    assert!(stdout.contains(&expected), "{stdout}");
}

#[test]
fn doctor_fails_on_mismatched_key() {
    let pki = TestPki::new((2020, 1, 1), (2090, 1, 1));
    let output = pki.doctor("other-key.pem");
    let stdout = stdout_of(&output);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    let expected = format!(
        "fail  tls-key: {} is not the private key of {}",
        pki.path("other-key.pem"),
        pki.path("cert.pem")
    );
    assert!(stdout.contains(&expected), "{stdout}");
}

#[test]
fn doctor_fails_on_foreign_ca() {
    let pki = TestPki::new((2020, 1, 1), (2090, 1, 1));
    let other = TestPki::new((2020, 1, 1), (2090, 1, 1));
    let output = doctor(&[
        "--tls-ca",
        &other.path("ca.pem"),
        "--tls-cert",
        &pki.path("cert.pem"),
    ]);
    let stdout = stdout_of(&output);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("fail  tls-chain: "), "{stdout}");
}
