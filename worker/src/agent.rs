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
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tunefleet_proto::v1::worker_service_client::WorkerServiceClient;
use tunefleet_proto::v1::{self, trainer_event::Event, Outcome};

/// Bytes of a failed trainer's stderr kept for the attempt record.
const STDERR_TAIL_BYTES: usize = 4096;
/// How long a slot's `AcquireTrial` call waits for work before asking again, in milliseconds.
const ACQUIRE_WAIT_MS: u32 = 10_000;
/// The longest a trainer message may be, in bytes; larger ones mean a corrupt stream.
const MAX_TRAINER_MESSAGE_BYTES: u64 = 256 * 1024 * 1024;

/// One unit a trial runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotConfig {
    pub index: u32,
    /// "cpu" or "cuda:N", N being the host's device number.
    pub device: String,
    pub num_threads: u32,
}

/// Settings of one worker agent.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The coordinator's URL, such as `http://127.0.0.1:7800`.
    pub coordinator_url: String,
    pub slots: Vec<SlotConfig>,
    /// The program and arguments that start a trainer process.
    pub trainer_command: Vec<OsString>,
    pub hostname: String,
}

/// Returns one slot per CUDA device when libtorch sees CUDA, otherwise `num_cpu_slots` CPU
/// slots of `num_threads` threads each.
pub fn detect_slots(num_cpu_slots: u32, num_threads: u32) -> Vec<SlotConfig> {
    let num_gpus = if tch::Cuda::is_available() {
        tch::Cuda::device_count() as u32
    } else {
        0
    };
    if num_gpus > 0 {
        return (0..num_gpus)
            .map(|i| SlotConfig {
                index: i,
                device: format!("cuda:{i}"),
                num_threads: num_threads.max(1),
            })
            .collect();
    }
    (0..num_cpu_slots.max(1))
        .map(|i| SlotConfig {
            index: i,
            device: "cpu".to_string(),
            num_threads: num_threads.max(1),
        })
        .collect()
}

type AttemptKey = (String, u32);
/// Running attempts by (trial id, attempt number), each with the switch that stops it.
type RunningAttempts = HashMap<AttemptKey, (v1::AttemptRef, watch::Sender<Option<String>>)>;

/// State shared by the agent's slot loops and its heartbeat loop.
struct Shared {
    client: WorkerServiceClient<Channel>,
    config: WorkerConfig,
    worker_id: RwLock<String>,
    /// Stop switches of the attempts running now.
    running: Mutex<RunningAttempts>,
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
    anyhow::ensure!(!config.slots.is_empty(), "a worker needs at least one slot");
    anyhow::ensure!(
        !config.trainer_command.is_empty(),
        "the trainer command is empty"
    );
    let channel = Endpoint::from_shared(config.coordinator_url.clone())
        .with_context(|| format!("invalid coordinator URL {:?}", config.coordinator_url))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| {
            format!(
                "failed to connect to the coordinator at {}",
                config.coordinator_url
            )
        })?;
    let client = WorkerServiceClient::new(channel)
        .max_decoding_message_size(64 * 1024 * 1024)
        .max_encoding_message_size(64 * 1024 * 1024);
    let (worker_id, heartbeat_interval) = register(&mut client.clone(), &config).await?;
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
    });

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let heartbeat = tokio::spawn(heartbeat_loop(
        shared.clone(),
        heartbeat_interval,
        shutdown_rx.clone(),
    ));
    let slot_tasks: Vec<_> = config
        .slots
        .iter()
        .map(|slot| tokio::spawn(slot_loop(shared.clone(), slot.clone(), shutdown_rx.clone())))
        .collect();

    shutdown.await;
    tracing::info!("worker shutting down; stopping running attempts");
    let _ = shutdown_tx.send(true);
    shared.stop_all("the worker is shutting down");
    for task in slot_tasks {
        let _ = task.await;
    }
    heartbeat.abort();
    tracing::info!("worker stopped");
    Ok(())
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
/// coordinator no longer knows this worker, it registers again under a new id and stops every
/// running attempt, since attempts of the old id can no longer report.
async fn heartbeat_loop(
    shared: Arc<Shared>,
    interval: Duration,
    mut shutdown_rx: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown_rx.changed() => return,
        }
        let running: Vec<v1::AttemptRef> =
            shared.running().values().map(|(a, _)| a.clone()).collect();
        let request = v1::HeartbeatRequest {
            worker_id: shared.worker_id(),
            running,
        };
        match shared.client.clone().heartbeat(request).await {
            Ok(response) => {
                for attempt in response.into_inner().stop {
                    tracing::info!(trial_id = %attempt.trial_id, attempt = attempt.attempt, "coordinator stopped the attempt");
                    shared.stop_attempt(&attempt, "stopped by the coordinator");
                }
            }
            Err(status) if status.code() == Code::NotFound => {
                tracing::warn!(error = %status.message(), "coordinator does not know this worker; registering again");
                shared.stop_all("the worker registered again");
                match register(&mut shared.client.clone(), &shared.config).await {
                    Ok((worker_id, _)) => {
                        tracing::info!(%worker_id, "worker registered again");
                        *shared.worker_id.write().unwrap_or_else(|e| e.into_inner()) = worker_id;
                    }
                    Err(err) => tracing::error!(error = %err, "registering again failed"),
                }
            }
            Err(status) => {
                tracing::warn!(error = %status, "heartbeat failed; retrying at the next interval")
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
        let mut client = shared.client.clone();
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
                tracing::warn!(slot = slot.index, error = %status, "acquiring a trial failed; retrying in 1 s");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown_rx.changed() => return,
                }
            }
        }
    }
}

/// How an attempt's trainer run ended, as the worker saw it.
enum RunEnd {
    /// The trainer exited; `result` is set when it wrote one.
    Exited {
        status: ExitStatus,
        result: Option<v1::TrainerResult>,
        error: Option<String>,
    },
    /// The worker stopped the trainer because it was told to.
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

    let stderr_tail = Arc::new(Mutex::new(Vec::new()));
    let end = train_in_child(shared, slot, &assignment, stop_rx, stderr_tail.clone()).await;
    shared.running().remove(&key);
    let stderr_tail =
        String::from_utf8_lossy(&stderr_tail.lock().unwrap_or_else(|e| e.into_inner()))
            .into_owned();
    report_end(shared, &attempt, end, stderr_tail).await;
}

fn trainer_request(slot: &SlotConfig, assignment: &v1::Assignment) -> v1::TrainRequest {
    // The child sees only its slot's GPU, as device 0.
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
    let response = with_retries("ReportEpoch", || {
        let mut client = shared.client.clone();
        let request = request.clone();
        async move { client.report_epoch(request).await }
    })
    .await;
    match response {
        Ok(response) if response.stop => EpochVerdict::Stop(response.reason),
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
async fn with_retries<T, F, Fut>(rpc: &str, mut call: F) -> Result<T, Status>
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

async fn report_end(shared: &Shared, attempt: &v1::AttemptRef, end: RunEnd, stderr_tail: String) {
    let mut request = v1::CompleteAttemptRequest {
        attempt: Some(attempt.clone()),
        stderr_tail,
        exit_code: -1,
        ..Default::default()
    };
    match end {
        RunEnd::Abandoned => return,
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
                    if let Err(reason) = upload_predictions(shared, attempt, &result).await {
                        request.outcome = Outcome::Failed as i32;
                        request.reason = reason;
                    } else {
                        request.outcome = Outcome::Succeeded as i32;
                        request.final_metrics = result.final_metrics;
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
    let result = with_retries("CompleteAttempt", || {
        let mut client = shared.client.clone();
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
}

async fn upload_predictions(
    shared: &Shared,
    attempt: &v1::AttemptRef,
    result: &v1::TrainerResult,
) -> Result<(), String> {
    let splits = [
        ("val_predictions", &result.val),
        ("test_predictions", &result.test),
    ];
    for (name, predictions) in splits {
        let Some(predictions) = predictions else {
            return Err(format!("the trainer returned no {name}"));
        };
        let request = v1::UploadArtifactRequest {
            attempt: Some(attempt.clone()),
            name: name.to_string(),
            content: predictions.encode_to_vec(),
        };
        with_retries("UploadArtifact", || {
            let mut client = shared.client.clone();
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
