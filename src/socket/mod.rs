//! The Socket.IO layer: who may connect to each namespace, and what a socket does on connect
//! (SPEC §2, §3: rooms, welcome, replay of what it missed) and on disconnect (the user's seen
//! mark). Client events live in [`events`].
//!
//! Every namespace in `socketio.namespaces` behaves like `/`: the same authentication, the same
//! automatic rooms, the same events. Handlers are generic over the adapter so that the embedded
//! default (local adapter) and the Redis cluster share this code.

mod events;
mod session;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ConnectInfo;
use socketioxide::adapter::Adapter;
use socketioxide::extract::{SocketRef, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::socket::DisconnectReason;
use socketioxide::SocketIo;
use socketioxide_core::adapter::{DefinedAdapter, Spawnable};

use crate::auth::Refusal;
use crate::connection::{self, client_ip, Admitted, Peer};
pub(crate) use crate::connection::PresenceRooms;
pub(crate) use events::refuse as refuse_room;
pub use session::run_expiries;
use crate::payload::Args;
use crate::state::AppState;

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

/// The connect middleware: refuses with a SPEC §2 message, or stores what [`connection::admit`]
/// found (the socket then holds a place in the counts until it disconnects).
async fn authenticate<A: Adapter>(state: &AppState, socket: &SocketRef<A>, auth: Option<serde_json::Value>) -> Result<(), Refusal> {
    let parts = socket.req_parts();
    let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    let sid = socket.id.to_string();
    let request = connection::Request {
        ip: client_ip(peer, &parts.headers, &state.trusted_proxies),
        auth: auth.as_ref(),
        query: parts.uri.query(),
        authorization: parts.headers.get(http::header::AUTHORIZATION).and_then(|h| h.to_str().ok()),
        sid: &sid,
        namespace: socket.ns(),
    };
    let admitted = connection::admit(state, request).await?;
    if let Some(identity) = &admitted.identity {
        socket.extensions.insert(identity.clone());
    }
    socket.extensions.insert(Counted(admitted));
    Ok(())
}

/// Marks a socket that holds a place in the connection counts (released on disconnect), with
/// what its connect found.
#[derive(Debug, Clone)]
struct Counted(Admitted);

impl<A: Adapter> Peer for SocketRef<A> {
    fn sid(&self) -> &str {
        self.id.as_str()
    }

    fn namespace(&self) -> &str {
        self.ns()
    }

    fn join(&self, rooms: Vec<String>) {
        (**self).join(rooms)
    }

    fn emit(&self, event: &str, args: &Args) -> Result<(), String> {
        (**self).emit(event, args).map_err(|e| e.to_string())
    }

    fn is_connected(&self) -> bool {
        self.connected()
    }
}

async fn on_connect<A: Adapter>(socket: SocketRef<A>, state: Arc<AppState>) {
    events::register(&socket, state.clone());
    session::watch_expiry(&state, &socket);
    let disconnect_state = state.clone();
    socket.on_disconnect(move |socket: SocketRef<A>, reason: DisconnectReason| {
        let state = disconnect_state.clone();
        async move { on_disconnect(&state, &socket, reason).await }
    });
    let Some(Counted(admitted)) = socket.extensions.get::<Counted>() else { return };
    connection::connected(&state, &socket, &admitted, |rooms| {
        socket.extensions.insert(rooms);
    })
    .await;
}

/// Releases the socket's place and records where its user stopped (see [`crate::seen`]).
async fn on_disconnect<A: Adapter>(state: &AppState, socket: &SocketRef<A>, reason: DisconnectReason) {
    state.metrics.inc("herald_disconnects_total", &[("reason", disconnect_reason(reason))]);
    tracing::debug!(sid = %socket.id, %reason, "disconnected");
    state.expiries.forget(socket.id);
    let Some(Counted(admitted)) = socket.extensions.remove::<Counted>() else { return };
    let clean = matches!(
        reason,
        DisconnectReason::TransportClose
            | DisconnectReason::ClientNSDisconnect
            | DisconnectReason::ServerNSDisconnect
            | DisconnectReason::ClosingServer
    );
    let presence_rooms = socket.extensions.remove::<PresenceRooms>();
    connection::disconnected(state, socket.ns(), &admitted, presence_rooms, clean).await;
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
