//! One connection, one task: the least Engine.IO v4 / Socket.IO v5 a socket.io client (and
//! `bench/loadgen`) needs over a WebSocket.
//!
//! * server → `0{"sid":…,"upgrades":[],"pingInterval":15000,…}` (Engine.IO open)
//! * client → `40{"token":"<jwt>"}` (CONNECT to `/`; `?token=` in the URL also works)
//! * server → `40{"sid":…}` and the welcome `42["notification",{"type":"welcome",…}]`, or
//!   `44{"message":"invalid token"}` and close
//! * client → `42<n>["room:join","<room>"]`, server → `43<n>[{"ok":true,"room":"<room>"}]`
//! * server → `2` every 15 s (ping), client → `3`; a client `2` is answered with `3`
//! * server → `42["notification",{…}]` for every notification to one of the socket's rooms
//!
//! Namespaces other than `/`, binary packets, `room:leave` and pong timeouts are not handled.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::notification::iso_now;
use crate::rooms::{ALL, OUTBOX};
use crate::State;

const PING_INTERVAL: Duration = Duration::from_secs(15);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn serve<S>(ws: WebSocketStream<S>, query_token: Option<String>, state: Arc<State>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (id, sid) = state.next_sid();
    let (mut sink, mut stream) = ws.split();
    let open = format!(
        "0{{\"sid\":\"{sid}\",\"upgrades\":[],\"pingInterval\":{},\"pingTimeout\":30000,\"maxPayload\":1000000}}",
        PING_INTERVAL.as_millis()
    );
    if sink.send(Message::text(open)).await.is_err() {
        return;
    }
    // The CONNECT packet, with the token in its auth object.
    let connect = match tokio::time::timeout(CONNECT_TIMEOUT, stream.next()).await {
        Ok(Some(Ok(Message::Text(t)))) if t.starts_with("40") => t,
        _ => return,
    };
    let auth: Option<Value> = serde_json::from_str(&connect[2..]).ok();
    let token = auth.as_ref().and_then(|a| a.get("token")).and_then(Value::as_str).map(String::from).or(query_token);
    let Some(identity) = token.and_then(|t| state.verify(&t)) else {
        let _ = sink.send(Message::text("44{\"message\":\"invalid token\"}")).await;
        let _ = sink.close().await;
        return;
    };

    let (outbox, mut inbox) = mpsc::channel::<Message>(OUTBOX);
    let mut rooms = vec![ALL.to_string(), format!("user_{}", identity.user_id)];
    rooms.extend(identity.role.iter().map(|r| format!("role_{r}")));
    rooms.extend(identity.projects.iter().map(|p| format!("project_{p}")));
    for room in &rooms {
        state.rooms.join(room, id, &outbox);
    }
    state.rooms.sockets.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let welcome = json!({"type": "welcome", "message": "connected", "timestamp": iso_now(),
                         "data": {"user_id": identity.user_id, "sid": sid}});
    let hello = [format!("40{{\"sid\":\"{sid}\"}}"), format!("42[\"notification\",{welcome}]")];
    let mut ok = true;
    for frame in hello {
        ok &= sink.send(Message::text(frame)).await.is_ok();
    }

    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PING_INTERVAL, PING_INTERVAL);
    while ok {
        tokio::select! {
            Some(msg) = inbox.recv() => ok = sink.send(msg).await.is_ok(),
            _ = ping.tick() => ok = sink.send(Message::text("2")).await.is_ok(),
            msg = stream.next() => match msg {
                Some(Ok(Message::Text(t))) => match on_packet(&t, id, &outbox, &mut rooms, &state) {
                    Reply::Send(frame) => ok = sink.send(Message::text(frame)).await.is_ok(),
                    Reply::Close => ok = false,
                    Reply::Nothing => {}
                },
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => ok = false,
                Some(Ok(_)) => {} // ping/pong frames are answered by tungstenite; binary ignored
            },
        }
    }
    for room in &rooms {
        state.rooms.leave(room, id);
    }
    state.rooms.sockets.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
}

enum Reply {
    Send(String),
    Close,
    Nothing,
}

/// One text frame from the client after CONNECT.
fn on_packet(text: &str, id: u64, outbox: &mpsc::Sender<Message>, rooms: &mut Vec<String>, state: &State) -> Reply {
    match text.as_bytes().first() {
        Some(b'2') => return Reply::Send("3".into()), // client ping
        Some(b'1') => return Reply::Close,           // Engine.IO close
        Some(b'4') => {}
        _ => return Reply::Nothing, // `3` (pong) and anything else
    }
    match text.get(..2) {
        Some("41") => return Reply::Close, // Socket.IO DISCONNECT
        Some("42") => {}
        _ => return Reply::Nothing,
    }
    // `42<ack id>[event, args…]`
    let rest = &text[2..];
    let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
    let ack = &rest[..digits];
    let Ok(Value::Array(args)) = serde_json::from_str::<Value>(&rest[digits..]) else { return Reply::Nothing };
    if args.first().and_then(Value::as_str) != Some("room:join") {
        return Reply::Nothing;
    }
    let room = match args.get(1) {
        Some(Value::String(s)) => Some(s.as_str()),
        Some(Value::Object(o)) => o.get("room").and_then(Value::as_str),
        _ => None,
    };
    // Rooms named like a grant are the token's business; any other room may be joined.
    let answer = match room {
        None => json!({"ok": false, "error": "expected a room name or {\"room\": \"<name>\"}"}),
        Some(r) if rooms.iter().any(|have| have == r) => json!({"ok": true, "room": r}),
        Some(r) if r.starts_with("user_") || r.starts_with("role_") || r.starts_with("project_") => {
            json!({"ok": false, "error": "room not granted by your token"})
        }
        Some(r) => {
            state.rooms.join(r, id, outbox);
            rooms.push(r.to_string());
            json!({"ok": true, "room": r})
        }
    };
    if ack.is_empty() {
        Reply::Nothing
    } else {
        Reply::Send(format!("43{ack}[{answer}]"))
    }
}
