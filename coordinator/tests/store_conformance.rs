//! One conformance suite for every `StateStore`: the same checks run against the embedded redb
//! store and against the etcd store on a real etcd (Debian's `etcd` binary on loopback). The
//! etcd-only tests cover fencing, etcd being killed and restarted, a cluster losing a member,
//! corrupt records, large pages and compaction.

#[path = "../../tests/support/etcd.rs"]
mod etcd;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use etcd::{EtcdCluster, EtcdServer};
use etcd_client::GetOptions;
use tempfile::TempDir;
use tunefleet_coordinator::store::etcd::{EtcdOptions, EtcdStore, Fence};
use tunefleet_coordinator::store::{EmbeddedStore, Snapshot, StateStore, StoreError, WriteBatch};
use tunefleet_proto::v1;

/// Request timeout of the tests that wait for a failure, kept short so they finish quickly.
const SHORT_TIMEOUT: Duration = Duration::from_secs(1);
/// How much longer than the request timeout a failing call may take on a loaded machine.
const TIMEOUT_MARGIN: Duration = Duration::from_secs(2);
const PREFIX: &str = "/tunefleet-test";
const ELECTION_KEY: &str = "/tunefleet-test-election/leader";

// ---------------------------------------------------------------------------------------------
// The checks every store passes
// ---------------------------------------------------------------------------------------------

fn check_empty_load(store: &dyn StateStore) {
    let snapshot = store.load().unwrap();
    assert!(snapshot.sweeps.is_empty());
    assert!(snapshot.trials.is_empty());
    assert!(snapshot.ensembles.is_empty());
    assert!(snapshot.workers.is_empty());
}

fn check_round_trip(store: &dyn StateStore) {
    let batch = WriteBatch {
        sweeps: vec![sweep("sweep-a"), sweep("sweep-b")],
        trials: vec![
            trial("trial-1", 10),
            trial("trial-2", 10),
            trial("trial-3", 10),
        ],
        ensembles: vec![ensemble("sweep-a")],
        workers: vec![worker("worker-1"), worker("worker-2")],
    };
    store.write(&batch).unwrap();

    let snapshot = sorted(store.load().unwrap());
    assert_eq!(snapshot.sweeps, batch.sweeps);
    assert_eq!(snapshot.trials, batch.trials);
    assert_eq!(snapshot.ensembles, batch.ensembles);
    assert_eq!(snapshot.workers, batch.workers);
}

fn check_overwrite_keeps_latest(store: &dyn StateStore) {
    let first = trial("trial-1", 10);
    let mut second = first.clone();
    second.status = v1::TrialStatus::Succeeded as i32;
    second.objective = Some(0.93);
    store.write(&trials_batch(vec![first])).unwrap();
    store.write(&trials_batch(vec![second.clone()])).unwrap();

    let snapshot = store.load().unwrap();
    assert_eq!(snapshot.trials, vec![second]);
}

fn check_duplicate_in_batch_keeps_last(store: &dyn StateStore) {
    let first = trial("trial-1", 10);
    let mut second = first.clone();
    second.reason = "the later version".into();
    store
        .write(&trials_batch(vec![first, second.clone()]))
        .unwrap();

    let snapshot = store.load().unwrap();
    assert_eq!(snapshot.trials, vec![second]);
}

/// 1,000 trials of about 2 KB each: more than one etcd transaction can contain.
fn check_large_batch(store: &dyn StateStore) {
    let trials: Vec<v1::Trial> = (0..1000)
        .map(|i| trial(&format!("trial-{i:04}"), 2000))
        .collect();
    let mut batch = trials_batch(trials.clone());
    batch.sweeps = vec![sweep("sweep-a")];
    store.write(&batch).unwrap();

    let snapshot = sorted(store.load().unwrap());
    assert_eq!(snapshot.trials.len(), 1000);
    assert_eq!(snapshot.trials, trials);
    assert_eq!(snapshot.sweeps, batch.sweeps);
}

macro_rules! conformance_tests {
    ($($name:ident => $check:path),* $(,)?) => {
        mod embedded {
            use super::*;
            $(
                #[test]
                fn $name() {
                    let dir = TempDir::new().unwrap();
                    let store = EmbeddedStore::open(dir.path()).unwrap();
                    $check(&store);
                }
            )*
        }

        mod etcd_store {
            use super::*;
            $(
                #[test]
                fn $name() {
                    let server = EtcdServer::start();
                    let store = connect(vec![server.endpoint()], EtcdOptions::default());
                    $check(&store);
                }
            )*
        }
    };
}

conformance_tests! {
    empty_load => check_empty_load,
    round_trip => check_round_trip,
    overwrite_keeps_latest => check_overwrite_keeps_latest,
    duplicate_in_batch_keeps_last => check_duplicate_in_batch_keeps_last,
    large_batch => check_large_batch,
}

// ---------------------------------------------------------------------------------------------
// etcd only
// ---------------------------------------------------------------------------------------------

#[test]
fn etcd_fence_rejects_wrong_revision() {
    let server = EtcdServer::start();
    let client = TestClient::connect(vec![server.endpoint()]);
    let create_revision = client.put(ELECTION_KEY, b"leader");
    let store = connect(vec![server.endpoint()], EtcdOptions::default());
    store.set_fence(Some(Fence {
        key: ELECTION_KEY.into(),
        create_revision: create_revision + 1,
    }));

    // 250 trials span three transactions; the first one already fails the fence.
    let trials = (0..250).map(|i| trial(&format!("trial-{i}"), 10)).collect();
    let result = store.write(&trials_batch(trials));

    assert!(
        matches!(result, Err(StoreError::Fenced { .. })),
        "expected a fence error, got {result:?}"
    );
    assert!(store.load().unwrap().trials.is_empty());
}

#[test]
fn etcd_fence_rejects_missing_key() {
    let server = EtcdServer::start();
    let store = connect(vec![server.endpoint()], EtcdOptions::default());
    store.set_fence(Some(Fence {
        key: ELECTION_KEY.into(),
        create_revision: 1,
    }));

    let result = store.write(&trials_batch(vec![trial("trial-1", 10)]));

    assert!(
        matches!(result, Err(StoreError::Fenced { .. })),
        "expected a fence error, got {result:?}"
    );
    assert!(store.load().unwrap().trials.is_empty());
}

#[test]
fn etcd_fence_accepts_current_revision() {
    let server = EtcdServer::start();
    let client = TestClient::connect(vec![server.endpoint()]);
    let create_revision = client.put(ELECTION_KEY, b"leader");
    let store = connect(vec![server.endpoint()], EtcdOptions::default());
    store.set_fence(Some(Fence {
        key: ELECTION_KEY.into(),
        create_revision,
    }));
    let trials: Vec<v1::Trial> = (0..250)
        .map(|i| trial(&format!("trial-{i:03}"), 10))
        .collect();

    store.write(&trials_batch(trials.clone())).unwrap();

    assert_eq!(sorted(store.load().unwrap()).trials, trials);
    store.set_fence(None);
    store
        .write(&trials_batch(vec![trial("trial-unfenced", 10)]))
        .unwrap();
}

#[test]
fn etcd_calls_fail_within_timeout_when_killed() {
    let mut server = EtcdServer::start();
    let options = EtcdOptions {
        request_timeout: SHORT_TIMEOUT,
        ..EtcdOptions::default()
    };
    let store = connect(vec![server.endpoint()], options);
    store
        .write(&trials_batch(vec![trial("trial-1", 10)]))
        .unwrap();
    server.kill();

    let started = Instant::now();
    let written = store.write(&trials_batch(vec![trial("trial-2", 10)]));
    let write_elapsed = started.elapsed();
    let started = Instant::now();
    let loaded = store.load();
    let load_elapsed = started.elapsed();

    let write_error = written.unwrap_err();
    assert!(
        write_error.to_string().contains(&server.endpoint()),
        "the error does not name the endpoint: {write_error}"
    );
    assert!(
        write_elapsed <= SHORT_TIMEOUT + TIMEOUT_MARGIN,
        "write took {write_elapsed:?}"
    );
    let load_error = loaded.unwrap_err();
    assert!(
        load_error.to_string().contains(&server.endpoint()),
        "the error does not name the endpoint: {load_error}"
    );
    assert!(
        load_elapsed <= SHORT_TIMEOUT + TIMEOUT_MARGIN,
        "load took {load_elapsed:?}"
    );
}

#[test]
fn etcd_connect_fails_when_unreachable() {
    let endpoint = unused_endpoint();
    let options = EtcdOptions {
        request_timeout: SHORT_TIMEOUT,
        ..EtcdOptions::default()
    };

    let started = Instant::now();
    let result = EtcdStore::connect(vec![endpoint.clone()], PREFIX.into(), options);
    let elapsed = started.elapsed();

    let error = result.err().expect("connect succeeded without etcd");
    assert!(
        matches!(error, StoreError::EtcdTimeout { .. }),
        "expected a timeout, got {error:?}"
    );
    assert!(
        error.to_string().contains(&endpoint),
        "the error does not name the endpoint: {error}"
    );
    assert!(
        elapsed <= SHORT_TIMEOUT + TIMEOUT_MARGIN,
        "connect took {elapsed:?}"
    );
}

#[test]
fn etcd_connect_rejects_invalid_config() {
    let no_endpoints = EtcdStore::connect(Vec::new(), PREFIX.into(), EtcdOptions::default());
    let trailing_slash = EtcdStore::connect(
        vec![unused_endpoint()],
        format!("{PREFIX}/"),
        EtcdOptions::default(),
    );
    let no_ops = EtcdStore::connect(
        vec![unused_endpoint()],
        PREFIX.into(),
        EtcdOptions {
            max_ops_per_txn: 0,
            ..EtcdOptions::default()
        },
    );

    assert!(matches!(
        no_endpoints,
        Err(StoreError::InvalidEtcdConfig(_))
    ));
    assert!(matches!(
        trailing_slash,
        Err(StoreError::InvalidEtcdConfig(_))
    ));
    assert!(matches!(no_ops, Err(StoreError::InvalidEtcdConfig(_))));
}

#[test]
fn etcd_store_recovers_after_restart() {
    let mut server = EtcdServer::start();
    let options = EtcdOptions {
        request_timeout: SHORT_TIMEOUT,
        ..EtcdOptions::default()
    };
    let store = connect(vec![server.endpoint()], options);
    let before = trial("trial-1", 10);
    store.write(&trials_batch(vec![before.clone()])).unwrap();
    server.kill();
    assert!(store.load().is_err());

    server.restart();
    let after = trial("trial-2", 10);
    store.write(&trials_batch(vec![after.clone()])).unwrap();

    assert_eq!(sorted(store.load().unwrap()).trials, vec![before, after]);
}

#[test]
fn etcd_cluster_serves_with_member_killed() {
    let mut cluster = EtcdCluster::start(3);
    let store = connect(cluster.endpoints(), EtcdOptions::default());
    let mut written = vec![trial("trial-before", 10)];
    store.write(&trials_batch(written.clone())).unwrap();

    cluster.kill_member(0);
    // Several calls, so that the balanced channel very likely sends some to the dead member.
    for i in 0..10 {
        let trial = trial(&format!("trial-after-{i}"), 10);
        store.write(&trials_batch(vec![trial.clone()])).unwrap();
        written.push(trial);
        assert_eq!(store.load().unwrap().trials.len(), written.len());
    }

    written.sort_by(|a, b| a.trial_id.cmp(&b.trial_id));
    assert_eq!(sorted(store.load().unwrap()).trials, written);
}

#[test]
fn etcd_load_rejects_corrupt_record() {
    let server = EtcdServer::start();
    let client = TestClient::connect(vec![server.endpoint()]);
    client.put(&format!("{PREFIX}/trials/trial-bad"), &[0xff, 0xff, 0xff]);
    let store = connect(vec![server.endpoint()], EtcdOptions::default());

    let result = store.load();

    match result {
        Err(StoreError::Corrupt { table, key, .. }) => {
            assert_eq!(table, "trials");
            assert_eq!(key, format!("{PREFIX}/trials/trial-bad"));
        }
        other => panic!("expected a corrupt record error, got {other:?}"),
    }
}

#[test]
fn etcd_prefixes_are_isolated() {
    let server = EtcdServer::start();
    let first = EtcdStore::connect(
        vec![server.endpoint()],
        "/fleet".into(),
        EtcdOptions::default(),
    )
    .unwrap();
    let second = EtcdStore::connect(
        vec![server.endpoint()],
        "/fleet-b".into(),
        EtcdOptions::default(),
    )
    .unwrap();

    first
        .write(&trials_batch(vec![trial("trial-1", 10)]))
        .unwrap();

    assert!(second.load().unwrap().trials.is_empty());
    assert_eq!(first.load().unwrap().trials.len(), 1);
}

/// Eight trials of about 900 KB: each is a transaction of its own, and a page of all eight
/// exceeds the 4 MiB gRPC message limit, so the load must shrink its pages.
#[test]
fn etcd_load_pages_larger_than_message_limit() {
    let server = EtcdServer::start();
    let store = connect(vec![server.endpoint()], EtcdOptions::default());
    let trials: Vec<v1::Trial> = (0..8)
        .map(|i| trial(&format!("trial-{i}"), 900 * 1024))
        .collect();

    store.write(&trials_batch(trials.clone())).unwrap();

    assert_eq!(sorted(store.load().unwrap()).trials, trials);
}

#[test]
fn etcd_store_works_inside_tokio_runtime() {
    let server = EtcdServer::start();
    let store = connect(vec![server.endpoint()], EtcdOptions::default());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let loaded = runtime.block_on(async {
        store.write(&trials_batch(vec![trial("trial-1", 10)]))?;
        store.load()
    });

    assert_eq!(loaded.unwrap().trials.len(), 1);
}

#[test]
fn etcd_compaction_moves_compact_revision() {
    let server = EtcdServer::start();
    let options = EtcdOptions {
        compaction_interval: Some(Duration::from_millis(100)),
        retained_revisions: 1,
        ..EtcdOptions::default()
    };
    let store = connect(vec![server.endpoint()], options);
    for i in 0..5 {
        store
            .write(&trials_batch(vec![trial(&format!("trial-{i}"), 10)]))
            .unwrap();
    }
    let client = TestClient::connect(vec![server.endpoint()]);

    // Revision 2 is the first write, and reading at it fails once compaction has passed it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last_error = None;
    while Instant::now() < deadline {
        match client.get_at_revision(PREFIX, 2) {
            Err(error) if error.contains("compacted") => return,
            Err(error) => last_error = Some(error),
            Ok(()) => {}
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("etcd history was not compacted within 10 s; last error: {last_error:?}");
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A plain etcd client for preparing and inspecting what the store wrote.
struct TestClient {
    runtime: tokio::runtime::Runtime,
    client: etcd_client::Client,
}

impl TestClient {
    fn connect(endpoints: Vec<String>) -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = runtime
            .block_on(etcd_client::Client::connect(endpoints, None))
            .unwrap();
        Self { runtime, client }
    }

    /// Puts `value` at `key` and returns the key's create revision.
    fn put(&self, key: &str, value: &[u8]) -> i64 {
        let mut kv = self.client.kv_client();
        self.runtime.block_on(async {
            kv.put(key, value, None).await.unwrap();
            let response = kv.get(key, None).await.unwrap();
            response.kvs()[0].create_revision()
        })
    }

    /// Reads the keys under `prefix` as they were at `revision`.
    fn get_at_revision(&self, prefix: &str, revision: i64) -> Result<(), String> {
        let mut kv = self.client.kv_client();
        let options = GetOptions::new().with_prefix().with_revision(revision);
        self.runtime
            .block_on(kv.get(prefix, Some(options)))
            .map(|_| ())
            .map_err(|error| error.to_string())
    }
}

fn connect(endpoints: Vec<String>, options: EtcdOptions) -> EtcdStore {
    EtcdStore::connect(endpoints, PREFIX.into(), options).unwrap()
}

/// Returns a loopback URL that nothing listens on, unless another process took the port after
/// this function released it.
fn unused_endpoint() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", listener.local_addr().unwrap())
}

fn sorted(mut snapshot: Snapshot) -> Snapshot {
    snapshot.sweeps.sort_by(|a, b| a.sweep_id.cmp(&b.sweep_id));
    snapshot.trials.sort_by(|a, b| a.trial_id.cmp(&b.trial_id));
    snapshot
        .ensembles
        .sort_by(|a, b| a.sweep_id.cmp(&b.sweep_id));
    snapshot
        .workers
        .sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
    snapshot
}

fn trials_batch(trials: Vec<v1::Trial>) -> WriteBatch {
    WriteBatch {
        trials,
        ..WriteBatch::default()
    }
}

fn sweep(id: &str) -> v1::Sweep {
    v1::Sweep {
        sweep_id: id.into(),
        name: format!("{id} name"),
        spec_toml: "[search]\nmethod = \"random\"\n".into(),
        status: v1::SweepStatus::Running as i32,
        objective: Some(v1::Objective {
            metric: "val_accuracy".into(),
            goal: v1::Goal::Maximize as i32,
        }),
        created_at_ms: 1_700_000_000_000,
        num_trials_created: 3,
        num_trials_planned: 20,
        ..v1::Sweep::default()
    }
}

/// Builds a trial whose stderr tail is `padding_bytes` long, to set the record's size.
fn trial(id: &str, padding_bytes: usize) -> v1::Trial {
    v1::Trial {
        trial_id: id.into(),
        sweep_id: "sweep-a".into(),
        index: 7,
        status: v1::TrialStatus::Running as i32,
        attempts: vec![v1::Attempt {
            number: 1,
            worker_id: "worker-1".into(),
            slot: 0,
            status: v1::AttemptStatus::Running as i32,
            started_at_ms: 1_700_000_000_500,
            exit_code: -1,
            stderr_tail: "x".repeat(padding_bytes),
            ..v1::Attempt::default()
        }],
        history: vec![v1::EpochMetrics {
            epoch: 1,
            metrics: vec![v1::Metric {
                name: "val_loss".into(),
                value: 0.42,
            }],
            reported_at_ms: 1_700_000_001_000,
        }],
        created_at_ms: 1_700_000_000_000,
        ..v1::Trial::default()
    }
}

fn ensemble(sweep_id: &str) -> v1::EnsembleSummary {
    v1::EnsembleSummary {
        sweep_id: sweep_id.into(),
        selection_metric: "accuracy".into(),
        size: 3,
        val_accuracy: 0.97,
        best_trial_id: "trial-1".into(),
        num_candidates: 12,
        ..v1::EnsembleSummary::default()
    }
}

fn worker(id: &str) -> v1::Worker {
    v1::Worker {
        worker_id: id.into(),
        hostname: format!("{id}.example"),
        labels: [("zone".to_string(), "a".to_string())].into(),
        version: "0.1.0".into(),
        registered_at_ms: 1_700_000_000_000,
        status: v1::WorkerStatus::Active as i32,
        ..v1::Worker::default()
    }
}
