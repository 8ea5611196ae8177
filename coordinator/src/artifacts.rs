//! Artifact storage: the bytes trials upload (predictions, later checkpoints), kept apart from
//! the state store so that large files never enter it.
//!
//! [`open_artifacts`] picks the backend from a URL: a local directory serves one coordinator,
//! and an S3 bucket (or an S3-compatible server) serves every coordinator of a fleet.

use std::fs;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, ObjectStore, PutOptions, PutPayload};
use tokio::sync::mpsc as job_channel;
use tunefleet_proto::v1;
use url::Url;

use crate::store::StoreError;

/// Maximum length of an artifact name, in bytes.
pub const MAX_ARTIFACT_NAME_LEN: usize = 64;

/// The default limit on one object store request, retries included.
///
/// NOTE: the limit covers the whole transfer, so checkpoints of hundreds of MB on a slow link
/// need a longer one ([`ObjectArtifacts::with_timeout`]).
pub const DEFAULT_OBJECT_STORE_TIMEOUT: Duration = Duration::from_secs(30);

/// Extra time the caller waits beyond the request timeout, so that the request thread's own
/// timeout (which cancels the request) normally fires first.
const RESULT_GRACE: Duration = Duration::from_secs(1);

/// The URL forms that [`open_artifacts`] accepts, quoted in its errors.
const ARTIFACT_URL_FORMS: &str =
    "expected \"\" (the data directory), file:///ABSOLUTE/PATH or s3://BUCKET[/PREFIX]";

/// An artifact store. Every coordinator of a fleet must reach the same one.
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

/// Opens the artifact store that `url` names.
///
/// - `""`: files under `default_dir`.
/// - `file:///ABSOLUTE/PATH`: files under that directory.
/// - `s3://BUCKET[/PREFIX]`: objects in an S3 bucket, under the prefix. The client reads its
///   settings from the `AWS_*` environment variables: `AWS_ACCESS_KEY_ID`,
///   `AWS_SECRET_ACCESS_KEY`, `AWS_REGION` (default `us-east-1`), and `AWS_ENDPOINT_URL` (or
///   `AWS_ENDPOINT`) for an S3-compatible server, which may use plain `http://`.
pub fn open_artifacts(url: &str, default_dir: &Path) -> Result<Box<dyn ArtifactStore>, StoreError> {
    if url.is_empty() {
        return Ok(Box::new(LocalArtifacts::open(default_dir)?));
    }
    let parsed = Url::parse(url).map_err(|error| invalid_url(url, error))?;
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(invalid_url(url, "a query or fragment is not allowed"));
    }
    match parsed.scheme() {
        "file" => {
            let root = parsed
                .to_file_path()
                .map_err(|()| invalid_url(url, "a file URL needs an absolute path and no host"))?;
            Ok(Box::new(LocalArtifacts::open(root)?))
        }
        "s3" => Ok(Box::new(open_s3(url, &parsed)?)),
        scheme => Err(invalid_url(url, format!("unsupported scheme {scheme:?}"))),
    }
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
        fs::create_dir_all(&root).map_err(|error| StoreError::Io {
            path: root.clone(),
            error,
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
        let io_error = |error| StoreError::Io {
            path: path.clone(),
            error,
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
        fs::read(&path).map_err(|error| StoreError::Io { path, error })
    }
}

/// Artifacts as objects in an [`ObjectStore`] such as S3, under a prefix.
///
/// The [`ArtifactStore`] methods are synchronous but are called from inside the coordinator's
/// Tokio runtime, where blocking on a future panics or stalls a worker thread of that runtime.
/// So each instance runs its requests on a thread of its own with a separate current-thread
/// runtime, and a call blocks its caller only until the result arrives or the timeout passes.
/// An object store PUT is atomic, so a reader never sees half an artifact.
pub struct ObjectArtifacts {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    timeout: Duration,
    job_tx: job_channel::UnboundedSender<Job>,
}

/// A request boxed to run on the request thread. It sends its own result back.
type Job = Pin<Box<dyn Future<Output = ()> + Send>>;

impl ObjectArtifacts {
    /// Keeps artifacts in `store` under `prefix` (the store's root when empty) and starts the
    /// thread that runs the requests.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: ObjectPath) -> Result<Self, StoreError> {
        let job_tx = start_request_thread()?;
        Ok(Self {
            store,
            prefix,
            timeout: DEFAULT_OBJECT_STORE_TIMEOUT,
            job_tx,
        })
    }

    /// Sets the limit on one request, retries included
    /// ([`DEFAULT_OBJECT_STORE_TIMEOUT`] by default).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Returns the object path of a location relative to the prefix, rejecting `..` and empty
    /// segments.
    fn object_path(&self, location: &str) -> Result<ObjectPath, StoreError> {
        let relative = ObjectPath::parse(location)
            .map_err(|error| self.request_error(location, error.into()))?;
        Ok(self.prefix.parts().chain(relative.parts()).collect())
    }

    /// Runs `request` on the request thread and waits for its result.
    fn run<T: Send + 'static>(
        &self,
        path: &ObjectPath,
        request: impl Future<Output = object_store::Result<T>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (result_tx, result_rx) = mpsc::sync_channel(1);
        let timeout = self.timeout;
        let job = Box::pin(async move {
            let result = tokio::time::timeout(timeout, request).await;
            // A caller that gave up no longer needs the result.
            let _ = result_tx.send(result);
        });
        self.job_tx
            .send(job)
            .map_err(|_| StoreError::ObjectStoreRuntime("its thread has stopped".to_string()))?;
        match result_rx.recv_timeout(timeout + RESULT_GRACE) {
            Ok(Ok(result)) => result.map_err(|error| self.request_error(path.as_ref(), error)),
            Ok(Err(_)) | Err(RecvTimeoutError::Timeout) => Err(StoreError::ObjectStoreTimeout {
                store: self.store.to_string(),
                location: path.to_string(),
                timeout,
            }),
            Err(RecvTimeoutError::Disconnected) => Err(StoreError::ObjectStoreRuntime(
                "the request ended without a result".to_string(),
            )),
        }
    }

    fn request_error(&self, location: &str, error: object_store::Error) -> StoreError {
        StoreError::ObjectStore {
            store: self.store.to_string(),
            location: location.to_string(),
            error: Box::new(error),
        }
    }
}

impl ArtifactStore for ObjectArtifacts {
    fn put(
        &self,
        sweep_id: &str,
        trial_id: &str,
        name: &str,
        content: &[u8],
    ) -> Result<v1::ArtifactRef, StoreError> {
        validate_artifact_name(name)?;
        let location = artifact_location(sweep_id, trial_id, name);
        let path = self.object_path(&location)?;

        // The request outlives this call if it times out, so it owns a copy of the bytes.
        // NOTE: one PUT per artifact, which S3 limits to 5 GiB. Larger checkpoints would need
        // object_store's multipart upload.
        let payload = PutPayload::from(content.to_vec());
        let store = Arc::clone(&self.store);
        let request_path = path.clone();
        self.run(&path, async move {
            store
                .put_opts(&request_path, payload, PutOptions::default())
                .await
        })?;

        Ok(v1::ArtifactRef {
            name: name.to_string(),
            size_bytes: content.len() as u64,
            location,
        })
    }

    fn get(&self, artifact: &v1::ArtifactRef) -> Result<Vec<u8>, StoreError> {
        let path = self.object_path(&artifact.location)?;
        let store = Arc::clone(&self.store);
        let request_path = path.clone();
        let result = self.run(&path, async move {
            let object = store.get_opts(&request_path, GetOptions::default()).await?;
            object.bytes().await
        });
        match result {
            Ok(bytes) => Ok(bytes.to_vec()),
            Err(StoreError::ObjectStore { store, error, .. })
                if matches!(*error, object_store::Error::NotFound { .. }) =>
            {
                Err(StoreError::ArtifactNotFound {
                    store,
                    location: path.to_string(),
                })
            }
            Err(error) => Err(error),
        }
    }
}

/// Starts the thread that runs object store requests, returning the sender of its jobs.
///
/// The thread stops when the sender is dropped. The job queue is unbounded, but every caller
/// waits for its own result, so it contains at most one job per waiting caller.
fn start_request_thread() -> Result<job_channel::UnboundedSender<Job>, StoreError> {
    let (job_tx, mut job_rx) = job_channel::unbounded_channel::<Job>();
    let (ready_tx, ready_rx) = mpsc::sync_channel(1);
    thread::Builder::new()
        .name("tunefleet-artifacts".to_string())
        .spawn(move || {
            // The runtime is built and dropped on this thread, never inside the caller's runtime.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            let runtime = match runtime {
                Ok(runtime) => runtime,
                Err(error) => {
                    let _ = ready_tx.send(Err(error));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            runtime.block_on(async {
                while let Some(job) = job_rx.recv().await {
                    tokio::spawn(job);
                }
            });
        })
        .map_err(|error| {
            StoreError::ObjectStoreRuntime(format!("failed to spawn its thread: {error}"))
        })?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(job_tx),
        Ok(Err(error)) => Err(StoreError::ObjectStoreRuntime(format!(
            "failed to build it: {error}"
        ))),
        Err(_) => Err(StoreError::ObjectStoreRuntime(
            "its thread stopped while starting".to_string(),
        )),
    }
}

/// Opens `s3://BUCKET[/PREFIX]` with the client settings from the environment.
fn open_s3(url: &str, parsed: &Url) -> Result<ObjectArtifacts, StoreError> {
    let (bucket, prefix) = parse_s3_url(url, parsed)?;
    let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
    // The S3-specific endpoint takes precedence, as in AmazonS3Builder::build.
    let endpoint = builder
        .get_config_value(&AmazonS3ConfigKey::S3Endpoint)
        .or_else(|| builder.get_config_value(&AmazonS3ConfigKey::Endpoint));
    if endpoint.is_some_and(|endpoint| endpoint.starts_with("http://")) {
        builder = builder.with_allow_http(true);
    }
    check_s3_credentials(url, &builder)?;
    let store = builder.build().map_err(|error| {
        invalid_url(
            url,
            format!("cannot configure S3 from the AWS_* environment variables: {error}"),
        )
    })?;
    ObjectArtifacts::new(Arc::new(store), prefix)
}

/// Splits an `s3://` URL into its bucket and its prefix (percent-decoded).
fn parse_s3_url(url: &str, parsed: &Url) -> Result<(String, ObjectPath), StoreError> {
    let bucket = match parsed.host_str() {
        Some(bucket) if !bucket.is_empty() => bucket.to_string(),
        _ => return Err(invalid_url(url, "missing bucket name")),
    };
    if !parsed.username().is_empty() || parsed.password().is_some() || parsed.port().is_some() {
        return Err(invalid_url(
            url,
            "an s3 URL has no user, password or port: set the server with AWS_ENDPOINT_URL",
        ));
    }
    let prefix = ObjectPath::from_url_path(parsed.path())
        .map_err(|error| invalid_url(url, format!("invalid prefix: {error}")))?;
    Ok((bucket, prefix))
}

/// Rejects an S3 configuration that has no credentials while `AWS_EC2_METADATA_DISABLED` is
/// `true`.
///
/// object_store 0.14 ignores that variable and falls back to the instance metadata service at
/// 169.254.169.254, which would fail only after its retries.
fn check_s3_credentials(url: &str, builder: &AmazonS3Builder) -> Result<(), StoreError> {
    let metadata_disabled = std::env::var("AWS_EC2_METADATA_DISABLED")
        .is_ok_and(|value| value.eq_ignore_ascii_case("true"));
    let has_credentials = [
        AmazonS3ConfigKey::AccessKeyId,
        AmazonS3ConfigKey::WebIdentityTokenFile,
        AmazonS3ConfigKey::ContainerCredentialsRelativeUri,
        AmazonS3ConfigKey::ContainerCredentialsFullUri,
    ]
    .iter()
    .any(|key| builder.get_config_value(key).is_some());
    let skip_signature = builder
        .get_config_value(&AmazonS3ConfigKey::SkipSignature)
        .is_some_and(|value| value.eq_ignore_ascii_case("true"));
    if metadata_disabled && !has_credentials && !skip_signature {
        return Err(invalid_url(
            url,
            "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY \
             (AWS_EC2_METADATA_DISABLED=true rules out instance credentials)",
        ));
    }
    Ok(())
}

fn invalid_url(url: &str, reason: impl std::fmt::Display) -> StoreError {
    StoreError::InvalidArtifactUrl {
        url: url.to_string(),
        reason: format!("{reason}, {ARTIFACT_URL_FORMS}"),
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
        let too_long = "x".repeat(MAX_ARTIFACT_NAME_LEN + 1);
        let names = [
            "../x",
            "a/b",
            "",
            ".hidden",
            "x\0",
            "..",
            ".",
            "a\\b",
            "/etc",
            "é",
            "a b",
            "a\nb",
            too_long.as_str(),
        ];
        for name in names {
            assert!(
                validate_artifact_name(name).is_err(),
                "{name:?} was accepted"
            );
        }
    }

    #[test]
    fn artifact_name_allows_plain_names() {
        let longest = "x".repeat(MAX_ARTIFACT_NAME_LEN);
        for name in [
            "val_predictions",
            "test-predictions.npy",
            "a..b",
            longest.as_str(),
        ] {
            assert!(
                validate_artifact_name(name).is_ok(),
                "{name:?} was rejected"
            );
        }
    }

    #[test]
    fn local_put_rejects_escaping_name() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalArtifacts::open(dir.path().join("artifacts")).unwrap();
        let err = store.put("s", "t", "../../escaped", b"x").unwrap_err();
        assert!(matches!(err, StoreError::InvalidArtifactName(_)), "{err}");
        assert!(!dir.path().join("escaped").exists());
    }

    #[test]
    fn empty_url_opens_default_dir() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_artifacts("", dir.path()).unwrap();
        let artifact = store.put("s", "t", "val_predictions", b"abc").unwrap();
        assert_eq!(
            fs::read(dir.path().join("s/t/val_predictions")).unwrap(),
            b"abc"
        );
        assert_eq!(store.get(&artifact).unwrap(), b"abc");
    }

    #[test]
    fn file_url_opens_its_directory() {
        let default_dir = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let url = Url::from_directory_path(dir.path().join("shared artifacts")).unwrap();
        let store = open_artifacts(url.as_str(), default_dir.path()).unwrap();
        let artifact = store.put("s", "t", "val_predictions", b"abc").unwrap();
        let path = dir.path().join("shared artifacts/s/t/val_predictions");
        assert_eq!(fs::read(path).unwrap(), b"abc");
        assert!(!default_dir.path().join("s").exists());
        assert_eq!(store.get(&artifact).unwrap(), b"abc");
    }

    #[test]
    fn file_url_leaves_no_partial_file() {
        let dir = tempfile::tempdir().unwrap();
        let url = Url::from_directory_path(dir.path()).unwrap();
        let store = open_artifacts(url.as_str(), Path::new("unused")).unwrap();
        store.put("s", "t", "val_predictions", b"abc").unwrap();
        let names: Vec<_> = fs::read_dir(dir.path().join("s/t"))
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, ["val_predictions"]);
    }

    #[test]
    fn open_artifacts_rejects_bad_urls() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("/abs/path", "relative URL without a base"),
            ("relative/path", "relative URL without a base"),
            ("gs://bucket/prefix", "unsupported scheme \"gs\""),
            ("file://host/abs/path", "absolute path and no host"),
            ("file:///abs/path?x=1", "query or fragment"),
            ("s3:///prefix", "missing bucket name"),
            ("s3://user@bucket/prefix", "no user, password or port"),
            ("s3://bucket:9000/prefix", "no user, password or port"),
            ("s3://bucket/a//b", "invalid prefix"),
        ];
        for (url, reason) in cases {
            let message = match open_artifacts(url, dir.path()) {
                Ok(_) => panic!("{url:?} was accepted"),
                Err(error) => error.to_string(),
            };
            assert!(message.contains(&format!("{url:?}")), "{message}");
            assert!(message.contains(reason), "{message}");
            assert!(message.contains("s3://BUCKET[/PREFIX]"), "{message}");
        }
    }

    #[test]
    fn s3_url_splits_bucket_and_prefix() {
        let cases = [
            ("s3://bucket", "bucket", ""),
            ("s3://bucket/", "bucket", ""),
            ("s3://bucket/fleet/a", "bucket", "fleet/a"),
            ("s3://bucket/fleet/a/", "bucket", "fleet/a"),
            ("s3://bucket/fleet%20a", "bucket", "fleet a"),
        ];
        for (url, bucket, prefix) in cases {
            let parsed = Url::parse(url).unwrap();
            let (parsed_bucket, parsed_prefix) = parse_s3_url(url, &parsed).unwrap();
            assert_eq!(parsed_bucket, bucket, "bucket of {url}");
            assert_eq!(parsed_prefix.as_ref(), prefix, "prefix of {url}");
        }
    }

    #[test]
    fn object_path_joins_prefix() {
        let store = Arc::new(object_store::memory::InMemory::new());
        let artifacts = ObjectArtifacts::new(store, ObjectPath::from("fleet/a")).unwrap();
        let path = artifacts.object_path("s/t/val_predictions").unwrap();
        assert_eq!(path.as_ref(), "fleet/a/s/t/val_predictions");
    }

    #[test]
    fn object_path_rejects_parent_segments() {
        let store = Arc::new(object_store::memory::InMemory::new());
        let artifacts = ObjectArtifacts::new(store, ObjectPath::from("fleet")).unwrap();
        assert!(artifacts.object_path("s/../../other/x").is_err());
    }

    #[test]
    fn object_artifacts_round_trip_in_memory() {
        let store = Arc::new(object_store::memory::InMemory::new());
        let artifacts = ObjectArtifacts::new(store, ObjectPath::from("fleet")).unwrap();
        let artifact = artifacts.put("s", "t", "val_predictions", b"abc").unwrap();
        assert_eq!(artifact.location, "s/t/val_predictions");
        assert_eq!(artifact.size_bytes, 3);
        assert_eq!(artifacts.get(&artifact).unwrap(), b"abc");
    }

    #[test]
    fn object_artifacts_missing_is_not_found() {
        let store = Arc::new(object_store::memory::InMemory::new());
        let artifacts = ObjectArtifacts::new(store, ObjectPath::from("fleet")).unwrap();
        let missing = v1::ArtifactRef {
            name: "val_predictions".to_string(),
            size_bytes: 3,
            location: "s/t/val_predictions".to_string(),
        };
        let error = artifacts.get(&missing).unwrap_err();
        assert!(
            matches!(error, StoreError::ArtifactNotFound { ref location, .. }
                if location == "fleet/s/t/val_predictions"),
            "{error}"
        );
    }

    #[test]
    fn object_artifacts_work_inside_a_runtime() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let store = Arc::new(object_store::memory::InMemory::new());
            let artifacts = ObjectArtifacts::new(store, ObjectPath::ROOT).unwrap();
            let artifact = artifacts.put("s", "t", "val_predictions", b"abc").unwrap();
            assert_eq!(artifacts.get(&artifact).unwrap(), b"abc");
            // Dropping inside the runtime must not drop the request thread's runtime here.
            drop(artifacts);
        });
    }
}
