//! `GET /metrics` for every daemon: Prometheus text from a snapshot function, plain HTTP
//! (axum; anything else is answered 404). Each daemon keeps its own registry.

use std::sync::Arc;

use axum::http::StatusCode;
use tokio::net::TcpListener;

/// The content type every daemon's `/metrics` answers with.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A registry's text exposition.
pub fn text(registry: &prometheus_client::registry::Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

/// Serves `GET /metrics` on `listener` from the text `snapshot` returns, until the task ends.
pub async fn serve(listener: TcpListener, snapshot: Arc<dyn Fn() -> String + Send + Sync>) {
    let router = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let text = snapshot();
                async move { ([(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)], text) }
            }),
        )
        .fallback(|| async { (StatusCode::NOT_FOUND, "try /metrics\n") });
    if let Err(e) = axum::serve(listener, router).await {
        tracing::error!(error = %e, "the metrics server stopped");
    }
}
