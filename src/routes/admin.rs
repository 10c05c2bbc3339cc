//! The dashboard: a page served by Herald itself at `admin.path` (default `/admin`), with its
//! HTML, CSS and JS compiled into the binary (no front-end build step), and the data it shows.
//!
//! - `GET <path>` (+ `admin.js`, `admin.css`): the page. It holds no data: it asks for the
//!   admin credential and keeps it in the tab's `sessionStorage`.
//! - `GET <path>/api/overview` → every live instance's [`Snapshot`](crate::stats::Snapshot)
//!   and the users online; the page polls it each second and draws rates from the counters.
//! - `POST <path>/api/notify` `{"user","message","type"?}`: a test notification, through the same
//!   handler as `POST /api/v1/notify`; `POST <path>/api/disconnect` `{"user"}`: every socket of
//!   the user, through the same handler as `POST /api/v1/users/<id>/disconnect`.
//!
//! The API needs `Authorization: Bearer <credential>`: a key of `admin.keys`, or a JWT (checked
//! like a socket's) whose `role` is in `admin.roles`. Refusals are 401 and counted in
//! `herald_api_refusals_total{reason="admin_unauthorized"}`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::schema::ErrorBody;
use super::{api, ApiError};
use crate::state::AppState;

const PAGE: &str = include_str!("admin/index.html");
const SCRIPT: &str = include_str!("admin/admin.js");
const STYLE: &str = include_str!("admin/admin.css");

pub fn router(state: Arc<AppState>) -> Router<Arc<AppState>> {
    let path = state.settings.admin.path.clone();
    let data = Router::new()
        .route(&format!("{path}/api/overview"), get(overview))
        .route(&format!("{path}/api/notify"), post(notify))
        .route(&format!("{path}/api/disconnect"), post(disconnect))
        .route_layer(middleware::from_fn_with_state(state, require_admin));
    let page = PAGE.replace("{{base}}", &path);
    let page = move || {
        let page = page.clone();
        async move { ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], page).into_response() }
    };
    Router::new()
        .route(&path, get(page.clone()))
        .route(&format!("{path}/"), get(page))
        .route(&format!("{path}/admin.js"), get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }))
        .route(&format!("{path}/admin.css"), get(|| async { asset("text/css; charset=utf-8", STYLE) }))
        .merge(data)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

/// A key of `admin.keys`, or a token whose role is in `admin.roles`.
fn is_admin(state: &AppState, credential: &str) -> bool {
    let admin = &state.settings.admin;
    if admin.keys.iter().any(|k| !k.is_empty() && k.len() == credential.len() && k.bytes().zip(credential.bytes()).fold(0u8, |a, (x, y)| a | (x ^ y)) == 0) {
        return true;
    }
    !admin.roles.is_empty()
        && state.verifier.verify(credential).is_ok_and(|identity| identity.role.is_some_and(|role| admin.roles.contains(&role)))
}

async fn require_admin(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let response = check_admin(&state, request, next).await;
    if response.status() == StatusCode::BAD_REQUEST {
        // Bad input is counted and logged, as on the HTTP API.
        state.metrics.inc("herald_api_refusals_total", &[("reason", "bad_request")]);
        tracing::debug!("dashboard request refused: bad request");
    }
    response
}

async fn check_admin(state: &Arc<AppState>, request: Request, next: Next) -> Response {
    let credential =
        request.headers().get(header::AUTHORIZATION).and_then(|h| h.to_str().ok()).and_then(|h| h.strip_prefix("Bearer ")).map(str::trim);
    if credential.is_some_and(|c| is_admin(state, c)) {
        return next.run(request).await;
    }
    state.metrics.inc("herald_api_refusals_total", &[("reason", "admin_unauthorized")]);
    let reason = if state.settings.admin.keys.is_empty() && state.settings.admin.roles.is_empty() {
        "dashboard disabled: no admin.keys or admin.roles configured"
    } else {
        "admin credential required (a key of admin.keys, or a token whose role is in admin.roles)"
    };
    ApiError(StatusCode::UNAUTHORIZED, reason.into()).into_response()
}

/// Where the dashboard's routes are documented (at the default `admin.path`; [`document`]
/// moves them to the configured one).
#[derive(utoipa::OpenApi)]
#[openapi(paths(overview, notify, disconnect))]
pub struct AdminDoc;

/// The dashboard's routes under the configured `admin.path`, with the admin security scheme.
pub fn document(path: &str) -> utoipa::openapi::OpenApi {
    use utoipa::OpenApi;
    let mut doc = AdminDoc::openapi();
    let paths = std::mem::take(&mut doc.paths.paths);
    for (template, item) in paths {
        let moved = template.replacen("/admin", path, 1);
        doc.paths.paths.insert(moved, item);
    }
    doc
}

#[utoipa::path(
    get,
    path = "/admin/api/overview",
    tag = "dashboard",
    operation_id = "admin_overview",
    summary = "What the dashboard shows: every live instance's snapshot (connections by transport, counters, queues, busiest rooms, last problems) and the users online",
    responses(
        (status = 200, description = "`{\"mode\", \"online_users\", \"instances\": [...]}`", body = Object),
        (status = 401, description = "No admin credential (a key of `admin.keys`, or a token whose role is in `admin.roles`)", body = ErrorBody),
    ),
    security(("admin" = [])),
)]
async fn overview(State(state): State<Arc<AppState>>) -> Json<Value> {
    let instances = crate::stats::cluster(&state, state.bookkeeping.as_ref()).await;
    let online = state.presence.backend().online_count().await.ok();
    let mode = if state.redis.is_some() { "cluster" } else { "embedded" };
    Json(json!({ "mode": mode, "online_users": online, "instances": instances }))
}

fn field(body: &Bytes, name: &str) -> Result<(Value, String), ApiError> {
    let body: Value = serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("body is not valid JSON: {e}")))?;
    let value = match body.get(name) {
        Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_string(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return Err(ApiError::bad_request(format!("{name} is required"))),
    };
    Ok((body, value))
}

#[utoipa::path(
    post,
    path = "/admin/api/notify",
    tag = "dashboard",
    operation_id = "admin_notify",
    summary = "Send a test notification to a user (through the same code as POST /api/v1/notify)",
    request_body(content = Object, content_type = "application/json", description = "`{\"user\", \"message\"?, \"type\"?}`"),
    responses(
        (status = 202, description = "Stored and delivered, or queued in the outbox", body = Object),
        (status = 400, description = "No `user`", body = ErrorBody),
        (status = 401, description = "No admin credential (a key of `admin.keys`, or a token whose role is in `admin.roles`)", body = ErrorBody),
        (status = 503, description = "Nothing was done: retry", body = ErrorBody),
    ),
    security(("admin" = [])),
)]
async fn notify(State(state): State<Arc<AppState>>, body: Bytes) -> Result<Response, ApiError> {
    let (body, user) = field(&body, "user")?;
    let message = body.get("message").and_then(Value::as_str).filter(|m| !m.trim().is_empty()).unwrap_or("Test notification from the dashboard");
    let kind = body.get("type").and_then(Value::as_str).filter(|t| !t.trim().is_empty()).unwrap_or("test");
    let request = json!({ "to": { "user": user }, "type": kind, "message": message });
    Ok(api::notify(State(state), HeaderMap::new(), Bytes::from(request.to_string())).await?.into_response())
}

#[utoipa::path(
    post,
    path = "/admin/api/disconnect",
    tag = "dashboard",
    operation_id = "admin_disconnect",
    summary = "Disconnect every socket of a user, on every instance",
    request_body(content = Object, content_type = "application/json", description = "`{\"user\"}`"),
    responses(
        (status = 202, description = "Done, or queued in the outbox", body = Object),
        (status = 400, description = "No `user`", body = ErrorBody),
        (status = 401, description = "No admin credential (a key of `admin.keys`, or a token whose role is in `admin.roles`)", body = ErrorBody),
        (status = 503, description = "Nothing was done: retry", body = ErrorBody),
    ),
    security(("admin" = [])),
)]
async fn disconnect(State(state): State<Arc<AppState>>, body: Bytes) -> Result<Response, ApiError> {
    let (_, user) = field(&body, "user")?;
    Ok(api::disconnect_user(State(state), Path(user)).await?.into_response())
}
