//! Where notifications wait for users who are not connected (SPEC §7).
//!
//! Each persisted room has a stream of entries, capped by count and age. One emit to several
//! persisted rooms appends one entry per room, all carrying the same notification id (`nid`,
//! the id of the first entry), so a socket in several of those rooms sees it once, live or
//! replayed. Ids are `<ms>-<seq>` (Redis stream ids) and sort in time order across streams.
//!
//! Two implementations: [`sqlite::SqliteStore`] for the embedded default (a SQLite database
//! under `storage.data_dir`, so a restart loses nothing; or in memory, for tests) and
//! [`redis::RedisStore`] (Redis Streams, shared by every instance).

pub mod redis;
pub mod sqlite;

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use futures_util::future::BoxFuture;

use crate::payload::Args;

/// A stream id `<ms>-<seq>`, ordered numerically.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct StreamId {
    pub ms: u64,
    pub seq: u64,
}

impl StreamId {
    pub fn new(ms: u64, seq: u64) -> StreamId {
        StreamId { ms, seq }
    }

    /// A mark `lag_ms` ago: everything stored before that millisecond. Whatever is stored in
    /// the same millisecond is replayed rather than risked.
    pub fn lagging(lag_ms: u64) -> StreamId {
        StreamId::lagging_from(crate::notification::now_ms(), lag_ms)
    }

    /// [`StreamId::lagging`] from the unix time `ms` rather than now.
    pub fn lagging_from(ms: u64, lag_ms: u64) -> StreamId {
        StreamId::new(ms.saturating_sub(lag_ms + 1), u64::MAX)
    }
}

impl Ord for StreamId {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.ms, self.seq).cmp(&(other.ms, other.seq))
    }
}

impl PartialOrd for StreamId {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl FromStr for StreamId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (ms, seq) = s.split_once('-').unwrap_or((s, "0"));
        match (ms.parse(), seq.parse()) {
            (Ok(ms), Ok(seq)) => Ok(StreamId { ms, seq }),
            _ => Err(format!("{s:?} is not a notification id (<ms>-<seq>)")),
        }
    }
}

/// The stream a namespace-wide emit (no room) is stored in.
pub const BROADCAST_STREAM: &str = "*broadcast";

/// One stored emit, as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The notification id shared by every stream the emit was stored in.
    pub nid: StreamId,
    pub event: String,
    pub args: Args,
}

#[derive(Debug, thiserror::Error)]
#[error("store unavailable: {0}")]
pub struct StoreError(pub String);

/// One emit to store.
#[derive(Debug, Clone, Copy)]
pub struct Stored<'a> {
    pub event: &'a str,
    pub args: &'a Args,
    pub dedup: Option<Dedup<'a>>,
    pub nid: Option<StreamId>,
    /// A producer's key (HTTP `Idempotency-Key`, or one Herald made for an outbox entry): an
    /// append with a key already stored within the window stores nothing and answers the first
    /// id with `fresh: false`.
    pub idempotency: Option<Idempotency<'a>>,
    /// Cluster mode: the relay message (see `cluster::relay`) to publish, atomically with the
    /// append and in the same order, for every instance to deliver. Stores without instances to
    /// reach (the embedded default) ignore it: the caller delivers locally.
    pub relay: Option<&'a str>,
}

/// An idempotency key and how long it is remembered.
#[derive(Debug, Clone, Copy)]
pub struct Idempotency<'a> {
    pub key: &'a str,
    pub window: std::time::Duration,
}

/// What [`Store::append`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The notification id.
    pub nid: StreamId,
    /// False when the idempotency key was already stored: nothing was appended or published.
    pub fresh: bool,
}

/// Identifies a pub/sub message that every instance receives, so that it is stored once.
#[derive(Debug, Clone, Copy)]
pub struct Dedup<'a> {
    /// The message's hash.
    pub key: &'a str,
    /// When this instance's subscription started (unix ms): copies stored before then are of
    /// publishes it cannot have received, and are not its to claim.
    pub listening_since_ms: u64,
}

/// What Herald keeps per user: where replay resumes and what was read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReadState {
    /// Everything up to this id is read.
    pub up_to: Option<StreamId>,
    /// Ids read individually after `up_to`.
    pub ids: Vec<StreamId>,
}

/// Where a user is connected, and where they stopped (see [`crate::seen`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sessions {
    /// Everything up to this id reached the user before their last socket went away.
    pub seen: Option<StreamId>,
    /// The instances that hold (or held, when they died) sockets of the user.
    pub nodes: Vec<NodeSession>,
}

/// A user's sockets on one instance.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSession {
    pub node: String,
    pub sockets: u64,
    /// Everything up to this id had reached the user when their first socket there connected.
    pub since: StreamId,
}

/// One change to a user's session entries (see [`Store::write_sessions`]).
#[derive(Debug, Clone, PartialEq)]
pub enum SessionWrite {
    Set { user: String, node: String, sockets: u64, since: StreamId },
    End { user: String, node: String, mark: StreamId },
}

/// What the store knows of an instance.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct NodeMark {
    /// It runs and reaches the store now.
    pub alive: bool,
    /// Everything stored up to this id had been delivered to its sockets (written every second).
    pub delivered: Option<StreamId>,
}

pub trait Store: Send + Sync + 'static {
    /// Appends one emit to the streams of `rooms` (all in `namespace`) and returns its id: the
    /// first entry's id, or `nid` when given (one notification sent as several emits, e.g. to
    /// several users with their own `channel`, keeps one id). With `dedup`, the instances that
    /// receive the same pub/sub message store it once and all get the same id.
    fn append<'a>(&'a self, namespace: &'a str, rooms: &'a [String], emit: Stored<'a>) -> BoxFuture<'a, Result<Appended, StoreError>>;

    /// Entries of one room's stream with an id above `after` (all when `None`), oldest first.
    fn range<'a>(&'a self, namespace: &'a str, room: &'a str, after: Option<StreamId>) -> BoxFuture<'a, Result<Vec<Entry>, StoreError>>;

    /// Remembers `value` under an idempotency key for `window`, unless the key is already
    /// there: then answers the value stored first (and stores nothing).
    fn claim_key<'a>(
        &'a self,
        key: &'a str,
        value: &'a str,
        window: std::time::Duration,
    ) -> BoxFuture<'a, Result<Option<String>, StoreError>>;

    /// The user's seen mark and the instances holding their sockets.
    fn sessions<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<Sessions, StoreError>>;
    /// Applies `writes` in order (one transaction or round trip where the store can):
    /// `Set` records that `user` has `sockets` sockets on `node`, keeping `since` from the entry's
    /// first write (it only moves when the user's sockets there all went away and came back);
    /// `End` removes the user's entry on `node` (its sockets closed, or the instance died) and
    /// makes the seen mark the largest of itself, the entry's `since` and `mark`.
    fn write_sessions<'a>(&'a self, writes: &'a [SessionWrite]) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Liveness and delivered mark of each of `nodes`, in order.
    fn node_marks<'a>(&'a self, nodes: &'a [String]) -> BoxFuture<'a, Result<Vec<NodeMark>, StoreError>>;
    /// Records that every stored notification up to `delivered` reached `node`'s sockets.
    fn write_node_mark<'a>(&'a self, node: &'a str, delivered: StreamId) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Remembers the persisted rooms `user`'s token granted, so that history over HTTP (which
    /// has no token) covers the same streams as history over the socket.
    fn set_user_rooms<'a>(&'a self, user: &'a str, rooms: &'a [String]) -> BoxFuture<'a, Result<(), StoreError>>;
    fn user_rooms<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<Vec<String>, StoreError>>;

    fn read_state<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<ReadState, StoreError>>;
    /// Marks `ids` read, and everything up to `up_to` when given.
    fn mark_read<'a>(&'a self, user: &'a str, ids: &'a [StreamId], up_to: Option<StreamId>) -> BoxFuture<'a, Result<(), StoreError>>;
}

/// Entries of several streams merged: one per notification id, in id order.
pub async fn merged_range(store: &dyn Store, namespace: &str, rooms: &[String], after: Option<StreamId>) -> Result<Vec<Entry>, StoreError> {
    let mut entries = Vec::new();
    for room in rooms {
        entries.extend(store.range(namespace, room, after).await?);
    }
    entries.retain(|e| after.is_none_or(|after| e.nid > after));
    entries.sort_by_key(|e| e.nid);
    entries.dedup_by_key(|e| e.nid);
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_print_and_order_numerically() {
        let a: StreamId = "1700000000000-9".parse().unwrap();
        let b: StreamId = "1700000000000-10".parse().unwrap();
        let c: StreamId = "1700000000001".parse().unwrap();
        assert!(a < b && b < c);
        assert_eq!(a.to_string(), "1700000000000-9");
        assert_eq!(c, StreamId::new(1_700_000_000_001, 0));
        assert!("x-1".parse::<StreamId>().is_err());
        assert!("".parse::<StreamId>().is_err());
    }
}
