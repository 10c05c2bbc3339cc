//! HTTP routes: operations (`/health`, `/ready`, `/metrics`) and the backend API (`/api/v1/*`).

mod api;
mod health;
mod presence;
pub mod origin;
pub mod request_head;

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{middleware, Json, Router};
use serde_json::json;

use crate::state::AppState;

pub fn router(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/api/v1/notify", post(api::notify))
        .route("/api/v1/emit", post(api::emit))
        .route("/api/v1/users/{user}/notifications", get(api::user_notifications))
        .route("/api/v1/users/{user}/notifications/read", post(api::mark_user_notifications_read))
        .route("/api/v1/users/{user}/disconnect", post(api::disconnect_user))
        .route("/api/v1/presence/users/{user}", get(presence::user))
        .route("/api/v1/presence/users", post(presence::users))
        .route("/api/v1/presence/rooms/{room}", get(presence::room))
        .layer(middleware::from_fn_with_state(state.clone(), api::require_api_key));
    let plain = &state.settings.websocket;
    let sockets = match plain.enabled {
        true => Router::new().route(&plain.path, get(crate::plain::endpoint)),
        false => Router::new(),
    };
    Router::new()
        .merge(sockets)
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .route("/metrics", get(health::metrics))
        .merge(api)
        .with_state(state)
}

/// An HTTP error with a JSON body `{"error": "<reason>"}`.
pub struct ApiError(pub StatusCode, pub String);

impl ApiError {
    pub fn bad_request(reason: impl Into<String>) -> ApiError {
        ApiError(StatusCode::BAD_REQUEST, reason.into())
    }
}

/// How long a backend is told to wait before retrying a 503.
pub const RETRY_AFTER_SECS: u64 = 2;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.0, Json(json!({ "error": self.1 }))).into_response();
        if self.0 == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, RETRY_AFTER_SECS.into());
        }
        response
    }
}
