//! The worker agent: registers its slots with a coordinator, keeps its leases alive with
//! heartbeats, and runs each acquired attempt in a trainer child process.

use std::collections::HashMap;
use std::ffi::OsString;
use std::future::Future;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context;
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::watch;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tunefleet_proto::v1::worker_service_client::WorkerServiceClient;
use tunefleet_proto::v1::{self, trainer_event::Event, Outcome};
use tunefleet_telemetry::MetricsEndpoint;

use crate::metrics::WorkerMetrics;

/// Bytes of a failed trainer's stderr kept for the attempt record.
const STDERR_TAIL_BYTES: usize = 4096;
/// How long a slot's `AcquireTrial` call waits for work before asking again, in milliseconds.
const ACQUIRE_WAIT_MS: u32 = 10_000;
/// Maximum size of one trainer message, in bytes; a larger length prefix means a corrupt stream.
const MAX_TRAINER_MESSAGE_BYTES: u64 = 256 * 1024 * 1024;

/// One unit a trial runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotConfig {
    pub index: u32,
    /// "cpu", or "cuda:" and the host's device numbers, such as "cuda:0" or "cuda:2,3".
    pub device: String,
    pub num_threads: u32,
}

/// The CUDA devices a worker offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuSelection {
    /// Every device libtorch finds (none on a host without CUDA).
    All,
    /// No GPU: CPU slots only.
    None,
    /// These device numbers.
    List(Vec<usize>),
}

impl std::str::FromStr for GpuSelection {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "all" => Ok(GpuSelection::All),
            "none" => Ok(GpuSelection::None),
            _ => {
                let parsed: Result<Vec<usize>, _> =
                    value.split(',').map(|d| d.trim().parse()).collect();
                match parsed {
                    Ok(devices) if !devices.is_empty() => Ok(GpuSelection::List(devices)),
                    _ => Err(format!(
                        "invalid GPU selection {value:?}: expected \"all\", \"none\" or device numbers such as \"0,2\""
                    )),
                }
            }
        }
    }
}

/// Settings of one worker agent.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The coordinator's URL, such as `http://127.0.0.1:7800`.
    pub coordinator_url: String,
    /// TLS settings and client certificate for the coordinator; the token is not used, since
    /// workers authenticate with their certificate.
    pub security: tunefleet_proto::ClientSecurity,
    pub slots: Vec<SlotConfig>,
    /// The program and arguments that start a trainer process.
    pub trainer_command: Vec<OsString>,
    pub hostname: String,
    /// Free-form key=value labels shown by `tunefleet workers`.
    pub labels: HashMap<String, String>,
    /// How long running attempts may go on after shutdown begins before they are stopped and
    /// handed back to the coordinator.
    pub shutdown_grace: Duration,
}

/// Plans the worker's slots: groups of `gpus_per_trial` selected CUDA devices, or, when no GPU
/// is selected or present, `num_cpu_slots` CPU slots of `num_threads` threads each.
pub fn plan_slots(
    gpus: &GpuSelection,
    gpus_per_trial: usize,
    num_cpu_slots: u32,
    num_threads: u32,
) -> Result<Vec<SlotConfig>, String> {
    let num_visible = if tch::Cuda::is_available() {
        tch::Cuda::device_count() as usize
    } else {
        0
    };
    let devices: Vec<usize> = match gpus {
        GpuSelection::None => Vec::new(),
        GpuSelection::All => (0..num_visible).collect(),
        GpuSelection::List(list) => {
            if let Some(missing) = list.iter().find(|d| **d >= num_visible) {
                return Err(format!(
                    "invalid GPU {missing}: libtorch sees {num_visible} CUDA device(s) on this host"
                ));
            }
            list.clone()
        }
    };
    let slots = gpu_slots(&devices, gpus_per_trial, num_threads)?;
    if slots.is_empty() {
        return Ok(cpu_slots(num_cpu_slots, num_threads));
    }
    Ok(slots)
}

/// Groups devices into slots of `gpus_per_trial`; devices left over are not used.
fn gpu_slots(
    devices: &[usize],
    gpus_per_trial: usize,
    num_threads: u32,
) -> Result<Vec<SlotConfig>, String> {
    if gpus_per_trial == 0 {
        return Err("invalid GPUs per trial 0: expected an int >= 1".to_string());
    }
    if !devices.is_empty() && gpus_per_trial > devices.len() {
        return Err(format!(
            "invalid GPUs per trial {gpus_per_trial}: only {} GPU(s) selected",
            devices.len()
        ));
    }
    let slots = devices
        .chunks_exact(gpus_per_trial)
        .enumerate()
        .map(|(i, group)| {
            let numbers: Vec<String> = group.iter().map(usize::to_string).collect();
            SlotConfig {
                index: i as u32,
                device: format!("cuda:{}", numbers.join(",")),
                num_threads: num_threads.max(1),
            }
        })
        .collect();
    Ok(slots)
}

fn cpu_slots(num_cpu_slots: u32, num_threads: u32) -> Vec<SlotConfig> {
    (0..num_cpu_slots.max(1))
        .map(|i| SlotConfig {
            index: i,
            device: "cpu".to_string(),
            num_threads: num_threads.max(1),
        })
        .collect()
}

/// Clients of every coordinator the worker was given, used one at a time: when a call to the
/// current one fails as unavailable, the next one in the list takes over. Followers forward to
/// the leader, so any live coordinator serves.
struct FailoverClient {
    clients: Vec<WorkerServiceClient<Channel>>,
    current: std::sync::atomic::AtomicUsize,
}

impl FailoverClient {
    fn new(urls: &str, tls: Option<&tonic::transport::ClientTlsConfig>) -> Result<Self, String> {
        let clients = tunefleet_proto::coordinator_endpoints(urls, tls)?
            .into_iter()
            .map(|endpoint| {
                WorkerServiceClient::new(endpoint.connect_lazy())
                    .max_decoding_message_size(tunefleet_proto::MAX_ARTIFACT_MESSAGE_BYTES)
                    .max_encoding_message_size(tunefleet_proto::MAX_ARTIFACT_MESSAGE_BYTES)
            })
            .collect();
        Ok(Self {
            clients,
            current: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    fn get(&self) -> WorkerServiceClient<Channel> {
        let index = self.current.load(std::sync::atomic::Ordering::Relaxed);
        self.clients[index % self.clients.len()].clone()
    }

    /// Moves to the next coordinator after a call failed as unavailable.
    fn failed(&self, status: &Status) {
        if self.clients.len() > 1 && status.code() == Code::Unavailable {
            let next = self.current.load(std::sync::atomic::Ordering::Relaxed) + 1;
            self.current.store(
                next % self.clients.len(),
                std::sync::atomic::Ordering::Relaxed,
            );
        }
    }
}

type AttemptKey = (String, u32);
/// Running attempts by (trial id, attempt number), each with the switch that stops it.
type RunningAttempts = HashMap<AttemptKey, (v1::AttemptRef, watch::Sender<Option<String>>)>;

/// State shared by the agent's slot loops and its heartbeat loop.
struct Shared {
    client: FailoverClient,
    config: WorkerConfig,
    worker_id: RwLock<String>,
    /// Stop switches of the attempts running now.
    running: Mutex<RunningAttempts>,
    metrics: WorkerMetrics,
}

impl Shared {
    fn worker_id(&self) -> String {
        self.worker_id
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn running(&self) -> std::sync::MutexGuard<'_, RunningAttempts> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stop_attempt(&self, attempt: &v1::AttemptRef, reason: &str) {
        let key = (attempt.trial_id.clone(), attempt.attempt);
        if let Some((_, stop_tx)) = self.running().get(&key) {
            let _ = stop_tx.send(Some(reason.to_string()));
        }
    }

    fn stop_all(&self, reason: &str) {
        for (_, stop_tx) in self.running().values() {
            let _ = stop_tx.send(Some(reason.to_string()));
        }
    }
}

/// Runs the agent until `shutdown` completes; running attempts are then stopped and handed
/// back to the coordinator.
pub async fn run(
    config: WorkerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    run_with_metrics(config, None, shutdown).await
}

/// Runs the agent like [`run`], and serves its Prometheus metrics on `metrics` when given.
pub async fn run_with_metrics(
    config: WorkerConfig,
    metrics: Option<MetricsEndpoint>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    anyhow::ensure!(!config.slots.is_empty(), "a worker needs at least one slot");
    anyhow::ensure!(
        !config.trainer_command.is_empty(),
        "the trainer command is empty"
    );
    // Connects on first use and reconnects after the coordinator restarts.
    let client = FailoverClient::new(&config.coordinator_url, config.security.tls.as_ref())
        .map_err(|err| anyhow::anyhow!(err))?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let shutdown_task = tokio::spawn(async move {
        shutdown.await;
        let _ = shutdown_tx.send(true);
    });
    let (worker_metrics, metrics_server) = match metrics {
        Some(endpoint) => {
            let mut registry = endpoint.registry;
            let worker_metrics = WorkerMetrics::register(&mut registry, &config.slots);
            let mut stop_rx = shutdown_rx.clone();
            let stopped = async move {
                let _ = stop_rx.wait_for(|stop| *stop).await;
            };
            let server = tokio::spawn(async move {
                // A serving worker reports ready, because its probes do not depend on the
                // coordinator.
                let served = tunefleet_telemetry::serve_metrics(
                    endpoint.listener,
                    Arc::new(registry),
                    tunefleet_telemetry::Readiness::new(true),
                    stopped,
                )
                .await;
                if let Err(err) = served {
                    tracing::error!(error = %err, "the metrics server failed");
                }
            });
            (worker_metrics, Some(server))
        }
        None => (WorkerMetrics::new(&config.slots), None),
    };
    let Some((worker_id, heartbeat_interval)) =
        register_until_accepted(&client, &config, shutdown_rx.clone()).await
    else {
        return Ok(());
    };
    tracing::info!(
        %worker_id,
        coordinator = %config.coordinator_url,
        slots = ?config.slots.iter().map(|s| s.device.as_str()).collect::<Vec<_>>(),
        "worker registered"
    );
    let shared = Arc::new(Shared {
        client,
        config: config.clone(),
        worker_id: RwLock::new(worker_id),
        running: Mutex::new(HashMap::new()),
        metrics: worker_metrics,
    });

    let heartbeat = tokio::spawn(heartbeat_loop(shared.clone(), heartbeat_interval));
    let mut slot_tasks: Vec<_> = config
        .slots
        .iter()
        .map(|slot| tokio::spawn(slot_loop(shared.clone(), slot.clone(), shutdown_rx.clone())))
        .collect();

    let _ = shutdown_task.await;
    let num_running = shared.running().len();
    let grace_ms = config.shutdown_grace.as_millis() as u64;
    tracing::info!(
        num_running,
        grace_ms,
        "worker shutting down: taking no new trials"
    );
    // Heartbeats go on during the grace period, so running attempts keep their leases.
    let finished = join_slot_tasks(&mut slot_tasks);
    if tokio::time::timeout(config.shutdown_grace, finished)
        .await
        .is_err()
    {
        tracing::warn!("grace period over: stopping running attempts and handing them back");
        shared.stop_all("the worker is shutting down");
        join_slot_tasks(&mut slot_tasks).await;
    }
    heartbeat.abort();
    if let Some(server) = metrics_server {
        let _ = server.await;
    }
    tracing::info!("worker stopped");
    Ok(())
}

/// Registers, retrying with backoff while the coordinator is unreachable; `None` when shutdown
/// came first.
async fn register_until_accepted(
    client: &FailoverClient,
    config: &WorkerConfig,
    mut shutdown_rx: watch::Receiver<bool>,
) -> Option<(String, Duration)> {
    let mut delay = Duration::from_millis(200);
    loop {
        match register(&mut client.get(), config).await {
            Ok(registration) => return Some(registration),
            Err(err) => {
                if let Some(status) = err.downcast_ref::<Status>() {
                    client.failed(status);
                }
                tracing::warn!(coordinator = %config.coordinator_url, error = %format!("{err:#}"), retry_in_ms = delay.as_millis() as u64, "registration failed; retrying");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown_rx.changed() => return None,
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

/// Waits for every slot task. Finished handles are skipped, so calling it again after a
/// timeout waits only for the rest.
async fn join_slot_tasks(tasks: &mut [tokio::task::JoinHandle<()>]) {
    for task in tasks.iter_mut() {
        if !task.is_finished() {
            let _ = task.await;
        }
    }
}

async fn register(
    client: &mut WorkerServiceClient<Channel>,
    config: &WorkerConfig,
) -> anyhow::Result<(String, Duration)> {
    let slots = config
        .slots
        .iter()
        .map(|s| v1::Slot {
            index: s.index,
            device: s.device.clone(),
            num_threads: s.num_threads,
        })
        .collect();
    let request = v1::RegisterWorkerRequest {
        hostname: config.hostname.clone(),
        slots,
        version: env!("CARGO_PKG_VERSION").to_string(),
        labels: config.labels.clone(),
    };
    let response = client
        .register_worker(request)
        .await
        .context("failed to register with the coordinator")?
        .into_inner();
    let interval = Duration::from_millis(u64::from(response.heartbeat_interval_ms.max(100)));
    Ok((response.worker_id, interval))
}

/// Sends heartbeats for the running attempts and stops the ones the coordinator names. If the
/// coordinator has no record of this worker, it registers again under a new id and stops every
/// running attempt, since attempts of the old id can no longer report.
async fn heartbeat_loop(shared: Arc<Shared>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    loop {
        ticker.tick().await;
        let running: Vec<v1::AttemptRef> =
            shared.running().values().map(|(a, _)| a.clone()).collect();
        let request = v1::HeartbeatRequest {
            worker_id: shared.worker_id(),
            running,
        };
        match shared.client.get().heartbeat(request).await {
            Ok(response) => {
                for attempt in response.into_inner().stop {
                    tracing::info!(trial_id = %attempt.trial_id, attempt = attempt.attempt, "coordinator stopped the attempt");
                    shared.stop_attempt(&attempt, "stopped by the coordinator");
                }
            }
            Err(status) if status.code() == Code::NotFound => {
                tracing::warn!(error = %status.message(), "coordinator does not know this worker; registering again");
                shared.stop_all("the worker registered again");
                match register(&mut shared.client.get(), &shared.config).await {
                    Ok((worker_id, _)) => {
                        tracing::info!(%worker_id, "worker registered again");
                        *shared.worker_id.write().unwrap_or_else(|e| e.into_inner()) = worker_id;
                    }
                    Err(err) => tracing::error!(error = %err, "registering again failed"),
                }
            }
            Err(status) => {
                shared.client.failed(&status);
                tracing::warn!(error = %status, "heartbeat failed; retrying at the next interval");
            }
        }
    }
}

async fn slot_loop(shared: Arc<Shared>, slot: SlotConfig, mut shutdown_rx: watch::Receiver<bool>) {
    while !*shutdown_rx.borrow() {
        let request = v1::AcquireTrialRequest {
            worker_id: shared.worker_id(),
            slot: slot.index,
            wait_ms: ACQUIRE_WAIT_MS,
        };
        let mut client = shared.client.get();
        let response = tokio::select! {
            response = client.acquire_trial(request) => response,
            _ = shutdown_rx.changed() => return,
        };
        match response {
            Ok(response) => {
                if let Some(assignment) = response.into_inner().assignment {
                    run_attempt(&shared, &slot, assignment).await;
                }
            }
            Err(status) => {
                shared.client.failed(&status);
                tracing::warn!(slot = slot.index, error = %status, "acquiring a trial failed; retrying in 1 s");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown_rx.changed() => return,
                }
            }
        }
    }
}

/// The end of an attempt's trainer run, as the worker observed it.
enum RunEnd {
    /// The trainer exited; `result` is set when it wrote one.
    Exited {
        status: ExitStatus,
        result: Option<v1::TrainerResult>,
        error: Option<String>,
    },
    /// The worker stopped the trainer at the coordinator's request or its own shutdown.
    Stopped(String),
    /// The coordinator rejected the attempt as stale; nothing more is reported.
    Abandoned,
    /// The trainer could not be started.
    SpawnFailed(String),
}

async fn run_attempt(shared: &Shared, slot: &SlotConfig, assignment: v1::Assignment) {
    let attempt = assignment.attempt.clone().unwrap_or_default();
    let key = (attempt.trial_id.clone(), attempt.attempt);
    let (stop_tx, stop_rx) = watch::channel(None);
    shared
        .running()
        .insert(key.clone(), (attempt.clone(), stop_tx));
    tracing::info!(trial_id = %attempt.trial_id, attempt = attempt.attempt, slot = slot.index, "attempt started");
    shared.metrics.attempt_started();
    let started = std::time::Instant::now();

    let stderr_tail = Arc::new(Mutex::new(Vec::new()));
    let end = train_in_child(shared, slot, &assignment, stop_rx, stderr_tail.clone()).await;
    shared.running().remove(&key);
    let stderr_tail =
        String::from_utf8_lossy(&stderr_tail.lock().unwrap_or_else(|e| e.into_inner()))
            .into_owned();
    let outcome = report_end(shared, &attempt, end, stderr_tail).await;
    shared
        .metrics
        .attempt_ended(slot.index, started.elapsed(), outcome);
}

fn trainer_request(slot: &SlotConfig, assignment: &v1::Assignment) -> v1::TrainRequest {
    // The child can use only its slot's GPUs, the first as device 0.
    let device = if slot.device.starts_with("cuda:") {
        "cuda:0"
    } else {
        "cpu"
    };
    v1::TrainRequest {
        model: assignment.model.clone(),
        dataset: assignment.dataset.clone(),
        epochs: assignment.epochs,
        hyperparameters: assignment.hyperparameters.clone(),
        seed: assignment.seed,
        device: device.to_string(),
        num_threads: slot.num_threads,
        format: assignment.format.clone(),
        pretrained: assignment.pretrained.clone(),
        label_column: assignment.label_column.clone(),
        module: assignment.module.clone(),
        objective: assignment.objective.clone(),
        image_size: assignment.image_size,
        normalize_mean: assignment.normalize_mean.clone(),
        normalize_std: assignment.normalize_std.clone(),
    }
}

fn spawn_trainer(shared: &Shared, slot: &SlotConfig) -> std::io::Result<Child> {
    let program = &shared.config.trainer_command[0];
    let mut command = Command::new(program);
    command
        .args(&shared.config.trainer_command[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        // Its own process group, so a Ctrl-C in the terminal reaches the agent, which then
        // cancels cleanly, and not the trainer directly.
        .process_group(0);
    let visible = slot.device.strip_prefix("cuda:").unwrap_or("");
    command.env("CUDA_VISIBLE_DEVICES", visible);
    command.env("OMP_NUM_THREADS", slot.num_threads.to_string());
    command.spawn()
}

async fn train_in_child(
    shared: &Shared,
    slot: &SlotConfig,
    assignment: &v1::Assignment,
    mut stop_rx: watch::Receiver<Option<String>>,
    stderr_tail: Arc<Mutex<Vec<u8>>>,
) -> RunEnd {
    let attempt = assignment.attempt.clone().unwrap_or_default();
    let mut child = match spawn_trainer(shared, slot) {
        Ok(child) => child,
        Err(err) => {
            return RunEnd::SpawnFailed(format!(
                "failed to start the trainer {:?}: {err}",
                shared.config.trainer_command[0]
            ))
        }
    };
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let stderr_task = tokio::spawn(collect_tail(stderr, stderr_tail));

    let request = trainer_request(slot, assignment).encode_length_delimited_to_vec();
    if let Err(err) = stdin.write_all(&request).await {
        tracing::warn!(trial_id = %attempt.trial_id, error = %err, "failed to send the train request");
    }
    // `stdin` stays open until the attempt ends: the trainer exits when it closes.

    let mut result = None;
    let mut error = None;
    let mut end = None;
    loop {
        tokio::select! {
            event = read_event(&mut stdout) => match event {
                Ok(Some(Event::Epoch(metrics))) => {
                    match report_epoch(shared, &attempt, metrics).await {
                        EpochVerdict::Continue => {}
                        EpochVerdict::Stop(reason) => { end = Some(RunEnd::Stopped(reason)); break; }
                        EpochVerdict::Abandon => { end = Some(RunEnd::Abandoned); break; }
                    }
                }
                Ok(Some(Event::Result(r))) => result = Some(r),
                Ok(Some(Event::Error(e))) => error = Some(e),
                Ok(None) => break,
                Err(err) => {
                    error = Some(format!("unreadable trainer output: {err}"));
                    break;
                }
            },
            _ = stop_rx.changed() => {
                let reason = stop_rx.borrow().clone().unwrap_or_default();
                end = Some(RunEnd::Stopped(reason));
                break;
            }
        }
    }
    if end.is_some() {
        let _ = child.start_kill();
    }
    let status = child.wait().await;
    drop(stdin);
    let _ = stderr_task.await;
    match (end, status) {
        (Some(end), _) => end,
        (None, Ok(status)) => RunEnd::Exited {
            status,
            result,
            error,
        },
        (None, Err(err)) => RunEnd::SpawnFailed(format!("failed to wait for the trainer: {err}")),
    }
}

enum EpochVerdict {
    Continue,
    Stop(String),
    Abandon,
}

async fn report_epoch(
    shared: &Shared,
    attempt: &v1::AttemptRef,
    metrics: v1::EpochMetrics,
) -> EpochVerdict {
    let request = v1::ReportEpochRequest {
        attempt: Some(attempt.clone()),
        metrics: Some(metrics),
    };
    let response = with_retries(&shared.client, "ReportEpoch", || {
        let mut client = shared.client.get();
        let request = request.clone();
        async move { client.report_epoch(request).await }
    })
    .await;
    match response {
        Ok(response) if response.stop => {
            if response.pruned {
                tracing::info!(trial_id = %attempt.trial_id, attempt = attempt.attempt, reason = %response.reason, "coordinator pruned the trial; stopping the trainer");
            }
            EpochVerdict::Stop(response.reason)
        }
        Ok(_) => EpochVerdict::Continue,
        Err(status) if matches!(status.code(), Code::FailedPrecondition | Code::NotFound) => {
            tracing::warn!(trial_id = %attempt.trial_id, attempt = attempt.attempt, error = %status.message(), "coordinator rejected the attempt; stopping it");
            EpochVerdict::Abandon
        }
        // The coordinator stayed unreachable; training goes on and the lease decides.
        Err(_) => EpochVerdict::Continue,
    }
}

/// Retries an RPC while the coordinator is unavailable, for up to about 30 s.
async fn with_retries<T, F, Fut>(
    client: &FailoverClient,
    rpc: &str,
    mut call: F,
) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, Status>>,
{
    let mut delay = Duration::from_millis(100);
    let mut waited = Duration::ZERO;
    loop {
        match call().await {
            Ok(response) => return Ok(response.into_inner()),
            Err(status)
                if matches!(
                    status.code(),
                    Code::Unavailable | Code::DeadlineExceeded | Code::Unknown
                ) && waited < Duration::from_secs(30) =>
            {
                client.failed(&status);
                tracing::warn!(rpc, error = %status, retry_in_ms = delay.as_millis() as u64, "coordinator unavailable; retrying");
                tokio::time::sleep(delay).await;
                waited += delay;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(status) => {
                tracing::warn!(rpc, error = %status, "request failed");
                return Err(status);
            }
        }
    }
}

/// Reports how an attempt ended and returns the outcome sent, or `None` when the coordinator
/// had already given the attempt up.
async fn report_end(
    shared: &Shared,
    attempt: &v1::AttemptRef,
    end: RunEnd,
    stderr_tail: String,
) -> Option<Outcome> {
    let mut request = v1::CompleteAttemptRequest {
        attempt: Some(attempt.clone()),
        stderr_tail,
        exit_code: -1,
        ..Default::default()
    };
    match end {
        RunEnd::Abandoned => return None,
        RunEnd::Stopped(reason) => {
            request.outcome = Outcome::Cancelled as i32;
            request.reason = reason;
            request.stderr_tail.clear();
        }
        RunEnd::SpawnFailed(reason) => {
            request.outcome = Outcome::Failed as i32;
            request.reason = reason;
        }
        RunEnd::Exited {
            status,
            result,
            error,
        } => {
            request.exit_code = status.code().unwrap_or(-1);
            match (status.success(), result) {
                (true, Some(result)) => {
                    if let Err(reason) = upload_artifacts(shared, attempt, &result).await {
                        request.outcome = Outcome::Failed as i32;
                        request.reason = reason;
                    } else {
                        request.outcome = Outcome::Succeeded as i32;
                        request.final_metrics = result.final_metrics;
                        request.confusion_matrices = result.confusion_matrices;
                        request.stderr_tail.clear();
                    }
                }
                _ => {
                    request.outcome = Outcome::Failed as i32;
                    request.reason = error.unwrap_or_else(|| describe_exit(status));
                }
            }
        }
    }
    let outcome = Outcome::try_from(request.outcome).unwrap_or(Outcome::Unspecified);
    let result = with_retries(&shared.client, "CompleteAttempt", || {
        let mut client = shared.client.get();
        let request = request.clone();
        async move { client.complete_attempt(request).await }
    })
    .await;
    match result {
        Ok(_) => {
            tracing::info!(trial_id = %attempt.trial_id, attempt = attempt.attempt, outcome = outcome.as_str_name(), reason = %request.reason, "attempt completed")
        }
        Err(status) => {
            tracing::error!(trial_id = %attempt.trial_id, attempt = attempt.attempt, error = %status, "failed to report the attempt's end; its lease will expire")
        }
    }
    Some(outcome)
}

/// Uploads the trainer's predictions of both splits and the files it returned.
async fn upload_artifacts(
    shared: &Shared,
    attempt: &v1::AttemptRef,
    result: &v1::TrainerResult,
) -> Result<(), String> {
    let splits = [
        ("val_predictions", &result.val),
        ("test_predictions", &result.test),
    ];
    let mut files = Vec::new();
    for (name, predictions) in splits {
        let Some(predictions) = predictions else {
            return Err(format!("the trainer returned no {name}"));
        };
        files.push((name.to_string(), predictions.encode_to_vec()));
    }
    for artifact in &result.artifacts {
        files.push((artifact.name.clone(), artifact.content.clone()));
    }
    for (name, content) in files {
        let request = v1::UploadArtifactRequest {
            attempt: Some(attempt.clone()),
            name: name.clone(),
            content,
        };
        with_retries(&shared.client, "UploadArtifact", || {
            let mut client = shared.client.get();
            let request = request.clone();
            async move { client.upload_artifact(request).await }
        })
        .await
        .map_err(|status| format!("uploading {name} failed: {}", status.message()))?;
    }
    Ok(())
}

/// Describes how a trainer ended without a result, naming the signal when it was killed.
pub fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(signal) = status.signal() {
        let name = match signal {
            2 => " (SIGINT)",
            6 => " (SIGABRT: the trainer aborted)",
            7 => " (SIGBUS)",
            9 => " (SIGKILL: killed, for example by the kernel's out-of-memory killer)",
            11 => " (SIGSEGV: the trainer crashed)",
            15 => " (SIGTERM)",
            _ => "",
        };
        return format!("trainer was killed by signal {signal}{name}");
    }
    match status.code() {
        Some(code) => format!("trainer exited with status {code} without a result"),
        None => "trainer ended without an exit status".to_string(),
    }
}

/// Keeps the last `STDERR_TAIL_BYTES` of a stream.
async fn collect_tail(mut stream: impl AsyncRead + Unpin, tail: Arc<Mutex<Vec<u8>>>) {
    let mut buffer = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buffer).await {
        if n == 0 {
            break;
        }
        let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
        tail.extend_from_slice(&buffer[..n]);
        let excess = tail.len().saturating_sub(STDERR_TAIL_BYTES);
        tail.drain(..excess);
    }
}

/// Reads one length-delimited `TrainerEvent`; `None` at a clean end of stream.
async fn read_event(stdout: &mut ChildStdout) -> std::io::Result<Option<Event>> {
    let mut length: u64 = 0;
    for (position, shift) in (0..64).step_by(7).enumerate() {
        let byte = match stdout.read_u8().await {
            Ok(byte) => byte,
            Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof && position == 0 => {
                return Ok(None)
            }
            Err(err) => return Err(err),
        };
        length |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            break;
        }
    }
    if length > MAX_TRAINER_MESSAGE_BYTES {
        return Err(std::io::Error::other(format!(
            "message of {length} bytes is over the limit"
        )));
    }
    let mut buffer = vec![0u8; length as usize];
    stdout.read_exact(&mut buffer).await?;
    let message = v1::TrainerEvent::decode(buffer.as_slice()).map_err(std::io::Error::other)?;
    Ok(message.event)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_selection_parses() {
        assert_eq!("all".parse::<GpuSelection>(), Ok(GpuSelection::All));
        assert_eq!("none".parse::<GpuSelection>(), Ok(GpuSelection::None));
        assert_eq!(
            "0,2".parse::<GpuSelection>(),
            Ok(GpuSelection::List(vec![0, 2]))
        );
        assert!("gpu0"
            .parse::<GpuSelection>()
            .unwrap_err()
            .contains("\"gpu0\""));
    }

    #[test]
    fn gpu_slots_group_devices() {
        let slots = gpu_slots(&[0, 1, 2, 3, 4], 2, 4).unwrap();
        let devices: Vec<&str> = slots.iter().map(|s| s.device.as_str()).collect();
        assert_eq!(devices, vec!["cuda:0,1", "cuda:2,3"]);
        assert_eq!(slots[1].index, 1);
    }

    #[test]
    fn gpu_slots_reject_oversized_groups() {
        let err = gpu_slots(&[0], 2, 1).unwrap_err();
        assert_eq!(err, "invalid GPUs per trial 2: only 1 GPU(s) selected");
    }

    #[test]
    fn no_gpu_falls_back_to_cpu_slots() {
        let slots = plan_slots(&GpuSelection::None, 1, 3, 2).unwrap();
        assert_eq!(slots.len(), 3);
        assert!(slots
            .iter()
            .all(|s| s.device == "cpu" && s.num_threads == 2));
    }

    #[test]
    fn missing_gpu_is_rejected() {
        // No host has 1001 CUDA devices.
        let err = plan_slots(&GpuSelection::List(vec![1000]), 1, 1, 1).unwrap_err();
        assert!(err.starts_with("invalid GPU 1000"), "{err}");
    }
}
