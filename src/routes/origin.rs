//! The origin allow-list, enforced (SPEC §1 `server.cors_origins`, issue: protection).
//!
//! CORS response headers only ask browsers to behave; WebSocket upgrades are not covered by
//! CORS at all. So when `server.cors_origins` is a list, a Socket.IO request (polling or
//! upgrade), or a plain WebSocket upgrade on `websocket.path`, whose `Origin` header names another site is refused with 403. Requests without an
//! `Origin` (backends, mobile apps, CLI tools) are not browsers and pass.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiError;
use crate::state::AppState;

pub async fn enforce_origin(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let allowed = &state.settings.server.cors_origins;
    let path = request.uri().path();
    let sockets = path.starts_with("/socket.io") || (state.settings.websocket.enabled && path == state.settings.websocket.path);
    let refused = sockets
        && !allowed.iter().any(|o| o == "*")
        && request.headers().get(header::ORIGIN).is_some_and(|origin| !allowed.iter().any(|a| a.as_bytes() == origin.as_bytes()));
    if refused {
        state.metrics.inc("herald_refusals_total", &[("reason", "origin not allowed")]);
        return ApiError(StatusCode::FORBIDDEN, "origin not allowed".into()).into_response();
    }
    next.run(request).await
}
