//! A tower layer that records the latency of every gRPC call in a histogram per method.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of `tunefleet_rpc_duration_seconds`: the gRPC service and method, such as
/// `tunefleet.v1.WorkerService` and `AcquireTrial`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    pub service: String,
    pub method: String,
}

type Histograms = Family<RpcLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 0.5 ms to about 33 s: from a cached read to an AcquireTrial long poll (30 s at most).
    Histogram::new(exponential_buckets(0.0005, 2.0, 17))
}

/// A layer that times each call from its request to its response headers. For a streaming
/// response (`WatchSweep`) that is the time to open the stream, not its lifetime. A default
/// layer records into histograms no registry exports.
#[derive(Clone, Debug)]
pub struct RpcMetricsLayer {
    histograms: Histograms,
}

impl Default for RpcMetricsLayer {
    fn default() -> Self {
        Self {
            histograms: Histograms::new_with_constructor(latency_histogram),
        }
    }
}

impl RpcMetricsLayer {
    /// Creates the layer and registers `tunefleet_rpc_duration_seconds` in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let layer = Self::default();
        registry.register(
            "tunefleet_rpc_duration_seconds",
            "Time from a gRPC request to its response headers, in seconds, per method",
            layer.histograms.clone(),
        );
        layer
    }
}

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics {
            inner,
            histograms: self.histograms.clone(),
        }
    }
}

/// The service [`RpcMetricsLayer`] wraps around a gRPC server.
#[derive(Clone)]
pub struct RpcMetrics<S> {
    inner: S,
    histograms: Histograms,
}

impl<S, B> tower::Service<http::Request<B>> for RpcMetrics<S>
where
    S: tower::Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let labels = labels_of(request.uri().path());
        let histograms = self.histograms.clone();
        let started = Instant::now();
        let response = self.inner.call(request);
        Box::pin(async move {
            let result = response.await;
            histograms
                .get_or_create(&labels)
                .observe(started.elapsed().as_secs_f64());
            result
        })
    }
}

/// Splits a gRPC path `/package.Service/Method` into labels. Paths of services this server
/// does not define all map to one label set, so that clients cannot create series at will.
fn labels_of(path: &str) -> RpcLabels {
    let known = ["/tunefleet.v1.", "/grpc.health.v1.", "/grpc.reflection."];
    let split = path.strip_prefix('/').and_then(|rest| rest.split_once('/'));
    match split {
        Some((service, method))
            if known.iter().any(|prefix| path.starts_with(prefix))
                && !method.contains('/')
                && method.len() <= 64 =>
        {
            RpcLabels {
                service: service.to_string(),
                method: method.to_string(),
            }
        }
        _ => RpcLabels {
            service: "unknown".to_string(),
            method: "unknown".to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_split_service_and_method() {
        let labels = labels_of("/tunefleet.v1.WorkerService/AcquireTrial");
        assert_eq!(labels.service, "tunefleet.v1.WorkerService");
        assert_eq!(labels.method, "AcquireTrial");
    }

    #[test]
    fn labels_fold_unknown_paths() {
        for path in ["/evil.Service/Method", "/tunefleet.v1.X/a/b", "", "/"] {
            let labels = labels_of(path);
            assert_eq!(labels.service, "unknown", "{path}");
        }
    }
}
