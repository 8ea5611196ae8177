//! The durable store: every sweep, trial and ensemble as a protobuf record in an embedded redb
//! file, plus artifact files beside it, all under the coordinator's data directory.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use prost::Message;
use redb::{Database, ReadableTable, TableDefinition};
use tunefleet_proto::v1;

const SWEEPS: TableDefinition<&str, &[u8]> = TableDefinition::new("sweeps");
const TRIALS: TableDefinition<&str, &[u8]> = TableDefinition::new("trials");
const ENSEMBLES: TableDefinition<&str, &[u8]> = TableDefinition::new("ensembles");
const WORKERS: TableDefinition<&str, &[u8]> = TableDefinition::new("workers");

/// The longest artifact name accepted, in bytes.
pub const MAX_ARTIFACT_NAME_LEN: usize = 64;

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
    #[error("artifact I/O failed on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid artifact name {0:?}: expected 1 to 64 characters from A-Z, a-z, 0-9, '.', '_', '-', not starting with '.'")]
    InvalidArtifactName(String),
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

/// Where the coordinator keeps its state.
pub trait StateStore: Send + Sync {
    /// Reads every record.
    fn load(&self) -> Result<Snapshot, StoreError>;
    /// Writes a batch atomically: after a crash either all of it or none of it is stored.
    fn write(&self, batch: &WriteBatch) -> Result<(), StoreError>;
    /// Stores an artifact's bytes and returns its reference.
    fn put_artifact(
        &self,
        sweep_id: &str,
        trial_id: &str,
        name: &str,
        content: &[u8],
    ) -> Result<v1::ArtifactRef, StoreError>;
    /// Reads an artifact's bytes back.
    fn get_artifact(&self, artifact: &v1::ArtifactRef) -> Result<Vec<u8>, StoreError>;
}

/// The embedded store: `state.redb` and an `artifacts/` directory under a data directory.
pub struct EmbeddedStore {
    db: Database,
    artifact_root: PathBuf,
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `data_dir`. Fails if another process has it open.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let io_error = |source| StoreError::Io {
            path: data_dir.to_path_buf(),
            source,
        };
        fs::create_dir_all(data_dir).map_err(io_error)?;
        let artifact_root = data_dir.join("artifacts");
        fs::create_dir_all(&artifact_root).map_err(io_error)?;
        let db = Database::create(data_dir.join("state.redb")).map_err(redb::Error::from)?;
        let txn = db.begin_write().map_err(redb::Error::from)?;
        for table in [SWEEPS, TRIALS, ENSEMBLES, WORKERS] {
            txn.open_table(table).map_err(redb::Error::from)?;
        }
        txn.commit().map_err(redb::Error::from)?;
        Ok(Self { db, artifact_root })
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

/// Checks an artifact name so that it cannot leave its trial's directory.
pub fn validate_artifact_name(name: &str) -> Result<(), StoreError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    let valid = !name.is_empty()
        && name.len() <= MAX_ARTIFACT_NAME_LEN
        && !name.starts_with('.')
        && name.chars().all(allowed);
    if valid {
        Ok(())
    } else {
        Err(StoreError::InvalidArtifactName(name.to_string()))
    }
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

    fn put_artifact(
        &self,
        sweep_id: &str,
        trial_id: &str,
        name: &str,
        content: &[u8],
    ) -> Result<v1::ArtifactRef, StoreError> {
        validate_artifact_name(name)?;
        let location = format!("{sweep_id}/{trial_id}/{name}");
        let path = self.artifact_root.join(&location);
        let io_error = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        fs::create_dir_all(path.parent().expect("artifact path has a parent")).map_err(io_error)?;
        // Write to a temporary file and rename, so a reader never sees half an artifact.
        let partial = path.with_extension("partial");
        let mut file = fs::File::create(&partial).map_err(io_error)?;
        file.write_all(content).map_err(io_error)?;
        file.sync_all().map_err(io_error)?;
        fs::rename(&partial, &path).map_err(io_error)?;
        Ok(v1::ArtifactRef {
            name: name.to_string(),
            size_bytes: content.len() as u64,
            location,
        })
    }

    fn get_artifact(&self, artifact: &v1::ArtifactRef) -> Result<Vec<u8>, StoreError> {
        let path = self.artifact_root.join(&artifact.location);
        fs::read(&path).map_err(|source| StoreError::Io { path, source })
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

    #[test]
    fn artifact_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let artifact = store
            .put_artifact("s", "t", "val_predictions", b"abc")
            .unwrap();
        assert_eq!(artifact.size_bytes, 3);
        assert_eq!(store.get_artifact(&artifact).unwrap(), b"abc");
    }

    #[test]
    fn artifact_name_cannot_escape() {
        for name in ["../x", "a/b", "", ".hidden", "x\0"] {
            assert!(
                validate_artifact_name(name).is_err(),
                "{name:?} was accepted"
            );
        }
    }
}
