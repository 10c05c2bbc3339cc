//! The cluster driver against a real redis-server: delivery, and recovery after the outages
//! seen in production (Redis killed and restarted, pub/sub clients killed, Redis not up yet
//! when Herald starts), without recreating the driver.

mod common;

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::redis_server::RedisServer;
use futures_util::{SinkExt, Stream, StreamExt};
use herald::cluster::driver::{DriverError, ResilientDriver};
use herald::cluster::redis_state::RedisState;
use herald::cluster::{self, ResilientAdapter};
use socketioxide::adapter::{Adapter, Emitter};
use socketioxide::extract::SocketRef;
use socketioxide::SocketIo;
use socketioxide_redis::drivers::Driver;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

/// Generous bound for anything that should happen "within a few seconds".
const RECOVERY_DEADLINE: Duration = Duration::from_secs(10);
/// Bound for operations that must not hang while Redis is down.
const FAIL_FAST_DEADLINE: Duration = Duration::from_secs(2);

async fn wait_for_state(driver: &ResilientDriver, wanted: RedisState) {
    let mut state = driver.watch_state();
    timeout(RECOVERY_DEADLINE, state.wait_for(|state| *state == wanted))
        .await
        .unwrap_or_else(|_| panic!("Redis state did not become {wanted:?}"))
        .expect("driver stopped");
}

async fn next_item<S, T>(stream: &mut S) -> T
where
    S: Stream<Item = T> + Unpin,
{
    timeout(RECOVERY_DEADLINE, stream.next()).await.expect("no message received in time").expect("stream ended")
}

async fn connected_driver(redis: &RedisServer) -> ResilientDriver {
    let driver = ResilientDriver::connect(&redis.url()).expect("valid url");
    wait_for_state(&driver, RedisState::Up).await;
    driver
}

#[tokio::test]
async fn delivers_channel_and_pattern_messages() {
    let redis = RedisServer::running();
    let driver = connected_driver(&redis).await;
    let mut ingress = driver.subscribe_stream(vec!["flask-socketio".into()], vec!["notify:*".into()]).await.unwrap();
    let mut adapter_channel = driver.subscribe("herald-request#/#".into(), 16).await.unwrap();

    driver.publish("flask-socketio".into(), b"a".to_vec()).await.unwrap();
    driver.publish("notify:42".into(), b"b".to_vec()).await.unwrap();
    driver.publish("herald-request#/#".into(), b"c".to_vec()).await.unwrap();

    assert_eq!(next_item(&mut ingress).await, ("flask-socketio".to_string(), Bytes::from_static(b"a")));
    assert_eq!(next_item(&mut ingress).await, ("notify:42".to_string(), Bytes::from_static(b"b")));
    assert_eq!(next_item(&mut adapter_channel).await, ("herald-request#/#".to_string(), b"c".to_vec()));
    assert_eq!(driver.num_serv("herald-request#/#").await.unwrap(), 1);
}

#[tokio::test]
async fn a_subscriber_that_does_not_keep_up_loses_counted_messages_and_the_rest_flow() {
    let redis = RedisServer::running();
    let driver = connected_driver(&redis).await;
    let mut slow = driver.subscribe_stream(vec!["flood".into()], vec![]).await.unwrap();
    // More than the subscription's buffer, while nothing reads it.
    let flood = "for i = 1, 3000 do redis.call('PUBLISH', 'flood', i) end";
    redis.command(&["EVAL", flood, "0"]);
    timeout(RECOVERY_DEADLINE, async {
        while driver.dropped_messages() == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("dropped messages are counted");
    let mut received = 0;
    while let Ok(Some(_)) = timeout(Duration::from_millis(300), slow.next()).await {
        received += 1;
    }
    assert_eq!(received + driver.dropped_messages(), 3000, "each message is either received or counted as dropped");
    driver.publish("flood".into(), b"after".to_vec()).await.unwrap();
    assert_eq!(next_item(&mut slow).await.1, Bytes::from_static(b"after"), "the subscription still works");
}

#[tokio::test]
async fn health_checks_keep_an_idle_subscription_up() {
    let redis = RedisServer::running();
    let mut drivers_and_subscriptions = Vec::new();
    for url in [redis.url(), format!("{}?protocol=resp3", redis.url())] {
        let driver = ResilientDriver::connect(&url).unwrap();
        wait_for_state(&driver, RedisState::Up).await;
        let subscription = driver.subscribe_stream(vec!["channel".into()], vec!["pattern:*".into()]).await.unwrap();
        drivers_and_subscriptions.push((driver, subscription));
    }

    // Longer than the health check interval (5s): at least one PING on the subscribed connection.
    tokio::time::sleep(Duration::from_secs(6)).await;

    let (resp2_driver, _) = &drivers_and_subscriptions[0];
    resp2_driver.publish("pattern:1".into(), b"still here".to_vec()).await.unwrap();
    for (driver, mut subscription) in drivers_and_subscriptions {
        assert_eq!(driver.outages(), 0);
        assert_eq!(next_item(&mut subscription).await.1, Bytes::from_static(b"still here"));
    }
}

#[tokio::test]
async fn recovers_after_redis_is_killed_and_restarted() {
    let mut redis = RedisServer::running();
    let driver = connected_driver(&redis).await;
    let mut before_outage = driver.subscribe_stream(vec!["before".into()], vec!["pattern:*".into()]).await.unwrap();

    redis.kill();
    wait_for_state(&driver, RedisState::Down).await;
    let publish_while_down =
        timeout(FAIL_FAST_DEADLINE, driver.publish("before".into(), b"lost".to_vec())).await.expect("publish hung while Redis is down");
    assert!(matches!(publish_while_down, Err(DriverError::Unavailable)));
    let mut during_outage = timeout(FAIL_FAST_DEADLINE, driver.subscribe_stream(vec!["during".into()], Vec::new()))
        .await
        .expect("subscribe hung while Redis is down")
        .unwrap();

    redis.start();
    wait_for_state(&driver, RedisState::Up).await;
    driver.publish("before".into(), b"1".to_vec()).await.unwrap();
    driver.publish("pattern:x".into(), b"2".to_vec()).await.unwrap();
    driver.publish("during".into(), b"3".to_vec()).await.unwrap();

    assert_eq!(next_item(&mut before_outage).await.1, Bytes::from_static(b"1"));
    assert_eq!(next_item(&mut before_outage).await.1, Bytes::from_static(b"2"));
    assert_eq!(next_item(&mut during_outage).await.1, Bytes::from_static(b"3"));
    assert_eq!(driver.outages(), 1);
}

/// Log lines written by `tracing` on the test's thread (the default tokio test runtime runs the
/// driver's background task on that same thread).
#[derive(Clone, Default)]
struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl io::Write for CapturedLogs {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl CapturedLogs {
    fn clear(&self) {
        self.0.lock().unwrap().clear();
    }

    fn lines_with(&self, level: &str, text: &str) -> usize {
        String::from_utf8_lossy(&self.0.lock().unwrap()).lines().filter(|line| line.contains(level) && line.contains(text)).count()
    }
}

#[tokio::test]
async fn logs_each_outage_once_however_many_reconnection_attempts_fail() {
    let logs = CapturedLogs::default();
    let writer = logs.clone();
    let subscriber =
        tracing_subscriber::fmt().with_ansi(false).with_max_level(tracing::Level::INFO).with_writer(move || writer.clone()).finish();
    let _logging = tracing::subscriber::set_default(subscriber);
    let mut redis = RedisServer::running();
    let driver = connected_driver(&redis).await;
    // Tests run in parallel: another thread may have cached "nobody listens" for a callsite
    // while this test's subscriber was being installed. Recompute, and start counting now.
    tracing::callsite::rebuild_interest_cache();
    logs.clear();

    redis.kill();
    wait_for_state(&driver, RedisState::Down).await;
    // Several reconnection attempts fail meanwhile (backoff starts at 100ms).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for _ in 0..20 {
        let _ = driver.publish("channel".into(), b"lost".to_vec()).await;
    }
    redis.start();
    wait_for_state(&driver, RedisState::Up).await;

    assert_eq!(logs.lines_with("WARN", "Redis"), 1);
    assert_eq!(logs.lines_with("WARN", "connection lost"), 1);
    assert_eq!(logs.lines_with("INFO", "connection established"), 1);
}

#[tokio::test]
async fn recovers_after_pubsub_clients_are_killed() {
    let redis = RedisServer::running();
    // RESP3, as URLs written for socketioxide-redis's bundled driver ask for; the other tests
    // use the default RESP2.
    let driver = ResilientDriver::connect(&format!("{}?protocol=resp3", redis.url())).unwrap();
    wait_for_state(&driver, RedisState::Up).await;
    let mut adapter_channel = driver.subscribe("herald-request#/#".into(), 16).await.unwrap();
    let mut state = driver.watch_state();

    redis.command(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    // The connection is back once an outage was recorded and the state is Up again.
    timeout(RECOVERY_DEADLINE, state.wait_for(|state| *state == RedisState::Up && driver.outages() == 1))
        .await
        .expect("driver did not reconnect")
        .unwrap();

    driver.publish("herald-request#/#".into(), b"after".to_vec()).await.unwrap();
    assert_eq!(next_item(&mut adapter_channel).await.1, b"after".to_vec());
}

#[tokio::test]
async fn notices_a_hung_redis_and_recovers_when_it_answers_again() {
    let redis = RedisServer::running();
    let driver = connected_driver(&redis).await;
    let mut subscription = driver.subscribe_stream(vec!["channel".into()], Vec::new()).await.unwrap();

    redis.freeze();
    let publish_to_hung_redis =
        timeout(FAIL_FAST_DEADLINE, driver.publish("channel".into(), b"late".to_vec())).await.expect("publish hung while Redis is hung");
    assert!(publish_to_hung_redis.is_err());
    // Noticed by the periodic health check of the pub/sub connection.
    wait_for_state(&driver, RedisState::Down).await;

    redis.thaw();
    wait_for_state(&driver, RedisState::Up).await;
    driver.publish("channel".into(), b"after".to_vec()).await.unwrap();
    // The timed-out publish may still have gone through once Redis resumed: pub/sub gives no
    // guarantee either way, so only the latest message is checked.
    let mut received = next_item(&mut subscription).await.1;
    if received == Bytes::from_static(b"late") {
        received = next_item(&mut subscription).await.1;
    }
    assert_eq!(received, Bytes::from_static(b"after"));
    assert_eq!(driver.outages(), 1);
}

#[tokio::test]
async fn starts_while_redis_is_down_and_connects_when_it_comes_up() {
    let mut redis = RedisServer::stopped();
    let driver = ResilientDriver::connect(&redis.url()).expect("valid url");
    assert_eq!(driver.state(), RedisState::Down);
    let mut adapter_channel = timeout(FAIL_FAST_DEADLINE, driver.subscribe("herald-request#/#".into(), 16))
        .await
        .expect("subscribe hung while Redis is down")
        .unwrap();
    let publish_while_down = timeout(FAIL_FAST_DEADLINE, driver.publish("herald-request#/#".into(), b"lost".to_vec()))
        .await
        .expect("publish hung while Redis is down");
    assert!(publish_while_down.is_err());
    assert!(timeout(FAIL_FAST_DEADLINE, driver.num_serv("herald-request#/#")).await.expect("num_serv hung while Redis is down").is_err());

    redis.start();
    wait_for_state(&driver, RedisState::Up).await;
    driver.publish("herald-request#/#".into(), b"up".to_vec()).await.unwrap();
    assert_eq!(next_item(&mut adapter_channel).await.1, b"up".to_vec());
    assert_eq!(driver.outages(), 0, "a startup failure is not an outage");
}

#[tokio::test]
async fn dropping_a_subscription_or_unsubscribing_releases_the_redis_channel() {
    let redis = RedisServer::running();
    let driver = connected_driver(&redis).await;
    let subscription = driver.subscribe_stream(vec!["ingress".into()], Vec::new()).await.unwrap();
    let _adapter_channel = driver.subscribe("herald-request#/#".into(), 16).await.unwrap();
    assert_eq!(driver.num_serv("ingress").await.unwrap(), 1);
    assert_eq!(driver.num_serv("herald-request#/#").await.unwrap(), 1);

    drop(subscription);
    driver.unsubscribe("herald-request#/#".into()).await.unwrap();

    for channel in ["ingress", "herald-request#/#"] {
        timeout(RECOVERY_DEADLINE, async {
            while driver.num_serv(channel).await.unwrap() != 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{channel} is still subscribed"));
    }
}

#[tokio::test]
async fn shutdown_ends_subscriptions_and_refuses_new_ones() {
    let redis = RedisServer::running();
    let driver = connected_driver(&redis).await;
    let mut subscription = driver.subscribe_stream(vec!["channel".into()], Vec::new()).await.unwrap();

    driver.shutdown();

    assert!(timeout(RECOVERY_DEADLINE, subscription.next()).await.expect("subscription did not end").is_none());
    assert_eq!(driver.state(), RedisState::Down);
    assert!(matches!(driver.subscribe_stream(vec!["channel".into()], Vec::new()).await, Err(DriverError::ShutDown)));
}

/// A Socket.IO node in cluster mode, serving on a free local port.
struct Node {
    io: SocketIo<ResilientAdapter<Emitter>>,
    port: u16,
}

impl Node {
    async fn start(redis: &RedisServer) -> Self {
        let driver = connected_driver(redis).await;
        let (layer, io) = SocketIo::builder().with_adapter::<ResilientAdapter<_>>(cluster::adapter_state(driver)).build_layer();
        io.ns("/", join_room).await.expect("namespace init failed");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = axum::Router::new().layer(layer);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { io, port }
    }
}

/// The next Engine.IO packet other than a ping (which is answered).
async fn next_packet<S>(client: &mut S) -> String
where
    S: Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + futures_util::Sink<Message> + Unpin,
{
    loop {
        let packet = next_item(client).await.expect("websocket error");
        let packet = packet.to_text().expect("text frame").to_owned();
        if packet != "2" {
            return packet;
        }
        let _ = client.send(Message::text("3")).await;
    }
}

async fn join_room<A: Adapter>(socket: SocketRef<A>) {
    socket.join("room");
}

#[tokio::test]
async fn adapter_starts_without_redis_and_local_emits_remain_possible() {
    let mut redis = RedisServer::stopped();
    let driver = ResilientDriver::connect(&redis.url()).unwrap();
    let (_layer, io) = SocketIo::builder().with_adapter::<ResilientAdapter<_>>(cluster::adapter_state(driver.clone())).build_layer();

    timeout(FAIL_FAST_DEADLINE, io.ns("/", join_room)).await.expect("namespace init waited for Redis").expect("namespace init failed");
    let cluster_emit =
        timeout(FAIL_FAST_DEADLINE, io.to("room").emit("event", "data")).await.expect("cluster emit hung while Redis is down");
    assert!(cluster_emit.is_err());
    io.local().to("room").emit("event", "data").await.unwrap();

    redis.start();
    wait_for_state(&driver, RedisState::Up).await;
    io.to("room").emit("event", "data").await.unwrap();
}

#[tokio::test]
async fn broadcast_reaches_sockets_connected_to_another_node() {
    let redis = RedisServer::running();
    let node_a = Node::start(&redis).await;
    let node_b = Node::start(&redis).await;

    // A minimal Socket.IO v4 client over a raw WebSocket, connected to node A.
    let url = format!("ws://127.0.0.1:{}/socket.io/?EIO=4&transport=websocket", node_a.port);
    let (mut client, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let open = next_packet(&mut client).await;
    assert!(open.starts_with('0'), "engine.io open: {open}");
    client.send(Message::text("40")).await.unwrap();
    let connected = next_packet(&mut client).await;
    assert!(connected.starts_with("40"), "socket.io connect: {connected}");

    // Node B sees the socket on node A, and its broadcast reaches it.
    assert_eq!(node_b.io.to("room").fetch_sockets().await.unwrap().len(), 1);
    node_b.io.to("room").emit("hello", "world").await.unwrap();
    assert_eq!(next_packet(&mut client).await, r#"42["hello","world"]"#);
}
