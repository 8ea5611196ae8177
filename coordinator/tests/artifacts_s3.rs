//! The S3 artifact store against moto's S3 server, started on a loopback port for each test.
//!
//! moto comes from the repository's virtual environment, which `scripts/bootstrap` sets up.
//! The tests set dummy AWS credentials and `AWS_EC2_METADATA_DISABLED=true`, so the client
//! never looks for a metadata service, and every request goes to 127.0.0.1.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use tunefleet_coordinator::artifacts::{open_artifacts, ArtifactStore, ObjectArtifacts};
use tunefleet_coordinator::store::StoreError;
use tunefleet_proto::v1;

/// How long moto may take to start listening (its Python imports take a second or two).
const MOTO_START_TIMEOUT: Duration = Duration::from_secs(30);
const BUCKET: &str = "artifacts";

/// Runs the moto tests one at a time, because each one points the `AWS_*` environment
/// variables, which the whole process shares, at its own moto server.
static SERIAL: Mutex<()> = Mutex::new(());

/// A moto S3 server on a loopback port, killed by its pid on drop.
struct Moto {
    child: Child,
    port: u16,
    /// moto's stderr so far, for failure messages.
    log: Arc<Mutex<String>>,
}

impl Moto {
    /// Starts moto on a port that the kernel picks (`-p 0`), so no other process can take the
    /// port between choosing and binding it, and waits until moto prints that port.
    fn start() -> Moto {
        let moto_server = venv_dir().join("bin/moto_server");
        assert!(
            moto_server.exists(),
            "{} not found: run scripts/bootstrap to install moto's S3 server",
            moto_server.display()
        );
        let mut child = Command::new(&moto_server)
            .args(["-H", "127.0.0.1", "-p", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|error| panic!("failed to start {}: {error}", moto_server.display()));
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = Arc::new(Mutex::new(String::new()));
        let (port_tx, port_rx) = mpsc::channel();
        let thread_log = Arc::clone(&log);
        // Drains stderr for moto's whole life, because a full pipe would block its request logging.
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(port) = listening_port(&line) {
                    let _ = port_tx.send(port);
                }
                let mut log = thread_log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });

        let mut moto = Moto {
            child,
            port: 0,
            log,
        };
        // Werkzeug prints the address after it binds and listens, so moto is ready once the
        // line appears.
        moto.port = match port_rx.recv_timeout(MOTO_START_TIMEOUT) {
            Ok(port) => port,
            Err(RecvTimeoutError::Timeout) => panic!(
                "moto_server printed no address within {MOTO_START_TIMEOUT:?}: {}",
                moto.log()
            ),
            Err(RecvTimeoutError::Disconnected) => panic!(
                "moto_server exited ({:?}) before listening: {}",
                moto.child.try_wait(),
                moto.log()
            ),
        };
        moto
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Creates a bucket with moto's unsigned path-style `PUT /BUCKET`.
    fn create_bucket(&self, bucket: &str) {
        let status = self.request("PUT", &format!("/{bucket}")).unwrap();
        assert_eq!(
            status,
            200,
            "creating bucket {bucket} failed: {}",
            self.log()
        );
    }

    /// Sends a bodyless HTTP/1.1 request and returns the response's status code.
    fn request(&self, method: &str, path: &str) -> std::io::Result<u16> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\n\
             Connection: close\r\n\r\n",
            self.port
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let status = response
            .strip_prefix("HTTP/1.1 ")
            .or_else(|| response.strip_prefix("HTTP/1.0 "))
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok());
        status.ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {response:?}")))
    }

    /// Points the `AWS_*` variables at this server and opens `url`. Only tests that hold
    /// [`SERIAL`] call this.
    fn open(&self, url: &str) -> Box<dyn ArtifactStore> {
        std::env::set_var("AWS_ENDPOINT_URL", self.endpoint());
        std::env::remove_var("AWS_ENDPOINT_URL_S3");
        std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
        std::env::remove_var("AWS_SESSION_TOKEN");
        std::env::set_var("AWS_REGION", "us-east-1");
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
        std::env::set_var("NO_PROXY", "127.0.0.1");
        let default_dir = Path::new("/nonexistent/unused");
        open_artifacts(url, default_dir)
            .unwrap_or_else(|error| panic!("failed to open {url}: {error}"))
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        // Child::kill sends SIGKILL to this child's pid only.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn venv_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv")
}

/// Reads the port from werkzeug's ` * Running on http://127.0.0.1:PORT` line.
fn listening_port(line: &str) -> Option<u16> {
    let (_, address) = line.split_once("Running on http://127.0.0.1:")?;
    address.trim().parse().ok()
}

/// Starts moto with the test bucket and returns it after the guard of [`SERIAL`], which the
/// test holds to its end (bindings drop in reverse order, so moto stops first).
fn start_moto() -> (MutexGuard<'static, ()>, Moto) {
    // A test that failed while holding the lock poisons it, which does not affect the others.
    let serial = SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let moto = Moto::start();
    moto.create_bucket(BUCKET);
    (serial, moto)
}

/// Bytes that differ from offset to offset, so a shifted or truncated copy fails to compare.
fn patterned_bytes(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[test]
fn s3_put_get_round_trips() {
    let (_serial, moto) = start_moto();
    let store = moto.open(&format!("s3://{BUCKET}/fleet-a"));

    let artifact = store
        .put("sweep-1", "trial-1", "val_predictions", b"0.1,0.9\n")
        .unwrap();

    assert_eq!(artifact.name, "val_predictions");
    assert_eq!(artifact.size_bytes, 8);
    assert_eq!(artifact.location, "sweep-1/trial-1/val_predictions");
    assert_eq!(store.get(&artifact).unwrap(), b"0.1,0.9\n");
    let bucket_root = moto.open(&format!("s3://{BUCKET}"));
    let under_prefix = v1::ArtifactRef {
        location: format!("fleet-a/{}", artifact.location),
        ..artifact
    };
    assert_eq!(bucket_root.get(&under_prefix).unwrap(), b"0.1,0.9\n");
}

#[test]
fn s3_missing_artifact_is_not_found() {
    let (_serial, moto) = start_moto();
    let store = moto.open(&format!("s3://{BUCKET}/fleet-a"));
    let missing = v1::ArtifactRef {
        name: "val_predictions".to_string(),
        size_bytes: 8,
        location: "sweep-1/trial-1/val_predictions".to_string(),
    };

    let error = store.get(&missing).unwrap_err();

    assert!(
        matches!(error, StoreError::ArtifactNotFound { .. }),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "artifact fleet-a/sweep-1/trial-1/val_predictions not found in AmazonS3(artifacts)"
    );
}

#[test]
fn s3_invalid_name_sends_no_request() {
    // The listener never accepts, so a request would show up as a pending connection.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let s3 = AmazonS3Builder::new()
        .with_bucket_name(BUCKET)
        .with_endpoint(endpoint)
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_access_key_id("testing")
        .with_secret_access_key("testing")
        .build()
        .unwrap();
    let store = ObjectArtifacts::new(Arc::new(s3), ObjectPath::from("fleet-a")).unwrap();

    for name in ["../escape", "a/b", "", ".hidden"] {
        let error = store.put("sweep-1", "trial-1", name, b"x").unwrap_err();
        assert!(
            matches!(error, StoreError::InvalidArtifactName(_)),
            "{name:?}: {error:?}"
        );
    }

    let accepted = listener.accept();
    assert!(
        matches!(&accepted, Err(error) if error.kind() == std::io::ErrorKind::WouldBlock),
        "the store connected to the server: {accepted:?}"
    );
}

#[test]
fn s3_silent_server_times_out() {
    // The kernel completes the connection into the backlog, but nothing ever reads or replies.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let s3 = AmazonS3Builder::new()
        .with_bucket_name(BUCKET)
        .with_endpoint(endpoint)
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_access_key_id("testing")
        .with_secret_access_key("testing")
        .build()
        .unwrap();
    let timeout = Duration::from_millis(500);
    let store = ObjectArtifacts::new(Arc::new(s3), ObjectPath::from("fleet-a"))
        .unwrap()
        .with_timeout(timeout);

    let started = Instant::now();
    let error = store
        .put("sweep-1", "trial-1", "val_predictions", b"x")
        .unwrap_err();
    let waited = started.elapsed();

    assert!(
        matches!(error, StoreError::ObjectStoreTimeout { .. }),
        "{error:?}"
    );
    assert!(waited >= timeout, "returned after {waited:?}");
    assert!(waited < Duration::from_secs(5), "returned after {waited:?}");
}

#[test]
fn s3_large_artifact_round_trips() {
    let (_serial, moto) = start_moto();
    let store = moto.open(&format!("s3://{BUCKET}/fleet-a"));
    let content = patterned_bytes(5 * 1024 * 1024);

    let artifact = store
        .put("sweep-1", "trial-1", "checkpoint.pt", &content)
        .unwrap();
    let read = store.get(&artifact).unwrap();

    assert_eq!(artifact.size_bytes, content.len() as u64);
    assert_eq!(read.len(), content.len());
    assert!(read == content, "the 5 MiB artifact came back changed");
}

#[test]
fn s3_coordinators_share_artifacts() {
    let (_serial, moto) = start_moto();
    let url = format!("s3://{BUCKET}/fleet-a");
    let first = moto.open(&url);
    let second = moto.open(&url);

    let from_first = first
        .put("sweep-1", "trial-1", "val_predictions", b"first")
        .unwrap();
    let from_second = second
        .put("sweep-1", "trial-2", "val_predictions", b"second")
        .unwrap();

    assert_eq!(second.get(&from_first).unwrap(), b"first");
    assert_eq!(first.get(&from_second).unwrap(), b"second");
}

#[test]
fn s3_prefixes_keep_fleets_apart() {
    let (_serial, moto) = start_moto();
    let fleet_a = moto.open(&format!("s3://{BUCKET}/fleet-a"));
    let fleet_b = moto.open(&format!("s3://{BUCKET}/fleet-b"));

    let artifact = fleet_a
        .put("sweep-1", "trial-1", "val_predictions", b"a")
        .unwrap();
    let error = fleet_b.get(&artifact).unwrap_err();

    assert!(
        matches!(error, StoreError::ArtifactNotFound { .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn s3_store_works_inside_tokio_runtime() {
    let (_serial, moto) = start_moto();
    let store = moto.open(&format!("s3://{BUCKET}"));

    let artifact = store
        .put("sweep-1", "trial-1", "val_predictions", b"abc")
        .unwrap();

    assert_eq!(store.get(&artifact).unwrap(), b"abc");
}
