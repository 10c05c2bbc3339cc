//! Liveness, readiness and Prometheus metrics (SPEC §8).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;

use super::schema::{Health, Readiness};
use crate::state::AppState;

/// How long `/health` waits for the other instances' socket counts.
const CLUSTER_COUNT_TIMEOUT: Duration = Duration::from_millis(1000);

#[utoipa::path(
    get,
    path = "/health",
    tag = "operations",
    operation_id = "health",
    summary = "Liveness, this instance's sockets and Redis state",
    responses((status = 200, description = "The instance is alive", body = Health))
)]
pub async fn health(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let mut body = json!({
        "status": "ok",
        "node_id": state.node_id,
        "connections": state.connections.total(),
        "transports": { "socketio": state.connections.total().saturating_sub(state.plain.len()), "websocket": state.plain.len() },
        "redis": state.redis_status(),
        "uptime_secs": state.started_at.elapsed().as_secs(),
    });
    if state.redis.is_some() {
        body["ingress"] = json!({
            "state": if state.redis_status() == "up" { "listening" } else { "reconnecting" },
            "last_message_age_secs": state.ingress.last_message_age().map(|a| a.as_secs_f64()),
        });
        match tokio::time::timeout(CLUSTER_COUNT_TIMEOUT, state.delivery.cluster_connections()).await {
            Ok(Ok(n)) => body["cluster_connections"] = json!(n),
            Ok(Err(e)) => {
                body["cluster_connections"] = json!(null);
                body["cluster_connections_error"] = json!(e);
            }
            Err(_) => {
                body["cluster_connections"] = json!(null);
                body["cluster_connections_error"] =
                    json!(format!("no answer from every instance within {} ms", CLUSTER_COUNT_TIMEOUT.as_millis()));
            }
        }
    }
    Json(body)
}

#[utoipa::path(
    get,
    path = "/ready",
    tag = "operations",
    operation_id = "ready",
    summary = "Readiness for traffic",
    responses(
        (status = 200, description = "Ready", body = Readiness, example = json!({"status": "ready"})),
        (status = 503, description = "Draining (shutting down), or a configured Redis was not reached yet", body = Readiness,
            examples(("draining" = (value = json!({"status": "draining"}))), ("waiting" = (value = json!({"status": "waiting for redis"}))))),
    )
)]
pub async fn ready(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    if state.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": "draining" })))
    } else if !state.is_ready() {
        let error = state.redis.as_ref().and_then(|r| r.last_error());
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": "waiting for redis", "error": error })))
    } else {
        (StatusCode::OK, Json(json!({ "status": "ready" })))
    }
}

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    operation_id = "metrics",
    summary = "Prometheus metrics (text format 0.0.4)",
    responses((status = 200, description = "Every metric of this instance", content_type = "text/plain; version=0.0.4; charset=utf-8", body = String))
)]
pub async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let redis_up = match state.redis_status() {
        "up" => 1.0,
        "down" => 0.0,
        _ => -1.0,
    };
    let outages = state.redis.as_ref().map_or(0, |r| r.outages()) as f64;
    let dropped = state.redis.as_ref().map_or(0, |r| r.dropped_messages()) as f64;
    let socketio = state.connections.total().saturating_sub(state.plain.len());
    let body = state.metrics.render(&[
        ("herald_connections", state.connections.total() as f64),
        ("herald_connections_socketio", socketio as f64),
        ("herald_connections_websocket", state.plain.len() as f64),
        ("herald_uptime_seconds", state.started_at.elapsed().as_secs_f64()),
        ("herald_redis_up", redis_up),
        ("herald_redis_outages", outages),
        ("herald_redis_messages_dropped", dropped),
        ("herald_webhook_queue", state.webhooks.as_ref().map_or(0, |w| w.queue_depth()) as f64),
    ]);
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], body)
}
