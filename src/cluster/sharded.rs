//! Sharded pub/sub for the cross-node adapter against a Redis Cluster (Redis ≥ 7).
//!
//! Against a cluster, a plain `PUBLISH` is copied to every node over the cluster bus. The
//! adapter's channels (`herald-request#…`, `herald-response#…`: commands that are not stored,
//! joins, leaves, disconnects, socket counts) use `SPUBLISH` / `SSUBSCRIBE` instead: each
//! channel lives on the shard of its slot, so their traffic is spread over the shards and
//! reaches only the nodes of one. The connection is redis-rs's cluster connection (RESP3 pushes),
//! which follows the cluster's topology and resubscribes by itself after a failover; this
//! module only makes it lazily (Redis may be down when Herald starts) and re-applies the wanted
//! channels the first time it connects.
//!
//! The relay channel (every stored notification, published by the append's Lua step with
//! `SPUBLISH`) is a shard channel too: it lives in Herald's slot, so it spreads nothing, but it is
//! no longer copied to every node of the cluster. Each time the cluster connection subscribes
//! again (after a failover) [`Sharded::confirmations`] moves, and the relay catches up from its
//! log. Herald's other channels (plain relay, liveness, which `PUBSUB NUMSUB` counts) stay on the
//! driver's plain subscription; the backends' too: their publishers use `PUBLISH`.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncCommands, PushInfo, PushKind};
use tokio::sync::mpsc;

/// Upper bound for making the cluster connection, and for one command on it.
const TIMEOUT: Duration = Duration::from_millis(1000);

/// A message on a sharded channel: `(channel, payload)`.
pub type Delivered = (String, Vec<u8>);

pub struct Sharded {
    client: ClusterClient,
    /// Counts the subscription confirmations Redis sent (`ssubscribe` pushes): it moves each
    /// time the cluster connection subscribed again (after a failover), and what was published
    /// in between was missed.
    confirmations: tokio::sync::watch::Sender<u64>,
    connection: tokio::sync::Mutex<Option<ClusterConnection>>,
    wanted: Mutex<BTreeSet<String>>,
}

impl Sharded {
    /// Messages of every sharded subscription arrive on the returned receiver.
    pub fn new(builder: redis::cluster::ClusterClientBuilder) -> redis::RedisResult<(Arc<Sharded>, mpsc::UnboundedReceiver<Delivered>)> {
        let (pushes, mut received) = mpsc::unbounded_channel::<PushInfo>();
        let client = builder
            .use_protocol(redis::ProtocolVersion::RESP3)
            .push_sender(pushes)
            .connection_timeout(TIMEOUT)
            .response_timeout(TIMEOUT)
            .retries(2)
            .build()?;
        let (messages, receiver) = mpsc::unbounded_channel();
        let confirmations = tokio::sync::watch::Sender::new(0u64);
        let confirmed = confirmations.clone();
        tokio::spawn(async move {
            while let Some(push) = received.recv().await {
                if push.kind == PushKind::SSubscribe {
                    confirmed.send_modify(|n| *n += 1);
                }
                if push.kind != PushKind::SMessage {
                    continue;
                }
                let mut data = push.data.into_iter();
                let (Some(channel), Some(payload)) = (data.next(), data.next()) else { continue };
                let (Ok(channel), Ok(payload)) = (redis::from_redis_value::<String>(channel), redis::from_redis_value::<Vec<u8>>(payload)) else {
                    continue;
                };
                if messages.send((channel, payload)).is_err() {
                    return;
                }
            }
        });
        Ok((Arc::new(Sharded { client, confirmations, connection: tokio::sync::Mutex::new(None), wanted: Mutex::new(BTreeSet::new()) }), receiver))
    }

    /// The cluster connection, made now if it does not exist yet (then subscribed to every
    /// wanted channel).
    async fn connection(&self) -> redis::RedisResult<ClusterConnection> {
        let mut current = self.connection.lock().await;
        if let Some(connection) = &*current {
            return Ok(connection.clone());
        }
        let mut connection = tokio::time::timeout(TIMEOUT * 3, self.client.get_async_connection())
            .await
            .map_err(|_| redis::RedisError::from((redis::ErrorKind::Io, "cluster connection timed out")))??;
        *current = Some(connection.clone());
        // One channel at a time: channels of different slots cannot share a command.
        let wanted: Vec<String> = self.wanted().iter().cloned().collect();
        for channel in wanted {
            if let Err(e) = connection.ssubscribe(&channel).await {
                tracing::warn!(error = %e, channel, "sharded subscription failed; the cluster connection retries it");
            }
        }
        Ok(connection)
    }

    fn wanted(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.wanted.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes the connection if there is none yet (the driver calls this each time Redis is up).
    pub async fn ensure(&self) {
        if let Err(e) = self.connection().await {
            tracing::warn!(error = %e, "sharded pub/sub not connected yet; retried when Redis is next up");
        }
    }

    /// Drops the connection and makes a new one, subscribed to every wanted channel: the driver
    /// calls this each time Redis is up again after an outage, so that the sharded subscriptions
    /// are made on the cluster as it is now (the old connection might take a while to notice a
    /// failover), and their confirmations tell the relay to catch up.
    pub async fn reconnect(&self) {
        self.connection.lock().await.take();
        self.ensure().await;
    }

    /// `SSUBSCRIBE`; while there is no connection yet, recorded and applied when it is made.
    pub async fn subscribe(&self, channel: &str) {
        self.wanted().insert(channel.to_string());
        // Without a connection yet, subscribed when it is made: at the driver's next connection
        // or health check (never waiting here: Herald starts while Redis is down).
        let current = self.connection.lock().await.clone();
        if let Some(mut connection) = current {
            if let Err(e) = connection.ssubscribe(channel).await {
                tracing::warn!(error = %e, channel, "sharded subscription failed; the cluster connection retries it");
            }
        }
    }

    /// Moves each time a sharded subscription was confirmed (made, or made again).
    pub fn confirmations(&self) -> tokio::sync::watch::Receiver<u64> {
        self.confirmations.subscribe()
    }

    /// Whether the cluster connection exists (or is being made now).
    pub fn connected(&self) -> bool {
        self.connection.try_lock().map_or(true, |connection| connection.is_some())
    }

    pub async fn unsubscribe(&self, channel: &str) {
        self.wanted().remove(channel);
        if let Some(mut connection) = self.connection.lock().await.clone() {
            let _ = connection.sunsubscribe(channel).await;
        }
    }

    pub async fn publish(&self, channel: String, payload: Vec<u8>) -> redis::RedisResult<()> {
        let mut connection = self.connection().await?;
        connection.spublish::<_, _, ()>(channel, payload).await
    }

    /// `PUBSUB SHARDNUMSUB`, summed over the nodes.
    pub async fn subscribers(&self, channel: &str) -> redis::RedisResult<u16> {
        let mut connection = self.connection().await?;
        let counts: std::collections::HashMap<String, u16> = redis::cmd("PUBSUB").arg("SHARDNUMSUB").arg(channel).query_async(&mut connection).await?;
        Ok(counts.get(channel).copied().unwrap_or(0))
    }
}
