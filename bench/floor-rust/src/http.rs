//! The listener: hyper's HTTP/1.1 server on one port for everything, as Herald serves it.
//!
//! * `GET /health` → `{"status":"ok","connections":N,"dropped":N}`
//! * `POST /api/v1/notify` (`Authorization: Bearer <key>`) with Herald's body,
//!   `{"to":{"user"|"users"|"role"|"project"|"room"|"broadcast":…},"type","message","data","priority"}`
//!   → the notification to every socket in the room(s), `202 {"id":"<ms>-<seq>"}`; `400`/`401`
//!   like Herald for a bad body or key
//! * `GET /socket.io/?EIO=4&transport=websocket` with `Upgrade: websocket` → `101`, then the
//!   connection's task (`socket::serve`); long-polling is refused (`400`)

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, CONTENT_TYPE, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use crate::notification::{iso_now, Body};
use crate::rooms::ALL;
use crate::State;

const MAX_BODY: usize = 1_000_000;

pub async fn serve(listener: TcpListener, state: Arc<State>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // out of file descriptors, most likely: wait for some to be freed
                eprintln!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(req, state.clone()));
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).with_upgrades().await;
        });
    }
}

type Answer = Response<Full<Bytes>>;

fn answer(status: StatusCode, body: Value) -> Answer {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

async fn handle(req: Request<Incoming>, state: Arc<State>) -> Result<Answer, Infallible> {
    Ok(match (req.method(), req.uri().path()) {
        (&Method::GET, "/health") => answer(
            StatusCode::OK,
            json!({"status": "ok", "connections": state.rooms.sockets.load(Ordering::Relaxed),
                   "dropped": state.rooms.dropped.load(Ordering::Relaxed)}),
        ),
        (&Method::POST, "/api/v1/notify") => notify(req, &state).await,
        (&Method::GET, "/socket.io/") => upgrade(req, state),
        _ => answer(StatusCode::NOT_FOUND, json!({"error": "not found"})),
    })
}

fn query_param(query: &str, key: &str) -> Option<String> {
    // no percent-decoding: the values used here (EIO, transport, a JWT) never need it
    query.split('&').filter_map(|kv| kv.split_once('=')).find(|(k, v)| *k == key && !v.is_empty()).map(|(_, v)| v.to_string())
}

fn upgrade(mut req: Request<Incoming>, state: Arc<State>) -> Answer {
    let query = req.uri().query().unwrap_or("");
    let websocket = req.headers().get(UPGRADE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let (Some(key), true, Some("4"), Some("websocket")) = (
        req.headers().get(SEC_WEBSOCKET_KEY),
        websocket,
        query_param(query, "EIO").as_deref(),
        query_param(query, "transport").as_deref(),
    ) else {
        return answer(StatusCode::BAD_REQUEST, json!({"code": 3, "message": "the floor speaks EIO=4 over WebSocket only"}));
    };
    let accept = derive_accept_key(key.as_bytes());
    let token = query_param(query, "token");
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else { return };
        // Herald's WebSocket buffers: a 1 KiB read buffer, frames written at once.
        let config = WebSocketConfig::default().read_buffer_size(1024).write_buffer_size(0);
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await;
        crate::socket::serve(ws, token, state).await;
    });
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(SEC_WEBSOCKET_ACCEPT, HeaderValue::from_str(&accept).expect("base64"));
    r
}

async fn notify(req: Request<Incoming>, state: &State) -> Answer {
    let authorization = req.headers().get(hyper::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if !state.api_key_ok(authorization) {
        return answer(StatusCode::UNAUTHORIZED, json!({"error": "missing or invalid API key"}));
    }
    let bytes = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return answer(StatusCode::PAYLOAD_TOO_LARGE, json!({"error": "body too large"})),
    };
    let bad = |msg: &str| answer(StatusCode::BAD_REQUEST, json!({"error": msg}));
    let Ok(body) = serde_json::from_slice::<Value>(&bytes) else { return bad("body is not valid JSON") };
    let Some(to) = body.get("to").and_then(Value::as_object).filter(|o| o.len() == 1) else {
        return bad("to must be an object with one key");
    };
    let Some(notification) = Body::from_json(&body) else { return bad("type and message must be non-empty strings") };
    let name = |v: &Value| match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    // (room to emit to, the channel the payload names)
    let targets: Vec<(String, String)> = match to.iter().next() {
        Some((k, v)) if k == "user" => name(v).map(|u| format!("user_{u}")).into_iter().map(|r| (r.clone(), r)).collect(),
        Some((k, Value::Array(users))) if k == "users" && !users.is_empty() => {
            users.iter().filter_map(name).map(|u| format!("user_{u}")).map(|r| (r.clone(), r)).collect()
        }
        Some((k, v)) if k == "role" => name(v).map(|r| format!("role_{r}")).into_iter().map(|r| (r.clone(), r)).collect(),
        Some((k, v)) if k == "project" => name(v).map(|p| format!("project_{p}")).into_iter().map(|r| (r.clone(), r)).collect(),
        Some((k, v)) if k == "room" => name(v).into_iter().map(|r| (r.clone(), r)).collect(),
        Some((k, Value::Bool(true))) if k == "broadcast" => vec![(ALL.to_string(), "broadcast".to_string())],
        _ => vec![],
    };
    if targets.is_empty() {
        return bad("to must be an object with one of user, users, role, project, room, broadcast");
    }
    let id = state.ids.next();
    let timestamp = iso_now();
    for (room, channel) in &targets {
        state.rooms.emit(room, notification.frame(&timestamp, channel, &id));
    }
    answer(StatusCode::ACCEPTED, json!({"id": id}))
}
