//! The HTTP listener both daemons open for operators' tools (`--metrics-listen`): Prometheus
//! metrics at `/metrics`, liveness at `/healthz`, readiness at `/readyz`, and whatever routes
//! the daemon adds (the coordinator's status page). Plain HTTP: it binds 127.0.0.1 unless the
//! operator says otherwise, and it only reads.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use axum::http::header;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::warn;

/// The content type of the OpenMetrics text exposition that `prometheus-client` writes.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Whether the daemon is ready: `Ok` with a line saying why it is, or `Err` with why not.
pub type Readiness = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<String, String>> + Send>> + Send + Sync>;

/// What the listener serves: the daemon's metrics and its readiness check.
#[derive(Clone)]
pub struct OpsState {
    pub registry: Arc<Registry>,
    pub readiness: Readiness,
}

/// `/metrics`, `/healthz` and `/readyz`; merge the daemon's own routes into it.
pub fn router(state: OpsState) -> Router {
    let metrics_registry = state.registry.clone();
    let readiness = state.readiness.clone();
    Router::new()
        .route("/metrics", get(move || metrics(metrics_registry.clone())))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(move || ready(readiness.clone())))
}

async fn metrics(registry: Arc<Registry>) -> Response {
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &registry) {
        Ok(()) => ([(header::CONTENT_TYPE, OPENMETRICS)], text).into_response(),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode metrics: {error}\n")).into_response(),
    }
}

async fn ready(readiness: Readiness) -> Response {
    match readiness().await {
        Ok(why) => (StatusCode::OK, format!("ready: {why}\n")).into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")).into_response(),
    }
}

/// Binds `address`; the caller reads the real port back (tests pass port 0).
pub async fn bind(address: &str) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(address).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

/// Serves `router` on `listener` until the task is aborted.
pub fn serve(listener: TcpListener, router: Router) -> JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router).await {
            warn!(%error, "metrics listener stopped");
        }
    })
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;

    use super::*;

    async fn get_text(address: SocketAddr, path: &str) -> (u16, String) {
        use tokio::io::AsyncReadExt;
        use tokio::io::AsyncWriteExt;
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        let status = answer.split_whitespace().nth(1).unwrap().parse().unwrap();
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
        (status, body)
    }

    #[tokio::test]
    async fn serves_metrics_liveness_and_readiness() {
        let mut registry = Registry::default();
        let counter = Counter::<u64>::default();
        registry.register("lbfleet_test_events", "Events seen", counter.clone());
        counter.inc_by(3);
        let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = ready.clone();
        let readiness: Readiness = Arc::new(move || {
            let ready = flag.load(std::sync::atomic::Ordering::SeqCst);
            Box::pin(async move {
                if ready {
                    Ok("fine".into())
                } else {
                    Err("no leader".into())
                }
            })
        });
        let (listener, address) = bind("127.0.0.1:0").await.unwrap();
        let server = serve(listener, router(OpsState { registry: Arc::new(registry), readiness }));

        let (status, body) = get_text(address, "/metrics").await;
        assert_eq!(status, 200);
        assert!(body.contains("lbfleet_test_events_total 3"), "{body}");
        assert!(body.trim_end().ends_with("# EOF"), "{body}");
        assert_eq!(get_text(address, "/healthz").await, (200, "ok\n".into()));
        assert_eq!(get_text(address, "/readyz").await, (503, "not ready: no leader\n".into()));
        ready.store(true, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(get_text(address, "/readyz").await, (200, "ready: fine\n".into()));
        assert_eq!(get_text(address, "/nothing").await.0, 404);
        server.abort();
    }
}
