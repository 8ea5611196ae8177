//! The etcd state store: every record under a key prefix in an etcd cluster, so that a standby
//! coordinator can take over from the same state.
//!
//! `StateStore` is synchronous and etcd-client is async. The store therefore owns a thread that
//! runs a current-thread tokio runtime with the etcd client. `load` and `write` send a request to
//! that thread and block on the reply, so they work from plain threads and from inside another
//! tokio runtime (where they block that runtime's thread while they wait).
//!
//! Keys are `{prefix}/sweeps/{sweep_id}`, `{prefix}/trials/{trial_id}`,
//! `{prefix}/workers/{worker_id}` and `{prefix}/ensembles/{sweep_id}`. Values are the
//! prost-encoded records.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{mpsc as std_mpsc, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, GetResponse, KvClient, Txn, TxnOp,
};
use prost::Message;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::Code;

use super::{Snapshot, StateStore, StoreError, WriteBatch};

const SWEEPS: &str = "sweeps";
const TRIALS: &str = "trials";
const ENSEMBLES: &str = "ensembles";
const WORKERS: &str = "workers";

/// Bytes a put adds to a transaction beyond its key and value: the protobuf tags and lengths of
/// the `RequestOp` and `PutRequest` wrappers, rounded up.
const PUT_OVERHEAD_BYTES: usize = 16;
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(50);
const MAX_RETRY_DELAY: Duration = Duration::from_millis(500);
/// How much longer than the request timeout a caller waits for the store's thread to reply
/// before it reports a timeout itself.
const REPLY_MARGIN: Duration = Duration::from_millis(500);
/// HTTP/2 ping interval. etcd closes connections that ping more often than
/// `--grpc-keepalive-min-time` (default 5 s in etcd 3.4 and 3.5).
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// How many times `load` starts over when compaction removed the revision it was reading at.
const MAX_LOAD_RESTARTS: usize = 3;

/// Settings of an [`EtcdStore`].
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// Longest time one etcd request may take, retries included. A load reads one page per
    /// request and a write sends one transaction per chunk, so a large load or write may take
    /// several timeouts in total, but never longer than one timeout without progress.
    pub request_timeout: Duration,
    /// Time between compactions of etcd's history; `None` turns compaction off.
    pub compaction_interval: Option<Duration>,
    /// Revisions kept behind the current revision at each compaction.
    pub retained_revisions: i64,
    /// Puts per transaction. etcd rejects transactions with more than `--max-txn-ops`
    /// operations (default 128).
    pub max_ops_per_txn: usize,
    /// Bytes of keys and values per transaction. etcd rejects requests larger than
    /// `--max-request-bytes` (default 1.5 MiB).
    pub max_bytes_per_txn: usize,
    /// Keys per page when loading. A page whose response exceeds the gRPC message limit
    /// (4 MiB) is retried with half as many keys.
    pub load_page_size: i64,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(5),
            compaction_interval: Some(Duration::from_secs(300)),
            retained_revisions: 1000,
            max_ops_per_txn: 100,
            max_bytes_per_txn: 1024 * 1024,
            load_page_size: 500,
        }
    }
}

/// A leader's election key and the create revision it had when this coordinator won the
/// election. While a fence is set, every write succeeds only if the key still has that create
/// revision, so a coordinator that lost leadership cannot write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub key: Vec<u8>,
    pub create_revision: i64,
}

/// The state store in etcd.
///
/// A batch that fits in one chunk (`max_ops_per_txn` puts and `max_bytes_per_txn` bytes) is
/// written in one etcd transaction, so it is atomic. A larger batch is split into several
/// transactions written one after another, and a failure part-way leaves the earlier chunks
/// stored.
pub struct EtcdStore {
    request_tx: Option<mpsc::UnboundedSender<Request>>,
    thread: Option<thread::JoinHandle<()>>,
    fence: Mutex<Option<Fence>>,
    prefix: String,
    endpoints: String,
    options: EtcdOptions,
}

impl EtcdStore {
    /// Starts the store's thread, connects to `endpoints` (URLs such as
    /// `http://127.0.0.1:2379`) and checks that etcd answers within the request timeout.
    /// `prefix` is the key prefix, without a trailing `/`.
    pub fn connect(
        endpoints: Vec<String>,
        prefix: String,
        options: EtcdOptions,
    ) -> Result<Self, StoreError> {
        validate(&endpoints, &prefix, &options)?;
        let endpoints_text = endpoints.join(",");
        let (request_tx, request_rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = std_mpsc::channel();
        let runtime_prefix = prefix.clone();
        let runtime_options = options.clone();
        let thread = thread::Builder::new()
            .name("etcd-store".into())
            .spawn(move || {
                run_store_thread(
                    endpoints,
                    runtime_prefix,
                    runtime_options,
                    request_rx,
                    ready_tx,
                )
            })
            .map_err(|source| StoreError::EtcdThread {
                endpoints: endpoints_text.clone(),
                message: format!("failed to start the etcd store thread: {source}"),
            })?;
        let store = Self {
            request_tx: Some(request_tx),
            thread: Some(thread),
            fence: Mutex::new(None),
            prefix,
            endpoints: endpoints_text,
            options,
        };
        let ready = ready_rx.recv_timeout(store.options.request_timeout + REPLY_MARGIN);
        match ready {
            Ok(Ok(())) => Ok(store),
            Ok(Err(err)) => Err(err),
            Err(_) => Err(store.no_reply_error("connect")),
        }
    }

    /// Sets or clears the fence that every later write checks.
    pub fn set_fence(&self, fence: Option<Fence>) {
        *self.lock_fence() = fence;
    }

    fn lock_fence(&self) -> MutexGuard<'_, Option<Fence>> {
        self.fence
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sends a request to the store's thread and waits for its result. Every reply resets the
    /// wait, so a long load or write that keeps making progress is not cut off.
    fn call<T>(
        &self,
        operation: &'static str,
        make_request: impl FnOnce(std_mpsc::Sender<Reply<T>>) -> Request,
    ) -> Result<T, StoreError> {
        let (reply_tx, reply_rx) = std_mpsc::channel();
        let sent = self
            .request_tx
            .as_ref()
            .is_some_and(|request_tx| request_tx.send(make_request(reply_tx)).is_ok());
        if !sent {
            return Err(self.no_reply_error(operation));
        }
        loop {
            match reply_rx.recv_timeout(self.options.request_timeout + REPLY_MARGIN) {
                Ok(Reply::Progress) => continue,
                Ok(Reply::Done(result)) => return result,
                Err(std_mpsc::RecvTimeoutError::Timeout) => {
                    return Err(StoreError::EtcdTimeout {
                        operation,
                        endpoints: self.endpoints.clone(),
                        timeout: self.options.request_timeout,
                        last_error: "the etcd store thread did not reply".into(),
                    })
                }
                Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(self.no_reply_error(operation))
                }
            }
        }
    }

    fn no_reply_error(&self, operation: &'static str) -> StoreError {
        StoreError::EtcdThread {
            endpoints: self.endpoints.clone(),
            message: format!("the etcd store thread stopped before replying to {operation}"),
        }
    }
}

impl StateStore for EtcdStore {
    fn load(&self) -> Result<Snapshot, StoreError> {
        self.call("load", |reply_tx| Request::Load { reply_tx })
    }

    fn write(&self, batch: &WriteBatch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let chunks = split_into_chunks(&self.prefix, batch, &self.options);
        let fence = self.lock_fence().clone();
        self.call("write", |reply_tx| Request::Write {
            chunks,
            fence,
            reply_tx,
        })
    }
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        // Closing the channel ends the thread's request loop, and dropping its runtime cancels
        // the compaction task and any request still in flight.
        self.request_tx = None;
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::warn!(endpoints = %self.endpoints, "the etcd store thread panicked");
            }
        }
    }
}

/// One record encoded as an etcd key and value.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Put {
    key: String,
    value: Vec<u8>,
}

enum Reply<T> {
    /// One page or chunk is done; the caller restarts its wait.
    Progress,
    Done(Result<T, StoreError>),
}

enum Request {
    Load {
        reply_tx: std_mpsc::Sender<Reply<Snapshot>>,
    },
    Write {
        chunks: Vec<Vec<Put>>,
        fence: Option<Fence>,
        reply_tx: std_mpsc::Sender<Reply<()>>,
    },
}

/// The etcd side of the store, owned by the store's thread. Requests run as tasks on the
/// thread's runtime, each with a clone of this.
#[derive(Clone)]
struct Backend {
    kv: KvClient,
    prefix: String,
    endpoints: String,
    options: EtcdOptions,
}

fn validate(endpoints: &[String], prefix: &str, options: &EtcdOptions) -> Result<(), StoreError> {
    let invalid = |message: String| Err(StoreError::InvalidEtcdConfig(message));
    if endpoints.is_empty() {
        return invalid("no etcd endpoints given: expected at least one URL".into());
    }
    if prefix.ends_with('/') {
        return invalid(format!(
            "invalid key prefix {prefix:?}: expected no trailing '/'"
        ));
    }
    if options.request_timeout.is_zero() {
        return invalid("invalid request timeout 0s: expected more than 0".into());
    }
    if options
        .compaction_interval
        .is_some_and(|interval| interval.is_zero())
    {
        return invalid("invalid compaction interval 0s: expected more than 0 or none".into());
    }
    if options.retained_revisions < 0 {
        return invalid(format!(
            "invalid retained revisions {}: expected 0 or more",
            options.retained_revisions
        ));
    }
    if options.max_ops_per_txn == 0 || options.max_bytes_per_txn == 0 {
        return invalid(format!(
            "invalid transaction limits ({} ops, {} bytes): expected more than 0 of each",
            options.max_ops_per_txn, options.max_bytes_per_txn
        ));
    }
    if options.load_page_size <= 0 {
        return invalid(format!(
            "invalid load page size {}: expected more than 0",
            options.load_page_size
        ));
    }
    Ok(())
}

/// Runs the store's thread: connects, reports the outcome on `ready_tx`, then serves requests
/// until the store drops its sender.
fn run_store_thread(
    endpoints: Vec<String>,
    prefix: String,
    options: EtcdOptions,
    mut request_rx: mpsc::UnboundedReceiver<Request>,
    ready_tx: std_mpsc::Sender<Result<(), StoreError>>,
) {
    let endpoints_text = endpoints.join(",");
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(source) => {
            let _ = ready_tx.send(Err(StoreError::EtcdThread {
                endpoints: endpoints_text,
                message: format!("failed to build the etcd store runtime: {source}"),
            }));
            return;
        }
    };
    runtime.block_on(async move {
        // The client owns the sender that feeds endpoints to the balanced channel, so it lives
        // as long as the thread serves requests.
        let (_client, backend) = match Backend::connect(&endpoints, prefix, options).await {
            Ok(connected) => connected,
            Err(err) => {
                let _ = ready_tx.send(Err(err));
                return;
            }
        };
        tracing::info!(endpoints = %endpoints_text, prefix = %backend.prefix, "connected to etcd");
        let _ = ready_tx.send(Ok(()));
        if let Some(interval) = backend.options.compaction_interval {
            tokio::spawn(backend.clone().compact_periodically(interval));
        }
        while let Some(request) = request_rx.recv().await {
            tokio::spawn(backend.clone().serve(request));
        }
    });
}

impl Backend {
    async fn connect(
        endpoints: &[String],
        prefix: String,
        options: EtcdOptions,
    ) -> Result<(Client, Self), StoreError> {
        let endpoints_text = endpoints.join(",");
        let connect_options = ConnectOptions::new()
            .with_connect_timeout(options.request_timeout)
            .with_timeout(options.request_timeout)
            .with_keep_alive(KEEP_ALIVE_INTERVAL, options.request_timeout)
            .with_keep_alive_while_idle(true);
        let client = Client::connect(endpoints, Some(connect_options))
            .await
            .map_err(|source| StoreError::Etcd {
                operation: "connect",
                endpoints: endpoints_text.clone(),
                source: Box::new(source),
            })?;
        let backend = Self {
            kv: client.kv_client(),
            prefix,
            endpoints: endpoints_text,
            options,
        };
        // The client connects lazily, so a read shows whether etcd is reachable.
        let key = backend.prefix.clone().into_bytes();
        backend
            .with_retries("connect", |mut kv| {
                let key = key.clone();
                async move { kv.get(key, Some(GetOptions::new().with_count_only())).await }
            })
            .await?;
        Ok((client, backend))
    }

    async fn serve(self, request: Request) {
        match request {
            Request::Load { reply_tx } => {
                let result = self.load(&reply_tx).await;
                let _ = reply_tx.send(Reply::Done(result));
            }
            Request::Write {
                chunks,
                fence,
                reply_tx,
            } => {
                let result = self.write(chunks, fence, &reply_tx).await;
                let _ = reply_tx.send(Reply::Done(result));
            }
        }
    }

    /// Reads every table at one revision, so the snapshot is consistent across tables.
    async fn load(
        &self,
        reply_tx: &std_mpsc::Sender<Reply<Snapshot>>,
    ) -> Result<Snapshot, StoreError> {
        let mut restarts = 0;
        loop {
            match self.load_at_one_revision(reply_tx).await {
                Err(StoreError::Etcd { source, .. })
                    if is_compacted(&source) && restarts < MAX_LOAD_RESTARTS =>
                {
                    restarts += 1;
                    tracing::debug!(
                        restarts,
                        "etcd compacted the revision being loaded; starting over"
                    );
                }
                result => return result,
            }
        }
    }

    async fn load_at_one_revision(
        &self,
        reply_tx: &std_mpsc::Sender<Reply<Snapshot>>,
    ) -> Result<Snapshot, StoreError> {
        // 0 reads the latest revision; the first page then fixes it for the rest.
        let mut revision = 0;
        Ok(Snapshot {
            sweeps: self.load_table(SWEEPS, &mut revision, reply_tx).await?,
            trials: self.load_table(TRIALS, &mut revision, reply_tx).await?,
            ensembles: self.load_table(ENSEMBLES, &mut revision, reply_tx).await?,
            workers: self.load_table(WORKERS, &mut revision, reply_tx).await?,
        })
    }

    /// Reads one table page by page, each page starting after the last key of the previous one.
    async fn load_table<M: Message + Default>(
        &self,
        table: &'static str,
        revision: &mut i64,
        reply_tx: &std_mpsc::Sender<Reply<Snapshot>>,
    ) -> Result<Vec<M>, StoreError> {
        let table_prefix = format!("{}/{table}/", self.prefix);
        let range_end = prefix_range_end(table_prefix.as_bytes());
        let mut page_start = table_prefix.clone().into_bytes();
        let mut page_size = self.options.load_page_size;
        let mut records = Vec::new();
        loop {
            let options = GetOptions::new()
                .with_range(range_end.clone())
                .with_limit(page_size)
                .with_revision(*revision);
            let key = page_start.clone();
            let page = self
                .with_retries("load", |mut kv| {
                    let (key, options) = (key.clone(), options.clone());
                    async move { kv.get(key, Some(options)).await }
                })
                .await;
            let page = match page {
                Err(StoreError::Etcd { source, .. }) if is_too_large(&source) && page_size > 1 => {
                    page_size /= 2;
                    tracing::debug!(
                        table,
                        page_size,
                        "etcd page too large; halving the page size"
                    );
                    continue;
                }
                page => page?,
            };
            let _ = reply_tx.send(Reply::Progress);
            if *revision == 0 {
                *revision = page.header().map_or(0, |header| header.revision());
            }
            let more = page.more();
            let Some(last_key) = decode_page(&page, table, &mut records)? else {
                return Ok(records);
            };
            if !more {
                return Ok(records);
            }
            page_start = last_key;
            page_start.push(0);
        }
    }

    async fn write(
        &self,
        chunks: Vec<Vec<Put>>,
        fence: Option<Fence>,
        reply_tx: &std_mpsc::Sender<Reply<()>>,
    ) -> Result<(), StoreError> {
        let num_chunks = chunks.len();
        for (index, chunk) in chunks.into_iter().enumerate() {
            let ops: Vec<TxnOp> = chunk
                .into_iter()
                .map(|put| TxnOp::put(put.key, put.value, None))
                .collect();
            let mut txn = Txn::new();
            if let Some(fence) = &fence {
                let compare = Compare::create_revision(
                    fence.key.clone(),
                    CompareOp::Equal,
                    fence.create_revision,
                );
                txn = txn.when(vec![compare]);
            }
            let txn = txn.and_then(ops);
            let response = self
                .with_retries("write", |mut kv| {
                    let txn = txn.clone();
                    async move { kv.txn(txn).await }
                })
                .await?;
            if !response.succeeded() {
                // Only the fence compare can fail, because the transaction has no other one.
                let fence = fence.expect("a transaction without compares always succeeds");
                tracing::warn!(
                    fence_key = %String::from_utf8_lossy(&fence.key),
                    create_revision = fence.create_revision,
                    chunk = index + 1,
                    num_chunks,
                    "etcd write rejected by the fence"
                );
                return Err(StoreError::Fenced {
                    key: String::from_utf8_lossy(&fence.key).into_owned(),
                    create_revision: fence.create_revision,
                });
            }
            let _ = reply_tx.send(Reply::Progress);
        }
        Ok(())
    }

    /// Runs `request` until it succeeds, fails with an error that retrying cannot fix, or the
    /// request timeout passes. Retries pick a fresh connection from the balanced channel, so
    /// they reach another endpoint when one member is down.
    async fn with_retries<T, F, Fut>(
        &self,
        operation: &'static str,
        mut request: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut(KvClient) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = Instant::now() + self.options.request_timeout;
        let mut delay = FIRST_RETRY_DELAY;
        let mut last_error = String::from("no response");
        loop {
            match tokio::time::timeout_at(deadline, request(self.kv.clone())).await {
                Ok(Ok(response)) => return Ok(response),
                Ok(Err(source)) if is_retryable(&source) => {
                    tracing::debug!(operation, endpoints = %self.endpoints, error = %source, "etcd request failed; retrying");
                    last_error = source.to_string();
                }
                Ok(Err(source)) => {
                    return Err(StoreError::Etcd {
                        operation,
                        endpoints: self.endpoints.clone(),
                        source: Box::new(source),
                    })
                }
                Err(_elapsed) => break,
            }
            if Instant::now() + delay >= deadline {
                break;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(MAX_RETRY_DELAY);
        }
        Err(StoreError::EtcdTimeout {
            operation,
            endpoints: self.endpoints.clone(),
            timeout: self.options.request_timeout,
            last_error,
        })
    }

    async fn compact_periodically(self, interval: Duration) {
        let mut ticker = tokio::time::interval_at(Instant::now() + interval, interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            self.compact_once().await;
        }
    }

    /// Compacts etcd's history up to `retained_revisions` behind the current revision. This
    /// compacts the whole keyspace, not just this store's prefix, because etcd has no
    /// per-prefix compaction.
    async fn compact_once(&self) {
        let key = self.prefix.clone().into_bytes();
        let current = self
            .with_retries("compact", |mut kv| {
                let key = key.clone();
                async move { kv.get(key, Some(GetOptions::new().with_count_only())).await }
            })
            .await;
        let current = match current {
            Ok(response) => response.header().map_or(0, |header| header.revision()),
            Err(err) => {
                tracing::warn!(error = %err, "failed to read etcd's revision for compaction");
                return;
            }
        };
        let revision = current - self.options.retained_revisions;
        if revision <= 0 {
            return;
        }
        let compacted = self
            .with_retries("compact", |mut kv| async move {
                kv.compact(revision, None).await
            })
            .await;
        match compacted {
            Ok(_) => tracing::debug!(revision, "compacted etcd history"),
            // Another client, or etcd's own auto-compaction, got there first.
            Err(StoreError::Etcd { source, .. }) if is_compacted(&source) => {
                tracing::debug!(revision, "etcd history already compacted");
            }
            Err(err) => tracing::warn!(revision, error = %err, "failed to compact etcd history"),
        }
    }
}

/// Appends the page's records to `records` and returns its last key, or `None` when the page
/// is empty.
fn decode_page<M: Message + Default>(
    page: &GetResponse,
    table: &'static str,
    records: &mut Vec<M>,
) -> Result<Option<Vec<u8>>, StoreError> {
    for kv in page.kvs() {
        let record = M::decode(kv.value()).map_err(|source| StoreError::Corrupt {
            table,
            key: String::from_utf8_lossy(kv.key()).into_owned(),
            source,
        })?;
        records.push(record);
    }
    Ok(page.kvs().last().map(|kv| kv.key().to_vec()))
}

/// Encodes a batch as puts and splits them into chunks within the transaction limits. A record
/// that appears twice keeps its last version, because etcd rejects a transaction that puts the
/// same key twice. A record larger than `max_bytes_per_txn` gets a chunk of its own.
fn split_into_chunks(prefix: &str, batch: &WriteBatch, options: &EtcdOptions) -> Vec<Vec<Put>> {
    let mut chunks = Vec::new();
    let mut chunk = Vec::new();
    let mut chunk_bytes = 0;
    for put in encode_batch(prefix, batch) {
        let put_bytes = put.key.len() + put.value.len() + PUT_OVERHEAD_BYTES;
        let full = chunk.len() == options.max_ops_per_txn
            || chunk_bytes + put_bytes > options.max_bytes_per_txn;
        if full && !chunk.is_empty() {
            chunks.push(std::mem::take(&mut chunk));
            chunk_bytes = 0;
        }
        chunk.push(put);
        chunk_bytes += put_bytes;
    }
    if !chunk.is_empty() {
        chunks.push(chunk);
    }
    chunks
}

fn encode_batch(prefix: &str, batch: &WriteBatch) -> Vec<Put> {
    let mut puts = Vec::new();
    let mut positions = HashMap::new();
    let mut add = |table: &str, id: &str, value: Vec<u8>| {
        let key = format!("{prefix}/{table}/{id}");
        match positions.get(&key) {
            Some(&position) => puts[position] = Put { key, value },
            None => {
                positions.insert(key.clone(), puts.len());
                puts.push(Put { key, value });
            }
        }
    };
    for sweep in &batch.sweeps {
        add(SWEEPS, &sweep.sweep_id, sweep.encode_to_vec());
    }
    for trial in &batch.trials {
        add(TRIALS, &trial.trial_id, trial.encode_to_vec());
    }
    for ensemble in &batch.ensembles {
        add(ENSEMBLES, &ensemble.sweep_id, ensemble.encode_to_vec());
    }
    for worker in &batch.workers {
        add(WORKERS, &worker.worker_id, worker.encode_to_vec());
    }
    puts
}

/// Returns the smallest key above every key that starts with `prefix`, as etcd's range end.
fn prefix_range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte was 0xff: "\0" as range end means "to the end of the keyspace".
    vec![0]
}

fn is_retryable(error: &etcd_client::Error) -> bool {
    match error {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        // Unavailable covers refused connections and etcd's "leader changed", "no leader" and
        // "request timed out". ResourceExhausted is etcd's "too many requests".
        etcd_client::Error::GRpcStatus(status) => matches!(
            status.code(),
            Code::Unavailable
                | Code::Unknown
                | Code::DeadlineExceeded
                | Code::Aborted
                | Code::ResourceExhausted
        ),
        _ => false,
    }
}

/// Reports whether etcd rejected a read or compaction because the revision was compacted.
fn is_compacted(error: &etcd_client::Error) -> bool {
    matches!(error, etcd_client::Error::GRpcStatus(status)
        if status.code() == Code::OutOfRange && status.message().contains("compacted"))
}

/// Reports whether a response exceeded the client's gRPC message limit.
fn is_too_large(error: &etcd_client::Error) -> bool {
    matches!(error, etcd_client::Error::GRpcStatus(status)
        if status.code() == Code::OutOfRange && status.message().contains("message length too large"))
}

#[cfg(test)]
mod tests {
    use tunefleet_proto::v1;

    use super::*;

    fn trial(id: &str, padding_bytes: usize) -> v1::Trial {
        v1::Trial {
            trial_id: id.into(),
            reason: "x".repeat(padding_bytes),
            ..v1::Trial::default()
        }
    }

    fn options(max_ops_per_txn: usize, max_bytes_per_txn: usize) -> EtcdOptions {
        EtcdOptions {
            max_ops_per_txn,
            max_bytes_per_txn,
            ..EtcdOptions::default()
        }
    }

    fn trials_batch(trials: Vec<v1::Trial>) -> WriteBatch {
        WriteBatch {
            trials,
            ..WriteBatch::default()
        }
    }

    #[test]
    fn chunks_respect_max_ops() {
        let trials = (0..250).map(|i| trial(&i.to_string(), 10)).collect();

        let chunks = split_into_chunks("/p", &trials_batch(trials), &options(100, 1 << 20));

        let sizes: Vec<usize> = chunks.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![100, 100, 50]);
    }

    #[test]
    fn chunks_respect_max_bytes() {
        let trials = (0..10).map(|i| trial(&i.to_string(), 1000)).collect();

        let chunks = split_into_chunks("/p", &trials_batch(trials), &options(100, 3500));

        let sizes: Vec<usize> = chunks.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![3, 3, 3, 1]);
    }

    #[test]
    fn chunks_give_oversized_record_its_own() {
        let trials = vec![trial("a", 10), trial("big", 5000), trial("c", 10)];

        let chunks = split_into_chunks("/p", &trials_batch(trials), &options(100, 1000));

        let sizes: Vec<usize> = chunks.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![1, 1, 1]);
        assert_eq!(chunks[1][0].key, "/p/trials/big");
    }

    #[test]
    fn encode_keeps_last_duplicate() {
        let mut later = trial("a", 10);
        later.index = 2;
        let batch = trials_batch(vec![trial("a", 10), trial("b", 10), later.clone()]);

        let puts = encode_batch("/p", &batch);

        let keys: Vec<&str> = puts.iter().map(|put| put.key.as_str()).collect();
        assert_eq!(keys, vec!["/p/trials/a", "/p/trials/b"]);
        assert_eq!(puts[0].value, later.encode_to_vec());
    }

    #[test]
    fn encode_keys_each_table() {
        let batch = WriteBatch {
            sweeps: vec![v1::Sweep {
                sweep_id: "s".into(),
                ..v1::Sweep::default()
            }],
            trials: vec![trial("t", 0)],
            ensembles: vec![v1::EnsembleSummary {
                sweep_id: "s".into(),
                ..v1::EnsembleSummary::default()
            }],
            workers: vec![v1::Worker {
                worker_id: "w".into(),
                ..v1::Worker::default()
            }],
        };

        let puts = encode_batch("/p", &batch);

        let keys: Vec<&str> = puts.iter().map(|put| put.key.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "/p/sweeps/s",
                "/p/trials/t",
                "/p/ensembles/s",
                "/p/workers/w"
            ]
        );
    }

    #[test]
    fn range_end_increments_last_byte() {
        assert_eq!(prefix_range_end(b"/p/trials/"), b"/p/trials0".to_vec());
    }

    #[test]
    fn range_end_skips_trailing_ff() {
        assert_eq!(prefix_range_end(&[b'a', 0xff, 0xff]), vec![b'b']);
        assert_eq!(prefix_range_end(&[0xff]), vec![0]);
    }

    #[test]
    fn validate_rejects_zero_timeout() {
        let options = EtcdOptions {
            request_timeout: Duration::ZERO,
            ..EtcdOptions::default()
        };

        let result = validate(&["http://127.0.0.1:2379".into()], "/p", &options);

        assert!(matches!(result, Err(StoreError::InvalidEtcdConfig(_))));
    }

    #[test]
    fn validate_accepts_defaults() {
        let result = validate(
            &["http://127.0.0.1:2379".into()],
            "/p",
            &EtcdOptions::default(),
        );

        assert!(result.is_ok());
    }
}
