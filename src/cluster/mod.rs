//! Cluster mode: several Herald nodes behind a load balancer share rooms through Redis.
//!
//! socketioxide-redis provides the cross-node adapter, but its bundled Redis driver neither
//! reconnects after a Redis restart nor lets local delivery proceed while Redis is down. This
//! module supplies a [`driver::ResilientDriver`] that does both, tracks Redis reachability
//! ([`redis_state::RedisState`]), and lets the rest of Herald (the Redis ingress) reuse the
//! same self-healing subscriber for its own channels.
//!
//! The adapter uses its own channel prefix, [`ADAPTER_CHANNEL_PREFIX`]: the default
//! `"socket.io"` would make its `socket.io-request#…` channels collide with the ones Node's
//! socket.io redis adapter/emitter use, which the ingress listens to.
//!
//! Building a Socket.IO layer on top of it:
//!
//! ```no_run
//! use herald::cluster::{self, driver::ResilientDriver, ResilientAdapter};
//! use socketioxide::SocketIo;
//!
//! # async fn build() -> Result<(), Box<dyn std::error::Error>> {
//! // Does not wait for Redis: it may be down, the driver keeps reconnecting in the background.
//! let driver = ResilientDriver::connect("redis://127.0.0.1:6379")?;
//! let (layer, io) = SocketIo::builder()
//!     .with_adapter::<ResilientAdapter<_>>(cluster::adapter_state(driver.clone()))
//!     .build_layer();
//! // With a remote adapter, `ns` returns a future that subscribes the namespace's channels.
//! io.ns("/", async || {}).await?;
//! # let _ = layer;
//! # Ok(())
//! # }
//! ```
//!
//! While `driver.state()` is [`RedisState::Down`](redis_state::RedisState::Down), the
//! adapter's `io.to(room).emit(..)` fails without reaching local sockets either; deliver with
//! `io.local().to(room).emit(..)` instead.

pub mod channels;
pub mod driver;
pub mod endpoint;
pub mod gated;
pub mod keys;
pub mod redis_state;
pub mod relay;

use socketioxide_redis::{CustomRedisAdapter, RedisAdapterConfig, RedisAdapterCtr};

use driver::ResilientDriver;

/// Channel prefix of the cross-node adapter: `herald-request#{namespace}#…`.
pub const ADAPTER_CHANNEL_PREFIX: &str = "herald";

/// The socketioxide adapter for cluster mode: socketioxide-redis over [`ResilientDriver`].
pub type ResilientAdapter<E> = CustomRedisAdapter<E, ResilientDriver>;

/// The adapter state to pass to `SocketIo::builder().with_adapter::<ResilientAdapter<_>>(..)`,
/// using Herald's channel prefix.
pub fn adapter_state(driver: ResilientDriver) -> RedisAdapterCtr<ResilientDriver> {
    RedisAdapterCtr::new_with_driver(driver, RedisAdapterConfig::new().with_prefix(ADAPTER_CHANNEL_PREFIX))
}
