//! A Redis connection for Herald's own bookkeeping (presence, webhooks, dashboard stats) that
//! answers at once while Redis is known to be down, instead of making every caller wait for a
//! timeout: the driver's [`RedisState`] says when it is.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::watch;

use super::redis_state::RedisState;

#[derive(Clone)]
pub struct Gated {
    connection: ConnectionManager,
    state: watch::Receiver<RedisState>,
}

impl Gated {
    /// Connects lazily (the first command opens the connection), with short timeouts.
    pub fn new(url: &str, state: watch::Receiver<RedisState>) -> redis::RedisResult<Gated> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(Duration::from_millis(1000)))
            .set_number_of_retries(1);
        let connection = ConnectionManager::new_lazy_with_config(redis::Client::open(url)?, config)?;
        Ok(Gated { connection, state })
    }

    /// The connection, or an error at once while Redis is down.
    pub fn get(&self) -> Result<ConnectionManager, String> {
        match *self.state.borrow() {
            RedisState::Up => Ok(self.connection.clone()),
            RedisState::Down => Err("redis is down".into()),
        }
    }
}
