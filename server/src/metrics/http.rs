//! `GET /metrics` over HTTP/1.1, served by axum (already in the tree
//! through tonic), so request parsing, header limits and connection
//! handling are a well-kept server's, not ours.

use std::future::Future;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use pixelfeed_engine::BlockAllocator;
use tokio::net::TcpListener;

use super::Metrics;

/// The OpenMetrics text format's content type.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone)]
struct Scrape {
    metrics: Arc<Metrics>,
    allocator: Arc<dyn BlockAllocator>,
}

async fn scrape(State(scrape): State<Scrape>) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, OPENMETRICS)],
        scrape.metrics.render(scrape.allocator.as_ref()),
    )
}

async fn elsewhere() -> impl IntoResponse {
    (
        axum::http::StatusCode::NOT_FOUND,
        "pixelfeed serves GET /metrics here\n",
    )
}

/// Serves `GET /metrics` on `listener` until `shutdown` completes, for a
/// Prometheus scraper or `curl`; every other path is 404. Pool figures are
/// read from `allocator` at each scrape.
pub async fn serve_metrics(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    allocator: Arc<dyn BlockAllocator>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let app = Router::new()
        .route("/metrics", get(scrape))
        .fallback(elsewhere)
        .with_state(Scrape { metrics, allocator });
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::warn!(error = %e, "the metrics endpoint stopped");
    }
}
