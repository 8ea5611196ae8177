//! The async side of the etcd store: the thread with its runtime and etcd client, retries,
//! paged loads, chunked transactions and periodic compaction.

use std::future::Future;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, GetResponse, KvClient, Txn, TxnOp,
};
use prost::Message;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::Code;

use super::records::{prefix_range_end, Put, ENSEMBLES, SWEEPS, TRIALS, WORKERS};
use super::{EtcdOptions, Fence, Reply, Request};
use crate::store::{Snapshot, StoreError};

const FIRST_RETRY_DELAY: Duration = Duration::from_millis(50);
const MAX_RETRY_DELAY: Duration = Duration::from_millis(500);
/// HTTP/2 ping interval. etcd closes connections that ping more often than
/// `--grpc-keepalive-min-time` (default 5 s in etcd 3.4).
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// How many times `load` starts over when compaction removed the revision it was reading at.
const MAX_LOAD_RESTARTS: usize = 3;

/// The etcd side of the store, owned by the store's thread. Requests run as tasks on the
/// thread's runtime, each with a clone of this.
#[derive(Clone)]
struct Backend {
    kv: KvClient,
    prefix: String,
    endpoints: String,
    options: EtcdOptions,
}

/// Runs the store's thread: connects, reports the outcome on `ready_tx`, then serves requests
/// until the store drops its sender.
pub(super) fn run_store_thread(
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
            .with_timeout(options.attempt_timeout)
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
        // Revision 0 reads the latest revision, and the first page's revision is used for the rest.
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
    /// request timeout passes. Each try gets at most `attempt_timeout`. Retries pick a fresh
    /// connection from the balanced channel, so they reach another endpoint when one member is
    /// down.
    ///
    /// NOTE: etcd may still apply a transaction whose try timed out. Within one write that only
    /// repeats the same puts, but the abandoned try of a write that failed could be applied
    /// after a later write of the same record.
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
        let last_error = loop {
            let started = Instant::now();
            let attempt_deadline = deadline.min(started + self.options.attempt_timeout);
            let attempt = tokio::time::timeout_at(attempt_deadline, request(self.kv.clone())).await;
            let error = match attempt {
                Ok(Ok(response)) => return Ok(response),
                Ok(Err(source)) if is_retryable(&source) => source.to_string(),
                Ok(Err(source)) => {
                    return Err(StoreError::Etcd {
                        operation,
                        endpoints: self.endpoints.clone(),
                        source: Box::new(source),
                    })
                }
                Err(_elapsed) => format!("no response within {:?}", attempt_deadline - started),
            };
            if Instant::now() + delay >= deadline {
                break error;
            }
            tracing::debug!(
                operation,
                endpoints = %self.endpoints,
                %error,
                "etcd request failed; retrying"
            );
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(MAX_RETRY_DELAY);
        };
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

/// Reports whether a failed request may succeed when sent again. The codes of etcd's errors
/// come from `error.go` in etcd's `rpctypes` package.
fn is_retryable(error: &etcd_client::Error) -> bool {
    match error {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        // Unavailable covers refused connections and etcd's "no leader", "leader changed" and
        // "request timed out". Cancelled is tonic's "Timeout expired" for an attempt. ResourceExhausted is either "too many requests", which passes, or
        // "database space exceeded", which needs an operator.
        etcd_client::Error::GRpcStatus(status) => match status.code() {
            Code::Unavailable
            | Code::Unknown
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::Cancelled => true,
            Code::ResourceExhausted => status.message().contains("too many requests"),
            _ => false,
        },
        _ => false,
    }
}

/// Reports whether etcd rejected a read or compaction because the revision was compacted
/// ("mvcc: required revision has been compacted", code OutOfRange).
fn is_compacted(error: &etcd_client::Error) -> bool {
    matches!(error, etcd_client::Error::GRpcStatus(status)
        if status.code() == Code::OutOfRange && status.message().contains("compacted"))
}

/// Reports whether a response exceeded the client's gRPC message limit. tonic 0.14 reports that
/// as OutOfRange with "decoded message length too large" in the message.
fn is_too_large(error: &etcd_client::Error) -> bool {
    let too_large = "message length too large";
    matches!(error, etcd_client::Error::GRpcStatus(status)
        if status.code() == Code::OutOfRange && status.message().contains(too_large))
}
