//! Events clients send (SPEC §4): `room:join`, `room:leave`, `ping`, `notifications:history`,
//! `notifications:read`, and anything else.
//!
//! Every event first passes the socket's rate limit (`limits.events_per_second`). Every handler
//! answers malformed input with an error ack `{"ok":false,"error":...}` and keeps
//! the connection open: a bad payload from one client costs that client an error, nothing more.

use std::sync::Arc;

use serde_json::{json, Value};
use socketioxide::adapter::Adapter;
use socketioxide::extract::{AckSender, Event, SocketRef, TryData};

use crate::auth::Identity;
use crate::limits::{EventBucket, EventVerdict};
use crate::notification::now_ms;
use crate::replay::{HistoryQuery, Inbox, ReadRequest};
use crate::rooms::{granted_rooms, JoinRefusal};
use crate::state::AppState;
use super::PresenceRooms;

/// Event names counted by name in `/metrics`; anything else counts as `other`.
const KNOWN_EVENTS: [&str; 7] =
    ["room:join", "room:leave", "ping", "notifications:history", "notifications:read", "auth:refresh", "presence:list"];

/// Serves every event of `socket`: the limiter first, then the event's handler with the first
/// argument (if it is JSON), and its result as the ack. One handler for all of them, dispatched
/// by name: socketioxide keeps each socket's handlers in a map of boxed closures, and one
/// instead of eight is about half a kilobyte less per connection.
pub fn register<A: Adapter>(socket: &SocketRef<A>, state: Arc<AppState>) {
    socket.on_fallback(move |s: SocketRef<A>, Event(event): Event, TryData(data): TryData<Value>, ack: AckSender<A>| {
        let state = state.clone();
        async move {
            let result = match admit(&state, &s, &event) {
                Ok(()) => handle(&state, &s, &event, data.ok()).await,
                Err(e) => Err(e),
            };
            answer(ack, result);
        }
    });
}

async fn handle<A: Adapter>(state: &Arc<AppState>, socket: &SocketRef<A>, event: &str, data: Option<Value>) -> Result<Value, String> {
    match event {
        "room:join" => room_join(state, socket, data).await,
        "room:leave" => room_leave(state, socket, data).await,
        "presence:list" => presence_list(state, socket, data).await,
        "ping" => ping(socket, data),
        "auth:refresh" => super::session::refresh(state, socket, data),
        "notifications:history" => history(state, socket, data).await,
        "notifications:read" => mark_read(state, socket, data).await,
        _ => {
            tracing::debug!(sid = %socket.id, event = %truncate(event, 64), "unknown event");
            Err("unknown event".to_string())
        }
    }
}

/// Counts the event and applies the socket's rate limit: `Err` is the error to answer with.
/// A socket that keeps sending far past its rate is disconnected.
fn admit<A: Adapter>(state: &AppState, socket: &SocketRef<A>, event: &str) -> Result<(), String> {
    let name = KNOWN_EVENTS.iter().find(|k| **k == event).copied().unwrap_or("other");
    state.metrics.inc("herald_events_in_total", &[("event", name)]);
    let bucket = match socket.extensions.get::<Arc<EventBucket>>() {
        Some(bucket) => bucket,
        None => {
            let bucket = Arc::new(EventBucket::new(state.settings.limits.events_per_second));
            socket.extensions.insert(bucket.clone());
            bucket
        }
    };
    match bucket.take() {
        EventVerdict::Allow => Ok(()),
        EventVerdict::Refuse => {
            state.metrics.inc("herald_event_refusals_total", &[("reason", "rate_limited")]);
            Err("rate limited".into())
        }
        EventVerdict::Disconnect => {
            state.metrics.inc("herald_event_refusals_total", &[("reason", "abuse_disconnect")]);
            tracing::info!(sid = %socket.id, "disconnecting a socket that keeps flooding events");
            let _ = socket.clone().disconnect();
            Err("rate limited".into())
        }
    }
}

/// Sends the ack (if the client asked for one): the value on success, `{ok:false,error}` otherwise.
fn answer<A: Adapter>(ack: AckSender<A>, result: Result<Value, String>) {
    let body = result.unwrap_or_else(|error| json!({ "ok": false, "error": error }));
    if let Err(e) = ack.send(&body) {
        tracing::debug!(error = %e, "ack not sent");
    }
}

/// `"room"` or `{"room": "room"}`.
fn room_name(data: Option<Value>) -> Result<String, String> {
    match data {
        Some(Value::String(room)) => Ok(room),
        Some(Value::Object(mut map)) => match map.remove("room") {
            Some(Value::String(room)) => Ok(room),
            _ => Err("expected {\"room\": \"<name>\"}".into()),
        },
        _ => Err("expected a room name or {\"room\": \"<name>\"}".into()),
    }
}

/// The rooms this socket holds because of its token or its sid (never counted, never left).
fn automatic_rooms<A: Adapter>(socket: &SocketRef<A>) -> Vec<String> {
    let mut rooms = socket.extensions.get::<Identity>().map(|i| granted_rooms(&i)).unwrap_or_default();
    rooms.push(socket.id.to_string());
    rooms
}

async fn room_join<A: Adapter>(state: &AppState, socket: &SocketRef<A>, data: Option<Value>) -> Result<Value, String> {
    let room = room_name(data)?;
    let automatic = automatic_rooms(socket);
    state.room_policy.may_join(&room, &automatic).map_err(|e| refuse(state, e))?;
    let current = socket.rooms();
    if !current.iter().any(|r| *r == room) {
        let chosen = current.iter().filter(|r| !automatic.iter().any(|a| a == r.as_ref())).count();
        let limit = state.settings.limits.max_rooms_per_socket;
        if chosen >= limit {
            return Err(refuse(state, JoinRefusal::TooManyRooms(limit)));
        }
        socket.join(room.clone());
        enter_presence_room(state, socket, &room).await;
    }
    Ok(json!({ "ok": true, "room": room }))
}

async fn room_leave<A: Adapter>(state: &AppState, socket: &SocketRef<A>, data: Option<Value>) -> Result<Value, String> {
    let room = room_name(data)?;
    state.room_policy.check_name(&room).map_err(|e| refuse(state, e))?;
    if automatic_rooms(socket).contains(&room) {
        return Err("room granted by your token cannot be left".into());
    }
    socket.leave(room.clone());
    exit_presence_room(state, socket, &room).await;
    Ok(json!({ "ok": true, "room": room }))
}

/// Counts the socket's user in `room`, when the room has presence.
async fn enter_presence_room<A: Adapter>(state: &AppState, socket: &SocketRef<A>, room: &str) {
    let (Some(identity), Some(PresenceRooms(rooms))) = (socket.extensions.get::<Identity>(), socket.extensions.get::<PresenceRooms>())
    else {
        return;
    };
    if !state.presence.tracks_room(room) {
        return;
    }
    rooms.lock().unwrap_or_else(|e| e.into_inner()).push(room.to_string());
    state.presence.enter(socket.ns(), room, &identity.user_id).await;
}

async fn exit_presence_room<A: Adapter>(state: &AppState, socket: &SocketRef<A>, room: &str) {
    let (Some(identity), Some(PresenceRooms(rooms))) = (socket.extensions.get::<Identity>(), socket.extensions.get::<PresenceRooms>())
    else {
        return;
    };
    let was_in = {
        let mut rooms = rooms.lock().unwrap_or_else(|e| e.into_inner());
        let before = rooms.len();
        rooms.retain(|r| r != room);
        rooms.len() < before
    };
    if was_in {
        state.presence.exit(socket.ns(), room, &identity.user_id).await;
    }
}

/// `presence:list` `{"room", "offset"?, "limit"?}`: who is in a presence room the socket is in.
async fn presence_list<A: Adapter>(state: &AppState, socket: &SocketRef<A>, data: Option<Value>) -> Result<Value, String> {
    let (offset, limit) = match &data {
        Some(Value::Object(map)) => (
            map.get("offset").and_then(Value::as_u64).unwrap_or(0) as usize,
            map.get("limit").and_then(Value::as_u64).unwrap_or(100).clamp(1, 1000) as usize,
        ),
        _ => (0, 100),
    };
    let room = room_name(data)?;
    if !state.presence.tracks_room(&room) {
        return Err("room has no presence (presence.rooms)".into());
    }
    if !socket.rooms().iter().any(|r| *r == room) {
        return Err("not in this room".into());
    }
    let (count, members) = state.presence.room(socket.ns(), &room, offset, limit).await.map_err(|e| format!("presence unavailable: {e}"))?;
    let users: Vec<&str> = members.iter().map(|m| m.user.as_str()).collect();
    Ok(json!({ "ok": true, "room": room, "count": count, "users": users, "offset": offset }))
}

pub(crate) fn refuse(state: &AppState, refusal: JoinRefusal) -> String {
    let reason = match refusal {
        JoinRefusal::Empty | JoinRefusal::TooLong(_) | JoinRefusal::ControlCharacters => "invalid_name",
        JoinRefusal::NotGranted => "not_granted",
        JoinRefusal::NotJoinable => "not_joinable",
        JoinRefusal::TooManyRooms(_) => "room_limit",
    };
    state.metrics.inc("herald_room_refusals_total", &[("reason", reason)]);
    refusal.to_string()
}

/// The JSON heartbeat: `{"timestamp": <ms>}` → event `pong` and the same body in the ack.
fn ping<A: Adapter>(socket: &SocketRef<A>, data: Option<Value>) -> Result<Value, String> {
    let timestamp = match data {
        None | Some(Value::Null) => Value::Null,
        Some(Value::Object(mut map)) => map.remove("timestamp").unwrap_or(Value::Null),
        Some(_) => return Err("expected {\"timestamp\": <ms>}".into()),
    };
    let pong = json!({ "type": "pong", "timestamp": timestamp, "server_time": now_ms() });
    if let Err(e) = socket.emit("pong", &pong) {
        tracing::debug!(sid = %socket.id, error = %e, "pong not sent");
    }
    Ok(pong)
}

/// The inbox of the socket's user over the rooms it is in.
fn inbox<'a, A: Adapter>(state: &'a AppState, socket: &'a SocketRef<A>, user: &'a str) -> Inbox<'a> {
    Inbox::new(&state.delivery, socket.ns(), user, &socket.rooms().iter().map(|r| r.to_string()).collect::<Vec<_>>())
}

fn user_of<A: Adapter>(socket: &SocketRef<A>) -> Result<String, String> {
    socket.extensions.get::<Identity>().map(|i| i.user_id).ok_or_else(|| "anonymous sockets have no notifications".into())
}

async fn history<A: Adapter>(state: &AppState, socket: &SocketRef<A>, data: Option<Value>) -> Result<Value, String> {
    let user = user_of(socket)?;
    let query = HistoryQuery::from_json(data.unwrap_or(Value::Null))?;
    let (items, unread) = inbox(state, socket, &user).history(query.after, query.before, query.limit).await.map_err(|e| e.to_string())?;
    Ok(json!({ "ok": true, "items": items, "unread": unread }))
}

async fn mark_read<A: Adapter>(state: &AppState, socket: &SocketRef<A>, data: Option<Value>) -> Result<Value, String> {
    let user = user_of(socket)?;
    let request = ReadRequest::from_json(data.unwrap_or(Value::Null))?;
    let unread = inbox(state, socket, &user).mark_read(&request.ids, request.up_to).await.map_err(|e| e.to_string())?;
    Ok(json!({ "ok": true, "unread": unread }))
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((at, _)) => &s[..at],
        None => s,
    }
}
