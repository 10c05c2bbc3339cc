//! HTTP routes: operations (`/health`, `/ready`, `/metrics`, `/api/v1/openapi.json`), the
//! backend API (`/api/v1/*`) and the dashboard (`admin.path`).
//!
//! Only the API needs a key. The key check runs for every request under `/api/v1` (a known
//! route, an unknown one, a wrong method), before routing decides anything, so a caller
//! without a key learns nothing about which API paths exist: 401. With a key, an unknown API
//! path is a 404. `/api/v1/openapi.json` (a description, it grants nothing) needs no key.
//! Anything else unknown is a 404 without a key; every error body is `{"error": "<reason>"}`.
//! (Socket.IO requests never reach this router: the Socket.IO layer in front of it takes
//! `/socket.io/`.)
//!
//! Every API and operations route is declared once in an `OpenApiRouter` with its
//! `#[utoipa::path]`: the router and the OpenAPI document both come from it, so they cannot
//! drift apart.

mod admin;
mod api;
mod health;
mod presence;
pub mod origin;
pub mod request_head;
mod schema;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{middleware, Extension, Json, Router};
use serde_json::json;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::state::AppState;

pub fn router(state: Arc<AppState>) -> Router {
    let (router, mut openapi) = described_routes().split_for_parts();
    openapi.merge(admin::document(&state.settings.admin.path));
    let plain = &state.settings.websocket;
    let sockets = match plain.enabled {
        true => Router::new().route(&plain.path, axum::routing::get(crate::plain::endpoint)),
        false => Router::new(),
    };
    router
        .layer(Extension(schema::Document::new(&openapi)))
        .merge(sockets)
        .merge(admin::router(state.clone()))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), api_key_for_api_paths))
        .with_state(state)
}

/// Every API and operations route, each with its OpenAPI description: the router and the
/// document served at `/api/v1/openapi.json` are both made from this.
fn described_routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::with_openapi(schema::ApiDoc::openapi())
        .routes(routes!(health::health))
        .routes(routes!(health::ready))
        .routes(routes!(health::metrics))
        .routes(routes!(schema::document))
        .routes(routes!(api::notify))
        .routes(routes!(api::emit))
        .routes(routes!(api::user_notifications))
        .routes(routes!(api::mark_user_notifications_read))
        .routes(routes!(api::disconnect_user))
        .routes(routes!(presence::user))
        .routes(routes!(presence::users))
        .routes(routes!(presence::room))
}

/// True for `/api/v1` and every path below it: the paths that need an API key.
pub fn is_api_path(path: &str) -> bool {
    path.strip_prefix("/api/v1").is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The API key check, for API paths only.
async fn api_key_for_api_paths(state: State<Arc<AppState>>, request: Request, next: Next) -> Response {
    if is_api_path(request.uri().path()) && request.uri().path() != "/api/v1/openapi.json" {
        api::require_api_key(state, request, next).await
    } else {
        next.run(request).await
    }
}

async fn not_found() -> ApiError {
    ApiError(StatusCode::NOT_FOUND, "not found".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError(StatusCode::METHOD_NOT_ALLOWED, "method not allowed".into())
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

#[cfg(test)]
mod tests {
    use super::is_api_path;

    #[test]
    fn api_paths_are_the_api_v1_prefix_only() {
        for path in ["/api/v1", "/api/v1/", "/api/v1/notify", "/api/v1/nope/deeper"] {
            assert!(is_api_path(path), "{path}");
        }
        for path in ["/", "/api", "/api/", "/api/v10/notify", "/api/v1notify", "/health", "/socket.io/", "/x/api/v1/notify"] {
            assert!(!is_api_path(path), "{path}");
        }
    }
}
