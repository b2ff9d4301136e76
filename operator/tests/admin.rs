//! The operator's HTTP endpoint over real TCP.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use postern_operator::admin::{Metrics, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn get(port: u16, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let metrics = Arc::new(Metrics::default());
    tokio::spawn(serve(listener, metrics.clone()));

    assert!(get(port, "/healthz").await.starts_with("HTTP/1.1 200"));
    assert!(get(port, "/readyz").await.starts_with("HTTP/1.1 503"));
    metrics.set_ready();
    assert!(get(port, "/readyz").await.starts_with("HTTP/1.1 200"));
    metrics.reconciled("relay", "ok");
    metrics.reconciled("relay", "ok");
    metrics.reconciled("domain", "apply");
    metrics.leader.set(1);
    let text = get(port, "/metrics").await;
    assert!(
        text.contains("postern_operator_reconciles_total{resource=\"relay\",result=\"ok\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("postern_operator_reconciles_total{resource=\"domain\",result=\"apply\"} 1"),
        "{text}"
    );
    assert!(text.contains("postern_operator_leader 1"), "{text}");
}
