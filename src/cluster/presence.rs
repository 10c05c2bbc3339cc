//! Who is connected where, cluster-wide: the count of each user's sockets per instance, so that
//! `limits.max_connections_per_user` holds across instances.
//!
//! `herald:presence:<user>` is a hash `node_id → sockets`; every instance refreshes
//! `herald:node:<node_id>` (expiring) while it runs, and counts of instances whose key expired
//! (killed, partitioned) are ignored, so a crash never locks a user out. While Redis is down the
//! per-instance limit still holds and this check is skipped.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::AsyncCommands;
use tokio::sync::watch;

use super::redis_state::RedisState;

/// How often an instance says it is alive, and how long that lasts.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);
const HEARTBEAT_TTL_SECS: u64 = 15;

pub struct Presence {
    connection: ConnectionManager,
    redis_state: watch::Receiver<RedisState>,
    node_id: String,
}

impl Presence {
    pub fn new(url: &str, redis_state: watch::Receiver<RedisState>, node_id: &str) -> redis::RedisResult<Presence> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(Duration::from_millis(500)))
            .set_number_of_retries(1);
        let connection = ConnectionManager::new_lazy_with_config(redis::Client::open(url)?, config)?;
        Ok(Presence { connection, redis_state, node_id: node_id.to_string() })
    }

    fn conn(&self) -> Option<ConnectionManager> {
        (*self.redis_state.borrow() == RedisState::Up).then(|| self.connection.clone())
    }

    /// The user's sockets on live instances; `None` when Redis cannot say.
    pub async fn count(&self, user: &str) -> Option<u64> {
        let mut conn = self.conn()?;
        let counts: Vec<(String, i64)> = conn.hgetall(key(user)).await.ok()?;
        if counts.is_empty() {
            return Some(0);
        }
        let nodes: Vec<String> = counts.iter().map(|(node, _)| format!("herald:node:{node}")).collect();
        let alive: Vec<Option<String>> = redis::cmd("MGET").arg(&nodes).query_async(&mut conn).await.ok()?;
        Some(counts.iter().zip(alive).filter(|(_, a)| a.is_some()).map(|((_, n), _)| (*n).max(0) as u64).sum())
    }

    /// Adds `delta` (±1) to this instance's count for `user`.
    pub async fn add(&self, user: &str, delta: i64) {
        let Some(mut conn) = self.conn() else { return };
        let result: redis::RedisResult<i64> = conn.hincr(key(user), &self.node_id, delta).await;
        match result {
            Ok(n) if n <= 0 => {
                let _: redis::RedisResult<i64> = conn.hdel(key(user), &self.node_id).await;
            }
            Ok(_) => {
                let _: redis::RedisResult<bool> = conn.expire(key(user), 24 * 3600).await;
            }
            Err(e) => tracing::debug!(error = %e, "presence not updated"),
        }
    }

    /// Says this instance is alive; call every [`HEARTBEAT_EVERY`].
    pub async fn heartbeat(&self) {
        let Some(mut conn) = self.conn() else { return };
        let result: redis::RedisResult<()> = conn.set_ex(format!("herald:node:{}", self.node_id), "1", HEARTBEAT_TTL_SECS).await;
        if let Err(e) = result {
            tracing::debug!(error = %e, "heartbeat not written");
        }
    }
}

fn key(user: &str) -> String {
    format!("herald:presence:{user}")
}
