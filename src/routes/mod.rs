//! HTTP routes: operations (`/health`, `/ready`, `/metrics`, `/api/v1/openapi.json`) and the
//! backend API (`/api/v1/*`).

mod api;
mod health;
pub mod origin;
pub mod request_head;
mod schema;

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{middleware, Extension, Json, Router};
use serde_json::json;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::state::AppState;

pub fn router(state: Arc<AppState>) -> Router {
    let (router, openapi) = described_routes(state.clone()).split_for_parts();
    router.layer(Extension(schema::Document::new(&openapi))).with_state(state)
}

/// Every route, each with its OpenAPI description: the router and the document served at
/// `/api/v1/openapi.json` are both made from this, so they cannot drift apart.
fn described_routes(state: Arc<AppState>) -> OpenApiRouter<Arc<AppState>> {
    let api = OpenApiRouter::new()
        .routes(routes!(api::notify))
        .routes(routes!(api::emit))
        .routes(routes!(api::user_notifications))
        .routes(routes!(api::mark_user_notifications_read))
        .routes(routes!(api::disconnect_user))
        .layer(middleware::from_fn_with_state(state.clone(), api::require_api_key));
    OpenApiRouter::with_openapi(schema::ApiDoc::openapi())
        .routes(routes!(health::health))
        .routes(routes!(health::ready))
        .routes(routes!(health::metrics))
        .routes(routes!(schema::document))
        .merge(api)
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
