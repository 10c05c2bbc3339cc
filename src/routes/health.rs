//! Liveness, readiness and Prometheus metrics (SPEC §8).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;

use crate::state::AppState;

pub async fn health(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    Json(json!({
        "status": "ok",
        "node_id": state.node_id,
        "connections": state.delivery.local_connections(),
        "redis": "disabled",
        "uptime_secs": state.started_at.elapsed().as_secs(),
    }))
}

pub async fn ready(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    if state.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": "draining" })))
    } else {
        (StatusCode::OK, Json(json!({ "status": "ready" })))
    }
}

pub async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let body = state.metrics.render(&[
        ("herald_connections", "Sockets connected to this instance", state.delivery.local_connections() as f64),
        ("herald_uptime_seconds", "Seconds since this instance started", state.started_at.elapsed().as_secs_f64()),
    ]);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}
