//! The admin HTTP endpoint: `/healthz`, `/readyz` and `/metrics`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use postern_queue::Queue;

/// What the probes report on.
#[derive(Debug)]
pub struct Health {
    pub queue: Queue,
    pub draining: AtomicBool,
    pub metrics: Arc<Metrics>,
}

/// Serves the admin endpoint until `shutdown` fires.
pub async fn serve(
    listener: TcpListener,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(health);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

async fn readyz(State(health): State<Arc<Health>>) -> impl IntoResponse {
    if health.draining.load(Ordering::Acquire) {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
    } else if !health.queue.is_ready() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "queue not ready: NATS disconnected or stream not provisioned\n",
        )
    } else if !health.queue.can_take() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "queue not answering: the stream did not answer for 3s (no quorum, or NATS not responding)\n",
        )
    } else {
        (StatusCode::OK, "ready\n")
    }
}

async fn metrics(State(health): State<Arc<Health>>) -> impl IntoResponse {
    health
        .metrics
        .nats(health.queue.is_ready(), health.queue.can_take());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        health.metrics.encode(),
    )
}
