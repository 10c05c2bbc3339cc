//! Plain WebSocket clients on `/ws/notifications`: JSON text frames, the same auth, rooms,
//! replay, limits and delivery path as Socket.IO sockets (README "Plain WebSocket clients").

mod common;

use std::time::Duration;

use common::{spawn_app, spawn_app_with, TestApp, TestClient};
use futures_util::{SinkExt, StreamExt};
use herald::auth::mint_dev_token;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const WAIT: Duration = Duration::from_secs(5);

struct Plain {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// How a plain connection ended, as the client saw it.
#[derive(Debug, PartialEq)]
struct Closed(u16, String);

impl Plain {
    async fn open(app: &TestApp, query: &str) -> Plain {
        let url = format!("ws://{}/ws/notifications{query}", app.addr);
        let (ws, _) = tokio_tungstenite::connect_async(url).await.expect("upgrade");
        Plain { ws }
    }

    async fn open_with_header(app: &TestApp, token: &str) -> Plain {
        let mut request = format!("ws://{}/ws/notifications", app.addr).into_client_request().unwrap();
        request.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        let (ws, _) = tokio_tungstenite::connect_async(request).await.expect("upgrade");
        Plain { ws }
    }

    /// Connects with `?token=` and reads the welcome.
    async fn connect(app: &TestApp, user: &str) -> Plain {
        let mut plain = Plain::open(app, &format!("?token={}", app.token(user))).await;
        let welcome = plain.next().await.expect("welcome");
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        assert_eq!(welcome["data"]["user_id"], user);
        plain
    }

    async fn send(&mut self, frame: Value) {
        self.ws.send(Message::Text(frame.to_string().into())).await.unwrap();
    }

    /// The next JSON text frame (None: closed, or nothing within the wait).
    async fn next(&mut self) -> Option<Value> {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next()).await.ok()?? {
                Ok(Message::Text(text)) => return Some(serde_json::from_str(&text).expect("JSON text frame")),
                Ok(Message::Ping(_) | Message::Pong(_)) => continue,
                _ => return None,
            }
        }
    }

    /// The next frame of `kind` (`type`), skipping others.
    async fn next_of(&mut self, kind: &str) -> Value {
        loop {
            let frame = self.next().await.unwrap_or_else(|| panic!("no {kind} frame"));
            if frame["type"] == kind {
                return frame;
            }
        }
    }

    /// Sends a frame and returns the answer of the same type.
    async fn call(&mut self, frame: Value) -> Value {
        let kind = frame["type"].as_str().unwrap().to_string();
        self.send(frame).await;
        self.next_of(&kind).await
    }

    /// Reads until the server closes: the close code and reason.
    async fn closed(&mut self) -> Closed {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next()).await.expect("closed in time") {
                Some(Ok(Message::Close(Some(frame)))) => return Closed(u16::from(frame.code), frame.reason.to_string()),
                Some(Ok(Message::Close(None))) | None => return Closed(1005, String::new()),
                Some(Err(e)) => return Closed(1006, e.to_string()),
                Some(Ok(_)) => continue,
            }
        }
    }

    /// A clean close, as a browser tab's.
    async fn close(mut self) {
        let _ = self.ws.close(None).await;
        while let Ok(Some(Ok(_))) = tokio::time::timeout(WAIT, self.ws.next()).await {}
    }

    /// Nothing but heartbeats for `wait`.
    async fn receives_nothing(&mut self, wait: Duration) -> bool {
        match tokio::time::timeout(wait, self.next()).await {
            Err(_) => true,
            Ok(frame) => {
                eprintln!("unexpected frame: {frame:?}");
                false
            }
        }
    }
}

#[tokio::test]
async fn welcome_notifications_events_and_pong() {
    let app = spawn_app().await;
    let mut plain = Plain::connect(&app, "7").await;
    let id = app.notify_user("7", "graded").await;
    let n = plain.next().await.unwrap();
    assert_eq!((n["type"].as_str(), n["message"].as_str(), n["id"].as_str()), (Some("test"), Some("graded"), Some(id.as_str())));
    assert_eq!(n["channel"], "user_7");
    let (status, _) = app.post("/api/v1/emit", json!({ "event": "progress", "args": [1, {"a": "b"}], "rooms": ["user_7"] })).await;
    assert_eq!(status, 202);
    assert_eq!(plain.next().await.unwrap(), json!({ "type": "event", "event": "progress", "args": [1, {"a": "b"}] }));
    plain.send(json!({ "type": "ping", "timestamp": 1234, "user_id": "7", "username": "u" })).await;
    let pong = plain.next_of("pong").await;
    assert_eq!(pong["timestamp"], 1234);
    assert!(pong["server_time"].as_u64().unwrap() > 1_700_000_000_000);
    let (_, health) = app.get("/health").await;
    assert_eq!(health["transports"], json!({ "socketio": 0, "websocket": 1 }));
    let metrics = app.http.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("herald_connections_websocket 1\n"), "{metrics}");
}

#[tokio::test]
async fn auth_by_query_header_or_first_frame_and_refusal_codes() {
    let app = spawn_app_with(|s| s.websocket.auth_timeout_secs = 1).await;
    let mut header = Plain::open_with_header(&app, &app.token("1")).await;
    assert_eq!(header.next().await.unwrap()["type"], "welcome");
    let mut framed = Plain::open(&app, "").await;
    framed.send(json!({ "type": "auth", "token": app.token("2") })).await;
    assert_eq!(framed.next().await.unwrap()["data"]["user_id"], "2");

    let expired = mint_dev_token(common::SECRET, "3", None, &[], 0).unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for (query, code, reason) in [
        ("?token=garbage".to_string(), 4002, "invalid token"),
        (format!("?token={expired}"), 4003, "token expired"),
        (String::new(), 4001, "missing token"), // nothing within auth_timeout_secs
    ] {
        let mut refused = Plain::open(&app, &query).await;
        assert_eq!(refused.closed().await, Closed(code, reason.into()), "{query}");
    }
    let mut bad_frame = Plain::open(&app, "").await;
    bad_frame.send(json!({ "type": "auth", "token": "nope" })).await;
    assert_eq!(bad_frame.closed().await, Closed(4002, "invalid token".into()));
    let mut not_auth = Plain::open(&app, "").await;
    not_auth.send(json!({ "type": "ping" })).await;
    assert_eq!(not_auth.closed().await, Closed(4001, "missing token".into()));
}

#[tokio::test]
async fn per_user_limit_is_shared_with_socketio_and_server_full() {
    let app = spawn_app_with(|s| {
        s.limits.max_connections_per_user = 2;
        s.limits.max_connections = 3;
    })
    .await;
    let _sio = app.connect("5").await;
    let _plain = Plain::connect(&app, "5").await;
    let mut third = Plain::open(&app, &format!("?token={}", app.token("5"))).await;
    assert_eq!(third.closed().await, Closed(4029, "too many connections".into()));
    let _other = Plain::connect(&app, "6").await;
    let mut full = Plain::open(&app, &format!("?token={}", app.token("8"))).await;
    assert_eq!(full.closed().await, Closed(4503, "server full".into()));
    let refused = TestClient::connect(app.addr, &format!("token={}", app.token("5")), None, "/").await;
    assert!(refused.is_err(), "a socket.io tab counts with the plain one");
}

#[tokio::test]
async fn one_user_with_a_plain_tab_and_a_socketio_tab_gets_one_copy_each() {
    let app = spawn_app().await;
    let mut sio = app.connect("9").await;
    let mut plain = Plain::connect(&app, "9").await;
    let id = app.notify_user("9", "both").await;
    assert_eq!(plain.next().await.unwrap()["id"], id.as_str());
    assert_eq!(sio.next_notification().await.unwrap()["id"], id.as_str());
    let marker = app.notify_user("9", "marker").await;
    assert_eq!(plain.next().await.unwrap()["id"], marker.as_str(), "no second copy before the marker");
    assert_eq!(sio.next_notification().await.unwrap()["id"], marker.as_str());
    // Disconnecting the user closes every tab, whatever the transport.
    let (status, _) = app.post("/api/v1/users/9/disconnect", json!({})).await;
    assert_eq!(status, 202);
    assert_eq!(plain.closed().await, Closed(4000, "disconnected by server".into()));
    assert!(sio.closed_by_server().await);
}

#[tokio::test]
async fn replay_after_last_id_and_from_the_seen_mark() {
    let app = spawn_app().await;
    let mut plain = Plain::connect(&app, "11").await;
    let first = app.notify_user("11", "first").await;
    assert_eq!(plain.next().await.unwrap()["id"], first.as_str());
    tokio::time::sleep(Duration::from_millis(200)).await; // past the in-flight window of a clean close
    plain.close().await;
    app.wait_for_connections(0).await;
    let missed = app.notify_user("11", "missed").await;
    // An unchanged client: replayed from where the user stood.
    let mut back = Plain::connect(&app, "11").await;
    assert_eq!(back.next().await.unwrap()["id"], missed.as_str());
    back.close().await;
    app.wait_for_connections(0).await;
    // A client that sends ?last_id=: everything after it.
    let query = format!("?token={}&last_id={first}", app.token("11"));
    let mut resumed = Plain::open(&app, &query).await;
    assert_eq!(resumed.next().await.unwrap()["type"], "welcome");
    assert_eq!(resumed.next().await.unwrap()["id"], missed.as_str());
    assert!(resumed.receives_nothing(Duration::from_millis(300)).await);
    // The same in the auth frame.
    let mut framed = Plain::open(&app, "").await;
    framed.send(json!({ "type": "auth", "token": app.token("11"), "last_id": first })).await;
    assert_eq!(framed.next().await.unwrap()["type"], "welcome");
    assert_eq!(framed.next().await.unwrap()["id"], missed.as_str());
}

#[tokio::test]
async fn rooms_history_and_read_state() {
    let app = spawn_app().await;
    let mut plain = Plain::connect(&app, "12").await;
    let joined = plain.call(json!({ "type": "room:join", "room": "team-updates" })).await;
    assert_eq!(joined, json!({ "type": "room:join", "ok": true, "room": "team-updates" }));
    let refused = plain.call(json!({ "type": "room:join", "room": "user_13" })).await;
    assert_eq!(refused["ok"], false, "{refused}");
    assert!(refused["error"].is_string());
    let (status, _) = app.post("/api/v1/notify", json!({ "to": { "room": "team-updates" }, "type": "t", "message": "team" })).await;
    assert_eq!(status, 202);
    assert_eq!(plain.next().await.unwrap()["message"], "team");
    let left = plain.call(json!({ "type": "room:leave", "room": "team-updates" })).await;
    assert_eq!(left["ok"], true);
    let id = app.notify_user("12", "inbox").await;
    assert_eq!(plain.next().await.unwrap()["id"], id.as_str());
    let history = plain.call(json!({ "type": "notifications:history", "limit": 10 })).await;
    assert_eq!(history["ok"], true, "{history}");
    assert_eq!(history["items"][0]["id"], id.as_str());
    assert_eq!(history["unread"], 1);
    let read = plain.call(json!({ "type": "notifications:read", "ids": [id] })).await;
    assert_eq!(read, json!({ "type": "notifications:read", "ok": true, "unread": 0 }));
    let bad = plain.call(json!({ "type": "notifications:read", "ids": "x" })).await;
    assert_eq!(bad["ok"], false);
}

#[tokio::test]
async fn hostile_input_costs_only_its_sender() {
    let app = spawn_app_with(|s| {
        s.socketio.max_payload_bytes = 10_000;
        s.limits.events_per_second = 5;
    })
    .await;
    let mut bystander = Plain::connect(&app, "20").await;
    let mut hostile = Plain::connect(&app, "21").await;
    hostile.ws.send(Message::Text("{not json".into())).await.unwrap();
    let error = hostile.next().await.unwrap();
    assert_eq!(error["type"], "error", "{error}");
    hostile.ws.send(Message::Text("[1,2]".into())).await.unwrap();
    assert_eq!(hostile.next().await.unwrap()["type"], "error");
    let unknown = hostile.call(json!({ "type": "nope" })).await;
    assert_eq!(unknown, json!({ "type": "nope", "ok": false, "error": "unknown type" }));
    hostile.ws.send(Message::Binary(vec![0u8; 16].into())).await.unwrap();
    assert_eq!(hostile.closed().await.0, 1003);

    let mut huge = Plain::connect(&app, "22").await;
    let _ = huge.ws.send(Message::Text("x".repeat(50_000).into())).await;
    let closed = huge.closed().await;
    assert_eq!(closed.0, 1009, "{closed:?}");

    let mut flood = Plain::connect(&app, "23").await;
    let mut limited = false;
    // 10 allowed (burst), then refused; past 100 refusals the socket is closed.
    for _ in 0..112 {
        if flood.ws.send(Message::Text(json!({ "type": "ping" }).to_string().into())).await.is_err() {
            break;
        }
    }
    loop {
        match tokio::time::timeout(WAIT, flood.ws.next()).await.expect("flood answered") {
            Some(Ok(Message::Text(text))) => limited |= text.contains("rate limited"),
            Some(Ok(Message::Close(Some(frame)))) => {
                assert_eq!(frame.code, CloseCode::from(4008));
                break;
            }
            Some(Ok(_)) => {}
            other => panic!("flood ended without a 4008 close: {other:?}"),
        }
    }
    assert!(limited, "the flood was answered with rate limited first");

    let id = app.notify_user("20", "still served").await;
    assert_eq!(bystander.next().await.unwrap()["id"], id.as_str());
    bystander.send(json!({ "type": "ping", "timestamp": 1 })).await;
    let pong = bystander.next_of("pong").await;
    assert_eq!(pong["timestamp"], 1);
}

#[tokio::test]
async fn a_silent_peer_is_closed_by_the_heartbeat() {
    let app = spawn_app_with(|s| {
        s.socketio.ping_interval_secs = 1;
        s.socketio.ping_timeout_secs = 1;
    })
    .await;
    // tokio-tungstenite answers pings only while it is read: this client stops reading.
    let plain = Plain::connect(&app, "30").await;
    app.wait_for_connections(1).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    app.wait_for_connections(0).await;
    drop(plain);
}

#[tokio::test]
async fn disabled_endpoint_is_not_served() {
    let app = spawn_app_with(|s| s.websocket.enabled = false).await;
    let url = format!("ws://{}/ws/notifications?token={}", app.addr, app.token("1"));
    assert!(tokio_tungstenite::connect_async(url).await.is_err());
}

#[tokio::test]
async fn odd_frames_get_answers_never_a_crash() {
    let app = spawn_app_with(|s| s.limits.events_per_second = 1000).await;
    let mut odd = Plain::connect(&app, "40").await;
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let frames: Vec<String> = vec![
        "".into(),
        "null".into(),
        "{}".into(),
        r#"{"type":7}"#.into(),
        r#"{"type":null}"#.into(),
        deep,
        r#"{"type":"room:join"}"#.into(),
        r#"{"type":"room:join","room":""}"#.into(),
        format!(r#"{{"type":"room:join","room":"{}"}}"#, "r".repeat(5000)),
        r#"{"type":"room:join","room":"a\u0000b"}"#.into(),
        r#"{"type":"room:leave","room":"user_40"}"#.into(),
        r#"{"type":"notifications:history","before":"nope","limit":-1}"#.into(),
        r#"{"type":"notifications:read"}"#.into(),
        r#"{"type":"auth:refresh","token":"x"}"#.into(),
        r#"{"type":"auth","token":"x"}"#.into(),
        r#"{"type":"presence:list","room":"team-updates"}"#.into(),
        r#"{"type":"ping","timestamp":{"nested":[1,2,3]}}"#.into(),
        "\u{1F600}".into(),
    ];
    for frame in &frames {
        odd.ws.send(Message::Text(frame.clone().into())).await.unwrap();
        let answer = odd.next().await.unwrap_or_else(|| panic!("no answer to {frame:.60}"));
        assert!(answer["ok"] == false || answer["type"] == "error" || answer["type"] == "pong", "{frame:.60} → {answer}");
    }
    // Still connected and served.
    let id = app.notify_user("40", "after odd frames").await;
    assert_eq!(odd.next().await.unwrap()["id"], id.as_str());
}

#[tokio::test]
async fn anonymous_plain_clients_when_auth_is_not_required() {
    let app = spawn_app_with(|s| s.auth.required = false).await;
    let mut anonymous = Plain::open(&app, "").await;
    let welcome = anonymous.next().await.expect("welcome at once, no auth frame needed");
    assert_eq!(welcome["type"], "welcome");
    assert!(welcome["data"]["user_id"].is_null(), "{welcome}");
    let (status, _) = app.post("/api/v1/notify", json!({ "to": { "broadcast": true }, "type": "t", "message": "everyone" })).await;
    assert_eq!(status, 202);
    assert_eq!(anonymous.next().await.unwrap()["message"], "everyone");
    let history = anonymous.call(json!({ "type": "notifications:history" })).await;
    assert_eq!(history["ok"], false);
}
