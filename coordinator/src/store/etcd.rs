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

mod backend;
mod records;

use std::sync::{mpsc as std_mpsc, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

use tokio::sync::mpsc;

use super::{Snapshot, StateStore, StoreError, WriteBatch};
use records::{split_into_chunks, Put};

/// How much longer than the request timeout a caller waits for the store's thread to reply
/// before it reports a timeout itself.
const REPLY_MARGIN: Duration = Duration::from_millis(500);

/// Settings of an [`EtcdStore`].
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// Maximum time one etcd request may take, retries included. A load reads one page per
    /// request and a write sends one transaction per chunk, so a large load or write may take
    /// several timeouts in total, but each page or transaction gets at most one.
    pub request_timeout: Duration,
    /// Maximum time one try of a request may take before it is abandoned and sent again, within
    /// `request_timeout`. A request that reached a member whose leader just died can hang
    /// until etcd's own request timeout (5 s plus twice the election timeout, so 7 s with
    /// etcd's defaults), and a new try after the election succeeds sooner.
    pub attempt_timeout: Duration,
    /// Time between compactions of etcd's history, or `None` to turn compaction off.
    pub compaction_interval: Option<Duration>,
    /// Revisions kept behind the current revision at each compaction.
    pub retained_revisions: i64,
    /// Puts per transaction. etcd rejects transactions with more than `--max-txn-ops`
    /// operations (default 128).
    pub max_ops_per_txn: usize,
    /// Bytes of keys and values per transaction, with an estimate of 16 bytes of framing per
    /// put. etcd rejects requests larger than `--max-request-bytes` (default 1.5 MiB), so a
    /// single record larger than that cannot be stored.
    pub max_bytes_per_txn: usize,
    /// Keys per page when loading. A page whose response exceeds the gRPC message limit
    /// (4 MiB) is retried with half as many keys.
    pub load_page_size: i64,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(5),
            attempt_timeout: Duration::from_secs(2),
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
    /// The election key, such as the key an etcd election campaign created.
    pub key: Vec<u8>,
    /// The key's create revision when this coordinator became the leader.
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
    /// `http://127.0.0.1:2379`) and checks that etcd serves a read within the request timeout.
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
                backend::run_store_thread(
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

enum Reply<T> {
    /// One page or chunk is done; the caller restarts its wait.
    Progress,
    /// The request is finished.
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
    if options.request_timeout.is_zero() || options.attempt_timeout.is_zero() {
        return invalid(format!(
            "invalid timeouts (request {:?}, attempt {:?}): expected more than 0 for each",
            options.request_timeout, options.attempt_timeout
        ));
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

#[cfg(test)]
mod tests {
    use super::*;

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
