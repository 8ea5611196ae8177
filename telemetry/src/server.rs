//! The HTTP server that serves Prometheus scrapes on `/metrics` and plain HTTP probes on
//! `/healthz` and `/readyz`.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// The content type of the OpenMetrics text format that `/metrics` returns.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Whether a process is ready for traffic, as `GET /readyz` reports it. Clones share one flag.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Creates a flag with the given first value.
    pub fn new(ready: bool) -> Self {
        Self(Arc::new(AtomicBool::new(ready)))
    }

    /// Sets the flag.
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }

    /// Reads the flag.
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Clone)]
struct Endpoints {
    registry: Arc<Registry>,
    readiness: Readiness,
}

/// Serves `registry` as OpenMetrics text on `GET /metrics` until `shutdown` completes, with
/// `GET /healthz` (200 while the process serves) and `GET /readyz` (200 while `readiness` is
/// set, else 503) for probes that cannot speak gRPC over TLS, such as Kubernetes' HTTP probes.
pub async fn serve_metrics(
    listener: TcpListener,
    registry: Arc<Registry>,
    readiness: Readiness,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let address = listener.local_addr()?;
    tracing::info!(%address, "serving Prometheus metrics on /metrics and probes on /healthz, /readyz");
    let router = Router::new()
        .route("/metrics", get(scrape))
        .route("/healthz", get(|| async { (StatusCode::OK, "ok\n") }))
        .route("/readyz", get(ready))
        .with_state(Endpoints {
            registry,
            readiness,
        });
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn ready(State(endpoints): State<Endpoints>) -> impl IntoResponse {
    if endpoints.readiness.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn scrape(State(endpoints): State<Endpoints>) -> impl IntoResponse {
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &endpoints.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)],
            text,
        ),
        Err(err) => {
            tracing::error!(error = %err, "failed to encode metrics");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                format!("failed to encode metrics: {err}\n"),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    /// Sends `GET path` and returns the status line and the body.
    fn get(address: std::net::SocketAddr, path: &str) -> (String, String) {
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        (head.lines().next().unwrap().to_string(), body.to_string())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn readyz_follows_readiness() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let readiness = Readiness::new(false);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_metrics(
            listener,
            Arc::new(Registry::default()),
            readiness.clone(),
            async move {
                let _ = stop_rx.await;
            },
        ));

        let not_ready = tokio::task::spawn_blocking(move || get(address, "/readyz"))
            .await
            .unwrap();
        assert_eq!(not_ready.0, "HTTP/1.1 503 Service Unavailable");
        assert_eq!(not_ready.1, "not ready\n");
        readiness.set(true);
        let ready = tokio::task::spawn_blocking(move || get(address, "/readyz"))
            .await
            .unwrap();
        assert_eq!(ready.0, "HTTP/1.1 200 OK");
        assert_eq!(ready.1, "ready\n");
        let alive = tokio::task::spawn_blocking(move || get(address, "/healthz"))
            .await
            .unwrap();
        assert_eq!(alive.0, "HTTP/1.1 200 OK");

        stop_tx.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}
