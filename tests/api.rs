//! SPEC §6 (HTTP ingress) and the `/health`, `/ready` rows of §8.

mod common;

use std::time::Duration;

use common::{spawn_app, spawn_app_with, TestClient, API_KEY};
use serde_json::{json, Value};

#[tokio::test]
async fn notify_builds_the_envelope_for_every_tab_of_the_user() {
    let app = spawn_app().await;
    let mut tab1 = app.connect("42").await;
    let mut tab2 = app.connect("42").await;
    let mut stranger = app.connect("43").await;

    let (status, body) = app
        .post(
            "/api/v1/notify",
            json!({ "to": { "user": 42 }, "type": "grade", "message": "Essay graded", "data": { "score": 9.5 }, "priority": 3 }),
        )
        .await;
    assert_eq!(status, 202);
    let id = body["id"].as_str().expect("id").to_string();

    for tab in [&mut tab1, &mut tab2] {
        let n = tab.next_notification().await.expect("notification");
        assert_eq!(n["id"], id.as_str());
        assert_eq!(n["type"], "grade");
        assert_eq!(n["message"], "Essay graded");
        assert_eq!(n["data"], json!({ "score": 9.5 }));
        assert_eq!(n["priority"], 3);
        assert_eq!(n["channel"], "user_42");
        assert!(chrono::DateTime::parse_from_rfc3339(n["timestamp"].as_str().unwrap()).is_ok());
    }
    assert!(stranger.receives_nothing("notification", Duration::from_millis(300)).await);
}

#[tokio::test]
async fn notify_reaches_each_kind_of_recipient() {
    let app = spawn_app().await;
    let token = app.token_with("1", Some("admin"), &["p7"]);
    let mut one = TestClient::connect(app.addr, &format!("token={token}"), None, "/").await.unwrap();
    let mut two = app.connect("2").await;
    assert_eq!(two.call("room:join", &[json!("team-updates")]).await["ok"], true);

    let cases: [(Value, &str, bool, bool); 6] = [
        (json!({ "users": [1, "2"] }), "user_", true, true),
        (json!({ "role": "admin" }), "role_admin", true, false),
        (json!({ "project": "p7" }), "project_p7", true, false),
        (json!({ "room": "team-updates" }), "team-updates", false, true),
        (json!({ "broadcast": true }), "broadcast", true, true),
        (json!({ "user": "2" }), "user_2", false, true),
    ];
    for (to, channel, reaches_one, reaches_two) in cases {
        let (status, _) = app.post("/api/v1/notify", json!({ "to": to, "type": "t", "message": "m" })).await;
        assert_eq!(status, 202, "{to}");
        for (client, expected) in [(&mut one, reaches_one), (&mut two, reaches_two)] {
            if expected {
                let n = client.next_notification().await.unwrap_or_else(|| panic!("{to} not delivered"));
                assert!(n["channel"].as_str().unwrap().starts_with(channel), "{to}: {n}");
            } else {
                assert!(client.receives_nothing("notification", Duration::from_millis(200)).await, "{to} leaked");
            }
        }
    }
}

#[tokio::test]
async fn emit_sends_any_event_with_several_arguments_to_rooms_except_others() {
    let app = spawn_app().await;
    let mut a = app.connect("1").await;
    let mut b = app.connect("2").await;
    for c in [&mut a, &mut b] {
        assert_eq!(c.call("room:join", &[json!("shared-tests")]).await["ok"], true);
    }
    let (status, _) = app
        .post(
            "/api/v1/emit",
            json!({ "event": "test:done", "args": [1, "two", { "three": 3 }, null], "rooms": ["shared-tests"], "except": ["user_2"] }),
        )
        .await;
    assert_eq!(status, 202);
    assert_eq!(a.next_event("test:done").await, Some(vec![json!(1), json!("two"), json!({ "three": 3 }), Value::Null]));
    assert!(b.receives_nothing("test:done", Duration::from_millis(300)).await);

    let (status, _) = app.post("/api/v1/emit", json!({ "event": "everyone" })).await;
    assert_eq!(status, 202);
    assert_eq!(a.next_event("everyone").await, Some(vec![]));
    assert_eq!(b.next_event("everyone").await, Some(vec![]));
}

#[tokio::test]
async fn the_api_refuses_missing_keys_and_explains_bad_bodies() {
    let app = spawn_app().await;
    let url = app.url("/api/v1/notify");
    let body = json!({ "to": { "user": 1 }, "type": "t", "message": "m" }).to_string();
    let no_key = app.http.post(&url).body(body.clone()).send().await.unwrap();
    assert_eq!(no_key.status(), 401);
    let bad_key = app.http.post(&url).bearer_auth("wrong").body(body.clone()).send().await.unwrap();
    assert_eq!(bad_key.status(), 401);
    assert_eq!(bad_key.json::<Value>().await.unwrap()["error"], "missing or invalid API key");

    let bad_bodies = [
        ("not json", "body is not valid JSON"),
        ("[1,2]", "body must be a JSON object"),
        (r#"{"type":"t","message":"m"}"#, "to must be an object"),
        (r#"{"to":{"user":1,"role":"x"},"type":"t","message":"m"}"#, "to must be an object"),
        (r#"{"to":{"nobody":1},"type":"t","message":"m"}"#, "to must be an object"),
        (r#"{"to":{"user":[1]},"type":"t","message":"m"}"#, "to.user must be"),
        (r#"{"to":{"users":[]},"type":"t","message":"m"}"#, "to.users must be"),
        (r#"{"to":{"broadcast":false},"type":"t","message":"m"}"#, "to.broadcast must be true"),
        (r#"{"to":{"user":1},"message":"m"}"#, "type must be"),
        (r#"{"to":{"user":1},"type":"t","message":5}"#, "message must be"),
        (r#"{"to":{"user":1},"type":"t","message":"m","priority":9}"#, "priority must be"),
        (r#"{"to":{"user":1},"type":"t","message":"m","namespace":"/nope"}"#, "is not served"),
    ];
    for (body, reason) in bad_bodies {
        let (status, answer) = app.post_raw("/api/v1/notify", body).await;
        assert_eq!(status, 400, "{body}");
        assert!(answer["error"].as_str().unwrap().contains(reason), "{body}: {answer}");
    }
    let bad_emits = [
        (r#"{"args":[1]}"#, "event must be"),
        (r#"{"event":"connect"}"#, "is reserved"),
        (r#"{"event":"e","args":"x"}"#, "args must be a list"),
        (r#"{"event":"e","rooms":"r"}"#, "rooms must be a list"),
        (r#"{"event":"e","except":[1]}"#, "except must be a list"),
    ];
    for (body, reason) in bad_emits {
        let (status, answer) = app.post_raw("/api/v1/emit", body).await;
        assert_eq!(status, 400, "{body}");
        assert!(answer["error"].as_str().unwrap().contains(reason), "{body}: {answer}");
    }
}

#[tokio::test]
async fn without_configured_keys_the_api_refuses_everything() {
    let app = spawn_app_with(|s| s.api.keys = vec![]).await;
    let (status, body) = app.post("/api/v1/notify", json!({ "to": { "user": 1 }, "type": "t", "message": "m" })).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"], "API disabled: no api.keys configured");
    let _ = API_KEY;
}

#[tokio::test]
async fn health_and_ready_report_the_instance() {
    let app = spawn_app().await;
    let _client = app.connect("1").await;
    let (status, health) = app.get("/health").await;
    assert_eq!(status, 200);
    assert_eq!(health["status"], "ok");
    assert_eq!(health["node_id"], "test-node");
    assert_eq!(health["connections"], 1);
    assert_eq!(health["redis"], "disabled");
    assert!(health["uptime_secs"].is_u64());
    let (status, ready) = app.get("/ready").await;
    assert_eq!((status, ready["status"].as_str()), (200, Some("ready")));
}

#[tokio::test]
async fn shutdown_closes_every_socket_and_returns() {
    let app = spawn_app().await;
    let mut client = app.connect("1").await;
    let stopping = tokio::spawn(app.shutdown());
    assert!(client.closed_by_server().await, "client told the server is closing");
    let finished = tokio::time::timeout(Duration::from_secs(5), stopping).await;
    assert!(matches!(finished, Ok(Ok(Ok(())))), "shutdown finished cleanly: {finished:?}");
}

#[tokio::test]
async fn a_socket_too_slow_to_take_packets_does_not_fail_the_request() {
    let app = spawn_app().await;
    let token = app.token("slow");
    // A long-polling client that connects, then never polls again: its buffer fills up.
    let open =
        app.http.get(app.url(&format!("/socket.io/?EIO=4&transport=polling&token={token}"))).send().await.unwrap().text().await.unwrap();
    let sid = serde_json::from_str::<Value>(&open[1..]).unwrap()["sid"].as_str().unwrap().to_string();
    let poll_url = app.url(&format!("/socket.io/?EIO=4&transport=polling&sid={sid}&token={token}"));
    assert_eq!(app.http.post(&poll_url).body("40").send().await.unwrap().status(), 200);
    app.wait_for_connections(1).await;
    let mut other_tab = app.connect("slow").await;

    for i in 0..400 {
        let (status, body) = app.post("/api/v1/notify", json!({ "to": { "user": "slow" }, "type": "t", "message": format!("{i}") })).await;
        assert_eq!(status, 202, "notification {i}: {body}");
        assert_eq!(other_tab.next_notification().await.unwrap()["message"], format!("{i}"));
    }
    let metrics = app.http.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("herald_unreachable_sockets_total"), "{metrics}");
}

#[tokio::test]
async fn a_malformed_idempotency_key_is_refused_and_counted() {
    let app = spawn_app().await;
    let too_long = "k".repeat(300);
    let response = app
        .http
        .post(app.url("/api/v1/notify"))
        .bearer_auth(API_KEY)
        .header("idempotency-key", too_long)
        .json(&json!({ "to": { "user": "1" }, "type": "t", "message": "m" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"].as_str().unwrap_or_default().contains("idempotency key"), "{body}");

    let (status, _) = app.post_raw("/api/v1/notify", "{not json").await;
    assert_eq!(status, 400);
    let metrics = app.http.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains(r#"herald_api_refusals_total{reason="bad_request"} 2"#), "{metrics}");
}

/// A notification to many users: its parts are stored together (one transaction in the embedded
/// default), under one id, once per user; a retry with the same key stores and delivers nothing
/// again; concurrent notifications to the same users each keep one id for all of them.
#[tokio::test]
async fn a_notification_to_many_users_is_stored_once_per_user_under_one_id() {
    let app = spawn_app().await;
    let online_users = ["1", "17", "40"];
    let mut online = Vec::new();
    for user in online_users {
        online.push(app.connect(user).await);
    }
    let users: Vec<String> = (1..=40).map(|u| u.to_string()).collect();
    let body = json!({ "to": { "users": users }, "type": "t", "message": "to many" });
    let send = |key: Option<&'static str>| {
        let mut request = app.http.post(app.url("/api/v1/notify")).bearer_auth(API_KEY).json(&body);
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status().as_u16(), 202);
            response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string()
        }
    };
    let id = send(Some("many-1")).await;
    for (client, user) in online.iter_mut().zip(online_users) {
        let n = client.next_notification().await.expect("delivered");
        assert_eq!((n["id"].as_str().unwrap(), n["channel"].as_str().unwrap()), (id.as_str(), format!("user_{user}").as_str()));
    }
    assert_eq!(send(Some("many-1")).await, id, "a retry answers the first id");
    for client in online.iter_mut() {
        assert!(client.receives_nothing("notification", Duration::from_millis(200)).await, "a retry delivers nothing again");
    }

    let mut ids: Vec<String> = futures_util::future::join_all((0..5).map(|_| send(None))).await;
    ids.push(id);
    ids.sort_by_key(|id| id.parse::<herald::store::StreamId>().unwrap());
    ids.dedup();
    assert_eq!(ids.len(), 6, "one id per notification");
    for client in online.iter_mut() {
        let mut received = Vec::new();
        for _ in 0..5 {
            received.push(client.next_notification().await.expect("delivered")["id"].as_str().unwrap().to_string());
        }
        received.sort_by_key(|id| id.parse::<herald::store::StreamId>().unwrap());
        assert_eq!(received, ids[1..]);
    }
    for user in &users {
        let (status, history) = app.get_with_key(&format!("/api/v1/users/{user}/notifications")).await;
        assert_eq!(status, 200);
        let mut stored: Vec<String> = history["items"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap().to_string()).collect();
        stored.sort_by_key(|id| id.parse::<herald::store::StreamId>().unwrap());
        assert_eq!(stored, ids, "user {user}: each notification stored once, under its id");
    }
}
