//! A real etcd for tests: Debian's `etcd` binary (3.4) on free loopback ports with a temporary
//! data directory, stopped by its pid. It uses only std and tempfile, so any test crate can
//! include it with `#[path = "…/tests/support/etcd.rs"] mod etcd;`.
//!
//! Every URL etcd listens on or advertises is set explicitly to 127.0.0.1, so no default
//! listener (0.0.0.0 or localhost) is ever opened.

#![allow(dead_code)]

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How long etcd may take to report healthy after it starts.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long etcd may take to exit after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const POLL_INTERVAL: Duration = Duration::from_millis(20);
const HEALTH_REQUEST_TIMEOUT: Duration = Duration::from_millis(500);
/// Number of tries with fresh ports, because another process may take a port between picking
/// and binding it.
const MAX_START_TRIES: usize = 3;

/// One etcd member process.
pub struct EtcdServer {
    name: String,
    client_port: u16,
    peer_port: u16,
    /// `name=peer-url` of every member of the cluster.
    initial_cluster: String,
    dir: TempDir,
    child: Option<Child>,
}

/// A cluster of etcd members on loopback.
pub struct EtcdCluster {
    members: Vec<EtcdServer>,
}

impl EtcdServer {
    /// Starts a one-member etcd and waits until it reports healthy. Panics with etcd's log on
    /// failure.
    pub fn start() -> EtcdServer {
        let mut cluster = EtcdCluster::start(1);
        cluster
            .members
            .pop()
            .expect("a one-member cluster has one member")
    }

    /// Returns the client URL, such as `http://127.0.0.1:40123`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// Returns the process id while etcd runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Returns the data directory, which survives `kill`, `stop` and `restart`.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Reads etcd's log (its stderr) across every start of this member.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Sends SIGKILL to etcd by its pid and reaps it. Does nothing when etcd is not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGKILL fails only when the process has already exited.
            let _ = child.kill();
            child.wait().expect("failed to reap the killed etcd");
        }
    }

    /// Sends SIGTERM to etcd by its pid and waits for it to exit, with SIGKILL after
    /// `STOP_TIMEOUT`. Does nothing when etcd is not running.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("failed to run kill");
        assert!(sent.success(), "kill -TERM {} failed: {sent}", child.id());
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if child.try_wait().expect("failed to poll etcd").is_some() {
                return;
            }
            thread::sleep(POLL_INTERVAL);
        }
        let _ = child.kill();
        child.wait().expect("failed to reap etcd");
        panic!(
            "etcd {} did not exit within {STOP_TIMEOUT:?} of SIGTERM",
            self.name
        );
    }

    /// Starts etcd again on the same data directory and ports (stopping it first if it runs)
    /// and waits until it reports healthy.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
        self.wait_until_healthy();
    }

    fn new(name: String, client_port: u16, peer_port: u16, initial_cluster: String) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("tunefleet-etcd-")
            .tempdir()
            .expect("failed to create etcd's temporary directory");
        Self {
            name,
            client_port,
            peer_port,
            initial_cluster,
            dir,
            child: None,
        }
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    fn spawn(&mut self) {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("failed to open etcd's log file");
        let client_url = self.endpoint();
        let peer_url = self.peer_url();
        let mut command = Command::new("etcd");
        // etcd reads ETCD_* variables as flags, so a developer's environment could change it.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ETCD_") {
                command.env_remove(key);
            }
        }
        command
            .args(["--name", &self.name])
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "tunefleet-test"])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        self.child = Some(command.spawn().unwrap_or_else(|err| {
            panic!("failed to start etcd (Debian's etcd-server package provides it): {err}")
        }));
    }

    /// Waits until `/health` reports true. Panics with etcd's log when etcd exits or the
    /// deadline passes.
    fn wait_until_healthy(&mut self) {
        if let Err(problem) = self.poll_until_healthy(Instant::now() + READY_TIMEOUT) {
            self.kill();
            panic!("etcd {} {problem}; its log:\n{}", self.name, self.log());
        }
    }

    fn poll_until_healthy(&mut self, deadline: Instant) -> Result<(), String> {
        loop {
            if let Some(status) = self.exit_status() {
                return Err(format!("exited early with {status}"));
            }
            if is_healthy(self.client_port) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("did not report healthy within {READY_TIMEOUT:?}"));
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        child.try_wait().expect("failed to poll etcd")
    }

    fn port_in_use(&self) -> bool {
        self.log().contains("address already in use")
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
    }
}

impl EtcdCluster {
    /// Starts `num_members` etcd members that form one cluster and waits until every one
    /// reports healthy. Panics with the failing member's log on failure.
    pub fn start(num_members: usize) -> EtcdCluster {
        assert!(num_members > 0, "an etcd cluster needs at least one member");
        for _ in 1..MAX_START_TRIES {
            if let Some(cluster) = Self::try_start(num_members) {
                return cluster;
            }
        }
        Self::try_start(num_members).expect("etcd could not bind its ports in any try")
    }

    /// Returns the member with index `index`, from 0.
    pub fn member(&self, index: usize) -> &EtcdServer {
        &self.members[index]
    }

    /// Returns the member with index `index` for `stop` and `restart`.
    pub fn member_mut(&mut self, index: usize) -> &mut EtcdServer {
        &mut self.members[index]
    }

    /// Sends SIGKILL to one member by its pid.
    pub fn kill_member(&mut self, index: usize) {
        self.members[index].kill();
    }

    /// Returns the client URLs of all members, running or not.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(EtcdServer::endpoint).collect()
    }

    /// Starts the members. Returns `None` when one of them lost a port race, after killing
    /// every member. Panics on any other failure.
    fn try_start(num_members: usize) -> Option<EtcdCluster> {
        let ports = free_ports(2 * num_members);
        let names: Vec<String> = (0..num_members).map(|i| format!("member{i}")).collect();
        let initial_cluster = names
            .iter()
            .zip(ports.chunks(2))
            .map(|(name, pair)| format!("{name}=http://127.0.0.1:{}", pair[1]))
            .collect::<Vec<_>>()
            .join(",");
        let mut members: Vec<EtcdServer> = names
            .into_iter()
            .zip(ports.chunks(2))
            .map(|(name, pair)| EtcdServer::new(name, pair[0], pair[1], initial_cluster.clone()))
            .collect();
        // Members of a new cluster wait for each other, so all must run before any is healthy.
        for member in &mut members {
            member.spawn();
        }
        let deadline = Instant::now() + READY_TIMEOUT;
        for index in 0..members.len() {
            if let Err(problem) = members[index].poll_until_healthy(deadline) {
                if members.iter().any(EtcdServer::port_in_use) {
                    return None;
                }
                let member = &members[index];
                panic!("etcd {} {problem}; its log:\n{}", member.name, member.log());
            }
        }
        Some(EtcdCluster { members })
    }
}

/// Picks free loopback ports by binding port 0. All listeners stay open until every port is
/// picked, so the ports differ from each other.
fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("failed to bind a loopback port"))
        .collect();
    listeners
        .iter()
        .map(|listener| listener.local_addr().expect("no local address").port())
        .collect()
}

/// Sends `GET /health` to etcd's client port over HTTP/1.0 and reports whether etcd returned
/// `{"health":"true"}`.
fn is_healthy(client_port: u16) -> bool {
    let address = SocketAddr::from(([127, 0, 0, 1], client_port));
    let Ok(mut stream) = TcpStream::connect_timeout(&address, HEALTH_REQUEST_TIMEOUT) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(HEALTH_REQUEST_TIMEOUT));
    let _ = stream.set_write_timeout(Some(HEALTH_REQUEST_TIMEOUT));
    let request = "GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.starts_with("HTTP/1.") && response.contains(r#""health":"true""#)
}
