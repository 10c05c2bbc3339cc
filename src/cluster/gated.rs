//! A Redis connection for Herald's own commands (the store, presence, webhooks, dashboard
//! stats) that answers at once while Redis is known to be down, instead of making every caller
//! wait for a timeout: the driver's [`RedisState`] says when it is.
//!
//! The connection is made from the [`Endpoint`] when first needed. With Sentinel it is made
//! again after each outage the driver saw (its pub/sub connection went down and came back),
//! so that commands follow a failover to the promoted master.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::{watch, Mutex};

use super::endpoint::Endpoint;
use super::redis_state::RedisState;

#[derive(Clone)]
pub struct Gated {
    endpoint: Arc<Endpoint>,
    config: ConnectionManagerConfig,
    state: watch::Receiver<RedisState>,
    current: Arc<Mutex<Current>>,
}

struct Current {
    /// Sees the driver's state changes (a change: a new connection, with Sentinel).
    seen: watch::Receiver<RedisState>,
    connection: Option<ConnectionManager>,
}

impl Gated {
    /// Short timeouts: a command that cannot be answered fails fast.
    pub fn new(endpoint: Arc<Endpoint>, state: watch::Receiver<RedisState>) -> Gated {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(Duration::from_millis(1000)))
            .set_number_of_retries(1);
        Gated::with_config(endpoint, state, config)
    }

    pub fn with_config(endpoint: Arc<Endpoint>, state: watch::Receiver<RedisState>, config: ConnectionManagerConfig) -> Gated {
        let current = Arc::new(Mutex::new(Current { seen: state.clone(), connection: None }));
        Gated { endpoint, config, state, current }
    }

    /// The connection, or an error at once while Redis is down.
    pub async fn get(&self) -> Result<ConnectionManager, String> {
        if *self.state.borrow() == RedisState::Down {
            return Err("redis is down".into());
        }
        let mut current = self.current.lock().await;
        if self.endpoint.rediscovers() && current.seen.has_changed().unwrap_or(false) {
            current.seen.borrow_and_update();
            current.connection = None; // the master may have moved
        }
        if let Some(connection) = &current.connection {
            return Ok(connection.clone());
        }
        let client = self.endpoint.client().await.map_err(|e| e.to_string())?;
        let connection = ConnectionManager::new_lazy_with_config(client, self.config.clone()).map_err(|e| e.to_string())?;
        current.connection = Some(connection.clone());
        Ok(connection)
    }
}

/// The members of the sorted set `key` scored at or before `now` (at most `limit`): the due
/// entries of a schedule kept in Redis (presence graces, webhook batches, unread checks).
pub async fn due_members(conn: &mut ConnectionManager, key: &str, now: u64, limit: usize) -> Result<Vec<String>, String> {
    redis::cmd("ZRANGEBYSCORE").arg(key).arg("-inf").arg(now).arg("LIMIT").arg(0).arg(limit).query_async(conn).await.map_err(|e| e.to_string())
}
