//! Presence, webhooks and devices in the embedded default (the cluster cases run against three
//! real instances in `client-test/backends/test/10-presence.test.js`).

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::HeaderMap;
use common::{spawn_app_with, TestApp, TestClient};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

async fn presence(app: &TestApp, user: &str) -> Value {
    let (status, body) = app.get_with_key(&format!("/api/v1/presence/users/{user}")).await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn connect_on(app: &TestApp, user: &str, device: &str) -> TestClient {
    let auth = json!({ "token": app.token(user), "device": device });
    let mut client = TestClient::connect(app.addr, "", Some(auth), "/").await.expect("connects");
    assert_eq!(client.next_event("notification").await.unwrap()[0]["type"], "welcome");
    client
}

#[tokio::test]
async fn a_user_is_online_while_a_tab_is_and_for_the_grace_after() {
    let app = spawn_app_with(|s| s.presence.grace_secs = 1).await;
    let tab = app.connect("42").await;
    let phone = connect_on(&app, "42", "mobile").await;
    let p = presence(&app, "42").await;
    assert_eq!((p["online"].clone(), p["sockets"].clone(), p["devices"].clone()), (json!(true), json!(2), json!({ "mobile": 1 })));
    assert!(p["since"].is_string(), "{p}");

    let (status, bulk) = app.post("/api/v1/presence/users", json!({ "users": ["42", 43, "44"] })).await;
    assert_eq!(status, 200);
    assert_eq!(bulk, json!({ "count": 1, "online": ["42"], "offline": ["43", "44"] }));

    tab.disconnect().await;
    phone.disconnect().await;
    app.wait_for_connections(0).await;
    let p = presence(&app, "42").await;
    assert_eq!((p["online"].clone(), p["sockets"].clone()), (json!(true), json!(0)), "within the grace: {p}");
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(presence(&app, "42").await["online"], false);

    let (status, body) = app.post("/api/v1/presence/users", json!({ "users": "42" })).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(app.get_with_key("/api/v1/presence/rooms/lobby").await.0, 404, "no presence in rooms not in presence.rooms");
}

#[tokio::test]
async fn a_notification_to_a_device_reaches_only_that_device() {
    let app = spawn_app_with(|_| {}).await;
    let mut web = connect_on(&app, "7", "web").await;
    let mut phone = connect_on(&app, "7", "mobile").await;
    let (status, _) = app.post("/api/v1/notify", json!({ "to": { "user": "7", "device": "mobile" }, "type": "t", "message": "phone only" })).await;
    assert_eq!(status, 202);
    let (status, _) = app.post("/api/v1/notify", json!({ "to": { "user": "7" }, "type": "t", "message": "all" })).await;
    assert_eq!(status, 202);
    assert_eq!(phone.next_notification().await.unwrap()["message"], "phone only");
    assert_eq!(phone.next_notification().await.unwrap()["message"], "all");
    assert_eq!(web.next_notification().await.unwrap()["message"], "all", "web never gets the phone's");
    let (status, body) = app.post("/api/v1/notify", json!({ "to": { "user": "7", "device": "" }, "type": "t", "message": "m" })).await;
    assert_eq!(status, 400, "{body}");
}

/// A webhook receiver: records each call's headers and body.
async fn receiver() -> (String, Arc<Mutex<Vec<(HeaderMap, Vec<u8>)>>>) {
    let calls: Arc<Mutex<Vec<(HeaderMap, Vec<u8>)>>> = Arc::default();
    let recorded = calls.clone();
    let router = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let recorded = recorded.clone();
            async move {
                recorded.lock().unwrap().push((headers, body.to_vec()));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    (url, calls)
}

fn verifies(secret: &str, headers: &HeaderMap, body: &[u8]) -> bool {
    let timestamp = headers["herald-timestamp"].to_str().unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(body);
    let expected: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    headers["herald-signature"].to_str().unwrap() == format!("v1={expected}")
}

#[tokio::test]
async fn missed_notifications_of_an_offline_user_are_one_signed_call() {
    let (url, calls) = receiver().await;
    let app = spawn_app_with(|s| {
        s.webhooks.urls = vec![url];
        s.webhooks.secret = "hook-secret".into();
        s.webhooks.batch_window_ms = 500;
    })
    .await;
    let mut online = app.connect("here").await;
    for i in 0..3 {
        for user in ["away", "here"] {
            let (status, _) = app.post("/api/v1/notify", json!({ "to": { "user": user }, "type": "t", "message": format!("n{i}") })).await;
            assert_eq!(status, 202);
        }
    }
    assert_eq!(online.next_notification().await.unwrap()["message"], "n0");
    let missed = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let calls = calls.lock().unwrap();
        let missed: Vec<(HeaderMap, Value)> = calls
            .iter()
            .filter(|(h, _)| h["herald-event"] == "notification.missed")
            .map(|(h, b)| (h.clone(), serde_json::from_slice(b).unwrap()))
            .collect();
        if !missed.is_empty() {
            break missed;
        }
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    let calls = calls.lock().unwrap();
    assert_eq!(calls.iter().filter(|(h, _)| h["herald-event"] == "notification.missed").count(), 1, "one batch");
    let (headers, body) = &missed[0];
    assert_eq!(body["data"]["user"], "away", "nothing for the online user");
    let messages: Vec<&str> = body["data"]["notifications"].as_array().unwrap().iter().map(|n| n["notification"]["message"].as_str().unwrap()).collect();
    assert_eq!(messages, ["n0", "n1", "n2"]);
    assert_eq!(headers["herald-event-id"].to_str().unwrap(), body["id"].as_str().unwrap());
    let raw = &calls.iter().find(|(h, _)| h["herald-event"] == "notification.missed").unwrap().1;
    assert!(verifies("hook-secret", headers, raw), "signed with the secret");
    assert!(!verifies("another-secret", headers, raw));
    let online_events = calls.iter().filter(|(h, _)| h["herald-event"] == "user.online").count();
    assert_eq!(online_events, 1, "user.online for the user who connected");
}

#[tokio::test]
async fn with_unread_after_a_delivered_notification_left_unread_is_missed_too() {
    let (url, calls) = receiver().await;
    let app = spawn_app_with(|s| {
        s.webhooks.urls = vec![url];
        s.webhooks.secret = "hook-secret".into();
        s.webhooks.batch_window_ms = 200;
        s.webhooks.unread_after_secs = 1;
    })
    .await;
    let mut tab = app.connect("reader").await;
    let unread_id = app.notify_user("reader", "left unread").await;
    let read_id = app.notify_user("reader", "read at once").await;
    assert_eq!(tab.next_notification().await.unwrap()["id"], unread_id.as_str());
    assert_eq!(tab.next_notification().await.unwrap()["id"], read_id.as_str());
    let ack = tab.call("notifications:read", &[json!({ "ids": [read_id] })]).await;
    assert_eq!(ack["ok"], true, "{ack}");
    let body = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let calls = calls.lock().unwrap();
        if let Some((_, body)) = calls.iter().find(|(h, _)| h["herald-event"] == "notification.missed") {
            break serde_json::from_slice::<Value>(body).unwrap();
        }
    };
    let items = body["data"]["notifications"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{body}");
    assert_eq!(items[0]["reason"], "unread");
    assert_eq!(items[0]["notification"]["id"], unread_id.as_str());
}
