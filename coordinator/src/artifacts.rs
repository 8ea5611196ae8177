//! Artifact storage: the bytes trials upload (predictions, later checkpoints), kept apart from
//! the state store so that large files never enter it.

use std::fs;
use std::io::Write;
use std::path::PathBuf;

use tunefleet_proto::v1;

use crate::store::StoreError;

/// The longest artifact name accepted, in bytes.
pub const MAX_ARTIFACT_NAME_LEN: usize = 64;

/// Where artifacts live; every coordinator of a fleet must reach the same one.
pub trait ArtifactStore: Send + Sync {
    /// Stores an artifact's bytes and returns its reference.
    fn put(
        &self,
        sweep_id: &str,
        trial_id: &str,
        name: &str,
        content: &[u8],
    ) -> Result<v1::ArtifactRef, StoreError>;
    /// Reads an artifact's bytes back.
    fn get(&self, artifact: &v1::ArtifactRef) -> Result<Vec<u8>, StoreError>;
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

/// Returns the location of an artifact below the store's root: `SWEEP/TRIAL/NAME`.
pub fn artifact_location(sweep_id: &str, trial_id: &str, name: &str) -> String {
    format!("{sweep_id}/{trial_id}/{name}")
}

/// Artifacts as files under a local directory.
pub struct LocalArtifacts {
    root: PathBuf,
}

impl LocalArtifacts {
    /// Uses (and creates) `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(|source| StoreError::Io {
            path: root.clone(),
            source,
        })?;
        Ok(Self { root })
    }
}

impl ArtifactStore for LocalArtifacts {
    fn put(
        &self,
        sweep_id: &str,
        trial_id: &str,
        name: &str,
        content: &[u8],
    ) -> Result<v1::ArtifactRef, StoreError> {
        validate_artifact_name(name)?;
        let location = artifact_location(sweep_id, trial_id, name);
        let path = self.root.join(&location);
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

    fn get(&self, artifact: &v1::ArtifactRef) -> Result<Vec<u8>, StoreError> {
        let path = self.root.join(&artifact.location);
        fs::read(&path).map_err(|source| StoreError::Io { path, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalArtifacts::open(dir.path()).unwrap();
        let artifact = store.put("s", "t", "val_predictions", b"abc").unwrap();
        assert_eq!(artifact.size_bytes, 3);
        assert_eq!(store.get(&artifact).unwrap(), b"abc");
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
