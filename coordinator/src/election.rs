//! Several coordinators over one etcd: one leads and serves, the others forward to it.
//!
//! Each coordinator campaigns in an etcd election on a lease it keeps alive. The winner loads the
//! state from etcd, fences its writes on its election key (a coordinator that lost leadership can
//! never write again) and serves. The others serve the same gRPC API by forwarding every call to
//! the leader named in the election, so clients and workers may talk to any coordinator. When the
//! leader dies, its lease expires after `lease_ttl_secs` and another coordinator takes over.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use etcd_client::{Client, LeaderKey};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::{Request, Response, Status};
use tunefleet_proto::v1;
use tunefleet_proto::v1::sweep_service_client::SweepServiceClient;
use tunefleet_proto::v1::sweep_service_server::SweepService;
use tunefleet_proto::v1::worker_service_client::WorkerServiceClient;
use tunefleet_proto::v1::worker_service_server::WorkerService;

use crate::artifacts::ArtifactStore;
use crate::observe::{self, MetricsEndpoint};
use crate::security::{principal_of, ServerSecurity};
use crate::service::{serve_services, Coordinator, CoordinatorConfig, MAX_MESSAGE_BYTES};
use crate::store::etcd::{EtcdOptions, EtcdStore, Fence};

/// Metadata key set on calls a follower forwards, so that a forwarded call is never forwarded
/// again while leadership changes hands.
const FORWARDED_HEADER: &str = "tunefleet-forwarded";

/// Settings of a coordinator that shares its state through etcd.
#[derive(Debug, Clone)]
pub struct ElectionConfig {
    pub endpoints: Vec<String>,
    /// Key prefix of this fleet in etcd; the state lives under it and the election at
    /// `PREFIX/election`.
    pub prefix: String,
    /// The URL other coordinators forward to when this one leads, such as
    /// `http://10.0.0.5:7800`.
    pub advertise_url: String,
    /// The election lease's time to live in seconds: the longest a dead leader keeps
    /// leadership.
    pub lease_ttl_secs: i64,
    pub store_options: EtcdOptions,
}

/// Builds the artifact store each time this coordinator becomes leader.
pub type ArtifactsFactory =
    Arc<dyn Fn() -> Result<Box<dyn ArtifactStore>, crate::store::StoreError> + Send + Sync>;

enum Role {
    /// Not leading; calls go to the leader at this link, if one is known.
    Follower(Option<Box<LeaderLink>>),
    Leader(Coordinator),
}

#[derive(Clone)]
struct LeaderLink {
    sweeps: SweepServiceClient<Channel>,
    workers: WorkerServiceClient<Channel>,
}

/// The gRPC front of an elected coordinator: serves as leader or forwards to the leader.
#[derive(Clone)]
pub struct Gate {
    role: Arc<RwLock<Role>>,
    /// TLS settings of connections to the leader; `None` connects in plaintext.
    leader_tls: Option<ClientTlsConfig>,
}

enum Route {
    Serve(Coordinator),
    Forward(Box<LeaderLink>),
}

impl Gate {
    fn new(leader_tls: Option<ClientTlsConfig>) -> Self {
        Self {
            role: Arc::new(RwLock::new(Role::Follower(None))),
            leader_tls,
        }
    }

    fn set(&self, role: Role) {
        *self.role.write().unwrap_or_else(|e| e.into_inner()) = role;
    }

    /// Returns SERVING on a leader that is not degraded and on a follower that has a leader
    /// to forward to, else NOT_SERVING.
    fn serving_status(&self) -> tonic_health::ServingStatus {
        match &*self.role.read().unwrap_or_else(|e| e.into_inner()) {
            Role::Leader(coordinator) => coordinator.serving_status(),
            Role::Follower(Some(_)) => tonic_health::ServingStatus::Serving,
            Role::Follower(None) => tonic_health::ServingStatus::NotServing,
        }
    }

    fn leader_coordinator(&self) -> Option<Coordinator> {
        match &*self.role.read().unwrap_or_else(|e| e.into_inner()) {
            Role::Leader(coordinator) => Some(coordinator.clone()),
            Role::Follower(_) => None,
        }
    }

    fn route<T>(&self, request: &Request<T>) -> Result<Route, Status> {
        match &*self.role.read().unwrap_or_else(|e| e.into_inner()) {
            Role::Leader(coordinator) => Ok(Route::Serve(coordinator.clone())),
            Role::Follower(_) if request.metadata().contains_key(FORWARDED_HEADER) => {
                Err(Status::unavailable(
                    "this coordinator is not the leader any more; retry the request",
                ))
            }
            Role::Follower(Some(link)) => Ok(Route::Forward(link.clone())),
            Role::Follower(None) => Err(Status::unavailable(
                "no coordinator leads right now (an election is under way); retry the request",
            )),
        }
    }
}

/// Marks a request as forwarded and strips it to its message and credentials: the caller this
/// coordinator authenticated, which the leader trusts from a peer presenting the coordinator
/// certificate, and the bearer token, which the leader checks itself otherwise.
fn forwarded<T>(request: Request<T>) -> Result<Request<T>, Status> {
    let principal = principal_of(&request)?.clone();
    let authorization = request.metadata().get("authorization").cloned();
    let mut forwarded = Request::new(request.into_inner());
    forwarded.metadata_mut().insert(
        FORWARDED_HEADER,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    principal.attach(&mut forwarded)?;
    if let Some(authorization) = authorization {
        forwarded
            .metadata_mut()
            .insert("authorization", authorization);
    }
    Ok(forwarded)
}

/// Implements one unary method by serving it as leader or forwarding it to the leader. It
/// writes out the signature `#[tonic::async_trait]` gives async methods, because the attribute
/// does not look inside macro calls.
macro_rules! gate_unary {
    ($service:ident, $client:ident, $method:ident, $request:ty, $response:ty) => {
        fn $method<'life0, 'async_trait>(
            &'life0 self,
            request: Request<$request>,
        ) -> Pin<Box<dyn Future<Output = Result<Response<$response>, Status>> + Send + 'async_trait>>
        where
            'life0: 'async_trait,
            Self: 'async_trait,
        {
            Box::pin(async move {
                match self.route(&request)? {
                    Route::Serve(coordinator) => $service::$method(&coordinator, request).await,
                    Route::Forward(mut link) => link.$client.$method(forwarded(request)?).await,
                }
            })
        }
    };
}

type EventStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<v1::SweepEvent, Status>> + Send>>;

#[tonic::async_trait]
impl SweepService for Gate {
    gate_unary!(
        SweepService,
        sweeps,
        create_sweep,
        v1::CreateSweepRequest,
        v1::Sweep
    );
    gate_unary!(
        SweepService,
        sweeps,
        get_sweep,
        v1::GetSweepRequest,
        v1::Sweep
    );
    gate_unary!(
        SweepService,
        sweeps,
        list_sweeps,
        v1::ListSweepsRequest,
        v1::ListSweepsResponse
    );
    gate_unary!(
        SweepService,
        sweeps,
        cancel_sweep,
        v1::CancelSweepRequest,
        v1::Sweep
    );
    gate_unary!(
        SweepService,
        sweeps,
        resume_sweep,
        v1::ResumeSweepRequest,
        v1::Sweep
    );
    gate_unary!(
        SweepService,
        sweeps,
        list_trials,
        v1::ListTrialsRequest,
        v1::ListTrialsResponse
    );
    gate_unary!(
        SweepService,
        sweeps,
        get_trial,
        v1::GetTrialRequest,
        v1::Trial
    );
    gate_unary!(
        SweepService,
        sweeps,
        get_ensemble,
        v1::GetEnsembleRequest,
        v1::EnsembleSummary
    );
    gate_unary!(
        SweepService,
        sweeps,
        get_artifact,
        v1::GetArtifactRequest,
        v1::GetArtifactResponse
    );
    gate_unary!(
        SweepService,
        sweeps,
        list_workers,
        v1::ListWorkersRequest,
        v1::ListWorkersResponse
    );

    type WatchSweepStream = EventStream;

    async fn watch_sweep(
        &self,
        request: Request<v1::WatchSweepRequest>,
    ) -> Result<Response<Self::WatchSweepStream>, Status> {
        match self.route(&request)? {
            Route::Serve(coordinator) => SweepService::watch_sweep(&coordinator, request).await,
            Route::Forward(mut link) => {
                let stream = link
                    .sweeps
                    .watch_sweep(forwarded(request)?)
                    .await?
                    .into_inner();
                Ok(Response::new(Box::pin(stream) as EventStream))
            }
        }
    }
}

#[tonic::async_trait]
impl WorkerService for Gate {
    gate_unary!(
        WorkerService,
        workers,
        register_worker,
        v1::RegisterWorkerRequest,
        v1::RegisterWorkerResponse
    );
    gate_unary!(
        WorkerService,
        workers,
        heartbeat,
        v1::HeartbeatRequest,
        v1::HeartbeatResponse
    );
    gate_unary!(
        WorkerService,
        workers,
        acquire_trial,
        v1::AcquireTrialRequest,
        v1::AcquireTrialResponse
    );
    gate_unary!(
        WorkerService,
        workers,
        report_epoch,
        v1::ReportEpochRequest,
        v1::ReportEpochResponse
    );
    gate_unary!(
        WorkerService,
        workers,
        upload_artifact,
        v1::UploadArtifactRequest,
        v1::ArtifactRef
    );
    gate_unary!(
        WorkerService,
        workers,
        complete_attempt,
        v1::CompleteAttemptRequest,
        v1::CompleteAttemptResponse
    );
}

/// Serves on `listener` as one of several coordinators sharing etcd, until `shutdown`, and
/// Prometheus metrics on `metrics` when given.
///
/// With TLS, followers connect to the leader over TLS, verify its certificate against the
/// client CA and present their own certificate, so every coordinator's certificate must be
/// signed by that CA and share one common name.
pub async fn serve_elected(
    config: CoordinatorConfig,
    election: ElectionConfig,
    artifacts: ArtifactsFactory,
    listener: TcpListener,
    security: &ServerSecurity,
    metrics: Option<MetricsEndpoint>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let rpc = config.metrics.rpc.clone();
    let policy = security.access_policy().map_err(anyhow::Error::msg)?;
    let leader_tls = leader_tls(security)?;
    let gate = Gate::new(leader_tls);
    let (stop_tx, stop_rx) = watch::channel(false);
    let campaign = tokio::spawn(campaign_forever(
        gate.clone(),
        config,
        election.clone(),
        artifacts,
        stop_rx,
    ));
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        address = ?listener.local_addr().ok(),
        advertise = %election.advertise_url,
        etcd = ?election.endpoints,
        "coordinator serving; campaigning for leadership"
    );
    let shutdown_gate = gate.clone();
    let shutdown = async move {
        shutdown.await;
        tracing::info!("coordinator shutting down");
        let _ = stop_tx.send(true);
        if let Some(coordinator) = shutdown_gate.leader_coordinator() {
            coordinator.begin_shutdown();
        }
    };
    let (health_gate, state_gate) = (gate.clone(), gate.clone());
    let plan = observe::ServePlan {
        rpc,
        health: Box::new(move || health_gate.serving_status()),
        state: Arc::new(move || state_gate.leader_coordinator()),
        metrics,
    };
    let served = serve_services(
        gate.clone(),
        gate.clone(),
        listener,
        (security, policy),
        plan,
        shutdown,
    )
    .await;
    campaign.abort();
    tracing::info!("coordinator stopped");
    served.map_err(anyhow::Error::from)
}

/// Follows the leader, campaigns, leads until the lease is lost, and starts over.
async fn campaign_forever(
    gate: Gate,
    config: CoordinatorConfig,
    election: ElectionConfig,
    artifacts: ArtifactsFactory,
    mut stop_rx: watch::Receiver<bool>,
) {
    let mut delay = Duration::from_millis(200);
    loop {
        let term = lead_one_term(&gate, &config, &election, &artifacts, stop_rx.clone());
        tokio::select! {
            result = term => {
                gate.set(Role::Follower(None));
                match result {
                    Ok(()) => delay = Duration::from_millis(200),
                    Err(err) => tracing::error!(error = %format!("{err:#}"), "leadership lost or campaign failed; campaigning again"),
                }
            }
            _ = stop_rx.changed() => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop_rx.changed() => return,
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Campaigns once and, when elected, leads until the lease is lost or shutdown begins.
async fn lead_one_term(
    gate: &Gate,
    config: &CoordinatorConfig,
    election: &ElectionConfig,
    artifacts: &ArtifactsFactory,
    mut stop_rx: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let client = Client::connect(&election.endpoints, None).await?;
    let election_name = format!("{}/election", election.prefix);
    let observer = tokio::spawn(follow_leader(
        gate.clone(),
        client.clone(),
        election_name.clone(),
        election.advertise_url.clone(),
    ));
    let _observer_guard = AbortOnDrop(observer);

    let lease = client
        .lease_client()
        .grant(election.lease_ttl_secs, None)
        .await?;
    let lease_id = lease.id();
    let (mut keeper, mut keepalive_stream) = client.lease_client().keep_alive(lease_id).await?;
    let campaign = async {
        let mut election_client = client.election_client();
        let response = election_client
            .campaign(
                election_name.clone(),
                election.advertise_url.clone(),
                lease_id,
            )
            .await?;
        let leader: LeaderKey = response
            .leader()
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("etcd elected this coordinator without a leader key"))?;
        anyhow::Ok(leader)
    };
    // Keep the lease alive while campaigning, or it would expire before the election ends.
    let ttl = Duration::from_secs(election.lease_ttl_secs.max(1) as u64);
    let interval = ttl / 3;
    tokio::pin!(campaign);
    let leader_key = loop {
        tokio::select! {
            elected = &mut campaign => break elected?,
            _ = tokio::time::sleep(interval) => {
                keeper.keep_alive().await?;
                match keepalive_stream.message().await? {
                    Some(response) if response.ttl() > 0 => {}
                    _ => anyhow::bail!("the election lease expired while campaigning"),
                }
            }
            _ = stop_rx.changed() => return Ok(()),
        }
    };

    let became_leader = Instant::now();
    let fence = Fence {
        key: leader_key.key().to_vec(),
        create_revision: leader_key.rev(),
    };
    // Connecting and loading block on etcd, so they run off the async threads.
    let (config, election_copy, artifacts) = (config.clone(), election.clone(), artifacts.clone());
    let coordinator = tokio::task::spawn_blocking(move || -> anyhow::Result<Coordinator> {
        let store = EtcdStore::connect(
            election_copy.endpoints,
            election_copy.prefix,
            election_copy.store_options,
        )?;
        store.set_fence(Some(fence));
        Ok(Coordinator::with_stores(
            config,
            Box::new(store),
            artifacts()?,
        )?)
    })
    .await??;
    let expiry = coordinator.start_lease_expiry();
    let _expiry_guard = AbortOnDrop(expiry);
    gate.set(Role::Leader(coordinator.clone()));
    tracing::info!(
        advertise = %election.advertise_url,
        load_ms = became_leader.elapsed().as_millis() as u64,
        "became the leader; state loaded from etcd"
    );

    // Lead until a keep-alive fails or the lease lapses. Then step down at once, because
    // another coordinator may be elected as soon as the lease expires.
    let mut last_renewal = Instant::now();
    let outcome = loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop_rx.changed() => break Ok(()),
        }
        let renewed = async {
            keeper.keep_alive().await?;
            let response = keepalive_stream.message().await?;
            anyhow::Ok(response.is_some_and(|r| r.ttl() > 0))
        };
        match tokio::time::timeout(interval, renewed).await {
            Ok(Ok(true)) => last_renewal = Instant::now(),
            Ok(Ok(false)) => break Err(anyhow::anyhow!("the election lease expired")),
            Ok(Err(err)) => tracing::warn!(error = %err, "renewing the election lease failed"),
            Err(_) => tracing::warn!("renewing the election lease timed out"),
        }
        if last_renewal.elapsed() >= ttl {
            break Err(anyhow::anyhow!(
                "the election lease was not renewed for {} s",
                ttl.as_secs()
            ));
        }
    };
    coordinator.begin_shutdown();
    gate.set(Role::Follower(None));
    if outcome.is_ok() {
        // Hand leadership over at once instead of waiting for the lease to expire.
        let _ = client.lease_client().revoke(lease_id).await;
    }
    outcome
}

/// Keeps the gate's leader link pointing at the elected leader while this one follows.
async fn follow_leader(gate: Gate, client: Client, election_name: String, own_url: String) {
    loop {
        let mut election_client = client.election_client();
        match election_client.observe(election_name.clone()).await {
            Ok(mut stream) => {
                while let Ok(Some(response)) = stream.message().await {
                    let Some(kv) = response.kv() else { continue };
                    let Ok(url) = kv.value_str() else { continue };
                    if url == own_url || gate.leader_coordinator().is_some() {
                        continue;
                    }
                    match link_to(url, gate.leader_tls.clone()) {
                        Ok(link) => {
                            tracing::info!(leader = %url, "following the leader");
                            gate.set(Role::Follower(Some(Box::new(link))));
                        }
                        Err(err) => {
                            tracing::warn!(leader = %url, error = %err, "invalid leader URL in the election")
                        }
                    }
                }
            }
            Err(err) => tracing::warn!(error = %err, "observing the election failed; retrying"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Returns the TLS settings of the connection to the leader, or `None` without TLS.
fn leader_tls(security: &ServerSecurity) -> anyhow::Result<Option<ClientTlsConfig>> {
    let Some(tls) = &security.tls else {
        return Ok(None);
    };
    let Some(ca) = &tls.client_ca_pem else {
        anyhow::bail!("with TLS and an etcd store, set --tls-client-ca: followers verify the leader's certificate against it and present their own");
    };
    Ok(Some(
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem)),
    ))
}

fn link_to(url: &str, tls: Option<ClientTlsConfig>) -> Result<LeaderLink, tonic::transport::Error> {
    let mut endpoint = tonic::transport::Endpoint::from_shared(url.to_string())?
        .connect_timeout(Duration::from_secs(2));
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls)?;
    }
    let channel = endpoint.connect_lazy();
    Ok(LeaderLink {
        sweeps: SweepServiceClient::new(channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
        workers: WorkerServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
    })
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
