//! Several instances behave as one server (issue: cluster). Three real `herald` processes share
//! one real `redis-server`, which the tests kill and restart like an outage would.

mod common;

use std::time::Duration;

use common::herald_process::HeraldProcess;
use common::redis_server::RedisServer;
use common::{TestClient, SECRET};
use herald::auth::mint_dev_token;
use serde_json::json;

async fn client(instance: &HeraldProcess, user: &str) -> TestClient {
    let token = mint_dev_token(SECRET, user, None, &[], 3600).unwrap();
    let mut client = TestClient::connect(instance.addr(), &format!("token={token}"), None, "/").await.expect("connects");
    assert_eq!(client.next_event("notification").await.expect("welcome")[0]["type"], "welcome");
    client
}

async fn three_instances(redis: &RedisServer) -> [HeraldProcess; 3] {
    let url = redis.url();
    let (a, b, c) = tokio::join!(HeraldProcess::start("a", &url), HeraldProcess::start("b", &url), HeraldProcess::start("c", &url));
    for instance in [&a, &b, &c] {
        instance.wait_health("redis up", |h| h["redis"] == "up").await;
    }
    [a, b, c]
}

const QUIET: Duration = Duration::from_millis(400);

#[tokio::test]
async fn a_notification_posted_anywhere_reaches_every_tab_once() {
    let redis = RedisServer::running();
    let [a, b, c] = three_instances(&redis).await;
    let mut on_b = client(&b, "1").await;
    let mut on_c = client(&c, "1").await;
    let mut other = client(&a, "2").await;

    let (status, body) = a.post("/api/v1/notify", json!({ "to": { "user": 1 }, "type": "t", "message": "hello" })).await;
    assert_eq!(status, 202);
    for tab in [&mut on_b, &mut on_c] {
        let n = tab.next_notification().await.expect("delivered");
        assert_eq!(n["id"], body["id"]);
        assert!(tab.receives_nothing("notification", QUIET).await, "delivered twice");
    }
    assert!(other.receives_nothing("notification", QUIET).await);

    // A room joined on B receives an emit made on C, once; a plain (not stored) event.
    assert_eq!(on_b.call("room:join", &[json!("team-updates")]).await["ok"], true);
    let (status, _) = c.post("/api/v1/emit", json!({ "event": "team", "args": [1, 2], "rooms": ["team-updates"] })).await;
    assert_eq!(status, 202);
    assert_eq!(on_b.next_event("team").await, Some(vec![json!(1), json!(2)]));
    assert!(on_b.receives_nothing("team", QUIET).await);

    // Cluster-wide count and disconnect.
    a.wait_health("3 sockets in the cluster", |h| h["cluster_connections"] == 3).await;
    let (status, _) = a.post("/api/v1/users/1/disconnect", json!({})).await;
    assert_eq!(status, 202);
    assert!(on_b.closed_by_server().await && on_c.closed_by_server().await);
    a.wait_health("1 socket left", |h| h["cluster_connections"] == 1).await;
}

#[tokio::test]
async fn redis_outages_keep_local_delivery_and_heal_by_themselves() {
    let mut redis = RedisServer::running();
    let [a, b, _c] = three_instances(&redis).await;
    let mut on_a = client(&a, "1").await;
    let mut on_b = client(&b, "2").await;

    redis.kill();
    a.wait_health("redis down", |h| h["redis"] == "down").await;
    // Notifications that cannot be stored wait in each instance's outbox, and the sockets
    // stay connected.
    for (instance, user) in [(&a, "1"), (&b, "2")] {
        let (status, body) = instance.post("/api/v1/notify", json!({ "to": { "user": user }, "type": "t", "message": "while down" })).await;
        assert_eq!((status, body), (202, json!({ "id": null, "queued": true })));
    }
    assert!(on_a.receives_nothing("notification", QUIET).await, "not delivered before it is stored");
    assert_eq!(a.status("/ready").await, 200, "an outage after startup does not make the instance unready");

    redis.start();
    a.wait_health("redis back", |h| h["redis"] == "up").await;
    b.wait_health("redis back", |h| h["redis"] == "up").await;
    for tab in [&mut on_a, &mut on_b] {
        let n = tab.next_notification().await.expect("delivered once Redis is back");
        assert_eq!(n["message"], "while down");
        assert!(n["id"].is_string(), "stored: {n}");
    }
    assert_cross_instance_delivery(&a, &mut on_b, "2", "after restart").await;

    // The same after every pub/sub connection is killed.
    redis.command(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    assert_cross_instance_delivery(&a, &mut on_b, "2", "after client kill").await;
    let metrics = reqwest::get(a.url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("herald_redis_outages 2"), "the kill and the client kill: {metrics}");
}

/// Posts on `from` until `tab` (on another instance) receives it: resubscription takes a moment.
async fn assert_cross_instance_delivery(from: &HeraldProcess, tab: &mut TestClient, user: &str, message: &str) {
    for attempt in 0..30 {
        let text = format!("{message} #{attempt}");
        from.post("/api/v1/notify", json!({ "to": { "user": user }, "type": "t", "message": text })).await;
        if let Ok(Some(n)) = tokio::time::timeout(Duration::from_millis(500), tab.next_notification()).await {
            assert!(n["message"].as_str().unwrap().starts_with(message));
            // Drain what earlier attempts may still bring; no more than one per attempt.
            while tokio::time::timeout(QUIET, tab.next_notification()).await.ok().flatten().is_some() {}
            return;
        }
    }
    panic!("cross-instance delivery did not resume ({message})");
}

#[tokio::test]
async fn an_instance_started_without_redis_serves_locally_and_becomes_ready() {
    let mut redis = RedisServer::stopped();
    let a = HeraldProcess::start("a", &redis.url()).await;
    assert_eq!(a.status("/ready").await, 503);
    let mut tab = client(&a, "1").await;
    let (status, body) = a.post("/api/v1/notify", json!({ "to": { "user": 1 }, "type": "t", "message": "queued" })).await;
    assert_eq!((status, body), (202, json!({ "id": null, "queued": true })));

    redis.start();
    assert_eq!(tab.next_notification().await.expect("delivered once Redis is reached")["message"], "queued");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while a.status("/ready").await != 200 {
        assert!(std::time::Instant::now() < deadline, "never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn redis_ingress_is_stored_once_and_replayed_on_another_instance() {
    let redis = RedisServer::running();
    let [mut a, b, c] = three_instances(&redis).await;
    // The user was online on A, then left.
    client(&a, "7").await.disconnect().await;
    a.wait_health("no sockets", |h| h["connections"] == 0).await;
    // Session entries are written every 20 ms: an instance killed sooner after a user's very
    // first connection forgets the user was there (README, the one documented window).
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut expected = vec![];
    for (instance, name) in [(&a, "a"), (&b, "b"), (&c, "c")] {
        let (_, body) =
            instance.post("/api/v1/notify", json!({ "to": { "user": 7 }, "type": "t", "message": format!("via http {name}") })).await;
        expected.push(body["id"].as_str().unwrap().to_string());
    }
    redis.command(&["PUBLISH", "notify:user:7", r#"{"type":"t","message":"via notify"}"#]);
    let python = r#"{"method": "emit", "event": "notification", "data": [{"type": "t", "message": "via python"}], "binary": false, "namespace": "/", "room": "user_7", "skip_sid": null, "callback": null, "host_id": "x"}"#;
    redis.command(&["PUBLISH", "flask-socketio", python]);
    // Garbage on every ingress channel is counted and skipped.
    for channel in ["flask-socketio", "socket.io#/#", "notify:user:7"] {
        redis.command(&["PUBLISH", channel, "\u{1}garbage{"]);
    }

    // The instance the user was on dies; the user comes back through another one.
    a.kill();
    let mut tab = client(&c, "7").await;
    let mut messages = vec![];
    while let Ok(Some(n)) = tokio::time::timeout(Duration::from_secs(2), tab.next_notification()).await {
        messages.push(n["message"].as_str().unwrap().to_string());
    }
    assert_eq!(messages, ["via http a", "via http b", "via http c", "via notify", "via python"], "each once, in order");

    let history = reqwest::Client::new().get(b.url("/api/v1/users/7/notifications")).bearer_auth(common::API_KEY).send().await.unwrap();
    let history: serde_json::Value = history.json().await.unwrap();
    assert_eq!(history["items"].as_array().unwrap().len(), 5, "stored once, not once per instance: {history}");
    assert_eq!(history["items"][4]["id"], expected[0].as_str());

    let metrics = reqwest::get(c.url("/metrics")).await.unwrap().text().await.unwrap();
    for source in ["python", "node", "notify"] {
        assert!(
            metrics.contains(&format!("herald_ingress_messages_total{{source=\"{source}\",outcome=\"malformed\"}} 1")),
            "{source}: {metrics}"
        );
    }
}

#[tokio::test]
async fn a_burst_of_redis_ingress_keeps_publish_order_live_and_in_storage() {
    let redis = RedisServer::running();
    let (url, settings) = (redis.url(), [("HERALD__DELIVERY__MAX_REPLAY", "1000")]);
    let (a, b) = tokio::join!(HeraldProcess::start_with("a", &url, &settings), HeraldProcess::start_with("b", &url, &settings));
    for instance in [&a, &b] {
        instance.wait_health("redis up", |h| h["redis"] == "up").await;
    }
    let (mut on_a, mut on_b) = (client(&a, "9").await, client(&b, "9").await);
    // 300 messages in one burst: far more than one at a time keeps up with.
    let burst = "for i = 1, 300 do redis.call('PUBLISH', KEYS[1], '{\"type\":\"t\",\"message\":\"' .. i .. '\"}') end";
    redis.command(&["EVAL", burst, "1", "notify:user:9"]);

    let expected: Vec<String> = (1..=300).map(|i| i.to_string()).collect();
    let mut ids = vec![];
    for tab in [&mut on_a, &mut on_b] {
        let mut received = vec![];
        for _ in 0..300 {
            let n = tab.next_notification().await.expect("every message arrives");
            received.push(n["message"].as_str().unwrap().to_string());
            ids.push(n["id"].as_str().unwrap().to_string());
        }
        assert_eq!(received, expected, "live, in publish order");
    }
    assert_eq!(ids[..300], ids[300..], "the same id for each message on both instances");

    // Stored once each, in publish order: a device that saw the first gets the other 299.
    let token = mint_dev_token(SECRET, "9", None, &[], 3600).unwrap();
    let mut device = TestClient::connect(a.addr(), "", Some(json!({ "token": token, "last_id": ids[0] })), "/").await.unwrap();
    let mut replayed = vec![];
    for _ in 1..300 {
        replayed.push(device.next_notification().await.expect("replayed")["message"].as_str().unwrap().to_string());
    }
    assert_eq!(replayed, expected[1..], "stored in publish order");
    assert!(device.receives_nothing("notification", QUIET).await, "stored once, not once per instance");
}

#[tokio::test]
async fn the_per_user_connection_limit_holds_across_instances() {
    let redis = RedisServer::running();
    let url = redis.url();
    let limit = [("HERALD__LIMITS__MAX_CONNECTIONS_PER_USER", "2")];
    let (a, b, c) = tokio::join!(
        HeraldProcess::start_with("a", &url, &limit),
        HeraldProcess::start_with("b", &url, &limit),
        HeraldProcess::start_with("c", &url, &limit)
    );
    for instance in [&a, &b, &c] {
        instance.wait_health("redis up", |h| h["redis"] == "up").await;
    }
    let first = client(&a, "1").await;
    let _second = client(&b, "1").await;
    let token = mint_dev_token(SECRET, "1", None, &[], 3600).unwrap();
    let third = TestClient::connect(c.addr(), &format!("token={token}"), None, "/").await.err();
    assert_eq!(third.as_deref(), Some("too many connections"));
    // A place freed anywhere can be taken anywhere.
    first.disconnect().await;
    a.wait_health("the socket gone", |h| h["connections"] == 0).await;
    let mut retry = Err(String::new());
    for _ in 0..20 {
        retry = TestClient::connect(c.addr(), &format!("token={token}"), None, "/").await;
        if retry.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(retry.is_ok(), "{:?}", retry.err());
}

#[tokio::test]
async fn nothing_stored_is_lost_when_every_instance_restarts() {
    let redis = RedisServer::running();
    let [a, b, c] = three_instances(&redis).await;
    let mut tab = client(&a, "3").await;
    let first = a.post("/api/v1/notify", json!({ "to": { "user": 3 }, "type": "t", "message": "seen" })).await.1;
    let first_id = tab.next_notification().await.unwrap()["id"].as_str().unwrap().to_string();
    assert_eq!(first["id"], first_id.as_str());
    tab.disconnect().await;
    let missed = b.post("/api/v1/notify", json!({ "to": { "user": 3 }, "type": "t", "message": "missed" })).await.1;
    drop((a, b, c));

    let d = HeraldProcess::start("d", &redis.url()).await;
    d.wait_health("redis up", |h| h["redis"] == "up").await;
    let token = mint_dev_token(SECRET, "3", None, &[], 3600).unwrap();
    let auth = json!({ "token": token, "last_id": first_id });
    let mut device = TestClient::connect(d.addr(), "", Some(auth), "/").await.unwrap();
    let n = device.next_notification().await.expect("stored notification survives the restart");
    assert_eq!((n["id"].clone(), n["message"].clone()), (missed["id"].clone(), json!("missed")));
    assert!(device.receives_nothing("notification", QUIET).await);
}

#[tokio::test]
async fn after_an_instance_crash_an_unchanged_client_gets_the_gap_once_and_nothing_older() {
    let redis = RedisServer::running();
    let [mut a, b, _c] = three_instances(&redis).await;
    for user in ["8", "18"] {
        client(&a, user).await.disconnect().await; // the users have been online before
    }
    b.post("/api/v1/notify", json!({ "to": { "user": 8 }, "type": "t", "message": "while offline" })).await;
    let (mut tab, mut other) = (client(&a, "8").await, client(&a, "18").await);
    assert_eq!(tab.next_notification().await.unwrap()["message"], "while offline");
    // Both users' marks are written once (they are new here); from then on a mark moves only
    // for the users a notification reached: by name, or everyone for a broadcast.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    b.post("/api/v1/notify", json!({ "to": { "broadcast": true }, "type": "t", "message": "everyone" })).await;
    b.post("/api/v1/notify", json!({ "to": { "user": 8 }, "type": "t", "message": "before" })).await;
    assert_eq!(tab.next_notification().await.unwrap()["message"], "everyone");
    assert_eq!(tab.next_notification().await.unwrap()["message"], "before");
    assert_eq!(other.next_notification().await.unwrap()["message"], "everyone");
    // The instance writes its users' seen marks every second, up to what it had delivered a
    // second earlier.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    a.kill();
    let gap = b.post("/api/v1/notify", json!({ "to": { "user": 8 }, "type": "t", "message": "gap" })).await.1;

    let mut back = client(&b, "8").await;
    let n = back.next_notification().await.expect("the gap is replayed");
    assert_eq!((n["id"].clone(), n["message"].clone()), (gap["id"].clone(), json!("gap")));
    assert!(back.receives_nothing("notification", QUIET).await, "nothing from before the crash again");
    let mut other_back = client(&b, "18").await;
    assert!(other_back.receives_nothing("notification", QUIET).await, "the broadcast is not replayed again");
}

#[tokio::test]
async fn a_lost_connection_moves_the_seen_mark_back_in_redis() {
    let redis = RedisServer::running();
    let heartbeat = [("HERALD__SOCKETIO__PING_INTERVAL_SECS", "2"), ("HERALD__SOCKETIO__PING_TIMEOUT_SECS", "2")];
    let a = HeraldProcess::start_with("a", &redis.url(), &heartbeat).await;
    a.wait_health("redis up", |h| h["redis"] == "up").await;
    let dead = client(&a, "12").await; // reads nothing from here on, so answers no ping
    tokio::time::sleep(Duration::from_secs(1)).await; // well inside the 4 s heartbeat window
    let lost = a.post("/api/v1/notify", json!({ "to": { "user": 12 }, "type": "t", "message": "lost" })).await.1;
    tokio::time::sleep(Duration::from_secs(5)).await; // marks flushed past `lost`, then the heartbeat times out
    a.wait_health("socket gone", |h| h["connections"] == 0).await;
    drop(dead);

    let mut back = client(&a, "12").await;
    assert_eq!(back.next_notification().await.expect("replayed")["id"], lost["id"]);
}

#[tokio::test]
async fn identical_publishes_are_each_stored_once_with_one_id_everywhere() {
    let redis = RedisServer::running();
    let url = redis.url();
    let (a, b) = tokio::join!(HeraldProcess::start("a", &url), HeraldProcess::start("b", &url));
    for instance in [&a, &b] {
        instance.wait_health("redis up", |h| h["redis"] == "up").await;
    }
    let message = r#"{"type":"t","message":"same bytes"}"#;
    redis.command(&["PUBLISH", "notify:user:9", message]);
    // An instance that starts after the first publish, then the same bytes again.
    let c = HeraldProcess::start("c", &url).await;
    c.wait_health("redis up", |h| h["redis"] == "up").await;
    let mut tabs = [client(&a, "9").await, client(&b, "9").await, client(&c, "9").await];
    // Tabs joined after the first publish: it is replayed to none of them (no seen mark yet).
    redis.command(&["PUBLISH", "notify:user:9", message]);
    let mut ids = vec![];
    for tab in tabs.iter_mut() {
        let n = tab.next_notification().await.expect("delivered");
        assert!(tab.receives_nothing("notification", QUIET).await, "once");
        ids.push(n["id"].as_str().unwrap().to_string());
    }
    assert!(ids.iter().all(|id| *id == ids[0]), "one id on every instance: {ids:?}");
    let history = reqwest::Client::new().get(a.url("/api/v1/users/9/notifications")).bearer_auth(common::API_KEY).send().await.unwrap();
    let history: serde_json::Value = history.json().await.unwrap();
    let stored: Vec<&str> = history["items"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap()).collect();
    assert_eq!(stored.len(), 2, "each publish stored once: {history}");
    assert_eq!(stored[0], ids[0]);
}

#[tokio::test]
async fn the_first_notification_after_a_redis_restart_is_stored() {
    let mut redis = RedisServer::running();
    let a = HeraldProcess::start("a", &redis.url()).await;
    a.wait_health("redis up", |h| h["redis"] == "up").await;
    a.post("/api/v1/notify", json!({ "to": { "user": 4 }, "type": "t", "message": "before" })).await;
    redis.kill();
    a.wait_health("redis down", |h| h["redis"] == "down").await;
    redis.start();
    a.wait_health("redis back", |h| h["redis"] == "up").await;
    let (_, body) = a.post("/api/v1/notify", json!({ "to": { "user": 4 }, "type": "t", "message": "after" })).await;
    let history = reqwest::Client::new().get(a.url("/api/v1/users/4/notifications")).bearer_auth(common::API_KEY).send().await.unwrap();
    let history: serde_json::Value = history.json().await.unwrap();
    assert_eq!(history["items"][0]["id"], body["id"], "stored: {history}");
}

// Delivery without holes (issue 11): the four situations that lost or repeated notifications.

#[tokio::test]
async fn a_user_whose_instance_dies_right_after_connecting_gets_what_was_sent_meanwhile() {
    let redis = RedisServer::running();
    let [a, b, mut c] = three_instances(&redis).await;
    let _first_visit = client(&c, "31").await; // never seen before: no seen mark anywhere
    tokio::time::sleep(Duration::from_millis(300)).await; // well before any periodic write
    c.kill();
    let sent = a.post("/api/v1/notify", json!({ "to": { "user": 31 }, "type": "t", "message": "while between instances" })).await.1;

    let mut back = client(&b, "31").await;
    let n = back.next_notification().await.expect("what was sent after the crash is replayed");
    assert_eq!((n["id"].clone(), n["message"].clone()), (sent["id"].clone(), json!("while between instances")));
    assert!(back.receives_nothing("notification", QUIET).await, "once");
}

#[tokio::test]
async fn a_new_tab_of_an_online_user_is_replayed_nothing_they_already_have() {
    let redis = RedisServer::running();
    let [a, b, _c] = three_instances(&redis).await;
    client(&a, "32").await.disconnect().await; // seen before: a seen mark exists
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut first_tab = client(&a, "32").await;
    b.post("/api/v1/notify", json!({ "to": { "user": 32 }, "type": "t", "message": "shown in the first tab" })).await;
    assert_eq!(first_tab.next_notification().await.unwrap()["message"], "shown in the first tab");
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut second_tab = client(&b, "32").await;
    assert!(second_tab.receives_nothing("notification", QUIET).await, "the user was online all along");
    let live = a.post("/api/v1/notify", json!({ "to": { "user": 32 }, "type": "t", "message": "live" })).await.1;
    for tab in [&mut first_tab, &mut second_tab] {
        assert_eq!(tab.next_notification().await.unwrap()["id"], live["id"]);
    }
}

#[tokio::test]
async fn during_a_redis_outage_the_api_queues_on_disk_and_delivers_once_redis_returns() {
    let mut redis = RedisServer::running();
    let url = redis.url();
    let no_outbox = [("HERALD__OUTBOX__MAX_ENTRIES", "0")];
    let (mut a, b, strict) = tokio::join!(
        HeraldProcess::start("a", &url),
        HeraldProcess::start("b", &url),
        HeraldProcess::start_with("strict", &url, &no_outbox)
    );
    for instance in [&a, &b, &strict] {
        instance.wait_health("redis up", |h| h["redis"] == "up").await;
    }
    let mut on_b = client(&b, "33").await;
    redis.kill();
    a.wait_health("redis down", |h| h["redis"] == "down").await;
    strict.wait_health("redis down", |h| h["redis"] == "down").await;

    let body = json!({ "to": { "user": 33 }, "type": "t", "message": "accepted while down" });
    let (status, answer, _) = a.post_with_key("/api/v1/notify", "key-33", body.clone()).await;
    assert_eq!((status, answer), (202, json!({ "id": null, "queued": true })));
    // Without an outbox: refused, never a 2xx for something that would be lost.
    let (status, _, retry_after) = strict.post_with_key("/api/v1/notify", "key-strict", body.clone()).await;
    assert_eq!((status, retry_after.as_deref()), (503, Some("2")));
    // The instance holding the outbox is restarted during the outage: the outbox is on disk.
    a.restart().await;
    assert!(on_b.receives_nothing("notification", QUIET).await);

    redis.start();
    let n = on_b.next_notification().await.expect("delivered to the other instance once Redis is back");
    assert_eq!(n["message"], "accepted while down");
    let id = n["id"].as_str().expect("stored, with its id").to_string();
    // The backend retries with the same key: the original id, nothing delivered twice.
    a.wait_health("redis back", |h| h["redis"] == "up").await;
    let (status, answer, _) = b.post_with_key("/api/v1/notify", "key-33", body).await;
    assert_eq!((status, answer["id"].as_str()), (202, Some(id.as_str())));
    assert!(on_b.receives_nothing("notification", QUIET).await, "delivered once");
    let history = b.get("/api/v1/users/33/notifications").await;
    assert_eq!(history["items"].as_array().unwrap().len(), 1, "stored once: {history}");
}

#[tokio::test]
async fn a_retry_with_the_same_idempotency_key_on_any_instance_delivers_nothing_twice() {
    let redis = RedisServer::running();
    let [a, b, c] = three_instances(&redis).await;
    let mut tab = client(&c, "34").await;
    let body = json!({ "to": { "users": [34, 35] }, "type": "t", "message": "once" });
    let (_, first, _) = a.post_with_key("/api/v1/notify", "retry-34", body.clone()).await;
    let (_, again, _) = b.post_with_key("/api/v1/notify", "retry-34", body).await;
    assert!(first["id"].is_string());
    assert_eq!(first["id"], again["id"]);
    assert_eq!(tab.next_notification().await.unwrap()["id"], first["id"]);
    // A producer's own `id` in the body works as the key too; and a plain emit.
    let body = json!({ "to": { "user": 34 }, "type": "t", "message": "by producer id", "id": "job-7" });
    let (first, again) = (a.post("/api/v1/notify", body.clone()).await.1, b.post("/api/v1/notify", body).await.1);
    assert_eq!(first["id"], again["id"]);
    assert_eq!(tab.next_notification().await.unwrap()["message"], "by producer id");
    let emit = json!({ "event": "progress", "args": [1], "rooms": ["user_34"] });
    for instance in [&a, &b] {
        assert_eq!(instance.post_with_key("/api/v1/emit", "emit-34", emit.clone()).await.0, 202);
    }
    assert_eq!(tab.next_event("progress").await, Some(vec![json!(1)]));
    assert!(tab.receives_nothing("progress", QUIET).await);
    assert!(tab.receives_nothing("notification", QUIET).await);
}

#[tokio::test]
async fn a_client_back_before_its_lost_connection_is_noticed_still_gets_what_it_missed() {
    let redis = RedisServer::running();
    let heartbeat = [("HERALD__SOCKETIO__PING_INTERVAL_SECS", "2"), ("HERALD__SOCKETIO__PING_TIMEOUT_SECS", "2")];
    let url = redis.url();
    let (a, b) = tokio::join!(HeraldProcess::start_with("a", &url, &heartbeat), HeraldProcess::start_with("b", &url, &heartbeat));
    for instance in [&a, &b] {
        instance.wait_health("redis up", |h| h["redis"] == "up").await;
    }
    for (user, back_on) in [("36", &b), ("37", &a)] {
        let dead = client(&a, user).await; // reads nothing from here on, so answers no ping
        tokio::time::sleep(Duration::from_millis(300)).await; // it was connected for a while
        let gap = a.post("/api/v1/notify", json!({ "to": { "user": user }, "type": "t", "message": "to the dead socket" })).await.1;
        // The client is back (elsewhere, or on the same instance) before A notices the loss:
        // the user still looks online, so nothing is replayed at connect...
        let mut back = client(back_on, user).await;
        // ...but once the loss is noticed, what the dead socket was sent comes after all.
        let mut got = None;
        for _ in 0..3 {
            if let Some(n) = back.next_notification().await {
                got = Some(n);
                break;
            }
        }
        assert_eq!(got.expect("the gap arrives once the loss is noticed")["id"], gap["id"], "user {user}");
        drop(dead);
    }
}

/// The delivered mark `instance` wrote last, as it sits in Redis.
fn delivered_mark(redis: &RedisServer, instance: &HeraldProcess) -> Option<String> {
    let keys: Vec<String> = redis::from_redis_value(redis.command(&["KEYS", &format!("herald:delivered:{}@*", instance.node_id)])).unwrap();
    let key = keys.first()?;
    redis::from_redis_value(redis.command(&["GET", key])).unwrap()
}

#[tokio::test]
async fn an_instance_that_crashes_soon_after_a_redis_hiccup_is_not_replayed_what_it_delivered_before() {
    let redis = RedisServer::running();
    let url = redis.url();
    let (mut a, b) = tokio::join!(HeraldProcess::start("a", &url), HeraldProcess::start("b", &url));
    for instance in [&a, &b] {
        instance.wait_health("redis up", |h| h["redis"] == "up").await;
    }
    client(&a, "42").await.disconnect().await; // the user has been online before
    let mut tab = client(&a, "42").await;
    // Right after A writes its delivered mark (once a second), "before" reaches the tab, and
    // A's subscriptions break and come back at once (as a Redis hiccup, or a health check that
    // timed out under load, does).
    let written = delivered_mark(&redis, &a);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while delivered_mark(&redis, &a) == written {
        assert!(std::time::Instant::now() < deadline, "A writes its delivered mark every second");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let flushed = tokio::time::Instant::now();
    b.post("/api/v1/notify", json!({ "to": { "user": 42 }, "type": "t", "message": "before" })).await;
    assert_eq!(tab.next_notification().await.unwrap()["message"], "before");
    redis.command(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    // A crashes 2.6 s after that write: more than two seconds after it delivered "before", and
    // after two more writes of its mark (the second one after its subscriptions have been back
    // for a second). It used to write no mark at all for three flushes after the hiccup.
    tokio::time::sleep_until(flushed + Duration::from_millis(2600)).await;
    a.kill();
    let gap = b.post("/api/v1/notify", json!({ "to": { "user": 42 }, "type": "t", "message": "gap" })).await.1;

    let mut back = client(&b, "42").await;
    let n = back.next_notification().await.expect("the gap is replayed");
    assert_eq!((n["id"].clone(), n["message"].clone()), (gap["id"].clone(), json!("gap")), "nothing from before the crash again");
    assert!(back.receives_nothing("notification", QUIET).await);
}
