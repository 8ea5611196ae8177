//! The coordinator's operational interfaces: the gRPC health service, server reflection and
//! the Prometheus metrics.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;
use tunefleet_proto::v1::{self, SweepStatus};
use tunefleet_telemetry::rpc::RpcMetricsLayer;
pub use tunefleet_telemetry::MetricsEndpoint;
use tunefleet_telemetry::Readiness;

use crate::service::Coordinator;

/// The gRPC services whose health the coordinator reports, besides the server as a whole ("").
pub const SERVICE_NAMES: [&str; 2] = ["tunefleet.v1.SweepService", "tunefleet.v1.WorkerService"];

/// How often the health service looks at the coordinator's state.
const HEALTH_POLL: Duration = Duration::from_millis(250);

/// Counters a coordinator increments as attempts start and end. Clones share the counts, so a
/// coordinator elected again keeps counting where the last one stopped.
#[derive(Debug, Clone, Default)]
pub struct CoordinatorMetrics {
    pub(crate) attempts_started: Counter,
    pub(crate) attempts_ended: Family<OutcomeLabels, Counter>,
    pub(crate) lease_expiries: Counter,
    pub(crate) rpc: RpcMetricsLayer,
}

/// Labels of `tunefleet_attempts_ended_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OutcomeLabels {
    /// "succeeded", "failed" or "cancelled" as the worker reported it, or "lost" for an
    /// expired lease.
    pub outcome: &'static str,
}

impl CoordinatorMetrics {
    /// Creates the counters and registers them, with the RPC latency histograms, in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            rpc: RpcMetricsLayer::new(registry),
            ..Self::default()
        };
        registry.register(
            "tunefleet_attempts_started",
            "Attempts handed to workers",
            metrics.attempts_started.clone(),
        );
        registry.register(
            "tunefleet_attempts_ended",
            "Attempts that ended, by outcome",
            metrics.attempts_ended.clone(),
        );
        registry.register(
            "tunefleet_lease_expiries",
            "Leases that expired without a heartbeat, each losing an attempt",
            metrics.lease_expiries.clone(),
        );
        metrics
    }

    pub(crate) fn count_ended(&self, outcome: i32) {
        let outcome = match v1::Outcome::try_from(outcome) {
            Ok(v1::Outcome::Succeeded) => "succeeded",
            Ok(v1::Outcome::Failed) => "failed",
            Ok(v1::Outcome::Cancelled) => "cancelled",
            _ => return,
        };
        self.attempts_ended
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    pub(crate) fn count_expired(&self, num_expired: usize) {
        let num_expired = num_expired as u64;
        self.lease_expiries.inc_by(num_expired);
        self.attempts_ended
            .get_or_create(&OutcomeLabels { outcome: "lost" })
            .inc_by(num_expired);
    }
}

/// Returns the coordinator whose state is current here: the only one, or the leader's when
/// several share etcd (`None` on a follower).
pub(crate) type StateSource = Arc<dyn Fn() -> Option<Coordinator> + Send + Sync>;

/// Encodes the state gauges on each scrape: trials by state per sweep, queued trials, workers,
/// slots, leadership and degraded mode.
pub(crate) struct StateCollector {
    source: StateSource,
}

impl std::fmt::Debug for StateCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateCollector").finish_non_exhaustive()
    }
}

impl StateCollector {
    pub(crate) fn new(source: StateSource) -> Self {
        Self { source }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TrialLabels {
    sweep_id: String,
    sweep: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SweepLabels {
    state: &'static str,
}

/// Counts read from a coordinator's state under its lock.
#[derive(Debug, Default, Clone)]
pub struct StateCounts {
    pub sweeps: Vec<v1::Sweep>,
    pub num_workers_active: u64,
    pub num_workers_lost: u64,
    pub num_slots: u64,
    pub num_leases: u64,
    pub degraded: bool,
}

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let coordinator = (self.source)();
        let leader = ConstGauge::new(i64::from(coordinator.is_some()));
        leader.encode(encoder.encode_descriptor(
            "tunefleet_coordinator_leader",
            "1 when this coordinator serves the state (the leader, or the only coordinator), 0 on a follower",
            None,
            leader.metric_type(),
        )?)?;
        let Some(coordinator) = coordinator else {
            return Ok(());
        };
        let counts = coordinator.state_counts();
        let degraded = ConstGauge::new(i64::from(counts.degraded));
        degraded.encode(encoder.encode_descriptor(
            "tunefleet_coordinator_degraded",
            "1 while a failed store write keeps the coordinator from serving",
            None,
            degraded.metric_type(),
        )?)?;

        let trials = Family::<TrialLabels, Gauge>::default();
        let sweeps = Family::<SweepLabels, Gauge>::default();
        let mut num_queued = 0u64;
        for sweep in &counts.sweeps {
            let status = SweepStatus::try_from(sweep.status).unwrap_or(SweepStatus::Unspecified);
            sweeps
                .get_or_create(&SweepLabels {
                    state: crate::state::sweep_status_name(status),
                })
                .inc();
            let tally = sweep.counts.unwrap_or_default();
            let by_state = [
                ("pending", tally.pending),
                ("running", tally.running),
                ("succeeded", tally.succeeded),
                ("failed", tally.failed),
                ("cancelled", tally.cancelled),
            ];
            for (state, count) in by_state {
                let labels = TrialLabels {
                    sweep_id: sweep.sweep_id.clone(),
                    sweep: escape_label_value(&sweep.name),
                    state,
                };
                trials.get_or_create(&labels).set(i64::from(count));
            }
            if status == SweepStatus::Running {
                let not_created = sweep
                    .num_trials_planned
                    .saturating_sub(sweep.num_trials_created);
                num_queued += u64::from(tally.pending) + u64::from(not_created);
            }
        }
        trials.encode(encoder.encode_descriptor(
            "tunefleet_trials",
            "Trials created so far, by sweep and state",
            None,
            trials.metric_type(),
        )?)?;
        sweeps.encode(encoder.encode_descriptor(
            "tunefleet_sweeps",
            "Sweeps by state",
            None,
            sweeps.metric_type(),
        )?)?;
        let gauges = [
            (
                "tunefleet_queued_trials",
                "Trials of running sweeps waiting for a slot: pending ones plus those the search has yet to create",
                num_queued,
            ),
            (
                "tunefleet_active_leases",
                "Attempts running under a lease",
                counts.num_leases,
            ),
            (
                "tunefleet_workers_active",
                "Registered workers that sent a heartbeat within the lease time to live",
                counts.num_workers_active,
            ),
            (
                "tunefleet_workers_lost",
                "Registered workers silent for longer than the lease time to live",
                counts.num_workers_lost,
            ),
            (
                "tunefleet_slots",
                "Slots offered by active workers",
                counts.num_slots,
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(value as i64);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}

/// Escapes a label value for the text format, because prometheus-client 0.24 writes label
/// values as they are and a sweep name may contain `"` or `\`. Names contain no control
/// characters (the spec parser rejects them), so newlines need no escape.
fn escape_label_value(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Builds the v1 and v1alpha reflection services for tunefleet's services and the health
/// service.
pub(crate) fn reflection_services() -> (
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    tonic_reflection::server::v1alpha::ServerReflectionServer<
        impl tonic_reflection::server::v1alpha::ServerReflection,
    >,
) {
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tunefleet_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    // The descriptor sets are compiled in, so an error here is a defect of the build.
    let v1 = builder()
        .build_v1()
        .expect("the compiled-in descriptor sets are valid");
    let v1alpha = builder()
        .build_v1alpha()
        .expect("the compiled-in descriptor sets are valid");
    (v1, v1alpha)
}

/// Keeps the health service in step with `status` until the task is aborted. The server as a
/// whole ("") is SERVING while the process serves; the tunefleet services follow `status`.
pub(crate) async fn track_health(
    reporter: HealthReporter,
    readiness: Readiness,
    status: impl Fn() -> ServingStatus + Send + 'static,
) {
    let mut last = None;
    let mut ticker = tokio::time::interval(HEALTH_POLL);
    loop {
        ticker.tick().await;
        let current = status();
        if last == Some(current) {
            continue;
        }
        readiness.set(current == ServingStatus::Serving);
        for name in SERVICE_NAMES {
            reporter.set_service_status(name, current).await;
        }
        if last.is_some() {
            tracing::info!(status = ?current, "health status changed");
        }
        last = Some(current);
    }
}

/// Marks every service NOT_SERVING, so that health checks fail while the server drains.
pub(crate) async fn report_stopping(reporter: &HealthReporter) {
    reporter
        .set_service_status("", ServingStatus::NotServing)
        .await;
    for name in SERVICE_NAMES {
        reporter
            .set_service_status(name, ServingStatus::NotServing)
            .await;
    }
}

/// The health source, state source and metrics endpoint of one coordinator's gRPC server.
pub(crate) struct ServePlan {
    pub rpc: RpcMetricsLayer,
    /// The status of the tunefleet services, polled by the health service.
    pub health: Box<dyn Fn() -> ServingStatus + Send>,
    pub state: StateSource,
    pub metrics: Option<MetricsEndpoint>,
}

/// Serves `routes` through `server` with the health and reflection services on `listener`, and
/// the metrics endpoint when `plan` has one, until `shutdown` completes.
pub(crate) async fn serve_routes(
    server: tonic::transport::Server,
    routes: tonic::service::Routes,
    plan: ServePlan,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let (reflection_v1, reflection_v1alpha) = reflection_services();
    let routes = routes
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    // Set the first status before the listener accepts, or an early probe gets NOT_FOUND.
    let health = plan.health;
    let first = health();
    for name in SERVICE_NAMES {
        reporter.set_service_status(name, first).await;
    }
    let readiness = Readiness::new(first == ServingStatus::Serving);
    let health_task = tokio::spawn(track_health(reporter.clone(), readiness.clone(), health));

    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let probe_readiness = readiness.clone();
    let metrics_task = plan.metrics.map(|endpoint| {
        let mut registry = endpoint.registry;
        registry.register_collector(Box::new(StateCollector::new(plan.state)));
        let stopped = async move {
            let _ = stop_rx.wait_for(|stop| *stop).await;
        };
        tokio::spawn(async move {
            let served = tunefleet_telemetry::serve_metrics(
                endpoint.listener,
                Arc::new(registry),
                probe_readiness,
                stopped,
            )
            .await;
            if let Err(err) = served {
                tracing::error!(error = %err, "the metrics server failed");
            }
        })
    });
    let shutdown = async move {
        shutdown.await;
        health_task.abort();
        readiness.set(false);
        report_stopping(&reporter).await;
        let _ = stop_tx.send(true);
    };
    let result = server
        .layer(plan.rpc)
        .add_routes(routes)
        .serve_with_incoming_shutdown(crate::service::incoming(listener), shutdown)
        .await;
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_value_escapes_quotes_and_backslashes() {
        assert_eq!(escape_label_value(r#"a "b" \ c"#), r#"a \"b\" \\ c"#);
    }
}
