//! Fuzz targets shared by the libFuzzer binaries (`fuzz_targets/`) and the stable runner
//! (`src/bin/replay.rs`). Each takes arbitrary bytes and panics only on a bug.

use std::path::Path;
use std::sync::OnceLock;

use prost::Message;
use tonic::Request;
use tunefleet_coordinator::security::Principal;
use tunefleet_coordinator::{Coordinator, CoordinatorConfig};
use tunefleet_proto::v1;
use tunefleet_proto::v1::sweep_service_server::SweepService;
use tunefleet_proto::v1::worker_service_server::WorkerService;

/// The names of the targets, as `fuzz_targets/` and `fuzz/corpus/` name them.
pub const TARGETS: [&str; 2] = ["spec_parser", "grpc_requests"];

/// Runs target `name` on `data`; panics on an unknown name.
pub fn run_target(name: &str, data: &[u8]) {
    match name {
        "spec_parser" => spec_parser(data),
        "grpc_requests" => grpc_requests(data),
        _ => panic!("unknown fuzz target {name:?}: expected one of {TARGETS:?}"),
    }
}

/// Parses `data` as sweep spec TOML. Any result is fine; a panic is a bug.
pub fn spec_parser(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = tunefleet_coordinator::spec::SweepSpec::parse(text, Path::new("/nonexistent"));
}

/// Stand-ins the fuzzer can write in an id field. Each is replaced by the id of a worker,
/// sweep or trial that exists, so that inputs reach past the id lookups.
const WORKER_PLACEHOLDER: &str = "W";
const SWEEP_PLACEHOLDER: &str = "S";
const TRIAL_PLACEHOLDER: &str = "T";
/// The number of RPCs that `grpc_requests` selects from with its first byte.
const NUM_METHODS: u8 = 17;

/// A coordinator in a temporary directory with one worker, one sweep and one running trial.
/// Inputs change its state, so an input that panics may need the inputs before it to panic
/// again.
struct Harness {
    runtime: tokio::runtime::Runtime,
    coordinator: Coordinator,
    worker_id: String,
    sweep_id: String,
    trial_id: String,
    _dir: tempfile::TempDir,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let dir = tempfile::tempdir().expect("failed to create a temporary directory");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("failed to start a runtime");
        let coordinator = Coordinator::open(CoordinatorConfig::new(dir.path()))
            .expect("failed to open a coordinator");
        let (worker_id, sweep_id, trial_id) = runtime.block_on(seed(&coordinator));
        Harness {
            runtime,
            coordinator,
            worker_id,
            sweep_id,
            trial_id,
            _dir: dir,
        }
    })
}

/// Registers a worker, creates a sweep and starts its first trial.
/// Wraps a message as the access checks pass it on when no authentication is configured, so
/// that the handlers see the caller they expect.
fn authorized<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.extensions_mut().insert(Principal::Anonymous);
    request
}

async fn seed(coordinator: &Coordinator) -> (String, String, String) {
    let register = v1::RegisterWorkerRequest {
        hostname: "fuzz".to_string(),
        slots: vec![v1::Slot {
            index: 0,
            device: "cpu".to_string(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let worker_id = WorkerService::register_worker(coordinator, authorized(register))
        .await
        .expect("register a worker")
        .into_inner()
        .worker_id;
    let spec = include_str!("../corpus/spec_parser/grid.toml");
    let base_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
    let sweep = coordinator
        .create_sweep(spec, base_dir)
        .await
        .expect("create a sweep");
    let acquire = v1::AcquireTrialRequest {
        worker_id: worker_id.clone(),
        slot: 0,
        wait_ms: 0,
    };
    let assignment = WorkerService::acquire_trial(coordinator, authorized(acquire))
        .await
        .expect("acquire a trial")
        .into_inner()
        .assignment
        .expect("the new sweep has a trial");
    let trial_id = assignment.attempt.expect("an attempt").trial_id;
    (worker_id, sweep.sweep_id, trial_id)
}

impl Harness {
    fn fill(&self, field: &mut String) {
        let real = match field.as_str() {
            WORKER_PLACEHOLDER => &self.worker_id,
            SWEEP_PLACEHOLDER => &self.sweep_id,
            TRIAL_PLACEHOLDER => &self.trial_id,
            _ => return,
        };
        *field = real.clone();
    }

    fn fill_attempt(&self, attempt: &mut Option<v1::AttemptRef>) {
        if let Some(attempt) = attempt {
            self.fill(&mut attempt.worker_id);
            self.fill(&mut attempt.trial_id);
        }
    }
}

/// Decodes `data[1..]` as the request message of the method that `data[0]` selects and calls
/// the coordinator's handler in process. Errors are fine; a panic is a bug.
pub fn grpc_requests(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let harness = harness();
    harness
        .runtime
        .block_on(call(harness, selector % NUM_METHODS, body));
}

fn decode<M: Message + Default>(body: &[u8]) -> Option<M> {
    M::decode(body).ok()
}

async fn call(harness: &Harness, method: u8, body: &[u8]) {
    let coordinator = &harness.coordinator;
    match method {
        0 => {
            if let Some(request) = decode::<v1::CreateSweepRequest>(body) {
                let _ = SweepService::create_sweep(coordinator, authorized(request)).await;
            }
        }
        1 => {
            if let Some(mut request) = decode::<v1::GetSweepRequest>(body) {
                harness.fill(&mut request.sweep_id);
                let _ = SweepService::get_sweep(coordinator, authorized(request)).await;
            }
        }
        2 => {
            if let Some(request) = decode::<v1::ListSweepsRequest>(body) {
                let _ = SweepService::list_sweeps(coordinator, authorized(request)).await;
            }
        }
        3 => {
            if let Some(mut request) = decode::<v1::CancelSweepRequest>(body) {
                harness.fill(&mut request.sweep_id);
                let _ = SweepService::cancel_sweep(coordinator, authorized(request)).await;
            }
        }
        4 => {
            if let Some(mut request) = decode::<v1::ResumeSweepRequest>(body) {
                harness.fill(&mut request.sweep_id);
                let _ = SweepService::resume_sweep(coordinator, authorized(request)).await;
            }
        }
        5 => {
            if let Some(mut request) = decode::<v1::ListTrialsRequest>(body) {
                harness.fill(&mut request.sweep_id);
                let _ = SweepService::list_trials(coordinator, authorized(request)).await;
            }
        }
        6 => {
            if let Some(mut request) = decode::<v1::GetTrialRequest>(body) {
                harness.fill(&mut request.trial_id);
                let _ = SweepService::get_trial(coordinator, authorized(request)).await;
            }
        }
        7 => {
            if let Some(mut request) = decode::<v1::WatchSweepRequest>(body) {
                harness.fill(&mut request.sweep_id);
                // Opening the stream runs the handler; the stream itself is dropped unread.
                let _ = SweepService::watch_sweep(coordinator, authorized(request)).await;
            }
        }
        8 => {
            if let Some(mut request) = decode::<v1::GetEnsembleRequest>(body) {
                harness.fill(&mut request.sweep_id);
                let _ = SweepService::get_ensemble(coordinator, authorized(request)).await;
            }
        }
        9 => {
            if let Some(request) = decode::<v1::ListWorkersRequest>(body) {
                let _ = SweepService::list_workers(coordinator, authorized(request)).await;
            }
        }
        10 => {
            if let Some(request) = decode::<v1::RegisterWorkerRequest>(body) {
                let _ = WorkerService::register_worker(coordinator, authorized(request)).await;
            }
        }
        11 => {
            if let Some(mut request) = decode::<v1::HeartbeatRequest>(body) {
                harness.fill(&mut request.worker_id);
                for attempt in &mut request.running {
                    harness.fill(&mut attempt.worker_id);
                    harness.fill(&mut attempt.trial_id);
                }
                let _ = WorkerService::heartbeat(coordinator, authorized(request)).await;
            }
        }
        12 => {
            if let Some(mut request) = decode::<v1::AcquireTrialRequest>(body) {
                harness.fill(&mut request.worker_id);
                // A long poll would only slow the fuzzer down.
                request.wait_ms = 0;
                let _ = WorkerService::acquire_trial(coordinator, authorized(request)).await;
            }
        }
        13 => {
            if let Some(mut request) = decode::<v1::ReportEpochRequest>(body) {
                harness.fill_attempt(&mut request.attempt);
                let _ = WorkerService::report_epoch(coordinator, authorized(request)).await;
            }
        }
        14 => {
            if let Some(mut request) = decode::<v1::UploadArtifactRequest>(body) {
                harness.fill_attempt(&mut request.attempt);
                let _ = WorkerService::upload_artifact(coordinator, authorized(request)).await;
            }
        }
        15 => {
            if let Some(mut request) = decode::<v1::CompleteAttemptRequest>(body) {
                harness.fill_attempt(&mut request.attempt);
                let _ = WorkerService::complete_attempt(coordinator, authorized(request)).await;
            }
        }
        _ => {
            if let Some(mut request) = decode::<v1::GetArtifactRequest>(body) {
                harness.fill(&mut request.trial_id);
                let _ = SweepService::get_artifact(coordinator, authorized(request)).await;
            }
        }
    }
}
