//! The Socket.IO layer: who may connect to each namespace, and what a socket does on connect
//! (SPEC §2, §3). Client events live in [`events`].
//!
//! Every namespace in `socketio.namespaces` behaves like `/`: the same authentication, the same
//! automatic rooms, the same events. Handlers are generic over the adapter so that the embedded
//! default (local adapter) and the Redis cluster share this code.

mod events;

use std::sync::Arc;

use socketioxide::adapter::Adapter;
use socketioxide_core::adapter::DefinedAdapter;
use socketioxide::extract::{SocketRef, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::socket::DisconnectReason;
use socketioxide::SocketIo;

use crate::auth::{find_token, Identity, Refusal};
use crate::notification::{self, EVENT};
use crate::rooms::granted_rooms;
use crate::state::AppState;

/// Serves every configured namespace on `io`.
pub fn register<A: Adapter + DefinedAdapter>(io: &SocketIo<A>, state: Arc<AppState>) {
    for namespace in &state.settings.socketio.namespaces {
        let on_connect = {
            let state = state.clone();
            move |socket: SocketRef<A>| {
                let state = state.clone();
                async move { on_connect(socket, state) }
            }
        };
        let authenticate = {
            let state = state.clone();
            move |socket: SocketRef<A>, TryData(auth): TryData<serde_json::Value>| {
                let state = state.clone();
                async move { authenticate(&state, &socket, auth.ok()) }
            }
        };
        io.ns(namespace.clone(), on_connect.with(authenticate));
    }
}

/// The connect middleware: refuses with a SPEC §2 message, or stores the socket's [`Identity`].
fn authenticate<A: Adapter>(state: &AppState, socket: &SocketRef<A>, auth: Option<serde_json::Value>) -> Result<(), Refusal> {
    let result = check_connect(state, socket, auth);
    if let Err(refusal) = result {
        state.metrics.inc("herald_refusals_total", &[("reason", refusal.as_str())]);
        tracing::debug!(sid = %socket.id, ns = socket.ns(), %refusal, "connection refused");
    }
    result
}

fn check_connect<A: Adapter>(state: &AppState, socket: &SocketRef<A>, auth: Option<serde_json::Value>) -> Result<(), Refusal> {
    if state.is_draining() {
        return Err(Refusal::ServerFull);
    }
    let parts = socket.req_parts();
    let authorization = parts.headers.get(http::header::AUTHORIZATION).and_then(|h| h.to_str().ok());
    match find_token(auth.as_ref(), parts.uri.query(), authorization) {
        Some(token) => {
            let identity = state.verifier.verify(&token)?;
            socket.extensions.insert(identity);
            Ok(())
        }
        None if state.settings.auth.required => Err(Refusal::MissingToken),
        None => Ok(()),
    }
}

fn on_connect<A: Adapter>(socket: SocketRef<A>, state: Arc<AppState>) {
    let identity = socket.extensions.get::<Identity>();
    let mut rooms = vec![socket.id.to_string()];
    if let Some(identity) = &identity {
        rooms.extend(granted_rooms(identity));
    }
    socket.join(rooms);
    state.metrics.inc("herald_connects_total", &[]);
    tracing::debug!(sid = %socket.id, ns = socket.ns(), user = identity.as_ref().map(|i| i.user_id.as_str()), "connected");

    let welcome = notification::welcome(identity.as_ref().map(|i| i.user_id.as_str()), socket.id.as_str());
    if let Err(e) = socket.emit(EVENT, &welcome) {
        tracing::debug!(sid = %socket.id, error = %e, "welcome not sent");
    }

    events::register(&socket, state.clone());
    socket.on_disconnect(move |socket: SocketRef<A>, reason: DisconnectReason| {
        let state = state.clone();
        async move {
            state.metrics.inc("herald_disconnects_total", &[("reason", disconnect_reason(reason))]);
            tracing::debug!(sid = %socket.id, %reason, "disconnected");
        }
    });
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
