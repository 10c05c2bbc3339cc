//! Presence over HTTP (API key): is a user online, which of many users are, who is in a room.
//!
//! - `GET /api/v1/presence/users/<id>` → `{"user", "online", "sockets", "since", "devices"}`
//! - `POST /api/v1/presence/users` `{"users": [ids]}` (at most [`MAX_BULK`]) →
//!   `{"online": [ids], "offline": [ids], "count": N}`
//! - `GET /api/v1/presence/rooms/<room>?namespace=/&offset=0&limit=100` → `{"room", "namespace",
//!   "count", "users": [{"user", "since"}], "offset", "limit", "next_offset"}` for rooms matching
//!   `presence.rooms` (404 for others).
//!
//! "Online" is the debounced state of [`crate::presence`]: during the grace after a user's last
//! socket went away they are still online, with `sockets: 0`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::schema::{BulkPresence, BulkPresenceRequest, ErrorBody, RoomPresence, RoomPresenceParams, UserPresence};
use super::ApiError;
use crate::state::AppState;

/// Most ids in one bulk lookup.
pub const MAX_BULK: usize = 10_000;
/// Most members in one page of a room.
pub const MAX_PAGE: usize = 1000;

fn unavailable(e: String) -> ApiError {
    ApiError(StatusCode::SERVICE_UNAVAILABLE, format!("presence unavailable: {e}"))
}

fn iso(ms: u64) -> Value {
    chrono::DateTime::from_timestamp_millis(ms as i64)
        .map(|t| Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)))
        .unwrap_or(Value::Null)
}

#[utoipa::path(
    get,
    path = "/api/v1/presence/users/{user}",
    tag = "api",
    operation_id = "user_presence",
    summary = "Is a user online, on how many sockets and devices, since when",
    params(("user" = String, Path, description = "The user id")),
    responses(
        (status = 200, description = "The user's presence (offline users too)", body = UserPresence),
        (status = 401, description = "No API key, or a key not in `api.keys`", body = ErrorBody),
        (status = 503, description = "Presence is unavailable (Redis is unreachable): retry after `Retry-After` seconds", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    ),
    security(("api_key" = [])),
)]
pub async fn user(State(state): State<Arc<AppState>>, Path(user): Path<String>) -> Result<Json<Value>, ApiError> {
    let presence = state.presence.user(&user).await.map_err(unavailable)?;
    Ok(Json(json!({
        "user": presence.user,
        "online": presence.online,
        "sockets": presence.sockets,
        "since": presence.since_ms.map(iso).unwrap_or(Value::Null),
        "devices": presence.devices,
    })))
}

#[utoipa::path(
    post,
    path = "/api/v1/presence/users",
    tag = "api",
    operation_id = "users_presence",
    summary = "Which of many users are online (e.g. toast or e-mail for 1,000 users in one call)",
    request_body(content = BulkPresenceRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The online and offline ids, in the order given", body = BulkPresence),
        (status = 400, description = "Not `{\"users\": [ids]}`, a bad id, or more than 10,000 ids", body = ErrorBody),
        (status = 401, description = "No API key, or a key not in `api.keys`", body = ErrorBody),
        (status = 503, description = "Presence is unavailable (Redis is unreachable): retry after `Retry-After` seconds", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    ),
    security(("api_key" = [])),
)]
pub async fn users(State(state): State<Arc<AppState>>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let body: Value = serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("body is not valid JSON: {e}")))?;
    let ids = body.get("users").and_then(Value::as_array).ok_or_else(|| ApiError::bad_request("expected {\"users\": [ids]}"))?;
    if ids.len() > MAX_BULK {
        return Err(ApiError::bad_request(format!("at most {MAX_BULK} users per call")));
    }
    let ids: Vec<String> = ids
        .iter()
        .map(|id| match id {
            Value::String(s) if !s.is_empty() => Ok(s.clone()),
            Value::Number(n) => Ok(n.to_string()),
            _ => Err(ApiError::bad_request("users must be non-empty strings or numbers")),
        })
        .collect::<Result<_, _>>()?;
    let online = state.presence.online(&ids).await.map_err(unavailable)?;
    let (on, off): (Vec<_>, Vec<_>) = ids.into_iter().zip(online).partition(|(_, online)| *online);
    let on: Vec<String> = on.into_iter().map(|(id, _)| id).collect();
    let off: Vec<String> = off.into_iter().map(|(id, _)| id).collect();
    Ok(Json(json!({ "count": on.len(), "online": on, "offline": off })))
}

#[utoipa::path(
    get,
    path = "/api/v1/presence/rooms/{room}",
    tag = "api",
    operation_id = "room_presence",
    summary = "The users in a room with presence (`presence.rooms`), paginated, with a count",
    params(("room" = String, Path, description = "The room name"), RoomPresenceParams),
    responses(
        (status = 200, description = "A page of members, oldest first", body = RoomPresence),
        (status = 400, description = "A bad `offset`, `limit` or `namespace`", body = ErrorBody),
        (status = 404, description = "The room has no presence (no `presence.rooms` pattern matches it)", body = ErrorBody),
        (status = 401, description = "No API key, or a key not in `api.keys`", body = ErrorBody),
        (status = 503, description = "Presence is unavailable (Redis is unreachable): retry after `Retry-After` seconds", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    ),
    security(("api_key" = [])),
)]
pub async fn room(
    State(state): State<Arc<AppState>>,
    Path(room): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let number = |key: &str, default: usize| match query.get(key) {
        None => Ok(default),
        Some(v) => v.parse::<usize>().map_err(|_| ApiError::bad_request(format!("{key} must be a non-negative integer"))),
    };
    let offset = number("offset", 0)?;
    let limit = number("limit", 100)?.min(MAX_PAGE);
    let namespace = query.get("namespace").cloned().unwrap_or_else(|| "/".into());
    if !state.settings.socketio.namespaces.contains(&namespace) {
        return Err(ApiError::bad_request(format!("namespace {namespace:?} is not served")));
    }
    if !state.presence.tracks_room(&room) {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("room {room:?} has no presence (see presence.rooms)")));
    }
    let (count, members) = state.presence.room(&namespace, &room, offset, limit).await.map_err(unavailable)?;
    let next = (offset + members.len() < count as usize && !members.is_empty()).then_some(offset + members.len());
    let users: Vec<Value> = members.iter().map(|m| json!({ "user": m.user, "since": iso(m.since_ms) })).collect();
    Ok(Json(json!({ "room": room, "namespace": namespace, "count": count, "users": users, "offset": offset, "limit": limit, "next_offset": next })))
}
