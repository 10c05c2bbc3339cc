//! A socket's token over time: warned before it expires (`auth:expiring`), renewed with
//! `auth:refresh`, or disconnected at expiry after an `auth:expired` event that says why.
//!
//! A refreshed token must name the same user; its `role` and `projects` may change, and the
//! socket's rooms follow.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use socketioxide::adapter::Adapter;
use socketioxide::extract::SocketRef;

use crate::auth::{now_secs, Identity};
use crate::rooms::granted_rooms;
use crate::state::AppState;

/// Bumped on every refresh so that the watcher of an older token stands down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TokenGeneration(u64);

/// Starts watching the socket's current token.
pub fn watch_expiry<A: Adapter>(state: Arc<AppState>, socket: SocketRef<A>) {
    let Some(identity) = socket.extensions.get::<Identity>() else { return };
    let generation = socket.extensions.get::<TokenGeneration>().map_or(0, |g| g.0 + 1);
    socket.extensions.insert(TokenGeneration(generation));
    let warning = state.settings.auth.expiry_warning_secs;
    tokio::spawn(async move {
        let current =
            |socket: &SocketRef<A>| socket.connected() && socket.extensions.get::<TokenGeneration>() == Some(TokenGeneration(generation));
        let expires_at = identity.expires_at;
        let warn_at = expires_at.saturating_sub(warning);
        sleep_until(warn_at).await;
        if !current(&socket) {
            return;
        }
        let notice = json!({ "expires_at": expires_at, "expires_in": expires_at.saturating_sub(now_secs()) });
        let _ = socket.emit("auth:expiring", &notice);
        sleep_until(expires_at).await;
        if !current(&socket) {
            return;
        }
        state.metrics.inc("herald_token_expiries_total", &[]);
        let _ = socket.emit("auth:expired", &json!({ "reason": "token expired" }));
        // Give the event a moment to leave before the disconnect packet.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _ = socket.clone().disconnect();
    });
}

async fn sleep_until(epoch_secs: u64) {
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
    watch_expiry(state.clone(), socket.clone());
    state.metrics.inc("herald_token_refreshes_total", &[("outcome", "ok")]);
    Ok(json!({ "ok": true, "expires_at": expires_at }))
}
