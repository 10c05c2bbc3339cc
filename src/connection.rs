//! What every transport does when a client connects and goes away, whether it is a Socket.IO
//! socket (`crate::socket`) or a plain WebSocket (`crate::plain`): the same checks (draining,
//! connects per IP, the token, per-instance and per-user counts with presence), the same rooms,
//! welcome and replay (from `last_id` or the user's seen mark), the same session bookkeeping on
//! disconnect. A transport supplies a [`Peer`]: how to join rooms and send one event.

use std::net::IpAddr;
use std::sync::Arc;

use crate::auth::{find_token, valid_device, Identity, Refusal};
use crate::notification::{self, EVENT};
use crate::payload::Args;
use crate::replay::{join, persisted_streams, replay};
use crate::rooms::{granted_rooms, user_room};
use crate::seen::{send_late, Cursor, LateReplay, OtherTabs};
use crate::state::AppState;
use crate::store::StreamId;

/// One connected client, whatever its transport.
pub trait Peer: Send + Sync {
    /// Its id: unique on this instance, and the name of a room only it is in.
    fn sid(&self) -> &str;
    fn namespace(&self) -> &str;
    fn join(&self, rooms: Vec<String>);
    /// Sends one event to this client only.
    fn emit(&self, event: &str, args: &Args) -> Result<(), String>;
    fn is_connected(&self) -> bool;
}

/// The presence rooms (`presence.rooms`) a socket is in, to leave on disconnect.
#[derive(Debug, Clone, Default)]
pub struct PresenceRooms(pub(crate) Arc<std::sync::Mutex<Vec<String>>>);

impl PresenceRooms {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// What a client presented when connecting.
pub struct Request<'a> {
    /// Its address (see [`client_ip`]).
    pub ip: Option<IpAddr>,
    /// The Socket.IO `auth` payload, or a plain client's auth frame: `token`, `last_id`, `device`.
    pub auth: Option<&'a serde_json::Value>,
    pub query: Option<&'a str>,
    pub authorization: Option<&'a str>,
    /// For logs.
    pub sid: &'a str,
    pub namespace: &'a str,
}

/// A connection that passed [`admit`]: it holds a place in the counts until [`disconnected`].
#[derive(Debug, Clone)]
pub struct Admitted {
    pub identity: Option<Identity>,
    /// The client's `last_id`: replay resumes after it.
    pub last_seen: Option<StreamId>,
}

/// The connect checks of SPEC §2, in order; a refusal is counted in `/metrics`.
pub async fn admit(state: &AppState, request: Request<'_>) -> Result<Admitted, Refusal> {
    let result = check(state, &request).await;
    if let Err(refusal) = result {
        state.metrics.inc("herald_refusals_total", &[("reason", refusal.as_str())]);
        tracing::debug!(sid = request.sid, ns = request.namespace, %refusal, "connection refused");
    }
    result
}

async fn check(state: &AppState, request: &Request<'_>) -> Result<Admitted, Refusal> {
    if state.is_draining() {
        return Err(Refusal::ServerFull);
    }
    if let Some(ip) = request.ip {
        if !state.connect_rate.allow(ip) {
            return Err(Refusal::RateLimited);
        }
    }
    let admitted = identify(state, request)?;
    let user = admitted.identity.as_ref().map(|i| i.user_id.as_str());
    state.connections.try_add(user, &state.settings.limits)?;
    if let Some(identity) = &admitted.identity {
        // Across instances: the count lives with presence, checked and changed in one step.
        let max = state.settings.limits.max_connections_per_user as u64;
        if state.presence.connect(&identity.user_id, identity.device.as_deref(), max).await.is_err() {
            state.connections.remove(user);
            return Err(Refusal::TooManyConnections);
        }
    }
    Ok(admitted)
}

fn identify(state: &AppState, request: &Request<'_>) -> Result<Admitted, Refusal> {
    let auth = request.auth;
    match find_token(auth, request.query, request.authorization) {
        Some(token) => {
            let mut identity = state.verifier.verify(&token)?;
            if identity.device.is_none() {
                match auth.and_then(|a| a.get("device")) {
                    None | Some(serde_json::Value::Null) => {}
                    Some(serde_json::Value::String(device)) if valid_device(device) => identity.device = Some(device.clone()),
                    Some(_) => {
                        state.metrics.inc("herald_ignored_input_total", &[("what", "auth.device")]);
                        tracing::debug!(sid = request.sid, "auth.device ignored: 1 to 32 letters, digits, '-', '_' or '.'");
                    }
                }
            }
            let last_seen = match auth.and_then(|a| a.get("last_id")).and_then(|l| l.as_str()) {
                Some(last_id) => match last_id.parse::<StreamId>() {
                    Ok(id) => Some(id),
                    Err(e) => {
                        tracing::debug!(sid = request.sid, error = %e, "auth.last_id ignored");
                        None
                    }
                },
                None => None,
            };
            Ok(Admitted { identity: Some(identity), last_seen })
        }
        None if state.settings.auth.required => Err(Refusal::MissingToken),
        None => Ok(Admitted { identity: None, last_seen: None }),
    }
}

/// The client's address: the peer, or, when the peer is a trusted proxy, the nearest address in
/// `X-Forwarded-For` that is not itself a trusted proxy.
pub fn client_ip(peer: Option<IpAddr>, headers: &http::HeaderMap, trusted: &[IpAddr]) -> Option<IpAddr> {
    let peer = peer?;
    if !trusted.contains(&peer) {
        return Some(peer);
    }
    let forwarded = headers.get_all("x-forwarded-for").iter().filter_map(|h| h.to_str().ok()).collect::<Vec<_>>().join(",");
    let chain: Vec<IpAddr> = forwarded.split(',').filter_map(|a| a.trim().parse().ok()).collect();
    Some(chain.into_iter().rev().find(|ip| !trusted.contains(ip)).unwrap_or(peer))
}

/// A client passed [`admit`]: joins its rooms, sends the welcome, replays what it missed and
/// records the user's session entry. `keep` is given the socket's presence rooms (to leave on
/// disconnect) before the peer is checked for having gone away meanwhile.
pub async fn connected<P: Peer>(state: &Arc<AppState>, peer: &P, admitted: &Admitted, keep: impl FnOnce(PresenceRooms)) {
    let identity = admitted.identity.as_ref();
    state.metrics.inc("herald_connects_total", &[]);
    tracing::debug!(sid = peer.sid(), ns = peer.namespace(), user = identity.map(|i| i.user_id.as_str()), "connected");

    // Rooms first, so that the client can rely on them once it has the welcome.
    let mut rooms = vec![peer.sid().to_string()];
    rooms.extend(identity.map(granted_rooms).unwrap_or_default());
    let joined = join(&state.delivery, peer, rooms).await;
    // Everything stored up to here reaches this socket: live from now on, or by the replay.
    let joined_at = StreamId::lagging(0);
    let welcome = notification::welcome(identity.map(|i| i.user_id.as_str()), peer.sid());
    if let Err(e) = peer.emit(EVENT, &Args::one(welcome)) {
        tracing::debug!(sid = peer.sid(), error = %e, "welcome not sent");
    }
    let max_replay = state.settings.delivery.max_replay;
    let Some(identity) = identity else {
        replay(&state.delivery, peer, joined, None, max_replay).await;
        return;
    };
    remember_user_rooms(state, identity);
    let presence_rooms: Vec<String> = joined.rooms().iter().filter(|r| state.presence.tracks_room(r)).cloned().collect();
    for room in &presence_rooms {
        state.presence.enter(peer.namespace(), room, &identity.user_id).await;
    }
    let presence_rooms = PresenceRooms(Arc::new(std::sync::Mutex::new(presence_rooms)));
    keep(presence_rooms.clone());
    if !peer.is_connected() {
        // It went away meanwhile, and its disconnect found no rooms to leave.
        for room in presence_rooms.take() {
            state.presence.exit(peer.namespace(), &room, &identity.user_id).await;
        }
    }
    let cursor = replay_cursor(state, peer, admitted.last_seen, identity).await;
    let after = match cursor {
        Cursor::From(after) => after,
        Cursor::Online { .. } => None,
    };
    let streams = persisted_streams(&state.delivery, joined.rooms());
    let read = replay(&state.delivery, peer, joined, after, max_replay).await;
    // What had reached the user when this socket's session began (see `crate::seen`).
    let since = if read { joined_at } else { after.unwrap_or(joined_at) };
    state.seen.connected(&identity.user_id, &state.connections, since);
    if let Cursor::Online { elsewhere } = cursor {
        let late = LateReplay {
            user: identity.user_id.clone(),
            sid: peer.sid().to_string(),
            namespace: peer.namespace().to_string(),
            streams,
            after: joined_at,
            until: joined_at,
        };
        state.seen.watch(late, elsewhere);
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

/// Where replay starts: the client's `last_id`; otherwise where the user stopped being online
/// (nothing while another socket of theirs, of any transport, is connected anywhere, or for a
/// user never seen before; see [`crate::seen`]).
async fn replay_cursor<P: Peer>(state: &AppState, peer: &P, last_seen: Option<StreamId>, identity: &Identity) -> Cursor {
    if let Some(id) = last_seen {
        return Cursor::From(Some(id));
    }
    let other_tabs = state.delivery.local_members(peer.namespace(), &user_room(&identity.user_id));
    let others = if other_tabs.iter().any(|sid| sid != peer.sid()) { OtherTabs::Here } else { OtherTabs::NoneHere };
    state.seen.cursor(&identity.user_id, others).await
}

/// A client that passed [`admit`] went away: releases its place (counts, presence) and records
/// where its user stopped. `clean`: the client or the server closed it; otherwise it was lost.
pub async fn disconnected(state: &AppState, namespace: &str, admitted: &Admitted, presence_rooms: Option<PresenceRooms>, clean: bool) {
    let identity = admitted.identity.as_ref();
    state.connections.remove(identity.map(|i| i.user_id.as_str()));
    let Some(identity) = identity else { return };
    if let Some(rooms) = presence_rooms {
        for room in rooms.take() {
            state.presence.exit(namespace, &room, &identity.user_id).await;
        }
    }
    state.presence.disconnect(&identity.user_id, identity.device.as_deref()).await;
    for late in state.seen.disconnected(&identity.user_id, &state.connections, clean) {
        send_late(&state.delivery, &late).await;
    }
}
