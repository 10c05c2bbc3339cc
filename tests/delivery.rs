//! SPEC §7 in the embedded default: what a user missed comes back, once, in order.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{spawn_app, spawn_app_with};
use serde_json::json;

#[tokio::test]
async fn a_user_who_was_offline_gets_what_was_missed_in_order_then_live() {
    let app = spawn_app().await;
    app.connect("42").await.disconnect().await;
    app.wait_for_connections(0).await;

    let sent = [app.notify_user("42", "one").await, app.notify_user("42", "two").await, app.notify_user("42", "three").await];
    let mut client = app.connect("42").await;
    for (id, message) in sent.iter().zip(["one", "two", "three"]) {
        let n = client.next_notification().await.expect("replayed");
        assert_eq!((n["id"].as_str(), n["message"].as_str()), (Some(id.as_str()), Some(message)));
        assert_eq!(n["channel"], "user_42", "replayed payload is the original envelope");
    }
    let live = app.notify_user("42", "four").await;
    let n = client.next_notification().await.expect("live");
    assert_eq!(n["id"], live.as_str());
    assert!(client.receives_nothing("notification", Duration::from_millis(300)).await, "nothing twice");
}

#[tokio::test]
async fn a_lost_connection_is_replayed_what_was_sent_to_it_while_it_was_dead() {
    // Heartbeat window: 2 s ping interval + 2 s timeout.
    let app = spawn_app_with(|s| (s.socketio.ping_interval_secs, s.socketio.ping_timeout_secs) = (2, 2)).await;
    let dead = app.connect("11").await; // from here on it reads nothing and answers no ping
    tokio::time::sleep(Duration::from_secs(1)).await; // well inside the heartbeat window
    let lost = app.notify_user("11", "sent into the void").await;
    // The seen mark follows what was delivered (within two 1 s flushes), then the missed pong
    // ends the socket: its mark must go back before `lost`.
    tokio::time::sleep(Duration::from_secs(5)).await;
    app.wait_for_connections(0).await;
    drop(dead);

    let mut back = app.connect("11").await;
    let n = back.next_notification().await.expect("replayed after the lost connection");
    assert_eq!(n["id"], lost.as_str());
}

#[tokio::test]
async fn each_device_resumes_after_its_own_last_id() {
    let app = spawn_app().await;
    let a = app.notify_user("7", "a").await;
    let b = app.notify_user("7", "b").await;
    let c = app.notify_user("7", "c").await;

    let mut phone = app.connect_after("7", Some(&a)).await;
    let mut laptop = app.connect_after("7", Some(&b)).await;
    assert_eq!(received_ids(&mut phone).await, vec![b.clone(), c.clone()]);
    assert_eq!(received_ids(&mut laptop).await, vec![c.clone()]);
}

/// The ids of the notifications that arrive until none comes for a while.
async fn received_ids(client: &mut common::TestClient) -> Vec<String> {
    let mut ids = vec![];
    while let Ok(Some(n)) = tokio::time::timeout(Duration::from_millis(400), client.next_notification()).await {
        ids.push(n["id"].as_str().unwrap().to_string());
    }
    ids
}

#[tokio::test]
async fn over_the_cap_the_newest_come_with_a_summary() {
    let app = spawn_app_with(|s| s.delivery.max_replay = 3).await;
    app.connect("9").await.disconnect().await;
    app.wait_for_connections(0).await;
    let mut sent = vec![];
    for i in 0..5 {
        sent.push(app.notify_user("9", &format!("m{i}")).await);
    }
    let mut client = app.connect("9").await;
    let summary = client.next_notification().await.unwrap();
    assert_eq!(summary["type"], "offline_summary");
    assert_eq!(summary["data"]["missed"], 5);
    assert_eq!(summary["data"]["replayed"], 3);
    assert_eq!(summary["data"]["by_type"], json!({ "test": 5 }));
    for id in &sent[2..] {
        assert_eq!(client.next_notification().await.unwrap()["id"], id.as_str());
    }
}

#[tokio::test]
async fn replay_racing_live_delivery_loses_and_repeats_nothing() {
    let app = spawn_app().await;
    app.connect("5").await.disconnect().await;
    app.wait_for_connections(0).await;

    let total = 150;
    let sender = {
        let http = app.http.clone();
        let url = app.url("/api/v1/notify");
        tokio::spawn(async move {
            let mut ids = vec![];
            for i in 0..total {
                let body = json!({ "to": { "user": 5 }, "type": "race", "message": format!("{i}") });
                let response = http.post(&url).bearer_auth(common::API_KEY).json(&body).send().await.unwrap();
                ids.push(response.json::<serde_json::Value>().await.unwrap()["id"].as_str().unwrap().to_string());
            }
            ids
        })
    };
    tokio::time::sleep(Duration::from_millis(30)).await; // connect while notifications are flowing
    let mut client = app.connect("5").await;
    let sent = sender.await.unwrap();
    let mut received = vec![];
    while received.len() < total {
        match client.next_notification().await {
            Some(n) => received.push(n["id"].as_str().unwrap().to_string()),
            None => break,
        }
    }
    let unique: HashSet<&String> = received.iter().collect();
    assert_eq!(unique.len(), received.len(), "duplicates: {received:?}");
    assert_eq!(unique, sent.iter().collect::<HashSet<_>>(), "every notification arrives");
    assert!(client.receives_nothing("notification", Duration::from_millis(300)).await);
}

#[tokio::test]
async fn history_and_read_state_over_the_socket_and_http() {
    let app = spawn_app().await;
    let ids: Vec<String> = futures_util::future::join_all((0..4).map(|i| {
        let app = &app;
        async move { app.notify_user("3", &format!("n{i}")).await }
    }))
    .await;
    let mut sorted = ids.clone();
    sorted.sort_by_key(|id| id.split_once('-').map(|(a, b)| (a.parse::<u64>().unwrap(), b.parse::<u64>().unwrap())).unwrap());
    let mut client = app.connect("3").await;

    let page = client.call("notifications:history", &[json!({ "limit": 2 })]).await;
    assert_eq!(page["ok"], true);
    assert_eq!(page["unread"], 4);
    let items = page["items"].as_array().unwrap();
    assert_eq!(
        items.iter().map(|i| i["id"].as_str().unwrap()).collect::<Vec<_>>(),
        vec![sorted[3].as_str(), sorted[2].as_str()],
        "newest first"
    );
    assert_eq!(items[0]["read"], false);
    let older = client.call("notifications:history", &[json!({ "before": sorted[2] })]).await;
    assert_eq!(older["items"].as_array().unwrap().len(), 2);

    let read = client.call("notifications:read", &[json!({ "ids": [sorted[3]] })]).await;
    assert_eq!(read, json!({ "ok": true, "unread": 3 }));
    let read = client.call("notifications:read", &[json!({ "up_to": sorted[1] })]).await;
    assert_eq!(read, json!({ "ok": true, "unread": 1 }));
    for bad in [json!({}), json!({ "ids": [5] }), json!("x"), json!({ "up_to": "nope" })] {
        assert_eq!(client.call("notifications:read", std::slice::from_ref(&bad)).await["ok"], false, "{bad}");
    }
    assert_eq!(client.call("notifications:history", &[json!({ "limit": -1 })]).await["ok"], false);

    // Read state survives reconnects and is the same over HTTP.
    client.disconnect().await;
    let mut client = app.connect("3").await;
    assert_eq!(client.call("notifications:history", &[json!({})]).await["unread"], 1);
    let response = app.http.get(app.url("/api/v1/users/3/notifications?limit=10")).bearer_auth(common::API_KEY).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["unread"], 1);
    assert_eq!(body["items"].as_array().unwrap().len(), 4);
    let (status, body) = app.post("/api/v1/users/3/notifications/read", json!({ "up_to": sorted[3] })).await;
    assert_eq!((status, body), (200, json!({ "ok": true, "unread": 0 })));
    let (status, _) = app.post("/api/v1/users/3/notifications/read", json!({ "nothing": 1 })).await;
    assert_eq!(status, 400);
    let unauthorized = app.http.get(app.url("/api/v1/users/3/notifications")).send().await.unwrap();
    assert_eq!(unauthorized.status(), 401);
}

#[tokio::test]
async fn producer_ids_are_kept_and_the_stream_id_is_added() {
    let app = spawn_app().await;
    let mut client = app.connect("8").await;
    let (status, _) =
        app.post("/api/v1/emit", json!({ "event": "notification", "args": [{ "id": 99, "type": "x" }], "rooms": ["user_8"] })).await;
    assert_eq!(status, 202);
    let n = client.next_notification().await.unwrap();
    assert_eq!(n["id"], 99);
    assert!(n["_herald_id"].as_str().unwrap().contains('-'));
}
