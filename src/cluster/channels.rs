//! Herald's own Redis pub/sub channels, in one place: the store publishes on them and the
//! cluster subscribes to them, and neither should depend on the other for their names. Like the
//! keys, they carry the hash tag against a Redis Cluster (see [`super::keys`]).

use super::keys::redis_key;

/// Stored emits that entered on one instance, for every instance to deliver (see
/// [`super::relay`]): each message is `<nid> <entry id>\n<json>`.
pub fn relay_channel() -> String {
    redis_key!("deliver")
}

/// Commands that entered on one instance without being stored (HTTP emits, disconnects), for
/// the other instances' plain WebSocket sockets: `{"from": <instance>, ...command}`.
pub fn plain_channel() -> String {
    redis_key!("plain")
}

/// The channel an instance subscribes to while it runs. Redis drops the subscription the moment
/// the process dies, so `PUBSUB NUMSUB` tells a dead instance at once (its heartbeat key,
/// `herald:node:<node>` too, only expires seconds later).
pub fn node_channel(node: &str) -> String {
    redis_key!("node:{node}")
}

/// The last ~50,000 relay messages, under their entry ids: what an instance whose
/// subscription had a gap reads to catch up.
pub fn relay_log_key() -> String {
    redis_key!("relaylog")
}
