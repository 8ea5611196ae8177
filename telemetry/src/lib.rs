//! Prometheus metrics shared by tunefleet's services: the `/metrics` HTTP server, gRPC latency
//! histograms, process metrics and GPU memory read through NVML.

pub mod gpu;
pub mod process;
pub mod rpc;
mod server;

pub use server::{serve_metrics, Readiness, OPENMETRICS_CONTENT_TYPE};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// A Prometheus endpoint for a service to serve beside its own work.
pub struct MetricsEndpoint {
    pub listener: TcpListener,
    /// The registry to export; a service adds the metrics of its state when it starts serving.
    pub registry: Registry,
}

/// Labels of `tunefleet_build_info`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    service: String,
    version: String,
}

/// Creates a registry holding the process metrics, GPU memory through NVML (when NVML loads)
/// and `tunefleet_build_info` for `service` ("coordinator" or "worker").
pub fn new_registry(service: &str) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(process::ProcessCollector));
    registry.register_collector(Box::new(gpu::GpuCollector::new()));
    let build = Info::new(BuildLabels {
        service: service.to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    });
    registry.register("tunefleet_build", "The running tunefleet build", build);
    registry
}
