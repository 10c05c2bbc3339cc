//! A socketioxide-redis [`Driver`] that survives Redis restarts.
//!
//! The driver bundled with socketioxide-redis subscribes once on a single connection and never
//! reconnects: after a Redis restart (or `CLIENT KILL TYPE pubsub`) the node silently stops
//! receiving cross-node traffic, and while Redis is down publishing errors out, which makes
//! the adapter skip even the local part of a broadcast. This driver fixes both:
//!
//! * Publishing goes through a redis-rs [`ConnectionManager`] (which reconnects on its own) and
//!   fails fast while Redis is down, so the caller can fall back to a local emit.
//! * Subscribing goes through one dedicated pub/sub connection owned by a background task. The
//!   task keeps the wanted channels and patterns in a registry, and (re)applies them every time
//!   it (re)connects, with exponential backoff between attempts. A subscription made while
//!   Redis is down is recorded and takes effect once Redis is back.
//! * Reachability is tracked in one place ([`RedisState`], [`ResilientDriver::outages`]) and
//!   logged once per outage.
//!
//! The same subscriber also serves Herald's own channels (the Redis ingress) through
//! [`ResilientDriver::subscribe_stream`], so every Redis subscription in the process shares
//! the same reconnect logic.
//!
//! The pub/sub connection is a plain (RESP2-compatible) redis-rs [`PubSub`](redis::aio::PubSub)
//! connection, so no `?protocol=resp3` is needed on the URL.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink, PubSubStream};
use redis::{AsyncCommands, Msg, RedisResult};
use socketioxide_redis::drivers::{ChanItem, Driver, MessageStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{timeout, Instant};

use super::endpoint::Endpoint;
use super::sharded::Sharded;
use super::redis_state::{Reachability, RedisState};

/// Upper bound for a publish (or `PUBSUB NUMSUB`) while Redis is believed to be up. Past it the
/// caller gets an error and is expected to deliver locally.
const PUBLISH_TIMEOUT: Duration = Duration::from_millis(500);
/// Upper bound for opening the pub/sub connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Upper bound for a command on the pub/sub connection (SUBSCRIBE, PING...).
const SUBSCRIBER_COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the idle pub/sub connection is pinged, to notice half-open TCP connections.
const HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// How long `subscribe` waits for Redis to confirm a new subscription while Redis is up.
const SUBSCRIBE_CONFIRMATION_WAIT: Duration = Duration::from_secs(2);
const RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(100);
const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Buffer of each [`Subscription`]; messages beyond it are dropped with a warning rather than
/// stalling every other subscriber.
const SUBSCRIPTION_BUFFER: usize = 1024;

/// Why a driver operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// Redis is currently unreachable; the driver is reconnecting in the background.
    #[error("Redis is unreachable")]
    Unavailable,
    /// Redis did not answer in time.
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    /// Redis closed the pub/sub connection (restart, `CLIENT KILL`...).
    #[error("Redis closed the pub/sub connection")]
    ConnectionClosed,
    /// The driver was shut down; it no longer talks to Redis.
    #[error("the Redis driver has been shut down")]
    ShutDown,
    /// Any other Redis error, including an invalid URL.
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
}

/// Cluster driver for socketioxide-redis that reconnects and resubscribes on its own.
///
/// Clones share the same connections and background task. The task stops when the last clone
/// is dropped or when [`ResilientDriver::shutdown`] is called; subscription streams end then.
/// Use one driver per [`SocketIo`](socketioxide::SocketIo) instance: like the bundled driver,
/// it keeps a single adapter subscription per channel.
#[derive(Clone)]
pub struct ResilientDriver {
    shared: Arc<Shared>,
    lifetime: Arc<Lifetime>,
}

/// Dropping the last `Lifetime` closes the stop channel, which stops the background task.
struct Lifetime {
    stop: watch::Sender<bool>,
}

/// State shared by the driver handles, the background task and the subscription streams.
struct Shared {
    /// Where Redis is (a URL, or sentinels that name the master).
    endpoint: Arc<Endpoint>,
    /// `host:port` of the server, for logs (the URL may carry a password).
    redis_addr: String,
    /// The publishing connection, and the address it goes to (replaced when a failover moved
    /// the master).
    publisher: std::sync::RwLock<(String, ConnectionManager)>,
    reachability: Reachability,
    registry: Mutex<Registry>,
    /// Asks the background task to bring the Redis subscriptions in line with the registry.
    resync_requests: mpsc::UnboundedSender<ResyncRequest>,
    /// Against a Redis Cluster: the adapter's channels, on sharded pub/sub.
    sharded: Option<Arc<Sharded>>,
}

struct ResyncRequest {
    applied: Option<oneshot::Sender<()>>,
}

impl ResilientDriver {
    /// Creates the driver and starts connecting in the background. Never waits for Redis:
    /// if it is unreachable, the driver starts [`RedisState::Down`] and keeps retrying.
    ///
    /// Fails only if `url` is not a valid Redis URL. Must be called within a Tokio runtime.
    pub fn connect(url: &str) -> Result<Self, DriverError> {
        let settings = crate::configuration::RedisSettings { url: url.to_string(), ..Default::default() };
        let endpoint = Endpoint::from_settings(&settings).map_err(|e| DriverError::Redis(redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "redis.url", e))))?;
        Self::with_endpoint(Arc::new(endpoint))
    }

    /// The same, for an [`Endpoint`] (TLS options, Sentinel).
    pub fn with_endpoint(endpoint: Arc<Endpoint>) -> Result<Self, DriverError> {
        let (resync_requests, resync_receiver) = mpsc::unbounded_channel();
        let placeholder = endpoint_placeholder(&endpoint)?;
        let (sharded, sharded_messages) = match endpoint.cluster_builder() {
            Some(builder) => {
                let (sharded, messages) = Sharded::new(builder?)?;
                (Some(sharded), Some(messages))
            }
            None => (None, None),
        };
        let registry = Registry { shard_adapter: sharded.is_some(), ..Registry::default() };
        let shared = Arc::new(Shared {
            redis_addr: endpoint.describe(),
            publisher: std::sync::RwLock::new(placeholder),
            endpoint,
            reachability: Reachability::new(),
            registry: Mutex::new(registry),
            resync_requests,
            sharded,
        });
        if let Some(mut messages) = sharded_messages {
            let shared = Arc::downgrade(&shared);
            tokio::spawn(async move {
                while let Some((channel, payload)) = messages.recv().await {
                    let Some(shared) = shared.upgrade() else { return };
                    shared.registry().dispatch_parts(&channel, None, &payload);
                }
            });
        }
        let (stop, stop_receiver) = watch::channel(false);
        tokio::spawn(maintain_subscriptions(shared.clone(), resync_receiver, stop_receiver));
        Ok(Self { shared, lifetime: Arc::new(Lifetime { stop }) })
    }

    /// Why Redis is unreachable, as the last connection attempt failed.
    pub fn last_error(&self) -> Option<String> {
        self.shared.reachability.last_error()
    }

    /// One command on the publishing connection (fails at once while Redis is down).
    pub async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, DriverError> {
        let mut publisher = self.publisher()?;
        bounded(PUBLISH_TIMEOUT, cmd.query_async(&mut publisher)).await
    }

    /// Where Redis is, for the other connections Herald makes (store, bookkeeping).
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.shared.endpoint
    }

    /// Current Redis reachability. Cheap: reads a watch channel.
    /// When the current subscriptions started to be set up (unix ms; 0 before the first): no
    /// message published before then reached them.
    pub fn listening_since_ms(&self) -> u64 {
        self.shared.reachability.listening_since_ms()
    }

    /// When the last established connection was lost (unix ms; 0 before the first loss): the
    /// subscriptions had received everything published before then.
    pub fn lost_at_ms(&self) -> u64 {
        self.shared.reachability.lost_at_ms()
    }

    pub fn state(&self) -> RedisState {
        self.shared.reachability.current()
    }

    /// Follows Redis reachability changes.
    pub fn watch_state(&self) -> watch::Receiver<RedisState> {
        self.shared.reachability.watch()
    }

    /// Number of times an established Redis connection was lost since the driver started.
    pub fn outages(&self) -> u64 {
        self.shared.reachability.outages()
    }

    /// Messages dropped since the driver started because a subscriber did not keep up.
    pub fn dropped_messages(&self) -> u64 {
        self.shared.registry().drops.total
    }

    /// Subscribes to `channels` and `patterns` (`PSUBSCRIBE`), for as long as the returned
    /// stream lives, across Redis restarts. Items are `(channel, payload)`; for a pattern
    /// match, `channel` is the concrete channel the message was published on.
    ///
    /// While Redis is up, returns once Redis confirmed the subscription (or after a couple of
    /// seconds at most); while it is down, returns at once and the subscription takes effect on
    /// reconnection. Messages published while Redis is down are lost (pub/sub has no replay).
    /// Fails only after [`ResilientDriver::shutdown`].
    pub async fn subscribe_stream(&self, channels: Vec<String>, patterns: Vec<String>) -> Result<Subscription, DriverError> {
        let (id, items) = self.shared.registry().add(channels, patterns, SUBSCRIPTION_BUFFER)?;
        self.apply_subscription_changes().await;
        Ok(Subscription { id, items, shared: self.shared.clone() })
    }

    /// Like [`ResilientDriver::subscribe_stream`] for channels, on sharded pub/sub against a
    /// Redis Cluster (and plain otherwise). With sharded pub/sub, [`Self::sharded_confirmations`]
    /// tells when the subscription was made again, so that a gap can be caught up.
    pub async fn subscribe_sharded(&self, channels: Vec<String>) -> Result<Subscription, DriverError> {
        let Some(sharded) = &self.shared.sharded else { return self.subscribe_stream(channels, vec![]).await };
        let (id, items) = self.shared.registry().add(channels.clone(), Vec::new(), SUBSCRIPTION_BUFFER)?;
        self.shared.registry().sharded.insert(id);
        for channel in &channels {
            sharded.subscribe(channel).await;
        }
        Ok(Subscription { id, items, shared: self.shared.clone() })
    }

    /// Against a Redis Cluster: moves each time a sharded subscription was (re)confirmed.
    pub fn sharded_confirmations(&self) -> Option<watch::Receiver<u64>> {
        self.shared.sharded.as_ref().map(|s| s.confirmations())
    }

    /// Stops the background task now, instead of when the last clone is dropped. Subscription
    /// streams end and later operations fail with [`DriverError::ShutDown`] or
    /// [`DriverError::Unavailable`].
    pub fn shutdown(&self) {
        self.lifetime.stop.send_replace(true);
    }

    /// Lets the background task apply registry changes, waiting for Redis to confirm them
    /// only if Redis is up (otherwise they are applied on reconnection).
    async fn apply_subscription_changes(&self) {
        let (applied, confirmation) = oneshot::channel();
        if !self.shared.request_resync(Some(applied)) {
            return;
        }
        if self.state() == RedisState::Up {
            // Not confirmed in time means the connection is being lost: the subscription is
            // recorded and will be applied on reconnection.
            let _ = timeout(SUBSCRIBE_CONFIRMATION_WAIT, confirmation).await;
        }
    }

    /// `PUBLISH` on the plain connection: Herald's own channels (never sharded), e.g. the
    /// plain WebSocket relay's.
    pub async fn publish_plain(&self, chan: String, val: Vec<u8>) -> Result<(), DriverError> {
        let mut publisher = self.publisher()?;
        bounded(PUBLISH_TIMEOUT, publisher.publish::<_, _, ()>(chan, val)).await
    }

    /// The publishing connection, or an immediate error while Redis is known to be down (the
    /// caller then delivers locally instead of waiting for a timeout).
    fn publisher(&self) -> Result<ConnectionManager, DriverError> {
        match self.state() {
            RedisState::Up => Ok(self.shared.publisher()),
            RedisState::Down => Err(DriverError::Unavailable),
        }
    }
}

impl Driver for ResilientDriver {
    type Error = DriverError;

    /// The adapter's publish: sharded (`SPUBLISH`) against a Redis Cluster.
    async fn publish(&self, chan: String, val: Vec<u8>) -> Result<(), Self::Error> {
        match &self.shared.sharded {
            Some(sharded) => {
                self.publisher()?; // fails at once while Redis is down
                bounded(PUBLISH_TIMEOUT, sharded.publish(chan, val)).await
            }
            None => self.publish_plain(chan, val).await,
        }
    }

    async fn subscribe(&self, chan: String, size: usize) -> Result<MessageStream<ChanItem>, Self::Error> {
        let items = self.shared.registry().add_adapter_channel(chan.clone(), size)?;
        match &self.shared.sharded {
            Some(sharded) => sharded.subscribe(&chan).await,
            None => self.apply_subscription_changes().await,
        }
        Ok(MessageStream::new(items))
    }

    async fn unsubscribe(&self, chan: String) -> Result<(), Self::Error> {
        self.shared.registry().remove_adapter_channel(&chan);
        match &self.shared.sharded {
            Some(sharded) => sharded.unsubscribe(&chan).await,
            None => self.apply_subscription_changes().await,
        }
        Ok(())
    }

    async fn num_serv(&self, chan: &str) -> Result<u16, Self::Error> {
        if let Some(sharded) = &self.shared.sharded {
            self.publisher()?;
            return bounded(PUBLISH_TIMEOUT, sharded.subscribers(chan)).await;
        }
        let mut publisher = self.publisher()?;
        let numsub = redis::cmd("PUBSUB").arg("NUMSUB").arg(chan).clone();
        let (_, count): (String, u16) = bounded(PUBLISH_TIMEOUT, numsub.query_async(&mut publisher)).await?;
        Ok(count)
    }
}

/// Messages from [`ResilientDriver::subscribe_stream`]: `(channel, payload)`.
///
/// Dropping it unsubscribes. It ends when the driver shuts down.
pub struct Subscription {
    id: SubscriberId,
    items: mpsc::Receiver<ChanItem>,
    shared: Arc<Shared>,
}

impl Stream for Subscription {
    type Item = (String, Bytes);

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().items.poll_recv(cx).map(|item| item.map(|(channel, payload)| (channel, Bytes::from(payload))))
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.shared.registry().remove(self.id);
        self.shared.request_resync(None);
    }
}

impl Shared {
    fn registry(&self) -> MutexGuard<'_, Registry> {
        // The registry is never left half-updated, so a panic elsewhere doesn't invalidate it.
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Returns false if the background task is gone.
    fn request_resync(&self, applied: Option<oneshot::Sender<()>>) -> bool {
        self.resync_requests.send(ResyncRequest { applied }).is_ok()
    }
}

type SubscriberId = u64;

/// Who wants which channels and patterns. The Redis subscriptions are derived from it.
#[derive(Default)]
struct Registry {
    next_id: SubscriberId,
    subscribers: HashMap<SubscriberId, Subscriber>,
    /// The subscriber created by [`Driver::subscribe`] for each adapter channel, so that
    /// [`Driver::unsubscribe`] removes exactly that one.
    adapter_channels: HashMap<String, SubscriberId>,
    /// The adapter's channels are on sharded pub/sub ([`Sharded`]), not on the plain connection.
    shard_adapter: bool,
    /// Subscribers on sharded pub/sub ([`ResilientDriver::subscribe_sharded`]).
    sharded: std::collections::HashSet<SubscriberId>,
    stopped: bool,
    drops: Drops,
}

/// Messages dropped for subscribers that did not keep up: counted, and logged at most every
/// [`DROP_REPORT_EVERY`] so that an overload does not also flood the log.
#[derive(Default)]
struct Drops {
    total: u64,
    unreported: u64,
    reported_at: Option<Instant>,
}

const DROP_REPORT_EVERY: Duration = Duration::from_secs(10);

impl Drops {
    fn record(&mut self, channel: &str) {
        self.total += 1;
        self.unreported += 1;
        if self.reported_at.is_none_or(|at| at.elapsed() >= DROP_REPORT_EVERY) {
            tracing::warn!(
                dropped = self.unreported,
                total = self.total,
                last_channel = channel,
                "subscriber is not keeping up; Redis messages dropped"
            );
            self.unreported = 0;
            self.reported_at = Some(Instant::now());
        }
    }
}

struct Subscriber {
    channels: Vec<String>,
    patterns: Vec<String>,
    items: mpsc::Sender<ChanItem>,
}

/// The channels and patterns the pub/sub connection should be subscribed to.
#[derive(Default, PartialEq, Eq)]
struct Wanted {
    channels: BTreeSet<String>,
    patterns: BTreeSet<String>,
}

impl Registry {
    fn add(
        &mut self,
        channels: Vec<String>,
        patterns: Vec<String>,
        buffer: usize,
    ) -> Result<(SubscriberId, mpsc::Receiver<ChanItem>), DriverError> {
        if self.stopped {
            return Err(DriverError::ShutDown);
        }
        let (items, receiver) = mpsc::channel(buffer);
        let id = self.next_id;
        self.next_id += 1;
        self.subscribers.insert(id, Subscriber { channels, patterns, items });
        Ok((id, receiver))
    }

    /// Like the bundled driver, a new adapter subscription to a channel replaces the previous one.
    fn add_adapter_channel(&mut self, channel: String, buffer: usize) -> Result<mpsc::Receiver<ChanItem>, DriverError> {
        let (id, items) = self.add(vec![channel.clone()], Vec::new(), buffer)?;
        if let Some(replaced) = self.adapter_channels.insert(channel, id) {
            self.subscribers.remove(&replaced);
        }
        Ok(items)
    }

    fn remove_adapter_channel(&mut self, channel: &str) {
        if let Some(id) = self.adapter_channels.remove(channel) {
            self.subscribers.remove(&id);
        }
    }

    fn remove(&mut self, id: SubscriberId) {
        self.subscribers.remove(&id);
    }

    /// Forgets subscribers whose stream was dropped, then returns what the rest want.
    fn wanted(&mut self) -> Wanted {
        self.subscribers.retain(|_, subscriber| !subscriber.items.is_closed());
        self.adapter_channels.retain(|_, id| self.subscribers.contains_key(id));
        let mut wanted = Wanted::default();
        self.sharded.retain(|id| self.subscribers.contains_key(id));
        let mut sharded = self.sharded.clone();
        if self.shard_adapter {
            sharded.extend(self.adapter_channels.values().copied());
        }
        for (id, subscriber) in &self.subscribers {
            if sharded.contains(id) {
                continue;
            }
            wanted.channels.extend(subscriber.channels.iter().cloned());
            wanted.patterns.extend(subscriber.patterns.iter().cloned());
        }
        wanted
    }

    fn dispatch(&mut self, message: &Msg) {
        let pattern: Option<String> = message.get_pattern().ok().flatten();
        self.dispatch_parts(message.get_channel_name(), pattern.as_deref(), message.get_payload_bytes());
    }

    fn dispatch_parts(&mut self, channel: &str, pattern: Option<&str>, payload: &[u8]) {
        for subscriber in self.subscribers.values_mut() {
            let interested = match pattern {
                Some(pattern) => subscriber.patterns.iter().any(|wanted| wanted == pattern),
                None => subscriber.channels.iter().any(|wanted| wanted == channel),
            };
            if !interested {
                continue;
            }
            if let Err(mpsc::error::TrySendError::Full(_)) = subscriber.items.try_send((channel.to_owned(), payload.to_vec())) {
                self.drops.record(channel);
            }
        }
    }

    /// Ends every subscription stream and refuses new ones.
    fn stop(&mut self) {
        self.stopped = true;
        self.subscribers.clear();
        self.adapter_channels.clear();
    }
}

/// The background task: connects, subscribes to what the registry wants, dispatches messages,
/// and starts over with backoff whenever the connection is lost, until asked to stop.
async fn maintain_subscriptions(
    shared: Arc<Shared>,
    mut resync_requests: mpsc::UnboundedReceiver<ResyncRequest>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = RECONNECT_BACKOFF_MIN;
    'reconnect: loop {
        let opening_at_ms = crate::notification::now_ms();
        let opened = tokio::select! {
            () = stop_requested(&mut stop) => break 'reconnect,
            opened = Session::connect(&shared) => opened,
        };
        let cause = match opened {
            Ok(mut session) => {
                backoff = RECONNECT_BACKOFF_MIN;
                shared.reachability.mark_up(&shared.redis_addr, opening_at_ms);
                if let Some(sharded) = &shared.sharded {
                    let sharded = sharded.clone();
                    tokio::spawn(async move { sharded.reconnect().await });
                }
                match session.serve(&shared, &mut resync_requests, &mut stop).await {
                    SessionEnd::Stopped => break 'reconnect,
                    SessionEnd::Lost(cause) => cause,
                }
            }
            Err(cause) => {
                tracing::debug!(redis = %shared.redis_addr, error = %cause, "Redis connection attempt failed");
                cause
            }
        };
        shared.reachability.mark_down(&shared.redis_addr, &cause);

        // Subscription changes made until the next attempt are applied when it succeeds;
        // acknowledge them now so that nobody waits for Redis.
        let retry_at = Instant::now() + backoff;
        loop {
            tokio::select! {
                () = stop_requested(&mut stop) => break 'reconnect,
                () = tokio::time::sleep_until(retry_at) => break,
                Some(request) = resync_requests.recv() => request.acknowledge(),
            }
        }
        backoff = (backoff * 2).min(RECONNECT_BACKOFF_MAX);
    }
    shared.registry().stop();
    shared.reachability.mark_stopped();
}

fn publisher_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new().set_connection_timeout(Some(CONNECT_TIMEOUT)).set_number_of_retries(1).set_max_delay(RECONNECT_BACKOFF_MAX)
}

/// The publisher before the first connection: for a URL, its one address; for Sentinel, a
/// connection to nowhere that the first session replaces.
fn endpoint_placeholder(endpoint: &Endpoint) -> Result<(String, ConnectionManager), DriverError> {
    let client = match endpoint.direct_client() {
        Some(client) => client?,
        None => redis::Client::open("redis://127.0.0.1:1/")?,
    };
    let addr = if endpoint.rediscovers() { String::new() } else { client.get_connection_info().addr().to_string() };
    Ok((addr, ConnectionManager::new_lazy_with_config(client, publisher_config())?))
}

impl Shared {
    fn publisher(&self) -> ConnectionManager {
        self.publisher.read().unwrap_or_else(|e| e.into_inner()).1.clone()
    }
}

/// Resolves when a stop is requested or every driver handle is gone.
async fn stop_requested(stop: &mut watch::Receiver<bool>) {
    // An error means the sender (every driver handle) was dropped: stop as well.
    let _ = stop.wait_for(|stop| *stop).await;
}

impl ResyncRequest {
    fn acknowledge(self) {
        if let Some(applied) = self.applied {
            let _ = applied.send(());
        }
    }
}

/// One pub/sub connection, from connect to loss.
struct Session {
    sink: PubSubSink,
    messages: PubSubStream,
    /// What this connection is subscribed to.
    subscribed: Wanted,
}

enum SessionEnd {
    Stopped,
    Lost(DriverError),
}

impl Session {
    /// Finds Redis (with Sentinel: asks where the master is now), then [`Session::open`]s.
    async fn connect(shared: &Shared) -> Result<Self, DriverError> {
        let client = bounded(CONNECT_TIMEOUT, async { shared.endpoint.client().await }).await?;
        let addr = client.get_connection_info().addr().to_string();
        let moved = shared.publisher.read().unwrap_or_else(|e| e.into_inner()).0 != addr;
        if moved {
            let publisher = ConnectionManager::new_lazy_with_config(client.clone(), publisher_config())?;
            *shared.publisher.write().unwrap_or_else(|e| e.into_inner()) = (addr, publisher);
        }
        Self::open(&client, shared).await
    }

    /// Connects, subscribes to what the registry wants, and checks that publishing works too.
    async fn open(client: &redis::Client, shared: &Shared) -> Result<Self, DriverError> {
        let pubsub = bounded(CONNECT_TIMEOUT, client.get_async_pubsub()).await?;
        let (sink, messages) = pubsub.split();
        let mut session = Self { sink, messages, subscribed: Wanted::default() };
        session.sync(shared).await?;
        // The first request on a stale publishing connection fails and makes the
        // ConnectionManager reconnect; the second one then runs on the new connection.
        if ping_publisher(shared).await.is_err() {
            ping_publisher(shared).await?;
        }
        Ok(session)
    }

    async fn serve(
        &mut self,
        shared: &Shared,
        resync_requests: &mut mpsc::UnboundedReceiver<ResyncRequest>,
        stop: &mut watch::Receiver<bool>,
    ) -> SessionEnd {
        let mut health_check = tokio::time::interval_at(Instant::now() + HEALTH_CHECK_INTERVAL, HEALTH_CHECK_INTERVAL);
        health_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let outcome = tokio::select! {
                () = stop_requested(stop) => return SessionEnd::Stopped,
                message = self.messages.next() => match message {
                    Some(message) => {
                        shared.registry().dispatch(&message);
                        Ok(())
                    }
                    None => Err(DriverError::ConnectionClosed),
                },
                Some(request) = resync_requests.recv() => {
                    let synced = self.sync(shared).await;
                    request.acknowledge();
                    synced
                }
                _ = health_check.tick() => {
                    if let Some(sharded) = shared.sharded.as_ref().filter(|s| !s.connected()) {
                        let sharded = sharded.clone();
                        tokio::spawn(async move { sharded.ensure().await });
                    }
                    match bounded(SUBSCRIBER_COMMAND_TIMEOUT, self.sink.ping::<redis::Value>()).await {
                        Ok(_) if shared.endpoint.is_cluster() => still_serves_herald_slot(shared).await,
                        other => other.map(drop),
                    }
                }
            };
            if let Err(cause) = outcome {
                return SessionEnd::Lost(cause);
            }
        }
    }

    /// Brings this connection's subscriptions in line with the registry.
    async fn sync(&mut self, shared: &Shared) -> Result<(), DriverError> {
        let wanted = shared.registry().wanted();
        if wanted == self.subscribed {
            return Ok(());
        }
        let subscribe = missing_from(&wanted.channels, &self.subscribed.channels);
        let unsubscribe = missing_from(&self.subscribed.channels, &wanted.channels);
        let psubscribe = missing_from(&wanted.patterns, &self.subscribed.patterns);
        let punsubscribe = missing_from(&self.subscribed.patterns, &wanted.patterns);
        let sink = &mut self.sink;
        if !subscribe.is_empty() {
            bounded(SUBSCRIBER_COMMAND_TIMEOUT, sink.subscribe(subscribe)).await?;
        }
        if !psubscribe.is_empty() {
            bounded(SUBSCRIBER_COMMAND_TIMEOUT, sink.psubscribe(psubscribe)).await?;
        }
        if !unsubscribe.is_empty() {
            bounded(SUBSCRIBER_COMMAND_TIMEOUT, sink.unsubscribe(unsubscribe)).await?;
        }
        if !punsubscribe.is_empty() {
            bounded(SUBSCRIBER_COMMAND_TIMEOUT, sink.punsubscribe(punsubscribe)).await?;
        }
        self.subscribed = wanted;
        Ok(())
    }
}

/// Against a Redis Cluster: whether the node Herald is connected to still serves Herald's slot.
/// A failover that did not kill the old master (a `CLUSTER FAILOVER`, a managed service's
/// maintenance) leaves every connection open to a node that is now a replica and answers
/// `MOVED`: that ends the session, and the next one asks the seeds where the slot went.
async fn still_serves_herald_slot(shared: &Shared) -> Result<(), DriverError> {
    let mut publisher = shared.publisher();
    let probe = redis::cmd("EXISTS").arg(super::keys::redis_key!("last-id")).clone();
    match bounded(PUBLISH_TIMEOUT, probe.query_async::<i64>(&mut publisher)).await {
        Err(DriverError::Redis(e)) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::Moved) || e.to_string().contains("MOVED") => {
            Err(DriverError::Redis(e))
        }
        _ => Ok(()), // other trouble shows on the pub/sub connection itself
    }
}

async fn ping_publisher(shared: &Shared) -> Result<(), DriverError> {
    let mut publisher = shared.publisher();
    bounded(PUBLISH_TIMEOUT, redis::cmd("PING").query_async::<()>(&mut publisher)).await
}

fn missing_from(from: &BTreeSet<String>, other: &BTreeSet<String>) -> Vec<String> {
    from.difference(other).cloned().collect()
}

/// Runs a Redis request with a deadline.
async fn bounded<T>(limit: Duration, request: impl Future<Output = RedisResult<T>>) -> Result<T, DriverError> {
    match timeout(limit, request).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(DriverError::Timeout(limit)),
    }
}
