//! Herald's own Redis pub/sub channels, in one place: the store publishes on them and the
//! cluster subscribes to them, and neither should depend on the other for their names.

/// Stored emits that entered on one instance, for every instance to deliver (see
/// [`super::relay`]): each message is `<nid>\n<json>`.
pub const RELAY_CHANNEL: &str = "herald:deliver";

/// Commands that entered on one instance without being stored (HTTP emits, disconnects), for
/// the other instances' plain WebSocket sockets: `{"from": <instance>, ...command}`.
pub const PLAIN_CHANNEL: &str = "herald:plain";

/// The channel an instance subscribes to while it runs. Redis drops the subscription the moment
/// the process dies, so `PUBSUB NUMSUB` tells a dead instance at once (its heartbeat key,
/// `herald:node:<node>` too, only expires seconds later).
pub fn node_channel(node: &str) -> String {
    format!("herald:node:{node}")
}
