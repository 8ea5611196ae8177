//! The coordinator service: the state machine behind a lock, the store it writes through, and
//! the gRPC handlers of `SweepService` and `WorkerService`.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, watch, Notify};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tunefleet_proto::v1::sweep_service_server::{SweepService, SweepServiceServer};
use tunefleet_proto::v1::worker_service_server::{WorkerService, WorkerServiceServer};
use tunefleet_proto::v1::{self, sweep_event::Kind as EventKind, SweepStatus};
use tunefleet_proto::{now_ms, SweepId, TrialId, WorkerId};

use crate::artifacts::{ArtifactStore, LocalArtifacts};
use crate::error::CoordinatorError;
use crate::observe::{self, CoordinatorMetrics, MetricsEndpoint, StateCounts};
use crate::security::{
    log_rejection, principal_of, registration_key, require_write, AccessPolicy, Principal,
    RegistrationLimiter, ServerSecurity,
};
use crate::spec::SweepSpec;
use crate::state::{Changes, ReportVerdict, Scheduler, SchedulerConfig};
use crate::store::{EmbeddedStore, StateStore, WriteBatch};
use crate::summary;

/// The largest gRPC message the coordinator sends or the worker API accepts, in bytes. Artifact
/// uploads are the largest: a ResNet-50 checkpoint has about 94 MiB.
pub const MAX_MESSAGE_BYTES: usize = tunefleet_proto::MAX_ARTIFACT_MESSAGE_BYTES;
/// The largest request the sweep API accepts, in bytes: a spec and its base directory.
pub const MAX_SWEEP_REQUEST_BYTES: usize = 4 * 1024 * 1024;
/// Maximum time a unary call may run on the server, including an `AcquireTrial` long poll of
/// at most `MAX_ACQUIRE_WAIT_MS`. It bounds the time to the response headers only, so a
/// `WatchSweep` stream runs until its sweep ends.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(60);
/// Maximum time an `AcquireTrial` call waits for work, in milliseconds.
pub const MAX_ACQUIRE_WAIT_MS: u32 = 30_000;
const EVENT_CHANNEL_CAPACITY: usize = 4096;
/// Failed commit ranges remembered for waiters that have not looked yet.
const MAX_FAILED_RANGES: usize = 64;

/// Settings of one coordinator.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// Directory of the embedded store and the artifacts.
    pub data_dir: PathBuf,
    pub scheduler: SchedulerConfig,
    /// How often workers send heartbeats, in milliseconds.
    pub heartbeat_interval_ms: u32,
    /// Counters this coordinator increments; they reach `/metrics` only when built with
    /// [`CoordinatorMetrics::register`].
    pub metrics: CoordinatorMetrics,
}

impl CoordinatorConfig {
    /// Builds a config with default timings for the given data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            scheduler: SchedulerConfig::default(),
            heartbeat_interval_ms: 2_000,
            metrics: CoordinatorMetrics::default(),
        }
    }
}

/// A running coordinator; cheap to clone, every clone shares the same state.
#[derive(Clone)]
pub struct Coordinator {
    inner: Arc<Inner>,
}

struct Inner {
    config: CoordinatorConfig,
    state: Mutex<Scheduler>,
    store: Box<dyn StateStore>,
    artifacts: Box<dyn ArtifactStore>,
    ensembles: Mutex<HashMap<SweepId, v1::EnsembleSummary>>,
    events_tx: broadcast::Sender<v1::SweepEvent>,
    work_available: Notify,
    /// Set when the server begins to shut down, so long polls and watches end at once.
    stopping: watch::Sender<bool>,
    /// Changes applied in memory and not yet written, with the sequence number of the last.
    pending: Mutex<Pending>,
    /// True while one caller writes a batch; the others wait for its result.
    committing: AtomicBool,
    progress: watch::Sender<CommitProgress>,
    /// Set when a write failed and the state could not be reloaded: memory may be ahead of the
    /// store, so nothing is served until a reload succeeds.
    degraded: AtomicBool,
    /// When the last reload was tried while degraded, to space out retries.
    last_recovery: Mutex<Option<std::time::Instant>>,
    registrations: RegistrationLimiter,
}

/// Changes waiting for the next group commit.
#[derive(Default)]
struct Pending {
    changes: Changes,
    last_seq: u64,
}

/// How far group commits have got: every change numbered up to `done_through` was written,
/// except those in `failed`.
#[derive(Debug, Clone, Default)]
struct CommitProgress {
    done_through: u64,
    failed: VecDeque<(u64, u64)>,
}

impl CommitProgress {
    fn failed(&self, seq: u64) -> bool {
        self.failed
            .iter()
            .any(|(from, to)| (*from..=*to).contains(&seq))
    }
}

impl Coordinator {
    /// Opens the embedded store in `config.data_dir` and restores every stored sweep.
    pub fn open(config: CoordinatorConfig) -> Result<Self, CoordinatorError> {
        let store = EmbeddedStore::open(&config.data_dir)?;
        let artifacts = LocalArtifacts::open(config.data_dir.join("artifacts"))?;
        Self::with_stores(config, Box::new(store), Box::new(artifacts))
    }

    /// Restores the state held by `store`; artifacts go to `artifacts`.
    pub fn with_stores(
        config: CoordinatorConfig,
        store: Box<dyn StateStore>,
        artifacts: Box<dyn ArtifactStore>,
    ) -> Result<Self, CoordinatorError> {
        let mut snapshot = store.load()?;
        let ensembles = std::mem::take(&mut snapshot.ensembles)
            .into_iter()
            .filter_map(|e| Some((e.sweep_id.parse().ok()?, e)))
            .collect();
        let scheduler = Scheduler::restore(config.scheduler.clone(), snapshot, now_ms())?;
        let (events_tx, _) = broadcast::channel(EVENT_CHANNEL_CAPACITY);
        let inner = Inner {
            config,
            state: Mutex::new(scheduler),
            store,
            artifacts,
            ensembles: Mutex::new(ensembles),
            events_tx,
            work_available: Notify::new(),
            stopping: watch::channel(false).0,
            pending: Mutex::new(Pending::default()),
            committing: AtomicBool::new(false),
            progress: watch::channel(CommitProgress::default()).0,
            degraded: AtomicBool::new(false),
            last_recovery: Mutex::new(None),
            registrations: RegistrationLimiter::default(),
        };
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// Serves both gRPC services on `listener` without TLS or authentication until `shutdown`
    /// completes, expiring leases in the background.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), tonic::transport::Error> {
        let security = ServerSecurity::default();
        let policy = security
            .access_policy()
            .expect("a policy without TLS reads no certificate");
        self.serve_secured(listener, &security, policy, None, shutdown)
            .await
    }

    /// Serves both gRPC services on `listener` with the TLS settings of `security`, checking
    /// every call against `policy`, and Prometheus metrics on `metrics` when given, until
    /// `shutdown` completes.
    pub async fn serve_secured(
        self,
        listener: TcpListener,
        security: &ServerSecurity,
        policy: Arc<AccessPolicy>,
        metrics: Option<MetricsEndpoint>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), tonic::transport::Error> {
        let address = listener.local_addr().ok();
        let expiry = self.start_lease_expiry();
        tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            address = ?address,
            data_dir = %self.inner.config.data_dir.display(),
            tls = security.tls.is_some(),
            "coordinator serving"
        );
        let stopping = self.inner.stopping.clone();
        let shutdown = async move {
            shutdown.await;
            tracing::info!("coordinator shutting down: ending long polls and watches");
            let _ = stopping.send(true);
        };
        let health_source = self.clone();
        let state_source = self.clone();
        let plan = observe::ServePlan {
            rpc: self.inner.config.metrics.rpc.clone(),
            health: Box::new(move || health_source.serving_status()),
            state: Arc::new(move || Some(state_source.clone())),
            metrics,
        };
        let result = serve_services(
            self.clone(),
            self.clone(),
            listener,
            (security, policy),
            plan,
            shutdown,
        )
        .await;
        expiry.abort();
        tracing::info!("coordinator stopped");
        result
    }

    /// Starts expiring leases in the background; abort the handle to stop.
    pub fn start_lease_expiry(&self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.clone().expire_leases_forever())
    }

    /// Returns SERVING, or NOT_SERVING while a failed store write keeps requests out.
    pub fn serving_status(&self) -> tonic_health::ServingStatus {
        if self.inner.degraded.load(Ordering::Acquire) {
            tonic_health::ServingStatus::NotServing
        } else {
            tonic_health::ServingStatus::Serving
        }
    }

    /// Reads the sweeps, workers and leases that the metrics report.
    pub fn state_counts(&self) -> StateCounts {
        let now = now_ms();
        let state = self.lock();
        let mut counts = StateCounts {
            sweeps: state.sweeps().into_iter().cloned().collect(),
            num_leases: state.num_leases() as u64,
            degraded: self.inner.degraded.load(Ordering::Acquire),
            ..StateCounts::default()
        };
        for worker in state.list_workers(now) {
            if worker.status == v1::WorkerStatus::Active as i32 {
                counts.num_workers_active += 1;
                counts.num_slots += worker.slots.len() as u64;
            } else {
                counts.num_workers_lost += 1;
            }
        }
        counts
    }

    /// Ends this coordinator's long polls and watches with `UNAVAILABLE`.
    pub fn begin_shutdown(&self) {
        let _ = self.inner.stopping.send(true);
    }

    async fn expire_leases_forever(self) {
        let mut ticker = tokio::time::interval(Duration::from_millis(500));
        loop {
            ticker.tick().await;
            let expired = self.mutate(|state| Ok(state.expire_leases(now_ms())));
            match expired.await {
                Ok(num_expired) => self.inner.config.metrics.count_expired(num_expired),
                Err(err) => tracing::error!(error = %err, "failed to store expired leases"),
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Scheduler> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `op` on the state and returns its result once what it changed is durable.
    ///
    /// Operations apply to memory under the state lock and queue their changes. The first
    /// caller that finds no write in progress writes everything queued in one transaction (a
    /// group commit), so many concurrent requests share one fsync. Events are published only
    /// after their changes are written.
    async fn mutate<T>(
        &self,
        op: impl FnOnce(&mut Scheduler) -> Result<T, CoordinatorError>,
    ) -> Result<T, CoordinatorError> {
        self.ensure_recovered()?;
        let (result, seq) = {
            let mut state = self.lock();
            let result = op(&mut state);
            let changes = state.take_changes();
            if changes.is_empty() {
                return result;
            }
            let mut pending = self.lock_pending();
            pending.changes.merge(changes);
            pending.last_seq += 1;
            (result, pending.last_seq)
        };
        self.wait_until_written(seq).await?;
        result
    }

    async fn wait_until_written(&self, seq: u64) -> Result<(), CoordinatorError> {
        let mut progress_rx = self.inner.progress.subscribe();
        loop {
            {
                let progress = progress_rx.borrow_and_update();
                if progress.done_through >= seq {
                    if progress.failed(seq) {
                        return Err(CoordinatorError::StoreUnavailable);
                    }
                    return Ok(());
                }
            }
            if !self.inner.committing.swap(true, Ordering::AcqRel) {
                self.write_pending();
                continue;
            }
            // The sender lives in `Inner`, which outlives this call.
            let _ = progress_rx.changed().await;
        }
    }

    /// Writes every queued change in one transaction, then publishes the events. On failure
    /// the in-memory state is rebuilt from the store, so it never runs ahead of what is durable,
    /// and every queued change is reported as failed.
    fn write_pending(&self) {
        let (batch, changes, upto) = {
            let state = self.lock();
            let mut pending = self.lock_pending();
            let changes = std::mem::take(&mut pending.changes);
            (build_batch(&state, &changes), changes, pending.last_seq)
        };
        let written = run_blocking(|| self.inner.store.write(&batch));
        let mut failed_range = None;
        if let Err(err) = &written {
            tracing::error!(error = %err, "store write failed; reloading state from the store");
            let mut state = self.lock();
            let mut pending = self.lock_pending();
            if !self.reload(&mut state) {
                self.inner.degraded.store(true, Ordering::Release);
            }
            // Changes queued after this batch was built described state that is now gone.
            pending.changes = Changes::default();
            failed_range = Some(pending.last_seq);
        }
        // Let the next caller commit before announcing progress, or a waiter could see the
        // flag still set after the last announcement and wait for one that never comes.
        self.inner.committing.store(false, Ordering::Release);
        self.inner.progress.send_modify(|progress| {
            if let Some(last) = failed_range {
                progress.failed.push_back((progress.done_through + 1, last));
                if progress.failed.len() > MAX_FAILED_RANGES {
                    progress.failed.pop_front();
                }
                progress.done_through = last;
            } else {
                progress.done_through = upto;
            }
        });
        if written.is_ok() {
            self.publish(changes);
        }
    }

    fn publish(&self, changes: Changes) {
        // Only a change to a sweep or trial can make work available. Waking waiters on every
        // call would make idle `AcquireTrial` calls wake each other in a loop.
        let work_may_be_available = !changes.sweeps.is_empty() || !changes.trials.is_empty();
        for event in changes.events {
            // Sending fails only when no watcher is subscribed, which is fine.
            let _ = self.inner.events_tx.send(event);
        }
        if !changes.ended_sweeps.is_empty() {
            let state = self.lock();
            for sweep_id in changes.ended_sweeps {
                self.finish_sweep(&state, sweep_id);
            }
        }
        if work_may_be_available {
            self.inner.work_available.notify_waiters();
        }
    }

    fn lock_pending(&self) -> MutexGuard<'_, Pending> {
        self.inner
            .pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Returns the state for a read, unless a failed write left it ahead of the store.
    fn read(&self) -> Result<MutexGuard<'_, Scheduler>, CoordinatorError> {
        self.ensure_recovered()?;
        Ok(self.lock())
    }

    /// While degraded, tries to reload the state from the store, at most once a second, and
    /// fails with `UNAVAILABLE` until a reload succeeds.
    fn ensure_recovered(&self) -> Result<(), CoordinatorError> {
        if !self.inner.degraded.load(Ordering::Acquire) {
            return Ok(());
        }
        {
            let mut last = self
                .inner
                .last_recovery
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|at| at.elapsed() < Duration::from_secs(1)) {
                return Err(CoordinatorError::StoreUnavailable);
            }
            *last = Some(std::time::Instant::now());
        }
        let mut state = self.lock();
        if !self.reload(&mut state) {
            return Err(CoordinatorError::StoreUnavailable);
        }
        self.inner.degraded.store(false, Ordering::Release);
        tracing::info!("the store is reachable again; state reloaded");
        Ok(())
    }

    /// Rebuilds the state from the store; returns whether that worked.
    fn reload(&self, state: &mut Scheduler) -> bool {
        let restored = self
            .inner
            .store
            .load()
            .map_err(CoordinatorError::from)
            .and_then(|snapshot| {
                Scheduler::restore(self.inner.config.scheduler.clone(), snapshot, now_ms())
            });
        match restored {
            Ok(scheduler) => {
                *state = scheduler;
                true
            }
            Err(err) => {
                tracing::error!(error = %err, "reloading state from the store failed; serving nothing until it works");
                false
            }
        }
    }

    /// Selects and stores the ensemble of a sweep that just ended, then announces the end.
    fn finish_sweep(&self, state: &Scheduler, sweep_id: SweepId) {
        let Ok(spec) = state.spec(sweep_id) else {
            return;
        };
        let trials = state.trials_of(sweep_id).unwrap_or_default();
        match summary::build_summary(self.inner.artifacts.as_ref(), sweep_id, spec, &trials) {
            Ok(ensemble) => {
                let batch = WriteBatch {
                    ensembles: vec![ensemble.clone()],
                    ..Default::default()
                };
                if let Err(err) = self.inner.store.write(&batch) {
                    tracing::error!(%sweep_id, error = %err, "failed to store the ensemble");
                }
                tracing::info!(%sweep_id, members = ensemble.members.len(), val_accuracy = ensemble.val_accuracy, test_accuracy = ensemble.test_accuracy, "ensemble selected");
                self.lock_ensembles().insert(sweep_id, ensemble);
            }
            Err(CoordinatorError::NoEnsembleYet(_)) => {}
            Err(err) => tracing::error!(%sweep_id, error = %err, "ensemble selection failed"),
        }
        let Ok(sweep) = state.sweep(sweep_id) else {
            return;
        };
        let event = v1::SweepEvent {
            kind: EventKind::SweepEnded as i32,
            sweep: Some(sweep.clone()),
            trials: Vec::new(),
        };
        let _ = self.inner.events_tx.send(event);
    }

    fn lock_ensembles(&self) -> MutexGuard<'_, HashMap<SweepId, v1::EnsembleSummary>> {
        self.inner
            .ensembles
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Creates a sweep from spec text; paths in it resolve against `base_dir`.
    pub async fn create_sweep(
        &self,
        spec_toml: &str,
        base_dir: &str,
    ) -> Result<v1::Sweep, CoordinatorError> {
        let spec = SweepSpec::parse(spec_toml, std::path::Path::new(base_dir))?;
        self.mutate(|state| {
            let sweep_id = state.create_sweep(spec, spec_toml, base_dir, now_ms());
            tracing::info!(%sweep_id, name = %state.sweep(sweep_id)?.name, "sweep created");
            Ok(state.sweep(sweep_id)?.clone())
        })
        .await
    }

    /// Returns the ensemble of a sweep: the stored one once it ended, else one selected from
    /// the trials that succeeded so far.
    pub fn ensemble(&self, sweep_id: SweepId) -> Result<v1::EnsembleSummary, CoordinatorError> {
        if let Some(ensemble) = self.lock_ensembles().get(&sweep_id) {
            return Ok(ensemble.clone());
        }
        let state = self.read()?;
        let spec = state.spec(sweep_id)?;
        let trials = state.trials_of(sweep_id)?;
        summary::build_summary(self.inner.artifacts.as_ref(), sweep_id, spec, &trials)
    }
}

/// Collects the current records of everything `changes` names.
fn build_batch(state: &Scheduler, changes: &Changes) -> WriteBatch {
    let sweeps = changes.sweeps.iter().filter_map(|id| state.sweep(*id).ok());
    let trials = changes.trials.iter().filter_map(|id| state.trial(*id).ok());
    let workers = changes
        .workers
        .iter()
        .filter_map(|id| state.worker(*id).ok());
    WriteBatch {
        sweeps: sweeps.cloned().collect(),
        trials: trials.cloned().collect(),
        workers: workers.cloned().collect(),
        ensembles: Vec::new(),
    }
}

/// Runs blocking store I/O so that, on a multi-threaded runtime, the thread's other tasks move
/// to other threads meanwhile. A current-thread runtime (as in some tests) just runs it.
fn run_blocking<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|handle| handle.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Serves a sweep API and a worker API on `listener` with message size limits, the server-side
/// timeout, TLS when configured and the access checks of `policy` in front of both. The health
/// and reflection services and the metrics endpoint of `plan` are served beside them.
pub(crate) async fn serve_services<S: SweepService, W: WorkerService>(
    sweeps: S,
    workers: W,
    listener: TcpListener,
    (security, policy): (&ServerSecurity, Arc<AccessPolicy>),
    plan: observe::ServePlan,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let sweep_policy = policy.clone();
    let sweeps = SweepServiceServer::new(sweeps)
        .max_decoding_message_size(MAX_SWEEP_REQUEST_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let sweeps = tonic::service::interceptor::InterceptedService::new(sweeps, move |request| {
        sweep_policy.check_sweep_call(request)
    });
    let workers = WorkerServiceServer::new(workers)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let workers = tonic::service::interceptor::InterceptedService::new(workers, move |request| {
        policy.check_worker_call(request)
    });
    let mut server = tonic::transport::Server::builder().timeout(RPC_TIMEOUT);
    if let Some(tls) = security.tls_config() {
        server = server.tls_config(tls)?;
    }
    let routes = tonic::service::Routes::new(sweeps).add_service(workers);
    observe::serve_routes(server, routes, plan, listener, shutdown).await
}

/// Accepts connections with `TCP_NODELAY` set. With Nagle's algorithm on, the last segment of
/// a reply waits for the client's delayed acknowledgement, about 40 ms on Linux, on every call.
pub(crate) fn incoming(listener: TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

fn parse_id<T: std::str::FromStr<Err = tunefleet_proto::IdError>>(
    value: &str,
) -> Result<T, Status> {
    value
        .parse()
        .map_err(|err: tunefleet_proto::IdError| Status::from(CoordinatorError::from(err)))
}

fn attempt_of(attempt: &Option<v1::AttemptRef>) -> Result<&v1::AttemptRef, Status> {
    attempt
        .as_ref()
        .ok_or_else(|| Status::invalid_argument("missing attempt"))
}

type EventStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<v1::SweepEvent, Status>> + Send>>;

#[tonic::async_trait]
impl SweepService for Coordinator {
    async fn create_sweep(
        &self,
        request: Request<v1::CreateSweepRequest>,
    ) -> Result<Response<v1::Sweep>, Status> {
        require_write(&request, "CreateSweep")?;
        let request = request.into_inner();
        let sweep = Coordinator::create_sweep(self, &request.spec_toml, &request.base_dir).await?;
        Ok(Response::new(sweep))
    }

    async fn get_sweep(
        &self,
        request: Request<v1::GetSweepRequest>,
    ) -> Result<Response<v1::Sweep>, Status> {
        let sweep_id: SweepId = parse_id(&request.get_ref().sweep_id)?;
        Ok(Response::new(self.read()?.sweep(sweep_id)?.clone()))
    }

    async fn list_sweeps(
        &self,
        _request: Request<v1::ListSweepsRequest>,
    ) -> Result<Response<v1::ListSweepsResponse>, Status> {
        let sweeps = self.read()?.sweeps().into_iter().cloned().collect();
        Ok(Response::new(v1::ListSweepsResponse { sweeps }))
    }

    async fn cancel_sweep(
        &self,
        request: Request<v1::CancelSweepRequest>,
    ) -> Result<Response<v1::Sweep>, Status> {
        require_write(&request, "CancelSweep")?;
        let sweep_id: SweepId = parse_id(&request.get_ref().sweep_id)?;
        let sweep = self
            .mutate(|state| {
                state.cancel_sweep(sweep_id, now_ms())?;
                Ok(state.sweep(sweep_id)?.clone())
            })
            .await?;
        Ok(Response::new(sweep))
    }

    async fn resume_sweep(
        &self,
        request: Request<v1::ResumeSweepRequest>,
    ) -> Result<Response<v1::Sweep>, Status> {
        require_write(&request, "ResumeSweep")?;
        let sweep_id: SweepId = parse_id(&request.get_ref().sweep_id)?;
        let sweep = self
            .mutate(|state| {
                state.resume_sweep(sweep_id, now_ms())?;
                Ok(state.sweep(sweep_id)?.clone())
            })
            .await?;
        // The stored ensemble belongs to the run that ended; a new one is selected at the end.
        if sweep.status == SweepStatus::Running as i32 {
            self.lock_ensembles().remove(&sweep_id);
        }
        Ok(Response::new(sweep))
    }

    async fn list_workers(
        &self,
        _request: Request<v1::ListWorkersRequest>,
    ) -> Result<Response<v1::ListWorkersResponse>, Status> {
        let workers = self.read()?.list_workers(now_ms());
        Ok(Response::new(v1::ListWorkersResponse { workers }))
    }

    async fn list_trials(
        &self,
        request: Request<v1::ListTrialsRequest>,
    ) -> Result<Response<v1::ListTrialsResponse>, Status> {
        let sweep_id: SweepId = parse_id(&request.get_ref().sweep_id)?;
        let state = self.read()?;
        let trials = state.trials_of(sweep_id)?.into_iter().cloned().collect();
        Ok(Response::new(v1::ListTrialsResponse { trials }))
    }

    async fn get_trial(
        &self,
        request: Request<v1::GetTrialRequest>,
    ) -> Result<Response<v1::Trial>, Status> {
        let trial_id: TrialId = parse_id(&request.get_ref().trial_id)?;
        Ok(Response::new(self.read()?.trial(trial_id)?.clone()))
    }

    type WatchSweepStream = EventStream;

    async fn watch_sweep(
        &self,
        request: Request<v1::WatchSweepRequest>,
    ) -> Result<Response<Self::WatchSweepStream>, Status> {
        let sweep_id: SweepId = parse_id(&request.get_ref().sweep_id)?;
        // Subscribe before taking the snapshot so that no event falls between the two.
        let events_rx = self.inner.events_tx.subscribe();
        let snapshot = self.read()?.snapshot_event(sweep_id)?;
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(
            self.clone()
                .forward_events(sweep_id, snapshot, events_rx, tx),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_ensemble(
        &self,
        request: Request<v1::GetEnsembleRequest>,
    ) -> Result<Response<v1::EnsembleSummary>, Status> {
        let sweep_id: SweepId = parse_id(&request.get_ref().sweep_id)?;
        Ok(Response::new(self.ensemble(sweep_id)?))
    }

    async fn get_artifact(
        &self,
        request: Request<v1::GetArtifactRequest>,
    ) -> Result<Response<v1::GetArtifactResponse>, Status> {
        let request = request.into_inner();
        let trial_id: TrialId = parse_id(&request.trial_id)?;
        let artifact = {
            let state = self.read()?;
            let trial = state.trial(trial_id)?;
            let found = trial.artifacts.iter().find(|a| a.name == request.name);
            found.cloned().ok_or_else(|| {
                Status::not_found(format!(
                    "trial {trial_id} has no artifact {:?}",
                    request.name
                ))
            })?
        };
        let content = self.inner.artifacts.get(&artifact).map_err(|err| {
            Status::internal(format!(
                "failed to read artifact {:?}: {err}",
                artifact.name
            ))
        })?;
        Ok(Response::new(v1::GetArtifactResponse {
            artifact: Some(artifact),
            content,
        }))
    }
}

impl Coordinator {
    /// Sends a watcher the snapshot and then the sweep's events until the sweep ends or the
    /// watcher goes away. A watcher that falls behind gets a fresh snapshot.
    async fn forward_events(
        self,
        sweep_id: SweepId,
        snapshot: v1::SweepEvent,
        mut events_rx: broadcast::Receiver<v1::SweepEvent>,
        tx: mpsc::Sender<Result<v1::SweepEvent, Status>>,
    ) {
        let ended = |event: &v1::SweepEvent| {
            let status = event.sweep.as_ref().map(|s| s.status);
            event.kind == EventKind::SweepEnded as i32
                || (event.kind == EventKind::Snapshot as i32
                    && status != Some(SweepStatus::Running as i32))
        };
        let sweep_key = sweep_id.to_string();
        let mut stopping = self.inner.stopping.subscribe();
        let mut next = Some(snapshot);
        loop {
            let received = match next.take() {
                Some(event) => Ok(event),
                None => tokio::select! {
                    received = events_rx.recv() => received,
                    _ = stopping.changed() => {
                        let _ = tx.send(Err(Status::unavailable("the coordinator is shutting down"))).await;
                        return;
                    }
                },
            };
            let event = match received {
                Ok(event) if event.sweep.as_ref().map(|s| &s.sweep_id) == Some(&sweep_key) => event,
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(%sweep_id, missed, "watcher fell behind; sending a fresh snapshot");
                    match self.lock().snapshot_event(sweep_id) {
                        Ok(snapshot) => snapshot,
                        Err(_) => return,
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            let is_end = ended(&event);
            if tx.send(Ok(event)).await.is_err() || is_end {
                return;
            }
        }
    }
}

#[tonic::async_trait]
impl WorkerService for Coordinator {
    async fn register_worker(
        &self,
        request: Request<v1::RegisterWorkerRequest>,
    ) -> Result<Response<v1::RegisterWorkerResponse>, Status> {
        let principal = principal_of(&request)?.clone();
        let key = registration_key(&principal, request.remote_addr());
        self.inner.registrations.check_registration_rate(&key)?;
        let identity = match principal {
            Principal::Worker { identity } => identity,
            _ => String::new(),
        };
        let request = request.into_inner();
        if request.slots.is_empty() {
            return Err(Status::invalid_argument(
                "a worker must offer at least one slot",
            ));
        }
        let num_slots = request.slots.len();
        let hostname = request.hostname.clone();
        let version = request.version.clone();
        let worker_id = self
            .mutate(|state| Ok(state.register_worker_as(request, identity.clone(), now_ms())))
            .await?;
        tracing::info!(%worker_id, %hostname, num_slots, %version, %identity, "worker joined");
        Ok(Response::new(v1::RegisterWorkerResponse {
            worker_id: worker_id.to_string(),
            heartbeat_interval_ms: self.inner.config.heartbeat_interval_ms,
            lease_ttl_ms: self.inner.config.scheduler.lease_ttl_ms as u32,
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<v1::HeartbeatRequest>,
    ) -> Result<Response<v1::HeartbeatResponse>, Status> {
        let principal = principal_of(&request)?.clone();
        let request = request.into_inner();
        let worker_id: WorkerId = parse_id(&request.worker_id)?;
        self.check_acts_for(&principal, "Heartbeat", worker_id)?;
        let stop = self
            .mutate(|state| state.heartbeat(worker_id, &request.running, now_ms()))
            .await?;
        Ok(Response::new(v1::HeartbeatResponse { stop }))
    }

    async fn acquire_trial(
        &self,
        request: Request<v1::AcquireTrialRequest>,
    ) -> Result<Response<v1::AcquireTrialResponse>, Status> {
        let principal = principal_of(&request)?.clone();
        let request = request.into_inner();
        let worker_id: WorkerId = parse_id(&request.worker_id)?;
        self.check_acts_for(&principal, "AcquireTrial", worker_id)?;
        let wait = Duration::from_millis(u64::from(request.wait_ms.min(MAX_ACQUIRE_WAIT_MS)));
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Register interest before looking, so a notification between the two is not lost.
            let notified = self.inner.work_available.notified();
            let assignment = self
                .mutate(|state| state.acquire(worker_id, request.slot, now_ms()))
                .await?;
            if assignment.is_some() {
                self.inner.config.metrics.attempts_started.inc();
                return Ok(Response::new(v1::AcquireTrialResponse { assignment }));
            }
            let mut stopping = self.inner.stopping.subscribe();
            if *stopping.borrow() {
                return Err(Status::unavailable("the coordinator is shutting down"));
            }
            tokio::select! {
                woken = tokio::time::timeout_at(deadline, notified) => {
                    if woken.is_err() {
                        return Ok(Response::new(v1::AcquireTrialResponse { assignment: None }));
                    }
                }
                _ = stopping.changed() => {
                    return Err(Status::unavailable("the coordinator is shutting down"));
                }
            }
        }
    }

    async fn report_epoch(
        &self,
        request: Request<v1::ReportEpochRequest>,
    ) -> Result<Response<v1::ReportEpochResponse>, Status> {
        let principal = principal_of(&request)?.clone();
        let request = request.into_inner();
        let attempt = attempt_of(&request.attempt)?;
        self.check_holds(&principal, "ReportEpoch", attempt)?;
        let metrics = request
            .metrics
            .ok_or_else(|| Status::invalid_argument("missing metrics"))?;
        let verdict = self
            .mutate(|state| state.report_epoch(attempt, metrics, now_ms()))
            .await;
        let verdict = verdict.inspect_err(|err| log_rejected("ReportEpoch", attempt, err))?;
        let response = match verdict {
            ReportVerdict::Continue => v1::ReportEpochResponse::default(),
            ReportVerdict::Stop { reason } => v1::ReportEpochResponse {
                stop: true,
                reason,
                pruned: false,
            },
            ReportVerdict::Pruned { reason } => v1::ReportEpochResponse {
                stop: true,
                reason,
                pruned: true,
            },
        };
        Ok(Response::new(response))
    }

    async fn upload_artifact(
        &self,
        request: Request<v1::UploadArtifactRequest>,
    ) -> Result<Response<v1::ArtifactRef>, Status> {
        let principal = principal_of(&request)?.clone();
        let request = request.into_inner();
        let attempt = attempt_of(&request.attempt)?;
        self.check_holds(&principal, "UploadArtifact", attempt)?;
        let (sweep_id, trial_id) = self
            .lock()
            .artifact_owner(attempt)
            .inspect_err(|err| log_rejected("UploadArtifact", attempt, err))?;
        let artifact = self
            .inner
            .artifacts
            .put(
                &sweep_id.to_string(),
                &trial_id.to_string(),
                &request.name,
                &request.content,
            )
            .map_err(CoordinatorError::from)?;
        self.mutate(|state| state.add_artifact(attempt, artifact.clone()))
            .await?;
        Ok(Response::new(artifact))
    }

    async fn complete_attempt(
        &self,
        request: Request<v1::CompleteAttemptRequest>,
    ) -> Result<Response<v1::CompleteAttemptResponse>, Status> {
        let principal = principal_of(&request)?.clone();
        let request = request.into_inner();
        let attempt = attempt_of(&request.attempt)?.clone();
        let outcome = request.outcome;
        self.check_holds(&principal, "CompleteAttempt", &attempt)?;
        self.mutate(|state| state.complete_attempt(request, now_ms()))
            .await
            .inspect_err(|err| log_rejected("CompleteAttempt", &attempt, err))?;
        self.inner.config.metrics.count_ended(outcome);
        Ok(Response::new(v1::CompleteAttemptResponse {}))
    }
}

impl Coordinator {
    /// Fails with `PERMISSION_DENIED` unless `principal` is the certificate that registered
    /// `worker_id`. Without mutual TLS every caller is anonymous and may act for any worker.
    fn check_acts_for(
        &self,
        principal: &Principal,
        rpc: &str,
        worker_id: WorkerId,
    ) -> Result<(), Status> {
        let Principal::Worker { identity } = principal else {
            return Ok(());
        };
        let state = self.read()?;
        let registered = &state.worker(worker_id)?.identity;
        if registered == identity {
            return Ok(());
        }
        let status = Status::permission_denied(format!(
            "certificate {identity:?} cannot act for worker {worker_id}: it registered with another certificate"
        ));
        log_rejection(rpc, &format!("certificate {identity:?}"), &status);
        Err(status)
    }

    /// Fails with `PERMISSION_DENIED` unless `principal` may act for the worker named in
    /// `attempt`. The state then checks that this worker has the attempt's lease.
    fn check_holds(
        &self,
        principal: &Principal,
        rpc: &str,
        attempt: &v1::AttemptRef,
    ) -> Result<(), Status> {
        let worker_id: WorkerId = parse_id(&attempt.worker_id)?;
        self.check_acts_for(principal, rpc, worker_id)
    }
}

fn log_rejected(rpc: &str, attempt: &v1::AttemptRef, err: &CoordinatorError) {
    tracing::warn!(
        rpc,
        trial_id = %attempt.trial_id,
        attempt = attempt.attempt,
        worker_id = %attempt.worker_id,
        error = %err,
        "request rejected"
    );
}
