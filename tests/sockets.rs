//! SPEC §3 and §4: what a socket gets on connect and what it may ask for.

mod common;

use std::time::Duration;

use common::{spawn_app, spawn_app_with, TestClient};
use serde_json::json;

#[tokio::test]
async fn welcome_names_the_user_and_the_sid() {
    let app = spawn_app().await;
    let mut client = TestClient::connect(app.addr, &format!("token={}", app.token("42")), None, "/").await.unwrap();
    let welcome = client.next_event("notification").await.unwrap();
    assert_eq!(welcome[0]["type"], "welcome");
    assert_eq!(welcome[0]["message"], "connected");
    assert_eq!(welcome[0]["data"]["user_id"], "42");
    assert_eq!(welcome[0]["data"]["sid"], client.sid.as_str());
    let timestamp = welcome[0]["timestamp"].as_str().unwrap();
    assert!(chrono::DateTime::parse_from_rfc3339(timestamp).is_ok(), "{timestamp}");
}

#[tokio::test]
async fn token_rooms_and_the_sid_room_are_joined_on_connect() {
    let app = spawn_app().await;
    let token = app.token_with("5", Some("admin"), &["p1", "p2"]);
    let mut client = TestClient::connect(app.addr, &format!("token={token}"), None, "/").await.unwrap();
    let mut other = app.connect("6").await;
    let sid = client.sid.clone();
    for room in ["user_5", "role_admin", "project_p1", "project_p2", sid.as_str()] {
        let (status, _) = app.post("/api/v1/emit", json!({ "event": "probe", "args": [room], "rooms": [room] })).await;
        assert_eq!(status, 202);
        assert_eq!(client.next_event("probe").await, Some(vec![json!(room)]), "room {room}");
    }
    assert!(other.receives_nothing("probe", Duration::from_millis(300)).await);
}

#[tokio::test]
async fn room_join_follows_the_policy() {
    let app = spawn_app_with(|s| s.limits.max_rooms_per_socket = 2).await;
    let mut client = app.connect("1").await;
    let ok = |room: &str| json!({ "ok": true, "room": room });
    let err = |e: &str| json!({ "ok": false, "error": e });

    assert_eq!(client.call("room:join", &[json!("queue-updates")]).await, ok("queue-updates"));
    assert_eq!(client.call("room:join", &[json!({ "room": "test-progress-9" })]).await, ok("test-progress-9"));
    assert_eq!(client.call("room:join", &[json!("queue-updates")]).await, ok("queue-updates"), "rejoin is idempotent");
    assert_eq!(client.call("room:join", &[json!("system-alerts")]).await, err("room limit reached (2 rooms per socket)"));
    assert_eq!(client.call("room:join", &[json!("user_1")]).await, ok("user_1"), "own room");
    assert_eq!(client.call("room:join", &[json!("user_2")]).await, err("room not granted by your token"));
    assert_eq!(client.call("room:join", &[json!("role_admin")]).await, err("room not granted by your token"));
    assert_eq!(client.call("room:join", &[json!("project_x")]).await, err("room not granted by your token"));
    assert_eq!(client.call("room:join", &[json!("elsewhere")]).await, err("room not joinable"));
    assert_eq!(client.call("room:join", &[json!("")]).await, err("room name must be a non-empty string"));
    assert_eq!(client.call("room:join", &[json!("x".repeat(10_000))]).await, err("room name longer than 200 bytes"));
    assert_eq!(client.call("room:join", &[json!("test-progress-\u{7}")]).await, err("room name contains control characters"));
    for bad in [json!(12), json!(null), json!(["a"]), json!({ "name": "a" })] {
        let answer = client.call("room:join", std::slice::from_ref(&bad)).await;
        assert_eq!(answer["ok"], false, "{bad}");
    }
    assert_eq!(client.call("room:join", &[]).await["ok"], false, "no argument");

    assert_eq!(client.call("room:leave", &[json!("queue-updates")]).await, ok("queue-updates"));
    assert_eq!(client.call("room:join", &[json!("system-alerts")]).await, ok("system-alerts"), "leaving freed a place");
    assert_eq!(client.call("room:leave", &[json!("user_1")]).await, err("room granted by your token cannot be left"));

    // Joined rooms receive emits; left rooms do not.
    app.post("/api/v1/emit", json!({ "event": "e", "args": ["alert"], "rooms": ["system-alerts"] })).await;
    assert_eq!(client.next_event("e").await, Some(vec![json!("alert")]));
    app.post("/api/v1/emit", json!({ "event": "e", "args": ["queue"], "rooms": ["queue-updates"] })).await;
    assert!(client.receives_nothing("e", Duration::from_millis(300)).await);
}

#[tokio::test]
async fn ping_answers_with_pong_and_server_time() {
    let app = spawn_app().await;
    let mut client = app.connect("1").await;
    let ack = client.call("ping", &[json!({ "timestamp": 1234 })]).await;
    assert_eq!(ack["type"], "pong");
    assert_eq!(ack["timestamp"], 1234);
    assert!(ack["server_time"].as_u64().unwrap() > 1_700_000_000_000);
    let pong = client.next_event("pong").await.unwrap();
    assert_eq!(pong[0]["timestamp"], 1234);
    assert_eq!(client.call("ping", &[json!("nope")]).await["ok"], false);
}

#[tokio::test]
async fn unknown_events_and_malformed_frames_leave_everyone_served() {
    let app = spawn_app().await;
    let mut bystander = app.connect("2").await;
    let mut client = app.connect("1").await;
    assert_eq!(client.call("no-such-event", &[json!(1)]).await, json!({ "ok": false, "error": "unknown event" }));

    // Garbage from one client: broken JSON, bad packet types, binary junk.
    let mut rude = app.connect("3").await;
    for frame in ["42[", "42{\"a\":1}", "4x", "49", "42[\"room:join\"", "\u{0}\u{1}", "", "42[1,2,3]"] {
        rude.send_raw(frame).await;
    }
    rude.send_binary(vec![0xff, 0x00, 0x13, 0x37]).await;

    let (status, _) = app.post("/api/v1/notify", json!({ "to": { "user": 2 }, "type": "t", "message": "still here" })).await;
    assert_eq!(status, 202);
    assert_eq!(bystander.next_notification().await.unwrap()["message"], "still here");
    // The well-behaved client's connection is untouched too.
    assert_eq!(client.call("ping", &[json!({ "timestamp": 1 })]).await["type"], "pong");
}

#[tokio::test]
async fn other_namespaces_behave_like_the_root() {
    let app = spawn_app_with(|s| s.socketio.namespaces = vec!["/".into(), "/admin".into()]).await;
    let token = app.token("9");
    let mut admin = TestClient::connect(app.addr, &format!("token={token}"), None, "/admin").await.unwrap();
    assert_eq!(admin.next_event("notification").await.unwrap()[0]["data"]["user_id"], "9");
    assert_eq!(admin.call("room:join", &[json!("team-updates")]).await["ok"], true);
    let (status, _) = app.post("/api/v1/emit", json!({ "event": "hello", "args": [1], "namespace": "/admin", "rooms": ["user_9"] })).await;
    assert_eq!(status, 202);
    assert_eq!(admin.next_event("hello").await, Some(vec![json!(1)]));

    let unknown = TestClient::connect(app.addr, &format!("token={token}"), None, "/nope").await.err();
    assert!(unknown.is_some(), "unknown namespaces are refused");
    let anonymous = TestClient::connect(app.addr, "", None, "/admin").await.err();
    assert_eq!(anonymous.as_deref(), Some("missing token"));
}
