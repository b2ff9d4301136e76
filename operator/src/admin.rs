//! The operator's HTTP endpoint: `/healthz`, `/readyz` and Prometheus `/metrics`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels of a reconcile: resource (`relay`, `domain`) and result (`ok` or the failed stage).
pub type ReconcileLabels = Vec<(&'static str, &'static str)>;

/// What the operator exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// 1 while this replica holds the lease.
    pub leader: Gauge,
    pub reconciles: Family<ReconcileLabels, Counter>,
    ready: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("postern_operator");
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader lease",
            leader.clone(),
        );
        let reconciles = Family::<ReconcileLabels, Counter>::default();
        registry.register(
            "reconciles",
            "Reconciles by resource and result",
            reconciles.clone(),
        );
        Metrics {
            registry,
            leader,
            reconciles,
            ready: AtomicBool::new(false),
        }
    }
}

impl Metrics {
    /// Counts one reconcile.
    pub fn reconciled(&self, resource: &'static str, result: &'static str) {
        self.reconciles
            .get_or_create(&vec![("resource", resource), ("result", result)])
            .inc();
    }

    /// Ready once the API server answered (leader or follower).
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }
}

/// Serves the endpoint on `listener` until the process ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(metrics);
    axum::serve(listener, app).await
}

async fn readyz(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    if metrics.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the API server",
        )
    }
}

async fn metrics_text(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    let mut text = String::new();
    if encode(&mut text, &metrics.registry).is_err() {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            String::new(),
        );
    }
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
}
