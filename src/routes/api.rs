//! The backend HTTP API (SPEC §6, §7): `POST /api/v1/notify`, `POST /api/v1/emit`, and a
//! user's stored notifications (`GET /api/v1/users/<id>/notifications`, `POST .../read`).
//!
//! Bodies are parsed by hand from JSON so that every mistake gets a 400 naming the field at
//! fault, instead of a framework's generic rejection.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value as Json_};

use super::schema::{
    Accepted as AcceptedBody, EmitRequest, ErrorBody, History, HistoryParams, IdempotencyKey, NotifyAccepted, NotifyRequest,
    ReadRequest as ReadBody, Unread,
};
use super::ApiError;
use crate::delivery::{Command, Target};
use crate::notification::{iso_now, Notification, EVENT};
use crate::outbox::{accept, Accepted, Refused, Submission};
use crate::payload::{Args, Value};
use crate::replay::{HistoryQuery, Inbox, ReadRequest};
use crate::auth::valid_device;
use crate::rooms::{device_room, project_room, role_room, user_room};
use crate::state::AppState;

/// Refuses requests without `Authorization: Bearer <key>` for a key in `api.keys`.
pub async fn require_api_key(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let presented =
        request.headers().get(header::AUTHORIZATION).and_then(|h| h.to_str().ok()).and_then(|h| h.strip_prefix("Bearer ")).map(str::trim);
    let keys = &state.settings.api.keys;
    let allowed = match presented {
        Some(key) => keys.iter().any(|k| !k.is_empty() && constant_time_eq(k.as_bytes(), key.as_bytes())),
        None => false,
    };
    if !allowed {
        state.metrics.inc("herald_api_refusals_total", &[("reason", "unauthorized")]);
        let reason = if keys.is_empty() { "API disabled: no api.keys configured" } else { "missing or invalid API key" };
        return ApiError(StatusCode::UNAUTHORIZED, reason.into()).into_response();
    }
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    if response.status() == StatusCode::BAD_REQUEST {
        // Bad input is counted and logged, like a malformed packet or Redis message.
        state.metrics.inc("herald_api_refusals_total", &[("reason", "bad_request")]);
        tracing::debug!(%path, "API request refused: bad request");
    }
    response
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn parse_object(body: &Bytes) -> Result<Map<String, Json_>, ApiError> {
    match serde_json::from_slice::<Json_>(body) {
        Ok(Json_::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::bad_request("body must be a JSON object")),
        Err(e) => Err(ApiError::bad_request(format!("body is not valid JSON: {e}"))),
    }
}

fn namespace(state: &AppState, body: &Map<String, Json_>) -> Result<String, ApiError> {
    let ns = match body.get("namespace") {
        None | Some(Json_::Null) => "/".to_string(),
        Some(Json_::String(ns)) => ns.clone(),
        Some(_) => return Err(ApiError::bad_request("namespace must be a string")),
    };
    if !state.settings.socketio.namespaces.contains(&ns) {
        return Err(ApiError::bad_request(format!("namespace {ns:?} is not served")));
    }
    Ok(ns)
}

/// A user id, role or project: a non-empty string or a number.
fn id_text(value: &Json_, field: &str) -> Result<String, ApiError> {
    match value {
        Json_::String(s) if !s.is_empty() => Ok(s.clone()),
        Json_::Number(n) => Ok(n.to_string()),
        _ => Err(ApiError::bad_request(format!("to.{field} must be a non-empty string or a number"))),
    }
}

fn string_list(value: Option<&Json_>, field: &str) -> Result<Vec<String>, ApiError> {
    match value {
        None | Some(Json_::Null) => Ok(vec![]),
        Some(Json_::Array(items)) => items
            .iter()
            .map(|i| match i {
                Json_::String(s) if !s.is_empty() => Ok(s.clone()),
                _ => Err(ApiError::bad_request(format!("{field} must be a list of non-empty strings"))),
            })
            .collect(),
        Some(_) => Err(ApiError::bad_request(format!("{field} must be a list of strings"))),
    }
}

/// Where a notification goes: one channel (room) per entry, or everyone.
enum Recipients {
    Rooms(Vec<String>),
    Broadcast,
}

fn recipients(to: Option<&Json_>) -> Result<Recipients, ApiError> {
    const EXPECTED: &str = "to must be an object with one of user (optionally with device), users, role, project, room, broadcast";
    let to = to.and_then(Json_::as_object).ok_or_else(|| ApiError::bad_request(EXPECTED))?;
    if let (Some(user), Some(device), 2) = (to.get("user"), to.get("device"), to.len()) {
        // One user's sockets on one device: `{"user": 42, "device": "mobile"}`.
        let device = device.as_str().filter(|d| valid_device(d)).ok_or_else(|| {
            ApiError::bad_request("to.device must be a device name: 1 to 32 letters, digits, '-', '_' or '.'")
        })?;
        return Ok(Recipients::Rooms(vec![device_room(&id_text(user, "user")?, device)]));
    }
    if to.len() != 1 {
        return Err(ApiError::bad_request(EXPECTED));
    }
    let (key, value) = to.iter().next().expect("one entry");
    Ok(match key.as_str() {
        "user" => Recipients::Rooms(vec![user_room(&id_text(value, "user")?)]),
        "users" => {
            let ids = value
                .as_array()
                .filter(|ids| !ids.is_empty())
                .ok_or_else(|| ApiError::bad_request("to.users must be a non-empty list of user ids"))?;
            let mut rooms: Vec<String> = ids.iter().map(|id| id_text(id, "users").map(|id| user_room(&id))).collect::<Result<_, _>>()?;
            // 77 and "77" are one user: notify each once.
            let mut seen = std::collections::HashSet::new();
            rooms.retain(|room| seen.insert(room.clone()));
            Recipients::Rooms(rooms)
        }
        "role" => Recipients::Rooms(vec![role_room(&id_text(value, "role")?)]),
        "project" => Recipients::Rooms(vec![project_room(&id_text(value, "project")?)]),
        "room" => Recipients::Rooms(vec![id_text(value, "room")?]),
        "broadcast" if value == &Json_::Bool(true) => Recipients::Broadcast,
        "broadcast" => return Err(ApiError::bad_request("to.broadcast must be true")),
        _ => return Err(ApiError::bad_request(EXPECTED)),
    })
}

fn notification(body: &Map<String, Json_>) -> Result<Notification, ApiError> {
    let text = |field: &str| match body.get(field) {
        Some(Json_::String(s)) if !s.is_empty() => Ok(s.clone()),
        _ => Err(ApiError::bad_request(format!("{field} must be a non-empty string"))),
    };
    let priority = match body.get("priority") {
        None | Some(Json_::Null) => 2,
        Some(p) => {
            p.as_u64().filter(|p| (1..=4).contains(p)).ok_or_else(|| ApiError::bad_request("priority must be an integer from 1 to 4"))?
                as u8
        }
    };
    Ok(Notification {
        kind: text("type")?,
        message: text("message")?,
        data: body.get("data").cloned().map(Value::from).unwrap_or(Value::Object(vec![])),
        priority,
    })
}

/// The idempotency key of a call: the `Idempotency-Key` header, else (notify) the body's `id`.
/// Without one, a cluster instance makes one, so that a submission sent again from the outbox
/// (its first attempt may have reached Redis) is not applied twice.
fn idempotency_key(state: &AppState, headers: &HeaderMap, body: &Map<String, Json_>, endpoint: &str) -> Result<Option<String>, ApiError> {
    const MAX_KEY_BYTES: usize = 255;
    let given = match headers.get("idempotency-key") {
        Some(value) => {
            Some(value.to_str().map(str::to_string).map_err(|_| ApiError::bad_request("Idempotency-Key must be visible ASCII"))?)
        }
        None if endpoint == "notify" => match body.get("id") {
            None | Some(Json_::Null) => None,
            Some(Json_::String(s)) => Some(s.clone()),
            Some(Json_::Number(n)) => Some(n.to_string()),
            Some(_) => return Err(ApiError::bad_request("id must be a string or a number")),
        },
        None => None,
    };
    match given {
        Some(key) if key.is_empty() || key.len() > MAX_KEY_BYTES => {
            Err(ApiError::bad_request(format!("an idempotency key has 1 to {MAX_KEY_BYTES} bytes")))
        }
        Some(key) => Ok(Some(format!("{endpoint}:{key}"))),
        None if state.redis.is_some() => Ok(Some(format!("herald:{}", uuid::Uuid::new_v4()))),
        None => Ok(None),
    }
}

/// Applies or queues a submission; 503 with `Retry-After` when neither is possible.
async fn submit(state: &AppState, submission: Submission) -> Result<Accepted, ApiError> {
    let window = state.settings.api.idempotency_window();
    accept(&state.delivery, state.outbox.as_deref(), submission, window).await.map_err(|e| match e {
        Refused::Unavailable(e) => {
            state.metrics.inc("herald_api_refusals_total", &[("reason", "unavailable")]);
            ApiError(StatusCode::SERVICE_UNAVAILABLE, e)
        }
        Refused::Invalid(e) => ApiError::bad_request(e),
    })
}

/// `POST /api/v1/notify`: builds the envelope and delivers it to each recipient room.
#[utoipa::path(
    post,
    path = "/api/v1/notify",
    tag = "api",
    operation_id = "notify",
    summary = "Send a notification (event `notification`) to users, a role, a project, a room or everyone",
    params(IdempotencyKey),
    request_body(content = NotifyRequest, content_type = "application/json"),
    responses(
        (status = 202, description = "Stored (with Redis: stored and published to every instance) and delivered to the connected recipients; or, while Redis is unreachable, queued in this instance's on-disk outbox (`{\"id\": null, \"queued\": true}`), stored and delivered as soon as Redis returns", body = NotifyAccepted,
            examples(("stored" = (value = json!({"id": "1795512542340-0"}))), ("queued" = (value = json!({"id": null, "queued": true}))))),
        (status = 400, description = "A bad body, parameter or idempotency key: the reason names the field at fault", body = ErrorBody),
        (status = 401, description = "No API key, or a key not in `api.keys`", body = ErrorBody),
        (status = 413, description = "A body over 2 MiB", content_type = "text/plain", body = String),
        (status = 503, description = "Nothing was done: the store cannot write, or Redis is unreachable and the outbox is full (or disabled). Retry after `Retry-After` seconds, with the same idempotency key", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    ),
    security(("api_key" = [])),
)]
pub async fn notify(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Result<impl IntoResponse, ApiError> {
    let body = parse_object(&body)?;
    let recipients = recipients(body.get("to"))?;
    let notification = notification(&body)?;
    let namespace = namespace(&state, &body)?;
    let key = idempotency_key(&state, &headers, &body, "notify")?;
    let timestamp = iso_now();
    let deliveries = match recipients {
        Recipients::Broadcast => vec![("broadcast".to_string(), vec![])],
        Recipients::Rooms(rooms) => rooms.into_iter().map(|r| (r.clone(), vec![r])).collect(),
    };
    // One notification, one id: each recipient's copy (with its own `channel`) shares it. The
    // store assigns it; a notification to rooms that are not stored gets one made here.
    let stored = deliveries.iter().any(|(_, rooms)| !state.delivery.persist().streams(EVENT, rooms).is_empty());
    let nid = (!stored).then(|| state.delivery.local_id());
    let parts = deliveries
        .into_iter()
        .map(|(channel, rooms)| {
            let args = Args::one(notification.envelope(&timestamp, &channel));
            Command::Emit { target: Target::rooms(&namespace, rooms), event: EVENT.into(), args }
        })
        .collect();
    Ok(match submit(&state, Submission { key, parts, nid }).await? {
        Accepted::Done(id) => (StatusCode::ACCEPTED, Json(json!({ "id": id.map(|id| id.to_string()) }))),
        Accepted::Queued => (StatusCode::ACCEPTED, Json(json!({ "id": null, "queued": true }))),
    })
}

/// Events a backend may not emit: they are reserved by the Socket.IO protocol.
const RESERVED_EVENTS: [&str; 6] = ["connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"];

/// `POST /api/v1/emit`: any event with any arguments, to rooms minus exceptions.
#[utoipa::path(
    post,
    path = "/api/v1/emit",
    tag = "api",
    operation_id = "emit",
    summary = "Emit any event with any arguments to rooms (or the whole namespace), minus exceptions",
    params(IdempotencyKey),
    request_body(content = EmitRequest, content_type = "application/json"),
    responses(
        (status = 202, description = "Applied on every instance; or queued in the outbox while Redis is unreachable", body = AcceptedBody,
            examples(("applied" = (value = json!({"ok": true}))), ("queued" = (value = json!({"ok": true, "queued": true}))))),
        (status = 400, description = "A bad body, parameter or idempotency key: the reason names the field at fault", body = ErrorBody),
        (status = 401, description = "No API key, or a key not in `api.keys`", body = ErrorBody),
        (status = 413, description = "A body over 2 MiB", content_type = "text/plain", body = String),
        (status = 503, description = "Nothing was done: the store cannot write, or Redis is unreachable and the outbox is full (or disabled). Retry after `Retry-After` seconds, with the same idempotency key", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    ),
    security(("api_key" = [])),
)]
pub async fn emit(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Result<impl IntoResponse, ApiError> {
    let body = parse_object(&body)?;
    let key = idempotency_key(&state, &headers, &body, "emit")?;
    let event = match body.get("event") {
        Some(Json_::String(e)) if !e.is_empty() && !RESERVED_EVENTS.contains(&e.as_str()) => e.clone(),
        Some(Json_::String(e)) if !e.is_empty() => return Err(ApiError::bad_request(format!("event {e:?} is reserved"))),
        _ => return Err(ApiError::bad_request("event must be a non-empty string")),
    };
    let args = match body.get("args") {
        None | Some(Json_::Null) => vec![],
        Some(Json_::Array(args)) => args.iter().cloned().map(Value::from).collect(),
        Some(_) => return Err(ApiError::bad_request("args must be a list")),
    };
    let target = Target {
        namespace: namespace(&state, &body)?,
        rooms: string_list(body.get("rooms"), "rooms")?,
        except: string_list(body.get("except"), "except")?,
    };
    let command = Command::Emit { target, event, args: Args(args) };
    Ok(match submit(&state, Submission { key, parts: vec![command], nid: None }).await? {
        Accepted::Done(_) => (StatusCode::ACCEPTED, Json(json!({ "ok": true }))),
        Accepted::Queued => (StatusCode::ACCEPTED, Json(json!({ "ok": true, "queued": true }))),
    })
}

/// `GET /api/v1/users/<id>/notifications?after=&before=&limit=` → `{"items": [...], "unread": N}`.
#[utoipa::path(
    get,
    path = "/api/v1/users/{user}/notifications",
    tag = "api",
    operation_id = "user_notifications",
    summary = "A user's stored notifications, newest first, with the unread count",
    params(
        ("user" = String, Path, description = "The user id (as in the token's user id claim)"),
        HistoryParams,
    ),
    responses(
        (status = 200, description = "The page of stored notifications", body = History),
        (status = 400, description = "A bad `after`, `before` or `limit`: the reason names the parameter at fault", body = ErrorBody),
        (status = 401, description = "No API key, or a key not in `api.keys`", body = ErrorBody),
        (status = 503, description = "The store is unavailable (e.g. Redis is unreachable): retry after `Retry-After` seconds", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    ),
    security(("api_key" = [])),
)]
pub async fn user_notifications(
    State(state): State<Arc<AppState>>,
    Path(user): Path<String>,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> Result<impl IntoResponse, ApiError> {
    let mut json = Map::new();
    for key in ["after", "before"] {
        if let Some(v) = query.get(key) {
            json.insert(key.into(), Json_::String(v.clone()));
        }
    }
    if let Some(limit) = query.get("limit") {
        let limit: u64 = limit.parse().map_err(|_| ApiError::bad_request("limit must be a positive integer"))?;
        json.insert("limit".into(), limit.into());
    }
    let query = HistoryQuery::from_json(Json_::Object(json)).map_err(ApiError::bad_request)?;
    let inbox = Inbox::of_user(&state.delivery, "/", &user).await.map_err(store_down)?;
    let (items, unread) = inbox.history(query.after, query.before, query.limit).await.map_err(store_down)?;
    Ok(Json(json!({ "ok": true, "items": items, "unread": unread })))
}

/// `POST /api/v1/users/<id>/notifications/read` `{"ids": [...]}` or `{"up_to": id}` → `{"ok": true, "unread": N}`.
#[utoipa::path(
    post,
    path = "/api/v1/users/{user}/notifications/read",
    tag = "api",
    operation_id = "mark_user_notifications_read",
    summary = "Mark a user's stored notifications read",
    params(("user" = String, Path, description = "The user id (as in the token's user id claim)")),
    request_body(content = ReadBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Marked; the unread count that remains", body = Unread),
        (status = 400, description = "A bad body: the reason names the field at fault", body = ErrorBody),
        (status = 401, description = "No API key, or a key not in `api.keys`", body = ErrorBody),
        (status = 413, description = "A body over 2 MiB", content_type = "text/plain", body = String),
        (status = 503, description = "The store is unavailable (e.g. Redis is unreachable): retry after `Retry-After` seconds", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    ),
    security(("api_key" = [])),
)]
pub async fn mark_user_notifications_read(
    State(state): State<Arc<AppState>>,
    Path(user): Path<String>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let body = parse_object(&body)?;
    let request = ReadRequest::from_json(Json_::Object(body)).map_err(ApiError::bad_request)?;
    let inbox = Inbox::of_user(&state.delivery, "/", &user).await.map_err(store_down)?;
    let unread = inbox.mark_read(&request.ids, request.up_to).await.map_err(store_down)?;
    Ok(Json(json!({ "ok": true, "unread": unread })))
}

fn store_down(e: crate::store::StoreError) -> ApiError {
    ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
}

/// `POST /api/v1/users/<id>/disconnect`: every socket of the user, on every instance and in
/// every namespace (e.g. after a password change).
#[utoipa::path(
    post,
    path = "/api/v1/users/{user}/disconnect",
    tag = "api",
    operation_id = "disconnect_user",
    summary = "Disconnect every socket of a user, on every instance and in every namespace (e.g. after a password change)",
    params(("user" = String, Path, description = "The user id (as in the token's user id claim)")),
    responses(
        (status = 202, description = "Applied on every instance; or queued in the outbox while Redis is unreachable", body = AcceptedBody),
        (status = 401, description = "No API key, or a key not in `api.keys`", body = ErrorBody),
        (status = 503, description = "Nothing was done: the store cannot write, or Redis is unreachable and the outbox is full (or disabled). Retry after `Retry-After` seconds, with the same idempotency key", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    ),
    security(("api_key" = [])),
)]
pub async fn disconnect_user(State(state): State<Arc<AppState>>, Path(user): Path<String>) -> Result<impl IntoResponse, ApiError> {
    let parts =
        state.settings.socketio.namespaces.iter().map(|ns| Command::Disconnect { target: Target::rooms(ns, vec![user_room(&user)]) });
    let key = idempotency_key(&state, &HeaderMap::new(), &Map::new(), "disconnect")?;
    Ok(match submit(&state, Submission { key, parts: parts.collect(), nid: None }).await? {
        Accepted::Done(_) => (StatusCode::ACCEPTED, Json(json!({ "ok": true }))),
        Accepted::Queued => (StatusCode::ACCEPTED, Json(json!({ "ok": true, "queued": true }))),
    })
}
