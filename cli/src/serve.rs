//! `tunefleet coordinator` and `tunefleet worker`: the long-running services of a fleet.
//!
//! Settings come from flags, then environment variables (both through clap), then an optional
//! TOML config file, then built-in defaults. The first that sets a value wins.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::sync::Arc;
use tokio::net::TcpListener;

use tunefleet_coordinator::artifacts::open_artifacts;
use tunefleet_coordinator::election::{serve_elected, ElectionConfig};
use tunefleet_coordinator::security::{ServerSecurity, ServerTls, TokenSet};
use tunefleet_coordinator::state::SchedulerConfig;
use tunefleet_coordinator::store::etcd::EtcdOptions;
use tunefleet_coordinator::store::EmbeddedStore;
use tunefleet_coordinator::{Coordinator, CoordinatorConfig, CoordinatorMetrics, MetricsEndpoint};
use tunefleet_proto::ClientSecurity;
use tunefleet_worker::{plan_slots, GpuSelection, WorkerConfig};

/// A failure that is the operator's input, reported with exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

#[derive(Debug, clap::Args)]
pub struct CoordinatorArgs {
    /// Address to serve gRPC on [default: 127.0.0.1:7800].
    #[arg(long, env = "TUNEFLEET_LISTEN")]
    listen: Option<SocketAddr>,

    /// Directory of the store (state.redb) and the artifacts [default: /var/lib/tunefleet].
    #[arg(long, env = "TUNEFLEET_DATA_DIR")]
    data_dir: Option<PathBuf>,

    /// How long an attempt's lease lasts without a heartbeat, in milliseconds [default: 10000].
    #[arg(long, env = "TUNEFLEET_LEASE_TTL_MS")]
    lease_ttl_ms: Option<u32>,

    /// How often workers send heartbeats, in milliseconds [default: 2000].
    #[arg(long, env = "TUNEFLEET_HEARTBEAT_INTERVAL_MS")]
    heartbeat_interval_ms: Option<u32>,

    /// Lost attempts (expired leases) after which a trial fails instead of running again
    /// [default: 3].
    #[arg(long, env = "TUNEFLEET_MAX_ATTEMPTS")]
    max_attempts: Option<u32>,

    /// The state store: "embedded" (a redb file in --data-dir) or
    /// "etcd://HOST:PORT[,HOST:PORT...]/PREFIX" to share it between coordinators, one of which
    /// leads [default: embedded].
    #[arg(long, env = "TUNEFLEET_STORE")]
    store: Option<String>,

    /// The artifact store: a directory as "file:///PATH", or "s3://BUCKET/PREFIX" (credentials
    /// and endpoint from the AWS_* variables) [default: DATA_DIR/artifacts]. Coordinators
    /// sharing etcd must share this too.
    #[arg(long, env = "TUNEFLEET_ARTIFACTS")]
    artifacts: Option<String>,

    /// With an etcd store: the URL other coordinators forward calls to when this one leads
    /// [default: http:// and the --listen address, or https:// with TLS].
    #[arg(long, env = "TUNEFLEET_ADVERTISE")]
    advertise: Option<String>,

    /// With an etcd store: the election lease's time to live in seconds, which bounds how long
    /// a dead leader keeps leadership [default: 3].
    #[arg(long, env = "TUNEFLEET_ELECTION_TTL_SECS")]
    election_ttl_secs: Option<u32>,

    /// Address to serve Prometheus metrics on, at /metrics, such as 127.0.0.1:9464
    /// [default: none, no metrics server].
    #[arg(long, env = "TUNEFLEET_METRICS_ADDR")]
    metrics_addr: Option<SocketAddr>,

    /// The coordinator's certificate chain (PEM); with --tls-key, serves TLS.
    #[arg(long, env = "TUNEFLEET_TLS_CERT")]
    tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "TUNEFLEET_TLS_KEY")]
    tls_key: Option<PathBuf>,

    /// The fleet CA (PEM) that signs worker certificates; workers must then present one to use
    /// the worker API. Needs --tls-cert.
    #[arg(long, env = "TUNEFLEET_TLS_CLIENT_CA")]
    tls_client_ca: Option<PathBuf>,

    /// The tokens file (TOML) of the clients of the sweep API, each read-only or read-write;
    /// see `tunefleet certs init`.
    #[arg(long, env = "TUNEFLEET_TOKENS")]
    tokens: Option<PathBuf>,

    /// Serve on a non-loopback address without TLS, client certificates or tokens: anyone who
    /// can reach it may then run sweeps and act as a worker.
    #[arg(long, env = "TUNEFLEET_ALLOW_INSECURE")]
    allow_insecure: bool,

    /// TOML file with any of: listen, data_dir, lease_ttl_ms, heartbeat_interval_ms,
    /// max_attempts, store, artifacts, advertise, election_ttl_secs, metrics_addr, tls_cert,
    /// tls_key, tls_client_ca, tokens, allow_insecure.
    #[arg(long, env = "TUNEFLEET_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CoordinatorFile {
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_client_ca: Option<PathBuf>,
    tokens: Option<PathBuf>,
    allow_insecure: Option<bool>,
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    lease_ttl_ms: Option<u32>,
    heartbeat_interval_ms: Option<u32>,
    max_attempts: Option<u32>,
    store: Option<String>,
    artifacts: Option<String>,
    advertise: Option<String>,
    election_ttl_secs: Option<u32>,
    metrics_addr: Option<SocketAddr>,
}

/// The state store a coordinator uses.
#[derive(Debug, Clone, PartialEq)]
enum StoreChoice {
    Embedded,
    Etcd {
        endpoints: Vec<String>,
        prefix: String,
    },
}

fn parse_store(value: &str) -> Result<StoreChoice, ConfigError> {
    if value == "embedded" {
        return Ok(StoreChoice::Embedded);
    }
    let invalid = || {
        ConfigError(format!(
            "invalid store {value:?}: expected \"embedded\" or \"etcd://HOST:PORT[,HOST:PORT...]/PREFIX\""
        ))
    };
    let rest = value.strip_prefix("etcd://").ok_or_else(invalid)?;
    let (hosts, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let endpoints: Vec<String> = hosts.split(',').map(|h| format!("http://{h}")).collect();
    for endpoint in &endpoints {
        tunefleet_proto::coordinator_endpoints(endpoint, None).map_err(|_| invalid())?;
    }
    let prefix = prefix.trim_matches('/');
    if endpoints.is_empty() || prefix.is_empty() {
        return Err(invalid());
    }
    Ok(StoreChoice::Etcd {
        endpoints,
        prefix: prefix.to_string(),
    })
}

#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    /// The coordinator's URL, or several separated by commas for coordinators sharing etcd
    /// [default: http://127.0.0.1:7800].
    #[arg(long, env = "TUNEFLEET_COORDINATOR")]
    coordinator: Option<String>,

    /// GPUs to offer: "all" (every CUDA device libtorch finds), "none", or device numbers such
    /// as "0,2" [default: all].
    #[arg(long, env = "TUNEFLEET_GPUS")]
    gpus: Option<String>,

    /// GPUs each trial gets; its slot's devices are its CUDA_VISIBLE_DEVICES [default: 1].
    #[arg(long, env = "TUNEFLEET_GPUS_PER_TRIAL")]
    gpus_per_trial: Option<usize>,

    /// CPU slots when no GPU is offered [default: CPU cores divided by --threads-per-slot].
    #[arg(long, env = "TUNEFLEET_CPU_SLOTS")]
    cpu_slots: Option<u32>,

    /// libtorch threads per slot [default: 1].
    #[arg(long, env = "TUNEFLEET_THREADS_PER_SLOT")]
    threads_per_slot: Option<u32>,

    /// A key=value label shown by `tunefleet workers`; repeat for more.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,

    /// Seconds running trials may go on after SIGTERM before they are stopped and handed back
    /// to the coordinator [default: 30].
    #[arg(long, env = "TUNEFLEET_GRACE_PERIOD_SECS")]
    grace_period_secs: Option<u64>,

    /// The name this worker registers under [default: the host name].
    #[arg(long, env = "TUNEFLEET_HOSTNAME")]
    hostname: Option<String>,

    /// Address to serve Prometheus metrics on, at /metrics, such as 127.0.0.1:9465
    /// [default: none, no metrics server].
    #[arg(long, env = "TUNEFLEET_METRICS_ADDR")]
    metrics_addr: Option<SocketAddr>,

    /// The CA (PEM) that signed the coordinator's certificate; connects over TLS to https://
    /// URLs.
    #[arg(long, env = "TUNEFLEET_TLS_CA")]
    tls_ca: Option<PathBuf>,

    /// This worker's certificate (PEM), signed by the fleet CA, for mutual TLS.
    #[arg(long, env = "TUNEFLEET_TLS_CERT")]
    tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "TUNEFLEET_TLS_KEY")]
    tls_key: Option<PathBuf>,

    /// TOML file with any of: coordinator, gpus, gpus_per_trial, cpu_slots, threads_per_slot,
    /// labels (a table), grace_period_secs, hostname, metrics_addr, tls_ca, tls_cert, tls_key.
    #[arg(long, env = "TUNEFLEET_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkerFile {
    tls_ca: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    coordinator: Option<String>,
    gpus: Option<String>,
    gpus_per_trial: Option<usize>,
    cpu_slots: Option<u32>,
    threads_per_slot: Option<u32>,
    labels: Option<HashMap<String, String>>,
    grace_period_secs: Option<u64>,
    hostname: Option<String>,
    metrics_addr: Option<SocketAddr>,
}

fn read_config_file<T: DeserializeOwned + Default>(path: Option<&Path>) -> Result<T, ConfigError> {
    let Some(path) = path else {
        return Ok(T::default());
    };
    let text = std::fs::read_to_string(path).map_err(|err| {
        ConfigError(format!(
            "failed to read config file {}: {err}",
            path.display()
        ))
    })?;
    toml::from_str(&text)
        .map_err(|err| ConfigError(format!("invalid config file {}: {err}", path.display())))
}

fn positive(name: &str, value: u32) -> Result<u32, ConfigError> {
    if value == 0 {
        return Err(ConfigError(format!(
            "invalid {name} 0: expected an int >= 1"
        )));
    }
    Ok(value)
}

/// Binds the metrics listener at `address`, when one is set, in a registry for `service`.
async fn metrics_endpoint(
    address: Option<SocketAddr>,
    service: &str,
) -> anyhow::Result<Option<MetricsEndpoint>> {
    let Some(address) = address else {
        return Ok(None);
    };
    let listener = TcpListener::bind(address)
        .await
        .with_context(|| format!("failed to listen for metrics on {address}"))?;
    Ok(Some(MetricsEndpoint {
        listener,
        registry: tunefleet_telemetry::new_registry(service),
    }))
}

/// Waits for SIGTERM or SIGINT.
async fn termination_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut terminate), Ok(mut interrupt)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("failed to install signal handlers; stop the process with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM received"),
        _ = interrupt.recv() => tracing::info!("SIGINT received"),
    }
}

/// Serves a coordinator until SIGTERM or SIGINT.
pub async fn run_coordinator(args: CoordinatorArgs) -> anyhow::Result<()> {
    let file: CoordinatorFile = read_config_file(args.config.as_deref())?;
    let listen = args
        .listen
        .or(file.listen)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7800)));
    let data_dir = args
        .data_dir
        .or(file.data_dir)
        .unwrap_or_else(|| PathBuf::from("/var/lib/tunefleet"));
    let lease_ttl_ms = positive(
        "lease_ttl_ms",
        args.lease_ttl_ms.or(file.lease_ttl_ms).unwrap_or(10_000),
    )?;
    let heartbeat_interval_ms = positive(
        "heartbeat_interval_ms",
        args.heartbeat_interval_ms
            .or(file.heartbeat_interval_ms)
            .unwrap_or(2_000),
    )?;
    let max_attempts = positive(
        "max_attempts",
        args.max_attempts.or(file.max_attempts).unwrap_or(3),
    )?;
    if heartbeat_interval_ms >= lease_ttl_ms {
        return Err(ConfigError(format!(
            "invalid heartbeat_interval_ms {heartbeat_interval_ms}: expected less than lease_ttl_ms {lease_ttl_ms}, or every lease would expire between heartbeats"
        ))
        .into());
    }

    let store = parse_store(args.store.or(file.store).as_deref().unwrap_or("embedded"))?;
    let artifacts_url = args.artifacts.or(file.artifacts).unwrap_or_default();
    let election_ttl_secs = positive(
        "election_ttl_secs",
        args.election_ttl_secs
            .or(file.election_ttl_secs)
            .unwrap_or(3),
    )?;
    let security = server_security(
        args.tls_cert.or(file.tls_cert).as_deref(),
        args.tls_key.or(file.tls_key).as_deref(),
        args.tls_client_ca.or(file.tls_client_ca).as_deref(),
        args.tokens.or(file.tokens).as_deref(),
    )?;
    let allow_insecure = args.allow_insecure || file.allow_insecure.unwrap_or(false);
    security
        .check_exposure(listen, allow_insecure)
        .map_err(ConfigError)?;
    let policy = security.access_policy().map_err(ConfigError)?;
    let scheme = if security.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let advertise = args
        .advertise
        .or(file.advertise)
        .unwrap_or_else(|| format!("{scheme}://{listen}"));

    let mut metrics =
        metrics_endpoint(args.metrics_addr.or(file.metrics_addr), "coordinator").await?;
    let coordinator_metrics = match &mut metrics {
        Some(endpoint) => CoordinatorMetrics::register(&mut endpoint.registry),
        None => CoordinatorMetrics::default(),
    };
    let config = CoordinatorConfig {
        data_dir: data_dir.clone(),
        scheduler: SchedulerConfig {
            lease_ttl_ms: i64::from(lease_ttl_ms),
            max_attempts,
        },
        heartbeat_interval_ms,
        metrics: coordinator_metrics,
    };
    let default_artifacts = data_dir.join("artifacts");
    let artifacts = move || open_artifacts(&artifacts_url, &default_artifacts);
    // Fail at start on a bad artifact location rather than at the first upload.
    artifacts().map_err(|err| ConfigError(format!("invalid artifacts location: {err}")))?;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("failed to listen on {listen}"))?;
    tracing::info!(
        %listen,
        lease_ttl_ms,
        heartbeat_interval_ms,
        max_attempts,
        store = ?store,
        tls = security.tls.is_some(),
        mutual_tls = security.tls.as_ref().is_some_and(|tls| tls.client_ca_pem.is_some()),
        tokens = security.tokens.is_some(),
        "coordinator starting"
    );
    match store {
        StoreChoice::Embedded => {
            let state = EmbeddedStore::open(&data_dir)
                .with_context(|| format!("failed to open the store in {}", data_dir.display()))?;
            let coordinator = Coordinator::with_stores(config, Box::new(state), artifacts()?)?;
            coordinator
                .serve_secured(listener, &security, policy, metrics, termination_signal())
                .await
                .context("the gRPC server failed")?;
        }
        StoreChoice::Etcd { endpoints, prefix } => {
            let election = ElectionConfig {
                endpoints,
                prefix,
                advertise_url: advertise,
                lease_ttl_secs: i64::from(election_ttl_secs),
                store_options: EtcdOptions::default(),
            };
            serve_elected(
                config,
                election,
                Arc::new(artifacts),
                listener,
                &security,
                metrics,
                termination_signal(),
            )
            .await?;
        }
    }
    Ok(())
}

/// Reads the TLS files and the tokens file named by the coordinator's settings.
fn server_security(
    cert: Option<&Path>,
    key: Option<&Path>,
    client_ca: Option<&Path>,
    tokens: Option<&Path>,
) -> Result<ServerSecurity, ConfigError> {
    let read = |path: &Path| {
        std::fs::read(path)
            .map_err(|err| ConfigError(format!("failed to read {}: {err}", path.display())))
    };
    let tls = match (cert, key) {
        (None, None) => None,
        (Some(cert), Some(key)) => Some(ServerTls {
            cert_pem: read(cert)?,
            key_pem: read(key)?,
            client_ca_pem: client_ca.map(read).transpose()?,
        }),
        _ => {
            return Err(ConfigError(
                "invalid TLS settings: --tls-cert and --tls-key go together".to_string(),
            ))
        }
    };
    if tls.is_none() && client_ca.is_some() {
        return Err(ConfigError(
            "invalid TLS settings: --tls-client-ca needs --tls-cert and --tls-key".to_string(),
        ));
    }
    let tokens = tokens
        .map(|path| TokenSet::load(path).map(Arc::new))
        .transpose()
        .map_err(ConfigError)?;
    Ok(ServerSecurity { tls, tokens })
}

fn parse_labels(pairs: &[String]) -> Result<HashMap<String, String>, ConfigError> {
    pairs
        .iter()
        .map(|pair| match pair.split_once('=') {
            Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
            _ => Err(ConfigError(format!(
                "invalid label {pair:?}: expected KEY=VALUE"
            ))),
        })
        .collect()
}

/// Runs a worker agent until SIGTERM or SIGINT, then finishes or hands back its trials.
pub async fn run_worker(args: WorkerArgs) -> anyhow::Result<()> {
    let file: WorkerFile = read_config_file(args.config.as_deref())?;
    let coordinator_url = args
        .coordinator
        .or(file.coordinator)
        .unwrap_or_else(|| "http://127.0.0.1:7800".to_string());
    let gpus: GpuSelection = args
        .gpus
        .or(file.gpus)
        .unwrap_or_else(|| "all".to_string())
        .parse()
        .map_err(ConfigError)?;
    let gpus_per_trial = args.gpus_per_trial.or(file.gpus_per_trial).unwrap_or(1);
    let threads = positive(
        "threads_per_slot",
        args.threads_per_slot.or(file.threads_per_slot).unwrap_or(1),
    )?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let cpu_slots = positive(
        "cpu_slots",
        args.cpu_slots
            .or(file.cpu_slots)
            .unwrap_or((cores / threads).max(1)),
    )?;
    let mut labels = file.labels.unwrap_or_default();
    labels.extend(parse_labels(&args.labels)?);
    let grace = Duration::from_secs(
        args.grace_period_secs
            .or(file.grace_period_secs)
            .unwrap_or(30),
    );
    let hostname = args
        .hostname
        .or(file.hostname)
        .unwrap_or_else(local_hostname);
    let slots = plan_slots(&gpus, gpus_per_trial, cpu_slots, threads).map_err(ConfigError)?;
    let tls = ClientSecurity::tls_from_files(
        args.tls_ca.or(file.tls_ca).as_deref(),
        args.tls_cert.or(file.tls_cert).as_deref(),
        args.tls_key.or(file.tls_key).as_deref(),
    )
    .map_err(ConfigError)?;
    tunefleet_proto::coordinator_endpoints(&coordinator_url, tls.as_ref()).map_err(ConfigError)?;

    let config = WorkerConfig {
        coordinator_url,
        security: ClientSecurity { tls, token: None },
        slots,
        trainer_command: vec![
            std::env::current_exe()
                .context("failed to find the tunefleet executable")?
                .into(),
            "train-trial".into(),
        ],
        hostname,
        labels,
        shutdown_grace: grace,
    };
    let metrics = metrics_endpoint(args.metrics_addr.or(file.metrics_addr), "worker").await?;
    tracing::info!(version = env!("CARGO_PKG_VERSION"), coordinator = %config.coordinator_url, "worker starting");
    tunefleet_worker::agent::run_with_metrics(config, metrics, termination_signal()).await
}

fn local_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_url_parses_endpoints_and_prefix() {
        let parsed = parse_store("etcd://127.0.0.1:2379,127.0.0.1:22379/fleet-a").unwrap();
        let expected = StoreChoice::Etcd {
            endpoints: vec![
                "http://127.0.0.1:2379".into(),
                "http://127.0.0.1:22379".into(),
            ],
            prefix: "fleet-a".into(),
        };
        assert_eq!(parsed, expected);
    }

    #[test]
    fn store_url_needs_prefix() {
        let err = parse_store("etcd://127.0.0.1:2379").unwrap_err();
        assert!(
            err.0.starts_with("invalid store \"etcd://127.0.0.1:2379\""),
            "{err}"
        );
    }

    #[test]
    fn store_url_rejects_bad_hosts() {
        assert!(parse_store("etcd://[::1/p").is_err());
        assert!(parse_store("etcd://127.0.0.1:2379,/p").is_err());
    }

    #[test]
    fn tls_key_needs_cert() {
        let key = Path::new("coordinator.key");
        let err = server_security(None, Some(key), None, None).unwrap_err();
        assert_eq!(
            err.0,
            "invalid TLS settings: --tls-cert and --tls-key go together"
        );
    }

    #[test]
    fn client_ca_needs_tls() {
        let ca = Path::new("ca.pem");
        let err = server_security(None, None, Some(ca), None).unwrap_err();
        assert_eq!(
            err.0,
            "invalid TLS settings: --tls-client-ca needs --tls-cert and --tls-key"
        );
    }

    #[test]
    fn missing_tokens_file_is_named() {
        let tokens = Path::new("/nonexistent/tokens.toml");
        let err = server_security(None, None, None, Some(tokens)).unwrap_err();
        assert!(
            err.0
                .starts_with("failed to read tokens file /nonexistent/tokens.toml"),
            "{err}"
        );
    }

    #[test]
    fn store_url_rejects_other_schemes() {
        assert!(parse_store("redis://x/y").is_err());
        assert_eq!(parse_store("embedded").unwrap(), StoreChoice::Embedded);
    }
}
