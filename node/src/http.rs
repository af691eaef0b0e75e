//! The HTTP port's router: probes, metrics and the ops page.
//!
//! Built here, apart from the server, so that the fuzz targets
//! (`fuzz/src/lib.rs`) drive the same routes a client of the HTTP port
//! reaches.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::admin_api::AdminApi;
use crate::ops_page;
use crate::readiness::Readiness;

#[derive(Clone)]
struct HttpState {
    readiness: Readiness,
    metrics: Option<PrometheusHandle>,
}

/// `/healthz`, `/readyz`, `/metrics` and the ops page's routes.
pub fn router(
    readiness: Readiness,
    metrics: Option<PrometheusHandle>,
    admin: Arc<AdminApi>,
) -> axum::Router {
    axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .merge(ops_page::routes(admin))
        .with_state(HttpState { readiness, metrics })
}

async fn readyz(State(state): State<HttpState>) -> (StatusCode, String) {
    match state.readiness.check() {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
    }
}

async fn render_metrics(State(state): State<HttpState>) -> (StatusCode, String) {
    match &state.metrics {
        Some(handle) => (StatusCode::OK, handle.render()),
        None => (StatusCode::NOT_FOUND, "metrics are not enabled\n".into()),
    }
}
