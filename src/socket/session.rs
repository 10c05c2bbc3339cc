//! A socket's token over time: warned before it expires (`auth:expiring`), renewed with
//! `auth:refresh`, or disconnected at expiry after an `auth:expired` event that says why.
//!
//! A refreshed token must name the same user; its `role` and `projects` may change, and the
//! socket's rooms follow. One task runs the schedule of every socket's token ([`crate::expiry`]).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use socketioxide::adapter::Adapter;
use socketioxide::extract::SocketRef;
use socketioxide::SocketIo;

use crate::auth::{now_secs, Identity};
use crate::expiry::{Due, Schedule};
use crate::rooms::granted_rooms;
use crate::state::AppState;

/// Starts watching the socket's current token (on connect, and again after each refresh, which
/// replaces the watch).
pub fn watch_expiry<A: Adapter>(state: &AppState, socket: &SocketRef<A>) {
    let Some(identity) = socket.extensions.get::<Identity>() else { return };
    let warn_at = identity.expires_at.saturating_sub(state.settings.auth.expiry_warning_secs);
    state.expiries.watch(socket.id, socket.ns(), warn_at, identity.expires_at);
}

/// Runs the instance's token schedule ([`crate::expiry`]) until the application stops.
pub async fn run_expiries<A: Adapter>(io: SocketIo<A>, state: Arc<AppState>) {
    let Some(mut changes) = state.expiries.take_changes() else { return };
    let mut schedule = Schedule::default();
    loop {
        let next = schedule.next_at();
        tokio::select! {
            change = changes.recv() => match change {
                Some(change) => schedule.apply(change),
                None => return,
            },
            () = sleep_until(next) => {
                let now = now_secs();
                while let Some(due) = schedule.pop_due(now) {
                    step(&io, &state, due);
                }
            }
        }
    }
}

/// Sends what is due to the socket, if it is still connected here.
fn step<A: Adapter>(io: &SocketIo<A>, state: &AppState, due: Due) {
    let (Due::Warn { sid, namespace, .. } | Due::Expire { sid, namespace }) = &due;
    let Some(socket) = io.of(namespace).and_then(|ns| ns.get_socket(*sid)).filter(|s| s.connected()) else { return };
    match due {
        Due::Warn { expires_at, .. } => {
            let notice = json!({ "expires_at": expires_at, "expires_in": expires_at.saturating_sub(now_secs()) });
            let _ = socket.emit("auth:expiring", &notice);
        }
        Due::Expire { .. } => {
            state.metrics.inc("herald_token_expiries_total", &[]);
            let _ = socket.emit("auth:expired", &json!({ "reason": "token expired" }));
            tokio::spawn(async move {
                // Give the event a moment to leave before the disconnect packet.
                tokio::time::sleep(Duration::from_millis(50)).await;
                let _ = socket.disconnect();
            });
        }
    }
}

/// Until `epoch_secs` (unix seconds), or for ever.
async fn sleep_until(epoch_secs: Option<u64>) {
    let Some(epoch_secs) = epoch_secs else { return std::future::pending().await };
    let now = now_secs();
    if epoch_secs > now {
        tokio::time::sleep(Duration::from_secs(epoch_secs - now)).await;
    }
}

/// `auth:refresh` `{"token": "..."}` (or the token as a string): a new token for the same user.
pub fn refresh<A: Adapter>(state: &Arc<AppState>, socket: &SocketRef<A>, data: Option<Value>) -> Result<Value, String> {
    let token = match &data {
        Some(Value::String(t)) => t.as_str(),
        Some(Value::Object(map)) => map.get("token").and_then(Value::as_str).ok_or("expected {\"token\": \"<jwt>\"}")?,
        _ => return Err("expected {\"token\": \"<jwt>\"}".into()),
    };
    let old = socket.extensions.get::<Identity>().ok_or("anonymous sockets have no token to refresh")?;
    let new = state.verifier.verify(token).map_err(|r| r.to_string())?;
    if new.user_id != old.user_id {
        state.metrics.inc("herald_token_refreshes_total", &[("outcome", "other_user")]);
        return Err("token is for another user".into());
    }
    let (old_rooms, new_rooms) = (granted_rooms(&old), granted_rooms(&new));
    let dropped: Vec<String> = old_rooms.iter().filter(|r| !new_rooms.contains(r)).cloned().collect();
    socket.leave(dropped);
    socket.join(new_rooms);
    let expires_at = new.expires_at;
    socket.extensions.insert(new);
    watch_expiry(state, socket);
    state.metrics.inc("herald_token_refreshes_total", &[("outcome", "ok")]);
    Ok(json!({ "ok": true, "expires_at": expires_at }))
}
