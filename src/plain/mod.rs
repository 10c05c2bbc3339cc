//! Plain WebSocket clients (`websocket.path`, default `/ws/notifications`): one JSON text frame
//! per message, no Socket.IO or Engine.IO framing, for frontends written for the FastAPI
//! service Herald replaces (README "Plain WebSocket clients").
//!
//! A plain socket is a [`Peer`] like a Socket.IO socket: it passes the same checks and gets the
//! same rooms, welcome, replay and session bookkeeping ([`crate::connection`]), and it sits in
//! the [`Registry`] that the delivery path applies every command to next to socketioxide's
//! sockets (`delivery::Transports`): every ingress reaches both transports the same way. Each
//! connection is one task with a bounded queue of outgoing frames.

pub mod registry;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::response::{IntoResponse, Response};
use futures_util::future::BoxFuture;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value as Json};

pub use registry::{close, frame, Out, Plain, Registry};

use crate::auth::{find_token, now_secs, Identity, Refusal};
use crate::connection::{self, client_ip, Peer, PresenceRooms};
use crate::delivery::Command;
use crate::limits::{EventBucket, EventVerdict};
use crate::notification::now_ms;
use crate::payload::Args;
use crate::replay::{HistoryQuery, Inbox, ReadRequest};
use crate::rooms::{granted_rooms, JoinRefusal};
use crate::state::AppState;

/// Cluster mode: carries a command that entered on this instance to the plain sockets of the
/// other instances (the adapter carries it to their Socket.IO sockets).
pub trait Peers: Send + Sync + 'static {
    fn publish<'a>(&'a self, command: &'a Command) -> BoxFuture<'a, Result<(), String>>;
}

/// The close code a refused connection gets (its reason is the SPEC §2 message).
pub fn refusal_code(refusal: Refusal) -> u16 {
    match refusal {
        Refusal::MissingToken => close::MISSING_TOKEN,
        Refusal::InvalidToken => close::INVALID_TOKEN,
        Refusal::TokenExpired => close::TOKEN_EXPIRED,
        Refusal::RateLimited => close::RATE_LIMITED,
        Refusal::TooManyConnections => close::TOO_MANY_CONNECTIONS,
        Refusal::ServerFull => close::SERVER_FULL,
    }
}

/// Frame types counted by name in `/metrics` (`herald_events_in_total{event}`); others: `other`.
const KNOWN_FRAMES: [&str; 7] =
    ["ping", "room:join", "room:leave", "notifications:history", "notifications:read", "auth:refresh", "presence:list"];

/// `GET websocket.path`: the upgrade. Every refusal happens after it, as a close code, since a
/// browser's `WebSocket` cannot read an HTTP status.
pub async fn endpoint(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let (mut parts, _) = request.into_parts();
    let ws = match WebSocketUpgrade::from_request_parts(&mut parts, &state).await {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    let ip = client_ip(peer, &parts.headers, &state.trusted_proxies);
    let query = parts.uri.query().map(String::from);
    let authorization = parts.headers.get(http::header::AUTHORIZATION).and_then(|h| h.to_str().ok()).map(String::from);
    let max = state.settings.socketio.max_payload_bytes as usize;
    ws.max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(1024)
        .write_buffer_size(0)
        .on_upgrade(move |socket| serve(state, socket, ip, query, authorization))
}

/// A plain socket as [`connection`] sees it.
struct Handle {
    plain: Arc<Plain>,
    registry: Arc<Registry>,
}

impl Peer for Handle {
    fn sid(&self) -> &str {
        &self.plain.sid
    }

    fn namespace(&self) -> &str {
        &self.plain.namespace
    }

    fn join(&self, rooms: Vec<String>) {
        self.registry.join(&self.plain.sid, &rooms);
    }

    fn emit(&self, event: &str, args: &Args) -> Result<(), String> {
        match self.plain.send(frame(event, args)) {
            true => Ok(()),
            false => Err("socket closed or its queue is full".into()),
        }
    }

    fn is_connected(&self) -> bool {
        self.plain.is_open()
    }
}

type Sink = futures_util::stream::SplitSink<WebSocket, Message>;
type Stream = futures_util::stream::SplitStream<WebSocket>;

/// Closes with `code` and `reason`, then reads (and drops) what the client still sends until
/// its own close, for at most [`CLOSE_WAIT`]: closing the TCP connection on unread data would
/// reset it, and the client would lose the close frame.
async fn close_with(sink: &mut Sink, stream: &mut Stream, code: u16, reason: &str) {
    let frame = CloseFrame { code, reason: Utf8Bytes::from(reason) };
    let _ = tokio::time::timeout(CLOSE_WAIT, sink.send(Message::Close(Some(frame)))).await;
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        while let Some(Ok(message)) = stream.next().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
    let _ = tokio::time::timeout(CLOSE_WAIT, sink.close()).await;
}

/// How long a closing connection waits for the client's side of the close.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

async fn send(sink: &mut Sink, text: String) -> bool {
    write(sink, Message::Text(Utf8Bytes::from(text))).await
}

/// Writes one message; false when the connection failed, or when the peer took none of it for
/// [`WRITE_TIMEOUT`] (it stopped reading: the connection is treated as lost).
async fn write(sink: &mut Sink, message: Message) -> bool {
    matches!(tokio::time::timeout(WRITE_TIMEOUT, sink.send(message)).await, Ok(Ok(())))
}

/// How long a write may wait for a peer that does not read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// The query's value of `key`, percent-decoded.
fn query_value(query: Option<&str>, key: &str) -> Option<String> {
    crate::auth::query_param(query?, key)
}

/// Waits for the auth frame of a client that sent no token: `{"type":"auth","token":..}`.
async fn auth_frame(state: &AppState, stream: &mut Stream) -> Result<Json, Refusal> {
    let wait = Duration::from_secs(state.settings.websocket.auth_timeout_secs);
    let first = tokio::time::timeout(wait, async {
        while let Some(Ok(message)) = stream.next().await {
            match message {
                Message::Text(text) => return Some(text),
                Message::Ping(_) | Message::Pong(_) => continue,
                _ => return None,
            }
        }
        None
    })
    .await;
    let Ok(Some(text)) = first else { return Err(Refusal::MissingToken) };
    match serde_json::from_str::<Json>(text.as_str()) {
        Ok(frame) if frame.get("type").and_then(Json::as_str) == Some("auth") => Ok(frame),
        _ => Err(Refusal::MissingToken),
    }
}

async fn serve(
    state: Arc<AppState>,
    socket: WebSocket,
    ip: Option<std::net::IpAddr>,
    query: Option<String>,
    authorization: Option<String>,
) {
    let (mut sink, mut stream) = socket.split();
    let sid = socketioxide_core::Sid::new().to_string();
    let namespace = state.settings.websocket.namespace.clone();
    let query = query.as_deref();
    // What an auth frame, or else the query, says besides the token.
    let mut auth = json!({});
    if let Some(last_id) = query_value(query, "last_id") {
        auth["last_id"] = Json::String(last_id);
    }
    if let Some(device) = query_value(query, "device") {
        auth["device"] = Json::String(device);
    }
    if find_token(None, query, authorization.as_deref()).is_none() && state.settings.auth.required {
        match auth_frame(&state, &mut stream).await {
            Ok(Json::Object(frame)) => {
                for (key, value) in frame {
                    auth[key] = value;
                }
            }
            Ok(_) | Err(_) => {
                let refusal = Refusal::MissingToken;
                state.metrics.inc("herald_refusals_total", &[("reason", refusal.as_str())]);
                close_with(&mut sink, &mut stream, refusal_code(refusal), refusal.as_str()).await;
                return;
            }
        }
    }
    let request =
        connection::Request { ip, auth: Some(&auth), query, authorization: authorization.as_deref(), sid: &sid, namespace: &namespace };
    let admitted = match connection::admit(&state, request).await {
        Ok(admitted) => admitted,
        Err(refusal) => {
            close_with(&mut sink, &mut stream, refusal_code(refusal), refusal.as_str()).await;
            return;
        }
    };
    state.metrics.inc("herald_plain_connects_total", &[]);
    let registry = state.plain.clone();
    let (plain, mut outgoing) = Plain::new(sid.clone(), namespace.clone(), state.settings.delivery.max_replay + 128);
    registry.insert(plain.clone());
    let handle = Handle { plain: plain.clone(), registry: registry.clone() };
    let presence: Mutex<Option<PresenceRooms>> = Mutex::new(None);
    connection::connected(&state, &handle, &admitted, |rooms| {
        *presence.lock().unwrap_or_else(|e| e.into_inner()) = Some(rooms);
    })
    .await;
    let mut session = Session {
        state: state.clone(),
        handle,
        identity: admitted.identity.clone(),
        presence: presence.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        bucket: EventBucket::new(state.settings.limits.events_per_second),
        warned: None,
    };
    let (reason, clean) = session.run(&mut sink, &mut stream, &mut outgoing).await;
    plain.mark_gone();
    state.metrics.inc("herald_disconnects_total", &[("reason", reason)]);
    tracing::debug!(sid, reason, "plain socket disconnected");
    connection::disconnected(&state, &namespace, &admitted, session.presence.take(), clean).await;
    // Last: a shutdown waits for the registry to empty, so the session's end is recorded.
    registry.remove(&sid);
}

/// One connected plain socket: its frames in and out until it closes.
struct Session {
    state: Arc<AppState>,
    handle: Handle,
    identity: Option<Identity>,
    presence: Option<PresenceRooms>,
    bucket: EventBucket,
    /// The expiry whose `auth:expiring` was sent.
    warned: Option<u64>,
}

/// What a client frame leads to.
enum Reply {
    Frame(Json),
    Close(u16, &'static str),
}

impl Session {
    /// Returns the `herald_disconnects_total` reason and whether the close was clean.
    async fn run(&mut self, sink: &mut Sink, stream: &mut Stream, outgoing: &mut tokio::sync::mpsc::Receiver<Out>) -> (&'static str, bool) {
        let sio = &self.state.settings.socketio;
        let (interval, timeout) = (sio.ping_interval(), sio.ping_timeout());
        let max = sio.max_payload_bytes as usize;
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        let mut heard = Instant::now();
        let plain = self.handle.plain.clone();
        loop {
            let expiry = self.expiry();
            tokio::select! {
                biased;
                (code, reason) = plain.closed() => {
                    close_with(sink, stream, code, &reason).await;
                    return (if code == close::GOING_AWAY { "closing_server" } else { "server_disconnect" }, true);
                }
                out = outgoing.recv() => {
                    let Some(Out::Frame(text)) = out else { return ("transport_close", true) };
                    if !send(sink, text).await {
                        return ("transport_error", false);
                    }
                }
                message = stream.next() => {
                    heard = Instant::now();
                    let reply = match message {
                        None | Some(Ok(Message::Close(_))) => return ("transport_close", true),
                        Some(Err(e)) => {
                            let text = e.to_string();
                            if text.contains("too long") || text.contains("Space limit") || text.contains("too big") {
                                self.state.metrics.inc("herald_plain_frames_refused_total", &[("reason", "too_big")]);
                                close_with(sink, stream, close::MESSAGE_TOO_BIG, "message too big").await;
                                // The rest of the oversized frame is still unread: closing the TCP
                                // connection now would reset it before the client reads the close
                                // frame (it would see 1006). Give it a moment to read it and close.
                                tokio::time::sleep(Duration::from_millis(500)).await;
                                return ("packet_parsing_error", true);
                            }
                            return ("transport_error", false);
                        }
                        Some(Ok(Message::Binary(_))) => Reply::Close(close::UNSUPPORTED_DATA, "binary frames are not accepted: send JSON text"),
                        Some(Ok(Message::Text(text))) if text.len() > max => Reply::Close(close::MESSAGE_TOO_BIG, "message too big"),
                        Some(Ok(Message::Text(text))) => self.on_frame(text.as_str()).await,
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    };
                    match reply {
                        Reply::Frame(frame) => {
                            if !send(sink, frame.to_string()).await {
                                return ("transport_error", false);
                            }
                        }
                        Reply::Close(code, reason) => {
                            let what = match code {
                                close::UNSUPPORTED_DATA => "binary",
                                close::MESSAGE_TOO_BIG => "too_big",
                                _ => "flood",
                            };
                            self.state.metrics.inc("herald_plain_frames_refused_total", &[("reason", what)]);
                            close_with(sink, stream, code, reason).await;
                            return ("packet_parsing_error", true);
                        }
                    }
                }
                _ = ticks.tick() => {
                    if heard.elapsed() > interval + timeout {
                        close_with(sink, stream, close::HEARTBEAT_TIMEOUT, "heartbeat timeout").await;
                        return ("heartbeat_timeout", false);
                    }
                    if !write(sink, Message::Ping(Default::default())).await {
                        return ("transport_error", false);
                    }
                }
                stage = expiry => {
                    match stage {
                        Expiry::Warn(expires_at) => {
                            let notice = json!({ "expires_at": expires_at, "expires_in": expires_at.saturating_sub(now_secs()) });
                            let _ = send(sink, event_frame("auth:expiring", notice)).await;
                            self.warned = Some(expires_at);
                        }
                        Expiry::Expired => {
                            self.state.metrics.inc("herald_token_expiries_total", &[]);
                            let _ = send(sink, event_frame("auth:expired", json!({ "reason": "token expired" }))).await;
                            close_with(sink, stream, close::TOKEN_EXPIRED, "token expired").await;
                            return ("server_disconnect", true);
                        }
                    }
                }
            }
        }
    }
}

/// A token's next deadline: the `auth:expiring` warning, then expiry.
enum Expiry {
    Warn(u64),
    Expired,
}

/// `{"type":"event","event":..,"args":[payload]}`.
fn event_frame(event: &str, payload: Json) -> String {
    frame(event, &Args::one(payload.into()))
}

/// The error frame for a client frame that could not be served.
fn error(kind: Option<&str>, error: impl Into<String>) -> Json {
    match kind {
        Some(kind) => json!({ "type": kind, "ok": false, "error": error.into() }),
        None => json!({ "type": "error", "error": error.into() }),
    }
}

impl Session {
    /// Sleeps until the token's next deadline (forever for anonymous sockets).
    fn expiry(&self) -> BoxFuture<'static, Expiry> {
        let Some(identity) = &self.identity else { return Box::pin(std::future::pending()) };
        let expires_at = identity.expires_at;
        let warn_at = expires_at.saturating_sub(self.state.settings.auth.expiry_warning_secs);
        let warned = self.warned == Some(expires_at);
        Box::pin(async move {
            let (at, stage) = if warned { (expires_at, Expiry::Expired) } else { (warn_at, Expiry::Warn(expires_at)) };
            let now = now_secs();
            if at > now {
                tokio::time::sleep(Duration::from_secs(at - now)).await;
            }
            stage
        })
    }

    /// Serves one client text frame.
    async fn on_frame(&mut self, text: &str) -> Reply {
        let frame = match serde_json::from_str::<Json>(text) {
            Ok(Json::Object(frame)) => frame,
            Ok(_) => return Reply::Frame(error(None, "expected a JSON object with a \"type\"")),
            Err(e) => return Reply::Frame(error(None, format!("invalid JSON: {e}"))),
        };
        let Some(kind) = frame.get("type").and_then(Json::as_str).map(String::from) else {
            return Reply::Frame(error(None, "expected a JSON object with a \"type\""));
        };
        let name = KNOWN_FRAMES.iter().find(|k| **k == kind).copied().unwrap_or("other");
        self.state.metrics.inc("herald_events_in_total", &[("event", name)]);
        match self.bucket.take() {
            EventVerdict::Allow => {}
            EventVerdict::Refuse => {
                self.state.metrics.inc("herald_event_refusals_total", &[("reason", "rate_limited")]);
                return Reply::Frame(error(Some(&kind), "rate limited"));
            }
            EventVerdict::Disconnect => {
                self.state.metrics.inc("herald_event_refusals_total", &[("reason", "abuse_disconnect")]);
                tracing::info!(sid = self.handle.plain.sid, "disconnecting a plain socket that keeps flooding");
                return Reply::Close(close::RATE_LIMITED, "rate limited");
            }
        }
        let data = Json::Object(frame);
        let result = match kind.as_str() {
            "ping" => {
                Ok(json!({ "type": "pong", "timestamp": data.get("timestamp").cloned().unwrap_or(Json::Null), "server_time": now_ms() }))
            }
            "room:join" => self.room_join(&data).await,
            "room:leave" => self.room_leave(&data).await,
            "notifications:history" => self.history(data).await,
            "notifications:read" => self.mark_read(data).await,
            "auth:refresh" => self.refresh(&data),
            "presence:list" => self.presence_list(&data).await,
            "auth" => Err("already authenticated".into()),
            _ => Err("unknown type".into()),
        };
        Reply::Frame(result.unwrap_or_else(|e| error(Some(&kind), e)))
    }

    fn user(&self) -> Result<&Identity, String> {
        self.identity.as_ref().ok_or_else(|| "anonymous sockets have no notifications".into())
    }

    /// The rooms its token and its sid give the socket (never counted, never left).
    fn automatic_rooms(&self) -> Vec<String> {
        let mut rooms = self.identity.as_ref().map(granted_rooms).unwrap_or_default();
        rooms.push(self.handle.plain.sid.clone());
        rooms
    }

    fn rooms(&self) -> Vec<String> {
        self.handle.registry.rooms_of(&self.handle.plain.sid)
    }

    async fn room_join(&mut self, data: &Json) -> Result<Json, String> {
        let room = room_name(data)?;
        let automatic = self.automatic_rooms();
        self.state.room_policy.may_join(&room, &automatic).map_err(|e| refuse(&self.state, e))?;
        let current = self.rooms();
        if !current.contains(&room) {
            let chosen = current.iter().filter(|r| !automatic.contains(r)).count();
            let limit = self.state.settings.limits.max_rooms_per_socket;
            if chosen >= limit {
                return Err(refuse(&self.state, JoinRefusal::TooManyRooms(limit)));
            }
            self.handle.registry.join(&self.handle.plain.sid, std::slice::from_ref(&room));
            if let (Some(identity), Some(presence)) = (&self.identity, &self.presence) {
                if self.state.presence.tracks_room(&room) {
                    presence.0.lock().unwrap_or_else(|e| e.into_inner()).push(room.clone());
                    self.state.presence.enter(&self.handle.plain.namespace, &room, &identity.user_id).await;
                }
            }
        }
        Ok(json!({ "type": "room:join", "ok": true, "room": room }))
    }

    async fn room_leave(&mut self, data: &Json) -> Result<Json, String> {
        let room = room_name(data)?;
        self.state.room_policy.check_name(&room).map_err(|e| refuse(&self.state, e))?;
        if self.automatic_rooms().contains(&room) {
            return Err("room granted by your token cannot be left".into());
        }
        self.handle.registry.leave(&self.handle.plain.sid, std::slice::from_ref(&room));
        if let (Some(identity), Some(presence)) = (&self.identity, &self.presence) {
            let was_in = {
                let mut rooms = presence.0.lock().unwrap_or_else(|e| e.into_inner());
                let before = rooms.len();
                rooms.retain(|r| *r != room);
                rooms.len() < before
            };
            if was_in {
                self.state.presence.exit(&self.handle.plain.namespace, &room, &identity.user_id).await;
            }
        }
        Ok(json!({ "type": "room:leave", "ok": true, "room": room }))
    }

    async fn presence_list(&self, data: &Json) -> Result<Json, String> {
        let offset = data.get("offset").and_then(Json::as_u64).unwrap_or(0) as usize;
        let limit = data.get("limit").and_then(Json::as_u64).unwrap_or(100).clamp(1, 1000) as usize;
        let room = room_name(data)?;
        if !self.state.presence.tracks_room(&room) {
            return Err("room has no presence (presence.rooms)".into());
        }
        if !self.rooms().contains(&room) {
            return Err("not in this room".into());
        }
        let namespace = &self.handle.plain.namespace;
        let (count, members) =
            self.state.presence.room(namespace, &room, offset, limit).await.map_err(|e| format!("presence unavailable: {e}"))?;
        let users: Vec<&str> = members.iter().map(|m| m.user.as_str()).collect();
        Ok(json!({ "type": "presence:list", "ok": true, "room": room, "count": count, "users": users, "offset": offset }))
    }

    fn inbox<'a>(&'a self, user: &'a str, rooms: &[String]) -> Inbox<'a> {
        Inbox::new(&self.state.delivery, &self.handle.plain.namespace, user, rooms)
    }

    async fn history(&self, data: Json) -> Result<Json, String> {
        let user = self.user()?.user_id.clone();
        let query = HistoryQuery::from_json(data)?;
        let rooms = self.rooms();
        let (items, unread) = self.inbox(&user, &rooms).history(query.after, query.before, query.limit).await.map_err(|e| e.to_string())?;
        Ok(json!({ "type": "notifications:history", "ok": true, "items": items, "unread": unread }))
    }

    async fn mark_read(&self, data: Json) -> Result<Json, String> {
        let user = self.user()?.user_id.clone();
        let request = ReadRequest::from_json(data)?;
        let rooms = self.rooms();
        let unread = self.inbox(&user, &rooms).mark_read(&request.ids, request.up_to).await.map_err(|e| e.to_string())?;
        Ok(json!({ "type": "notifications:read", "ok": true, "unread": unread }))
    }

    /// `{"type":"auth:refresh","token":..}`: a new token for the same user; rooms follow.
    fn refresh(&mut self, data: &Json) -> Result<Json, String> {
        let token = data.get("token").and_then(Json::as_str).ok_or("expected {\"type\":\"auth:refresh\",\"token\":\"<jwt>\"}")?;
        let old = self.identity.as_ref().ok_or("anonymous sockets have no token to refresh")?;
        let new = self.state.verifier.verify(token).map_err(|r| r.to_string())?;
        if new.user_id != old.user_id {
            self.state.metrics.inc("herald_token_refreshes_total", &[("outcome", "other_user")]);
            return Err("token is for another user".into());
        }
        let (old_rooms, new_rooms) = (granted_rooms(old), granted_rooms(&new));
        let dropped: Vec<String> = old_rooms.iter().filter(|r| !new_rooms.contains(r)).cloned().collect();
        self.handle.registry.leave(&self.handle.plain.sid, &dropped);
        self.handle.registry.join(&self.handle.plain.sid, &new_rooms);
        let expires_at = new.expires_at;
        self.identity = Some(new);
        self.state.metrics.inc("herald_token_refreshes_total", &[("outcome", "ok")]);
        Ok(json!({ "type": "auth:refresh", "ok": true, "expires_at": expires_at }))
    }
}

/// `{"room": "<name>"}`.
fn room_name(data: &Json) -> Result<String, String> {
    match data.get("room") {
        Some(Json::String(room)) => Ok(room.clone()),
        _ => Err("expected {\"room\": \"<name>\"}".into()),
    }
}

fn refuse(state: &AppState, refusal: JoinRefusal) -> String {
    crate::socket::refuse_room(state, refusal)
}
