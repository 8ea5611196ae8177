//! The durable state store: every sweep, trial, worker and ensemble as a protobuf record, in
//! an embedded redb file under the coordinator's data directory by default.

pub mod etcd;

use std::fs;
use std::path::{Path, PathBuf};

use prost::Message;
use redb::{Database, ReadableTable, TableDefinition};
use tunefleet_proto::v1;

const SWEEPS: TableDefinition<&str, &[u8]> = TableDefinition::new("sweeps");
const TRIALS: TableDefinition<&str, &[u8]> = TableDefinition::new("trials");
const ENSEMBLES: TableDefinition<&str, &[u8]> = TableDefinition::new("ensembles");
const WORKERS: TableDefinition<&str, &[u8]> = TableDefinition::new("workers");

/// A failure to read or write the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store database error: {0}")]
    Database(Box<redb::Error>),
    #[error("store record {key:?} in table {table} is corrupt: {source}")]
    Corrupt {
        table: &'static str,
        key: String,
        source: prost::DecodeError,
    },
    #[error("I/O failed on {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("another tunefleet process is using the store in {0}: stop it or use another data directory")]
    InUse(PathBuf),
    #[error("invalid artifact name {0:?}: expected 1 to 64 characters from A-Z, a-z, 0-9, '.', '_', '-', not starting with '.'")]
    InvalidArtifactName(String),
    /// etcd failed a request with an error that retrying does not fix.
    #[error("etcd {operation} on {endpoints} failed: {source}")]
    Etcd {
        operation: &'static str,
        endpoints: String,
        source: Box<::etcd_client::Error>,
    },
    /// etcd did not complete a request within the request timeout, retries included.
    #[error("etcd {operation} on {endpoints} timed out after {timeout:?} (last error: {last_error}): check that etcd runs and is reachable")]
    EtcdTimeout {
        operation: &'static str,
        endpoints: String,
        timeout: std::time::Duration,
        last_error: String,
    },
    /// The etcd store's own thread failed to start or stopped.
    #[error("etcd store for {endpoints} failed: {message}")]
    EtcdThread { endpoints: String, message: String },
    /// A fenced write found that the leader's election key no longer has the create revision
    /// it had when this coordinator won the election. Nothing of the failed transaction is
    /// stored.
    #[error("write rejected: the election key {key:?} no longer has create revision {create_revision}, so this coordinator is no longer the leader")]
    Fenced { key: String, create_revision: i64 },
    /// Invalid settings for the etcd store.
    #[error("invalid etcd store config: {0}")]
    InvalidEtcdConfig(String),
    /// An object store has no object at an artifact's location.
    #[error("artifact {location} not found in {store}")]
    ArtifactNotFound { store: String, location: String },
    /// An object store request failed after object_store's own retries.
    #[error("{store} request for {location} failed: {error}")]
    ObjectStore {
        store: String,
        location: String,
        error: Box<object_store::Error>,
    },
    /// An object store request did not finish within the artifact store's timeout.
    #[error("{store} request for {location} timed out after {timeout:?}")]
    ObjectStoreTimeout {
        store: String,
        location: String,
        timeout: std::time::Duration,
    },
    /// The object store client's own thread and runtime failed to start or stopped.
    #[error("object store client runtime is not running: {0}")]
    ObjectStoreRuntime(String),
    /// An artifact store URL that is malformed or that the environment cannot serve.
    #[error("invalid artifact store URL {url:?}: {reason}")]
    InvalidArtifactUrl { url: String, reason: String },
}

impl From<redb::Error> for StoreError {
    fn from(err: redb::Error) -> Self {
        StoreError::Database(Box::new(err))
    }
}

/// Everything the store holds, as loaded at start-up.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub sweeps: Vec<v1::Sweep>,
    pub trials: Vec<v1::Trial>,
    pub ensembles: Vec<v1::EnsembleSummary>,
    pub workers: Vec<v1::Worker>,
}

/// Records to write together in one transaction.
#[derive(Debug, Default)]
pub struct WriteBatch {
    pub sweeps: Vec<v1::Sweep>,
    pub trials: Vec<v1::Trial>,
    pub ensembles: Vec<v1::EnsembleSummary>,
    pub workers: Vec<v1::Worker>,
}

impl WriteBatch {
    /// Reports whether the batch has nothing to write.
    pub fn is_empty(&self) -> bool {
        self.sweeps.is_empty()
            && self.trials.is_empty()
            && self.ensembles.is_empty()
            && self.workers.is_empty()
    }
}

/// The coordinator's state store.
pub trait StateStore: Send + Sync {
    /// Reads every record.
    fn load(&self) -> Result<Snapshot, StoreError>;
    /// Writes a batch atomically: after a crash either all of it or none of it is stored.
    fn write(&self, batch: &WriteBatch) -> Result<(), StoreError>;
}

/// The embedded store: `state.redb` under a data directory.
pub struct EmbeddedStore {
    db: Database,
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `data_dir`. Fails if another process has it open.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let io_error = |error| StoreError::Io {
            path: data_dir.to_path_buf(),
            error,
        };
        fs::create_dir_all(data_dir).map_err(io_error)?;
        let db = match Database::create(data_dir.join("state.redb")) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(StoreError::InUse(data_dir.to_path_buf()))
            }
            Err(err) => return Err(redb::Error::from(err).into()),
        };
        let txn = db.begin_write().map_err(redb::Error::from)?;
        for table in [SWEEPS, TRIALS, ENSEMBLES, WORKERS] {
            txn.open_table(table).map_err(redb::Error::from)?;
        }
        txn.commit().map_err(redb::Error::from)?;
        Ok(Self { db })
    }
}

fn read_table<M: Message + Default>(
    txn: &redb::ReadTransaction,
    table: TableDefinition<&str, &[u8]>,
    table_name: &'static str,
) -> Result<Vec<M>, StoreError> {
    let table_handle = txn.open_table(table).map_err(redb::Error::from)?;
    let mut records = Vec::new();
    for entry in table_handle.iter().map_err(redb::Error::from)? {
        let (key, value) = entry.map_err(redb::Error::from)?;
        let record = M::decode(value.value()).map_err(|source| StoreError::Corrupt {
            table: table_name,
            key: key.value().to_string(),
            source,
        })?;
        records.push(record);
    }
    Ok(records)
}

fn write_table<'a, M: Message + 'a>(
    txn: &redb::WriteTransaction,
    table: TableDefinition<&str, &[u8]>,
    records: impl IntoIterator<Item = (&'a str, &'a M)>,
) -> Result<(), StoreError> {
    let mut table_handle = txn.open_table(table).map_err(redb::Error::from)?;
    for (key, record) in records {
        table_handle
            .insert(key, record.encode_to_vec().as_slice())
            .map_err(redb::Error::from)?;
    }
    Ok(())
}

impl StateStore for EmbeddedStore {
    fn load(&self) -> Result<Snapshot, StoreError> {
        let txn = self.db.begin_read().map_err(redb::Error::from)?;
        Ok(Snapshot {
            sweeps: read_table(&txn, SWEEPS, "sweeps")?,
            trials: read_table(&txn, TRIALS, "trials")?,
            ensembles: read_table(&txn, ENSEMBLES, "ensembles")?,
            workers: read_table(&txn, WORKERS, "workers")?,
        })
    }

    fn write(&self, batch: &WriteBatch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write().map_err(redb::Error::from)?;
        write_table(
            &txn,
            SWEEPS,
            batch.sweeps.iter().map(|s| (s.sweep_id.as_str(), s)),
        )?;
        write_table(
            &txn,
            TRIALS,
            batch.trials.iter().map(|t| (t.trial_id.as_str(), t)),
        )?;
        let ensembles = batch.ensembles.iter().map(|e| (e.sweep_id.as_str(), e));
        write_table(&txn, ENSEMBLES, ensembles)?;
        let workers = batch.workers.iter().map(|w| (w.worker_id.as_str(), w));
        write_table(&txn, WORKERS, workers)?;
        txn.commit().map_err(redb::Error::from)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sweep(id: &str) -> v1::Sweep {
        v1::Sweep {
            sweep_id: id.to_string(),
            name: "s".into(),
            status: v1::SweepStatus::Running as i32,
            ..Default::default()
        }
    }

    #[test]
    fn store_reopens_with_records() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = EmbeddedStore::open(dir.path()).unwrap();
            let batch = WriteBatch {
                sweeps: vec![sweep("a"), sweep("b")],
                trials: vec![v1::Trial {
                    trial_id: "t".into(),
                    sweep_id: "a".into(),
                    index: 3,
                    ..Default::default()
                }],
                ..Default::default()
            };
            store.write(&batch).unwrap();
        }
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let snapshot = store.load().unwrap();
        assert_eq!(snapshot.sweeps.len(), 2);
        assert_eq!(snapshot.trials[0].index, 3);
    }

    #[test]
    fn store_rejects_second_opener() {
        let dir = tempfile::tempdir().unwrap();
        let _first = EmbeddedStore::open(dir.path()).unwrap();
        assert!(EmbeddedStore::open(dir.path()).is_err());
    }
}
