//! Issue: protection. Limits, token lifecycle, origins and hostile input: the server keeps
//! serving everyone else, and every refusal is clear and counted.

mod common;

use std::time::Duration;

use common::{spawn_app, spawn_app_with, TestClient, SECRET};
use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

fn token_expiring_in(user: &str, secs: u64, role: Option<&str>) -> String {
    let mut claims = json!({ "user_id": user, "exp": herald::auth::now_secs() + secs });
    if let Some(role) = role {
        claims["role"] = json!(role);
    }
    encode(&Header::default(), &claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
}

async fn metrics(app: &common::TestApp) -> String {
    app.http.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap()
}

/// A notification for `user` still reaches `client`: the server is serving.
async fn still_served(app: &common::TestApp, client: &mut TestClient, user: &str) {
    let id = app.notify_user(user, "still served").await;
    assert_eq!(client.next_notification().await.expect("still served")["id"], id.as_str());
}

#[tokio::test]
async fn connection_limits_refuse_with_the_spec_messages() {
    let app = spawn_app_with(|s| {
        s.limits.max_connections = 3;
        s.limits.max_connections_per_user = 2;
    })
    .await;
    let _a1 = app.connect("a").await;
    let _a2 = app.connect("a").await;
    let third = TestClient::connect(app.addr, &format!("token={}", app.token("a")), None, "/").await.err();
    assert_eq!(third.as_deref(), Some("too many connections"));
    let _b = app.connect("b").await;
    let full = TestClient::connect(app.addr, &format!("token={}", app.token("c")), None, "/").await.err();
    assert_eq!(full.as_deref(), Some("server full"));
    let text = metrics(&app).await;
    assert!(text.contains("herald_refusals_total{reason=\"too many connections\"} 1"), "{text}");
    assert!(text.contains("herald_refusals_total{reason=\"server full\"} 1"), "{text}");
}

#[tokio::test]
async fn connects_per_ip_are_rate_limited_and_proxies_are_believed_only_when_trusted() {
    let app = spawn_app_with(|s| s.limits.connects_per_ip_per_minute = 3).await;
    for user in ["1", "2", "3"] {
        app.connect(user).await;
    }
    let refused = TestClient::connect(app.addr, &format!("token={}", app.token("4")), None, "/").await.err();
    assert_eq!(refused.as_deref(), Some("rate limited"));

    // Behind a trusted proxy, each forwarded client has its own budget; an untrusted peer's
    // X-Forwarded-For is ignored.
    let proxied = spawn_app_with(|s| {
        s.limits.connects_per_ip_per_minute = 1;
        s.server.trusted_proxies = vec!["127.0.0.1".into()];
    })
    .await;
    for (i, client_ip) in ["203.0.113.1", "203.0.113.2"].iter().enumerate() {
        let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket&token={}", proxied.addr, proxied.token(&i.to_string()));
        let mut request = url.into_client_request().unwrap();
        request.headers_mut().insert("x-forwarded-for", client_ip.parse().unwrap());
        assert!(TestClient::connect_request(request, None, "/").await.is_ok(), "{client_ip}");
    }
}

#[tokio::test]
async fn event_floods_get_error_acks_and_sustained_abuse_is_disconnected() {
    let app = spawn_app_with(|s| s.limits.events_per_second = 5).await;
    let mut flooder = app.connect("f").await;
    let mut bystander = app.connect("b").await;
    let mut answers = vec![];
    for _ in 0..15 {
        answers.push(flooder.call("ping", &[json!({ "timestamp": 1 })]).await);
    }
    let refused = answers.iter().filter(|a| a["ok"] == false).count();
    assert!(refused >= 15 - 11, "a burst of 10 (2x the rate) then refusals: {answers:?}");
    assert!(answers.iter().filter(|a| a["ok"] == false).all(|a| a["error"] == "rate limited"));

    // Keep flooding: past the abuse threshold the server drops this socket, and only it.
    for _ in 0..200 {
        flooder.emit("ping", &[json!({ "timestamp": 1 })]).await;
    }
    assert!(flooder.closed_by_server().await, "abuser disconnected");
    still_served(&app, &mut bystander, "b").await;
    assert!(metrics(&app).await.contains("herald_event_refusals_total{reason=\"abuse_disconnect\"} 1"));
}

#[tokio::test]
async fn a_flooding_client_does_not_starve_the_others() {
    let app = spawn_app_with(|s| s.limits.events_per_second = 1_000_000).await;
    let mut flooder = app.connect("f").await;
    let mut others = vec![];
    for user in ["o1", "o2", "o3"] {
        others.push(app.connect(user).await);
    }
    let flood = tokio::spawn(async move {
        for i in 0..20_000 {
            flooder.emit("ping", &[json!({ "timestamp": i })]).await;
        }
        flooder
    });
    for round in 0..20 {
        for (i, client) in others.iter_mut().enumerate() {
            let id = app.notify_user(&format!("o{}", i + 1), &format!("round {round}")).await;
            assert_eq!(client.next_notification().await.expect("delivered during the flood")["id"], id.as_str());
        }
    }
    flood.await.unwrap();
}

#[tokio::test]
async fn tokens_are_warned_refreshed_and_expired() {
    let app = spawn_app_with(|s| s.auth.expiry_warning_secs = 2).await;
    let token = token_expiring_in("u", 3, Some("staff"));
    let mut client = TestClient::connect(app.addr, &format!("token={token}"), None, "/").await.unwrap();
    let warning = tokio::time::timeout(Duration::from_secs(3), client.next_event("auth:expiring")).await.unwrap().unwrap();
    assert!(warning[0]["expires_in"].as_u64().unwrap() <= 2);

    // Refresh: another user's token is refused; the same user's with a new role moves the rooms.
    let other = token_expiring_in("someone-else", 60, None);
    assert_eq!(client.call("auth:refresh", &[json!({ "token": other })]).await["error"], "token is for another user");
    assert_eq!(client.call("auth:refresh", &[json!({ "token": "garbage" })]).await["error"], "invalid token");
    let renewed = token_expiring_in("u", 3, Some("admin"));
    let answer = client.call("auth:refresh", &[json!({ "token": renewed })]).await;
    assert_eq!(answer["ok"], true, "{answer}");
    app.post("/api/v1/notify", json!({ "to": { "role": "staff" }, "type": "t", "message": "old role" })).await;
    app.post("/api/v1/notify", json!({ "to": { "role": "admin" }, "type": "t", "message": "new role" })).await;
    let n = client.next_notification().await.unwrap();
    assert_eq!(n["message"], "new role", "rooms follow the refreshed token");

    // Not refreshed again: told why, then disconnected at expiry.
    let expired = tokio::time::timeout(Duration::from_secs(5), client.next_event("auth:expired")).await.unwrap().unwrap();
    assert_eq!(expired[0]["reason"], "token expired");
    assert!(client.closed_by_server().await);
}

#[tokio::test]
async fn the_origin_allow_list_is_enforced_for_websocket_and_polling() {
    let app = spawn_app_with(|s| s.server.cors_origins = vec!["https://app.example".into()]).await;
    let url = |transport: &str| format!("ws://{}/socket.io/?EIO=4&transport={transport}&token={}", app.addr, app.token("1"));
    let with_origin = |origin: Option<&str>| {
        let mut request = url("websocket").into_client_request().unwrap();
        if let Some(origin) = origin {
            request.headers_mut().insert("origin", origin.parse().unwrap());
        }
        request
    };
    assert!(TestClient::connect_request(with_origin(Some("https://app.example")), None, "/").await.is_ok());
    assert!(TestClient::connect_request(with_origin(None), None, "/").await.is_ok(), "non-browser clients send no Origin");
    let refused = TestClient::connect_request(with_origin(Some("https://evil.example")), None, "/").await.err().unwrap();
    assert!(refused.contains("403"), "{refused}");

    let polling = app.url("/socket.io/?EIO=4&transport=polling");
    let evil = app.http.get(&polling).header("origin", "https://evil.example").send().await.unwrap();
    assert_eq!(evil.status(), 403);
    let good = app.http.get(&polling).header("origin", "https://app.example").send().await.unwrap();
    assert_eq!(good.status(), 200);
}

#[tokio::test]
async fn hostile_frames_over_websocket_and_polling_leave_others_served() {
    let app = spawn_app_with(|s| s.socketio.max_payload_bytes = 10_000).await;
    let mut bystander = app.connect("b").await;

    // Over WebSocket, each from a connection of its own.
    let deep = format!("42[\"room:join\",{}{}]", "[".repeat(5_000), "]".repeat(5_000));
    let oversized = format!("42[\"ping\",\"{}\"]", "x".repeat(50_000));
    let frames = [
        "42[",
        "4",
        "40/nope,",
        "43",
        "42[\"ping\",{\"timestamp\":1e999}]",
        &deep,
        &oversized,
        "6",
        "5",
        "451-[\"x\",{\"_placeholder\":true,\"num\":9}]",
    ];
    for frame in frames {
        let mut rude = app.connect("r").await;
        rude.send_raw(frame).await;
        rude.send_binary(vec![0xc3, 0x28, 0xff, 0xfe]).await;
    }
    // Invalid UTF-8 in a text frame cannot be built by a WebSocket library; send it by polling.
    let handshake = app.http.get(app.url("/socket.io/?EIO=4&transport=polling")).send().await.unwrap().text().await.unwrap();
    let sid = serde_json::from_str::<serde_json::Value>(&handshake[1..]).unwrap()["sid"].as_str().unwrap().to_string();
    let post = |body: Vec<u8>| app.http.post(app.url(&format!("/socket.io/?EIO=4&transport=polling&sid={sid}"))).body(body).send();
    for body in [vec![0xff, 0xfe, 0x34, 0x30], b"40\x1e42[".to_vec(), vec![b'4'; 20_000], b"\x1e\x1e\x1e".to_vec()] {
        let _ = post(body).await;
    }
    let garbage_handshake = app.http.get(app.url("/socket.io/?EIO=99&transport=carrier-pigeon")).send().await.unwrap();
    assert!(garbage_handshake.status().is_client_error());

    still_served(&app, &mut bystander, "b").await;
    let mut newcomer = app.connect("n").await;
    still_served(&app, &mut newcomer, "n").await;
}

#[tokio::test]
async fn a_raw_websocket_that_never_speaks_socketio_costs_nothing() {
    let app = spawn_app().await;
    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", app.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws.send(Message::Text("hello".into())).await.unwrap();
    let _ = tokio::time::timeout(Duration::from_millis(200), ws.next()).await;
    let mut client = app.connect("1").await;
    still_served(&app, &mut client, "1").await;
}
