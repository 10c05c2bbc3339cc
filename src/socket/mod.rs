//! The Socket.IO layer: who may connect to each namespace, and what a socket does on connect
//! (SPEC §2, §3: rooms, welcome, replay of what it missed) and on disconnect (the user's seen
//! mark). Client events live in [`events`].
//!
//! Every namespace in `socketio.namespaces` behaves like `/`: the same authentication, the same
//! automatic rooms, the same events. Handlers are generic over the adapter so that the embedded
//! default (local adapter) and the Redis cluster share this code.

mod events;
mod session;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::ConnectInfo;
use socketioxide::adapter::Adapter;
use socketioxide::extract::{SocketRef, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::socket::DisconnectReason;
use socketioxide::SocketIo;
use socketioxide_core::adapter::{DefinedAdapter, Spawnable};

use crate::auth::{find_token, valid_device, Identity, Refusal};
use crate::notification::{self, EVENT};
use crate::replay::persisted_streams;
use crate::replay::{join, replay};
use crate::rooms::{granted_rooms, user_room};
use crate::seen::{send_late, Cursor, LateReplay, OtherTabs};
use crate::state::AppState;
use crate::store::StreamId;

/// Serves every configured namespace on `io`.
pub fn register<A: Adapter + DefinedAdapter>(io: &SocketIo<A>, state: Arc<AppState>) {
    for namespace in &state.settings.socketio.namespaces {
        let on_connect = {
            let state = state.clone();
            move |socket: SocketRef<A>| {
                let state = state.clone();
                async move { on_connect(socket, state).await }
            }
        };
        let authenticate = {
            let state = state.clone();
            move |socket: SocketRef<A>, TryData(auth): TryData<serde_json::Value>| {
                let state = state.clone();
                async move { authenticate(&state, &socket, auth.ok()).await }
            }
        };
        // With the Redis adapter this subscribes the namespace's channels in the background.
        io.ns(namespace.clone(), on_connect.with(authenticate)).spawn();
    }
}

/// The connect middleware: refuses with a SPEC §2 message, or stores the socket's [`Identity`].
async fn authenticate<A: Adapter>(state: &AppState, socket: &SocketRef<A>, auth: Option<serde_json::Value>) -> Result<(), Refusal> {
    let result = check_connect(state, socket, auth).await;
    if let Err(refusal) = result {
        state.metrics.inc("herald_refusals_total", &[("reason", refusal.as_str())]);
        tracing::debug!(sid = %socket.id, ns = socket.ns(), %refusal, "connection refused");
    }
    result
}

async fn check_connect<A: Adapter>(state: &AppState, socket: &SocketRef<A>, auth: Option<serde_json::Value>) -> Result<(), Refusal> {
    if state.is_draining() {
        return Err(Refusal::ServerFull);
    }
    let parts = socket.req_parts();
    if let Some(ip) = client_ip(parts, &state.trusted_proxies) {
        if !state.connect_rate.allow(ip) {
            return Err(Refusal::RateLimited);
        }
    }
    let authorization = parts.headers.get(http::header::AUTHORIZATION).and_then(|h| h.to_str().ok());
    identify(state, socket, auth, parts.uri.query(), authorization)?;
    let identity = socket.extensions.get::<Identity>();
    let user = identity.as_ref().map(|i| i.user_id.as_str());
    state.connections.try_add(user, &state.settings.limits)?;
    if let Some(identity) = &identity {
        // Across instances: the count lives with presence, checked and changed in one step.
        let max = state.settings.limits.max_connections_per_user as u64;
        if state.presence.connect(&identity.user_id, identity.device.as_deref(), max).await.is_err() {
            state.connections.remove(user);
            return Err(Refusal::TooManyConnections);
        }
    }
    socket.extensions.insert(Counted);
    Ok(())
}

/// The presence rooms (`presence.rooms`) a socket is in, to leave on disconnect.
#[derive(Debug, Clone, Default)]
pub(crate) struct PresenceRooms(pub(crate) Arc<std::sync::Mutex<Vec<String>>>);

/// Marks a socket that holds a place in the connection counts (released on disconnect).
#[derive(Debug, Clone, Copy)]
struct Counted;

/// The client's address: the peer, or, when the peer is a trusted proxy, the nearest address in
/// `X-Forwarded-For` that is not itself a trusted proxy.
fn client_ip(parts: &http::request::Parts, trusted: &[IpAddr]) -> Option<IpAddr> {
    let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>()?.0.ip();
    if !trusted.contains(&peer) {
        return Some(peer);
    }
    let forwarded = parts.headers.get_all("x-forwarded-for").iter().filter_map(|h| h.to_str().ok()).collect::<Vec<_>>().join(",");
    let chain: Vec<IpAddr> = forwarded.split(',').filter_map(|a| a.trim().parse().ok()).collect();
    Some(chain.into_iter().rev().find(|ip| !trusted.contains(ip)).unwrap_or(peer))
}

fn identify<A: Adapter>(
    state: &AppState,
    socket: &SocketRef<A>,
    auth: Option<serde_json::Value>,
    query: Option<&str>,
    authorization: Option<&str>,
) -> Result<(), Refusal> {
    match find_token(auth.as_ref(), query, authorization) {
        Some(token) => {
            let mut identity = state.verifier.verify(&token)?;
            if identity.device.is_none() {
                match auth.as_ref().and_then(|a| a.get("device")) {
                    None | Some(serde_json::Value::Null) => {}
                    Some(serde_json::Value::String(device)) if valid_device(device) => identity.device = Some(device.clone()),
                    Some(_) => {
                        state.metrics.inc("herald_ignored_input_total", &[("what", "auth.device")]);
                        tracing::debug!(sid = %socket.id, "auth.device ignored: 1 to 32 letters, digits, '-', '_' or '.'");
                    }
                }
            }
            socket.extensions.insert(identity);
            if let Some(last_id) = auth.as_ref().and_then(|a| a.get("last_id")).and_then(|l| l.as_str()) {
                match last_id.parse::<StreamId>() {
                    Ok(id) => {
                        socket.extensions.insert(LastSeen(id));
                    }
                    Err(e) => tracing::debug!(sid = %socket.id, error = %e, "auth.last_id ignored"),
                }
            }
            Ok(())
        }
        None if state.settings.auth.required => Err(Refusal::MissingToken),
        None => Ok(()),
    }
}

/// The `auth.last_id` a client sent: replay resumes after it.
#[derive(Debug, Clone, Copy)]
struct LastSeen(StreamId);

async fn on_connect<A: Adapter>(socket: SocketRef<A>, state: Arc<AppState>) {
    let identity = socket.extensions.get::<Identity>();
    state.metrics.inc("herald_connects_total", &[]);
    tracing::debug!(sid = %socket.id, ns = socket.ns(), user = identity.as_ref().map(|i| i.user_id.as_str()), "connected");
    events::register(&socket, state.clone());
    session::watch_expiry(state.clone(), socket.clone());
    let disconnect_state = state.clone();
    socket.on_disconnect(move |socket: SocketRef<A>, reason: DisconnectReason| {
        let state = disconnect_state.clone();
        async move { on_disconnect(&state, &socket, reason).await }
    });

    // Rooms first, so that the client can rely on them once it has the welcome.
    let mut rooms = vec![socket.id.to_string()];
    rooms.extend(identity.as_ref().map(granted_rooms).unwrap_or_default());
    let joined = join(&state.delivery, &socket, rooms).await;
    // Everything stored up to here reaches this socket: live from now on, or by the replay.
    let joined_at = StreamId::lagging(0);
    let welcome = notification::welcome(identity.as_ref().map(|i| i.user_id.as_str()), socket.id.as_str());
    if let Err(e) = socket.emit(EVENT, &welcome) {
        tracing::debug!(sid = %socket.id, error = %e, "welcome not sent");
    }
    let max_replay = state.settings.delivery.max_replay;
    let Some(identity) = identity else {
        replay(&state.delivery, &socket, joined, None, max_replay).await;
        return;
    };
    remember_user_rooms(&state, &identity);
    if state.presence.has_rooms() {
        enter_presence_rooms(&state, &socket, &identity, joined.rooms()).await;
    }
    let cursor = replay_cursor(&state, &socket, &identity).await;
    let after = match cursor {
        Cursor::From(after) => after,
        Cursor::Online { .. } => None,
    };
    let streams = persisted_streams(&state.delivery, joined.rooms());
    let read = replay(&state.delivery, &socket, joined, after, max_replay).await;
    // What had reached the user when this socket's session began (see `crate::seen`).
    let since = if read { joined_at } else { after.unwrap_or(joined_at) };
    state.seen.connected(&identity.user_id, &state.connections, since);
    if let Cursor::Online { elsewhere } = cursor {
        let late = LateReplay {
            user: identity.user_id.clone(),
            sid: socket.id.to_string(),
            namespace: socket.ns().to_string(),
            streams,
            after: joined_at,
            until: joined_at,
        };
        state.seen.watch(late, elsewhere);
    }
}

/// Counts the user in the presence rooms among `rooms`, and remembers them to leave on disconnect.
async fn enter_presence_rooms<A: Adapter>(state: &AppState, socket: &SocketRef<A>, identity: &Identity, rooms: &[String]) {
    let presence_rooms: Vec<String> = rooms.iter().filter(|r| state.presence.tracks_room(r)).cloned().collect();
    for room in &presence_rooms {
        state.presence.enter(socket.ns(), room, &identity.user_id).await;
    }
    let presence_rooms = Arc::new(std::sync::Mutex::new(presence_rooms));
    socket.extensions.insert(PresenceRooms(presence_rooms.clone()));
    if !socket.connected() {
        // It went away meanwhile, and its disconnect found no rooms to leave.
        let rooms = std::mem::take(&mut *presence_rooms.lock().unwrap_or_else(|e| e.into_inner()));
        for room in rooms {
            state.presence.exit(socket.ns(), &room, &identity.user_id).await;
        }
    }
}

/// Records (in the background: it is bookkeeping, not part of connecting) the persisted rooms
/// the token granted, for history over HTTP.
fn remember_user_rooms(state: &Arc<AppState>, identity: &Identity) {
    let persisted: Vec<String> = granted_rooms(identity).into_iter().filter(|r| state.delivery.persist().persists_room(r)).collect();
    let (state, user) = (state.clone(), identity.user_id.clone());
    tokio::spawn(async move {
        if let Err(e) = state.delivery.store().set_user_rooms(&user, &persisted).await {
            tracing::debug!(error = %e, "user rooms not recorded");
        }
    });
}

/// Where replay starts: the client's `auth.last_id`; otherwise where the user stopped being
/// online (nothing while another socket of theirs is connected anywhere, or for a user never
/// seen before; see [`crate::seen`]).
async fn replay_cursor<A: Adapter>(state: &AppState, socket: &SocketRef<A>, identity: &Identity) -> Cursor {
    if let Some(LastSeen(id)) = socket.extensions.get::<LastSeen>() {
        return Cursor::From(Some(id));
    }
    let other_tabs = socket.within(user_room(&identity.user_id)).local().sockets();
    let others = if other_tabs.iter().any(|s| s.id != socket.id) { OtherTabs::Here } else { OtherTabs::NoneHere };
    state.seen.cursor(&identity.user_id, others).await
}

/// Releases the socket's place and records where its user stopped (see [`crate::seen`]).
async fn on_disconnect<A: Adapter>(state: &AppState, socket: &SocketRef<A>, reason: DisconnectReason) {
    state.metrics.inc("herald_disconnects_total", &[("reason", disconnect_reason(reason))]);
    tracing::debug!(sid = %socket.id, %reason, "disconnected");
    let identity = socket.extensions.get::<Identity>();
    if socket.extensions.remove::<Counted>().is_some() {
        let user = identity.as_ref().map(|i| i.user_id.as_str());
        state.connections.remove(user);
        if let Some(identity) = &identity {
            if let Some(PresenceRooms(rooms)) = socket.extensions.remove::<PresenceRooms>() {
                let rooms = std::mem::take(&mut *rooms.lock().unwrap_or_else(|e| e.into_inner()));
                for room in rooms {
                    state.presence.exit(socket.ns(), &room, &identity.user_id).await;
                }
            }
            state.presence.disconnect(&identity.user_id, identity.device.as_deref()).await;
        }
    }
    let Some(identity) = identity else { return };
    let clean = matches!(
        reason,
        DisconnectReason::TransportClose
            | DisconnectReason::ClientNSDisconnect
            | DisconnectReason::ServerNSDisconnect
            | DisconnectReason::ClosingServer
    );
    for late in state.seen.disconnected(&identity.user_id, &state.connections, clean) {
        send_late(&state.delivery, &late).await;
    }
}

fn disconnect_reason(reason: DisconnectReason) -> &'static str {
    use DisconnectReason::*;
    match reason {
        TransportClose => "transport_close",
        MultipleHttpPollingError => "multiple_polling",
        PacketParsingError => "packet_parsing_error",
        TransportError => "transport_error",
        HeartbeatTimeout => "heartbeat_timeout",
        ClientNSDisconnect => "client_disconnect",
        ServerNSDisconnect => "server_disconnect",
        ClosingServer => "closing_server",
    }
}
