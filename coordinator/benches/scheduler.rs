//! Measures what the coordinator costs per trial: N simulated workers drive one random-search
//! sweep through the real gRPC API and a durable state store, with no trainer behind them. The
//! store is the embedded redb store by default, or etcd with `--store etcd://HOST:PORT/PREFIX`.
//!
//! Each simulated worker registers, then loops AcquireTrial -> ReportEpoch (one epoch) ->
//! CompleteAttempt (succeeded) until no trial is left. The run then checks that the sweep
//! succeeded with every trial succeeded on exactly one attempt, through the API and, for the
//! embedded store, in the store file. It fails loudly otherwise. A bare redb commit and a bare
//! `fdatasync` on the same disk are timed as well, to show the floor that the embedded store
//! puts under every state change.
//!
//! Every result is one JSON line on stdout, and progress goes to stderr.
//! `scripts/bench_scheduler` turns the lines into tables.
//!
//! ```text
//! cargo bench -p tunefleet-coordinator --bench scheduler -- \
//!     [--workers 1,16,256] [--trials 2000,2000,5000] [--floor-commits 500]
//!     [--store embedded|etcd://HOST:PORT/PREFIX]
//! ```
//!
//! The embedded store lives in a temporary directory under `$TMPDIR` (else `/tmp`), so that
//! directory's disk is the one measured.

use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tokio::sync::{oneshot, Barrier};
use tonic::transport::{Channel, Endpoint};
use tunefleet_coordinator::artifacts::LocalArtifacts;
use tunefleet_coordinator::service::MAX_MESSAGE_BYTES;
use tunefleet_coordinator::store::{EmbeddedStore, Snapshot, StateStore, StoreError, WriteBatch};
use tunefleet_coordinator::{Coordinator, CoordinatorConfig};
use tunefleet_proto::v1::sweep_service_client::SweepServiceClient;
use tunefleet_proto::v1::worker_service_client::WorkerServiceClient;
use tunefleet_proto::v1::{self, AttemptStatus, Outcome, SweepStatus, TrialStatus};

/// Simulated workers that share one HTTP/2 connection (one tonic `Channel`). Real workers each
/// open their own connection, and sharing only keeps the socket count down: tonic 0.14's server
/// sets no limit on concurrent streams per connection.
const WORKERS_PER_CHANNEL: usize = 16;
/// How long an AcquireTrial call may wait for work. Every trial is created on demand, so a
/// worker only waits at the end of the sweep, when the response is "no trial left".
const ACQUIRE_WAIT_MS: u32 = 10;
/// Maximum time one scenario may run before the bench fails it.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(600);
const DEFAULT_WORKERS: &[usize] = &[1, 16, 256];
const DEFAULT_TRIALS: &[u32] = &[2000, 2000, 5000];
const DEFAULT_FLOOR_COMMITS: usize = 500;
/// Record sizes of the floor's redb commits, in bytes. They are rough estimates of the encoded
/// sweep record (it contains the spec text) and of a one-epoch trial record, the two records
/// the coordinator writes on most state changes.
const FLOOR_SWEEP_BYTES: usize = 1024;
const FLOOR_TRIAL_BYTES: usize = 512;
const METRIC: &str = "val_accuracy";

fn main() -> Result<()> {
    let options = Options::parse(std::env::args().skip(1))?;
    for (&num_workers, &num_trials) in options.workers.iter().zip(&options.trials) {
        eprintln!("scheduler bench: {num_workers} workers, {num_trials} trials");
        let result = run_scenario(num_workers, num_trials, &options.store)
            .with_context(|| format!("scenario with {num_workers} workers failed"))?;
        println!("{}", result.to_json());
    }
    eprintln!(
        "scheduler bench: store floor, {} commits each",
        options.floor_commits
    );
    for floor in measure_store_floor(options.floor_commits)? {
        println!("{}", floor.to_json());
    }
    Ok(())
}

/// Command-line settings. `cargo bench` adds `--bench`, which is accepted and ignored.
struct Options {
    workers: Vec<usize>,
    /// Trials of each scenario, one per entry of `workers`.
    trials: Vec<u32>,
    floor_commits: usize,
    /// "embedded", or an etcd URL `etcd://HOST:PORT/PREFIX` to measure the etcd store.
    store: String,
}

impl Options {
    fn parse(args: impl Iterator<Item = String>) -> Result<Self> {
        let mut workers = DEFAULT_WORKERS.to_vec();
        let mut trials = None;
        let mut floor_commits = DEFAULT_FLOOR_COMMITS;
        let mut store = "embedded".to_string();
        let mut args = args;
        while let Some(arg) = args.next() {
            let mut value = || {
                args.next()
                    .with_context(|| format!("missing value of {arg}"))
            };
            match arg.as_str() {
                "--bench" => {}
                "--workers" => workers = parse_list(&value()?, "--workers")?,
                "--trials" => trials = Some(parse_list(&value()?, "--trials")?),
                "--store" => store = value()?,
                "--floor-commits" => {
                    floor_commits = value()?.parse().context("invalid --floor-commits")?
                }
                _ => bail!(
                    "unknown argument {arg:?}: expected --workers, --trials, --store or \
                     --floor-commits"
                ),
            }
        }
        let trials = match trials {
            Some(trials) => trials,
            None if workers == DEFAULT_WORKERS => DEFAULT_TRIALS.to_vec(),
            None => bail!("--workers other than the default needs --trials"),
        };
        let trials = match trials.as_slice() {
            [single] => vec![*single; workers.len()],
            _ => trials,
        };
        ensure!(
            trials.len() == workers.len(),
            "--trials has {} entries and --workers {}: expected one count per worker count, \
             or one for all",
            trials.len(),
            workers.len()
        );
        ensure!(
            workers.iter().all(|&n| n > 0),
            "invalid --workers: counts must be > 0"
        );
        Ok(Self {
            workers,
            trials,
            floor_commits,
            store,
        })
    }
}

fn parse_list<T: std::str::FromStr>(text: &str, flag: &str) -> Result<Vec<T>> {
    text.split(',')
        .map(|item| {
            item.trim()
                .parse()
                .ok()
                .with_context(|| format!("invalid {flag} entry {item:?}: expected a number"))
        })
        .collect()
}

/// Counts the store's write transactions and the time spent in them.
#[derive(Default)]
struct StoreCounters {
    num_writes: AtomicU64,
    write_nanos: AtomicU64,
}

/// Store writes over some span of a run.
#[derive(Clone, Copy, Default)]
struct StoreUsage {
    num_writes: u64,
    write_time: Duration,
}

impl StoreCounters {
    fn usage(&self) -> StoreUsage {
        StoreUsage {
            num_writes: self.num_writes.load(Ordering::Relaxed),
            write_time: Duration::from_nanos(self.write_nanos.load(Ordering::Relaxed)),
        }
    }
}

impl StoreUsage {
    fn since(self, earlier: StoreUsage) -> StoreUsage {
        StoreUsage {
            num_writes: self.num_writes - earlier.num_writes,
            write_time: self.write_time - earlier.write_time,
        }
    }
}

/// A state store with counters around `write`. Empty batches are not counted, because both
/// stores skip them without a transaction.
struct CountingStore {
    inner: Box<dyn StateStore>,
    counters: Arc<StoreCounters>,
}

impl StateStore for CountingStore {
    fn load(&self) -> Result<Snapshot, StoreError> {
        self.inner.load()
    }

    fn write(&self, batch: &WriteBatch) -> Result<(), StoreError> {
        let started = Instant::now();
        let result = self.inner.write(batch);
        if !batch.is_empty() {
            let nanos = started.elapsed().as_nanos() as u64;
            self.counters.num_writes.fetch_add(1, Ordering::Relaxed);
            self.counters
                .write_nanos
                .fetch_add(nanos, Ordering::Relaxed);
        }
        result
    }
}

/// Builds the spec of the random search every scenario runs: four parameters, one epoch, no
/// concurrency cap. The dataset is never opened because no trainer runs.
fn sweep_spec(num_trials: u32) -> String {
    format!(
        r#"name = "scheduler-bench"

[objective]
metric = "{METRIC}"
goal = "maximize"

[search]
method = "random"
max_trials = {num_trials}
seed = 1

[parameters]
lr = {{ distribution = "log_uniform", min = 1e-4, max = 1e-1 }}
hidden_size = [64, 128, 256]
dropout = {{ distribution = "uniform", min = 0.0, max = 0.5 }}
optimizer = ["adam", "sgd"]

[task]
model = "mlp"
dataset = "bench.npz"
epochs = 1
"#
    )
}

/// One trial's three calls as the worker timed them.
#[derive(Clone, Copy)]
struct TrialTiming {
    acquire: Duration,
    report: Duration,
    complete: Duration,
}

/// Timings of one simulated worker.
#[derive(Default)]
struct WorkerLog {
    timings: Vec<TrialTiming>,
    /// When its first successful AcquireTrial was sent.
    first_acquire: Option<Instant>,
    /// When its last CompleteAttempt returned.
    last_complete: Option<Instant>,
}

/// Logs of all simulated workers and the store writes they caused.
struct Drive {
    logs: Vec<WorkerLog>,
    num_channels: usize,
    /// Store writes from the moment every worker was registered until the last one stopped.
    store: StoreUsage,
}

/// The outcome of one scenario.
struct ScenarioResult {
    num_workers: usize,
    num_channels: usize,
    num_trials: u32,
    wall: Duration,
    timings: Vec<TrialTiming>,
    store: StoreUsage,
}

/// Opens the state store a scenario measures: the embedded store in `data_dir`, or etcd under
/// a fresh prefix so that runs do not see each other's records.
fn open_store(store: &str, data_dir: &std::path::Path) -> Result<Box<dyn StateStore>> {
    if store == "embedded" {
        let embedded = EmbeddedStore::open(data_dir).context("failed to open the store")?;
        return Ok(Box::new(embedded));
    }
    let rest = store.strip_prefix("etcd://").with_context(|| {
        format!("invalid --store {store:?}: expected embedded or etcd://HOST:PORT/PREFIX")
    })?;
    let (host, prefix) = rest.split_once('/').unwrap_or((rest, "bench"));
    let prefix = format!("{prefix}-{}", uuid::Uuid::new_v4().simple());
    let etcd = tunefleet_coordinator::store::etcd::EtcdStore::connect(
        vec![format!("http://{host}")],
        prefix,
        tunefleet_coordinator::store::etcd::EtcdOptions::default(),
    )
    .context("failed to connect to etcd")?;
    Ok(Box::new(etcd))
}

/// Runs one sweep of `num_trials` trials with `num_workers` simulated workers and checks its
/// outcome. The coordinator and the workers run on separate tokio runtimes, as they would in
/// separate processes, but share this machine's cores.
fn run_scenario(num_workers: usize, num_trials: u32, store_url: &str) -> Result<ScenarioResult> {
    let data_dir = tempfile::tempdir().context("failed to create the data directory")?;
    let counters = Arc::new(StoreCounters::default());
    let store = CountingStore {
        inner: open_store(store_url, data_dir.path())?,
        counters: Arc::clone(&counters),
    };
    let config = CoordinatorConfig::new(data_dir.path());
    let coordinator = Coordinator::with_stores(
        config,
        Box::new(store),
        Box::new(LocalArtifacts::open(data_dir.path().join("artifacts"))?),
    )?;
    let server_runtime = Runtime::new().context("failed to start the coordinator runtime")?;
    let spec = sweep_spec(num_trials);
    let base_dir = data_dir.path().display().to_string();
    let sweep = server_runtime.block_on(coordinator.create_sweep(&spec, &base_dir))?;

    let listener = server_runtime
        .block_on(TcpListener::bind("127.0.0.1:0"))
        .context("failed to bind 127.0.0.1:0")?;
    let address = listener.local_addr()?;
    let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
    let shutdown = async {
        let _ = shutdown_rx.await;
    };
    let server = server_runtime.spawn(coordinator.serve(listener, shutdown));

    let client_runtime = Runtime::new().context("failed to start the worker runtime")?;
    let url = format!("http://{address}");
    let drive = drive_workers(&url, num_workers, num_trials as usize, &counters);
    let outcome = client_runtime.block_on(async {
        tokio::time::timeout(SCENARIO_TIMEOUT, drive)
            .await
            .with_context(|| format!("timed out after {SCENARIO_TIMEOUT:?}"))?
    });
    let verified = outcome.and_then(|drive| {
        client_runtime.block_on(verify_through_api(&url, &sweep.sweep_id, num_trials))?;
        Ok(drive)
    });

    let _ = shutdown_tx.send(());
    server_runtime
        .block_on(server)
        .context("the coordinator task panicked")?
        .context("the coordinator failed")?;
    // Dropping the runtime drops its remaining tasks and with them the last handles on the
    // store, so the file can be opened again.
    drop(server_runtime);
    let Drive {
        logs,
        num_channels,
        store,
    } = verified?;
    // The etcd store was checked through the API; only the embedded file is reopened here.
    if store_url == "embedded" {
        verify_store(data_dir.path(), num_trials)?;
    }

    let first = logs.iter().filter_map(|log| log.first_acquire).min();
    let last = logs.iter().filter_map(|log| log.last_complete).max();
    let (Some(first), Some(last)) = (first, last) else {
        bail!("no worker completed a trial");
    };
    let timings: Vec<TrialTiming> = logs.into_iter().flat_map(|log| log.timings).collect();
    ensure!(
        timings.len() == num_trials as usize,
        "workers completed {} trials, expected {num_trials}",
        timings.len()
    );
    Ok(ScenarioResult {
        num_workers,
        num_channels,
        num_trials,
        wall: last - first,
        timings,
        store,
    })
}

/// Registers every worker, then starts them together and collects their logs.
async fn drive_workers(
    url: &str,
    num_workers: usize,
    num_trials: usize,
    counters: &StoreCounters,
) -> Result<Drive> {
    let num_channels = num_workers.div_ceil(WORKERS_PER_CHANNEL);
    let mut channels = Vec::with_capacity(num_channels);
    for _ in 0..num_channels {
        channels.push(connect(url).await?);
    }
    let mut workers = Vec::with_capacity(num_workers);
    for index in 0..num_workers {
        let channel = channels[index / WORKERS_PER_CHANNEL].clone();
        let mut client = WorkerServiceClient::new(channel);
        let worker_id = register(&mut client, index).await?;
        workers.push((client, worker_id));
    }

    let before = counters.usage();
    let barrier = Arc::new(Barrier::new(num_workers));
    let mut tasks = Vec::with_capacity(num_workers);
    for (client, worker_id) in workers {
        let barrier = Arc::clone(&barrier);
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            run_worker(client, worker_id, num_trials).await
        }));
    }
    let mut logs = Vec::with_capacity(num_workers);
    for task in tasks {
        logs.push(task.await.context("a worker task panicked")??);
    }
    Ok(Drive {
        logs,
        num_channels,
        store: counters.usage().since(before),
    })
}

async fn connect(url: &str) -> Result<Channel> {
    Endpoint::from_shared(url.to_string())?
        .connect()
        .await
        .with_context(|| format!("failed to connect to {url}"))
}

async fn register(client: &mut WorkerServiceClient<Channel>, index: usize) -> Result<String> {
    let request = v1::RegisterWorkerRequest {
        hostname: format!("bench-worker-{index}"),
        slots: vec![v1::Slot {
            index: 0,
            device: "cpu".to_string(),
            num_threads: 1,
        }],
        version: env!("CARGO_PKG_VERSION").to_string(),
        ..Default::default()
    };
    let response = client
        .register_worker(request)
        .await
        .context("RegisterWorker failed")?;
    let response = response.into_inner();
    Ok(response.worker_id)
}

/// Runs trials until AcquireTrial returns none. The loop is bounded by the sweep's size: a
/// worker that is handed more than every trial of the sweep fails the run.
async fn run_worker(
    mut client: WorkerServiceClient<Channel>,
    worker_id: String,
    num_trials: usize,
) -> Result<WorkerLog> {
    let mut log = WorkerLog::default();
    for _ in 0..=num_trials {
        let request = v1::AcquireTrialRequest {
            worker_id: worker_id.clone(),
            slot: 0,
            wait_ms: ACQUIRE_WAIT_MS,
        };
        let sent = Instant::now();
        let response = client
            .acquire_trial(request)
            .await
            .context("AcquireTrial failed")?;
        let acquired = Instant::now();
        let response = response.into_inner();
        let Some(assignment) = response.assignment else {
            return Ok(log);
        };
        log.first_acquire.get_or_insert(sent);
        let attempt = assignment
            .attempt
            .context("AcquireTrial returned an assignment without an attempt")?;
        let metric = v1::Metric {
            name: METRIC.to_string(),
            value: simulated_accuracy(assignment.trial_index),
        };

        let report = v1::ReportEpochRequest {
            attempt: Some(attempt.clone()),
            metrics: Some(v1::EpochMetrics {
                epoch: 1,
                metrics: vec![metric.clone()],
                reported_at_ms: 0,
            }),
        };
        let verdict = client
            .report_epoch(report)
            .await
            .context("ReportEpoch failed")?;
        let reported = Instant::now();
        let verdict = verdict.into_inner();
        ensure!(
            !verdict.stop,
            "ReportEpoch told trial {} to stop: {}",
            attempt.trial_id,
            verdict.reason
        );

        let complete = v1::CompleteAttemptRequest {
            attempt: Some(attempt),
            outcome: Outcome::Succeeded as i32,
            final_metrics: vec![metric],
            ..Default::default()
        };
        client
            .complete_attempt(complete)
            .await
            .context("CompleteAttempt failed")?;
        let completed = Instant::now();
        log.last_complete = Some(completed);
        log.timings.push(TrialTiming {
            acquire: acquired - sent,
            report: reported - acquired,
            complete: completed - reported,
        });
    }
    bail!("worker {worker_id} was handed more than the sweep's {num_trials} trials")
}

/// Returns a deterministic stand-in for a trainer's validation accuracy.
fn simulated_accuracy(trial_index: u32) -> f64 {
    0.5 + f64::from(trial_index % 100) / 200.0
}

/// Checks through SweepService that the sweep succeeded with every trial succeeded on exactly
/// one attempt.
async fn verify_through_api(url: &str, sweep_id: &str, num_trials: u32) -> Result<()> {
    let mut client =
        SweepServiceClient::new(connect(url).await?).max_decoding_message_size(MAX_MESSAGE_BYTES);
    let sweep = client
        .get_sweep(v1::GetSweepRequest {
            sweep_id: sweep_id.to_string(),
        })
        .await?
        .into_inner();
    ensure!(
        sweep.status == SweepStatus::Succeeded as i32,
        "sweep {sweep_id} ended with status {:?} ({}), expected succeeded",
        SweepStatus::try_from(sweep.status),
        sweep.reason
    );
    let counts = sweep.counts.unwrap_or_default();
    ensure!(
        counts.succeeded == num_trials,
        "sweep {sweep_id} counts {} succeeded trials, expected {num_trials}",
        counts.succeeded
    );
    let trials = client
        .list_trials(v1::ListTrialsRequest {
            sweep_id: sweep_id.to_string(),
        })
        .await?
        .into_inner()
        .trials;
    check_trials(&trials, num_trials).context("ListTrials")
}

/// Checks the store file the same way, after the coordinator released it.
fn verify_store(data_dir: &std::path::Path, num_trials: u32) -> Result<()> {
    let store = EmbeddedStore::open(data_dir).context("failed to reopen the store")?;
    let snapshot = store.load()?;
    ensure!(
        snapshot.sweeps.len() == 1,
        "the store holds {} sweeps, expected 1",
        snapshot.sweeps.len()
    );
    ensure!(
        snapshot.sweeps[0].status == SweepStatus::Succeeded as i32,
        "the stored sweep is not succeeded"
    );
    check_trials(&snapshot.trials, num_trials).context("the store")
}

fn check_trials(trials: &[v1::Trial], num_trials: u32) -> Result<()> {
    ensure!(
        trials.len() == num_trials as usize,
        "{} trials, expected {num_trials}",
        trials.len()
    );
    for trial in trials {
        ensure!(
            trial.status == TrialStatus::Succeeded as i32,
            "trial {} has status {:?}, expected succeeded",
            trial.trial_id,
            TrialStatus::try_from(trial.status)
        );
        ensure!(
            trial.attempts.len() == 1,
            "trial {} has {} attempts, expected 1",
            trial.trial_id,
            trial.attempts.len()
        );
        ensure!(
            trial.attempts[0].status == AttemptStatus::Succeeded as i32,
            "trial {} attempt 1 is not succeeded",
            trial.trial_id
        );
    }
    Ok(())
}

impl ScenarioResult {
    fn to_json(&self) -> String {
        let num_timed = self.timings.len() as f64;
        let mut acquire: Vec<Duration> = self.timings.iter().map(|t| t.acquire).collect();
        acquire.sort_unstable();
        let mean_of = |part: fn(&TrialTiming) -> Duration| {
            self.timings
                .iter()
                .map(part)
                .sum::<Duration>()
                .as_secs_f64()
                * 1e3
                / num_timed
        };
        let acquire_mean_ms = mean_of(|t| t.acquire);
        let report_mean_ms = mean_of(|t| t.report);
        let complete_mean_ms = mean_of(|t| t.complete);
        let wall_s = self.wall.as_secs_f64();
        let num_writes = self.store.num_writes as f64;
        let store_write_mean_ms = millis(self.store.write_time) / num_writes.max(1.0);
        format!(
            concat!(
                r#"{{"kind": "scheduler", "system": "tunefleet", "concurrency": {}, "#,
                r#""connections": {}, "trials": {}, "wall_s": {:.3}, "trials_per_s": {:.1}, "#,
                r#""acquire_p50_ms": {:.3}, "acquire_p99_ms": {:.3}, "acquire_mean_ms": {:.3}, "#,
                r#""report_mean_ms": {:.3}, "complete_mean_ms": {:.3}, "overhead_ms": {:.3}, "#,
                r#""store_writes": {}, "store_writes_per_trial": {:.2}, "#,
                r#""store_write_mean_ms": {:.3}, "store_busy_fraction": {:.3}}}"#
            ),
            self.num_workers,
            self.num_channels,
            self.num_trials,
            wall_s,
            f64::from(self.num_trials) / wall_s,
            millis(percentile(&acquire, 50.0)),
            millis(percentile(&acquire, 99.0)),
            acquire_mean_ms,
            report_mean_ms,
            complete_mean_ms,
            acquire_mean_ms + report_mean_ms + complete_mean_ms,
            self.store.num_writes,
            num_writes / f64::from(self.num_trials),
            store_write_mean_ms,
            self.store.write_time.as_secs_f64() / wall_s,
        )
    }
}

/// Returns the nearest-rank percentile of sorted samples.
fn percentile(sorted: &[Duration], pct: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (pct / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// Latencies of one floor measurement.
struct FloorResult {
    name: &'static str,
    latencies: Vec<Duration>,
}

impl FloorResult {
    fn to_json(&self) -> String {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        let total: Duration = sorted.iter().sum();
        let mean_ms = millis(total) / sorted.len().max(1) as f64;
        format!(
            concat!(
                r#"{{"kind": "floor", "system": "{}", "operations": {}, "per_s": {:.1}, "#,
                r#""p50_ms": {:.3}, "p99_ms": {:.3}, "mean_ms": {:.3}}}"#
            ),
            self.name,
            sorted.len(),
            sorted.len() as f64 / total.as_secs_f64(),
            millis(percentile(&sorted, 50.0)),
            millis(percentile(&sorted, 99.0)),
            mean_ms,
        )
    }
}

/// Times, one after another on one thread: redb commits of a sweep-sized and a trial-sized
/// record with the durability the coordinator uses (immediate, one fsync per commit), the
/// same commits without fsync, and a bare 4 KiB write with `fdatasync`.
fn measure_store_floor(num_commits: usize) -> Result<Vec<FloorResult>> {
    let dir = tempfile::tempdir().context("failed to create the floor directory")?;
    let db = redb::Database::create(dir.path().join("floor.redb"))?;
    let table: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("records");
    let sweep_record = vec![7u8; FLOOR_SWEEP_BYTES];
    let trial_record = vec![9u8; FLOOR_TRIAL_BYTES];
    let mut results = Vec::new();
    let durabilities = [
        ("redb commit, immediate", redb::Durability::Immediate),
        ("redb commit, no fsync", redb::Durability::None),
    ];
    for (name, durability) in durabilities {
        let mut latencies = Vec::with_capacity(num_commits);
        for index in 0..num_commits {
            let started = Instant::now();
            let mut txn = db.begin_write()?;
            txn.set_durability(durability);
            {
                let mut records = txn.open_table(table)?;
                records.insert("sweep", sweep_record.as_slice())?;
                let trial_key = format!("{name}/{index}");
                records.insert(trial_key.as_str(), trial_record.as_slice())?;
            }
            txn.commit()?;
            latencies.push(started.elapsed());
        }
        results.push(FloorResult { name, latencies });
    }

    let path = dir.path().join("fsync.bin");
    let mut file =
        File::create(&path).with_context(|| format!("failed to create {}", path.display()))?;
    let page = vec![1u8; 4096];
    let mut latencies = Vec::with_capacity(num_commits);
    for _ in 0..num_commits {
        let started = Instant::now();
        file.write_all(&page)?;
        file.sync_data()?;
        latencies.push(started.elapsed());
    }
    results.push(FloorResult {
        name: "4 KiB write + fdatasync",
        latencies,
    });
    Ok(results)
}
