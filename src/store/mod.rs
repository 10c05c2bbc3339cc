//! Where notifications wait for users who are not connected (SPEC §7).
//!
//! Each persisted room has a stream of entries, capped by count and age. One emit to several
//! persisted rooms appends one entry per room, all carrying the same notification id (`nid`,
//! the id of the first entry), so a socket in several of those rooms sees it once, live or
//! replayed. Ids are `<ms>-<seq>` (Redis stream ids) and sort in time order across streams.
//!
//! Two implementations: [`memory::MemoryStore`] for the embedded default (lost on restart, by
//! design) and [`redis::RedisStore`] (Redis Streams, shared by every instance).

pub mod memory;
pub mod redis;

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

pub trait Store: Send + Sync + 'static {
    /// Appends one emit to the streams of `rooms` (all in `namespace`) and returns its id: the
    /// first entry's id, or `nid` when given (one notification sent as several emits, e.g. to
    /// several users with their own `channel`, keeps one id). With `dedup`, the instances that
    /// receive the same pub/sub message store it once and all get the same id.
    fn append<'a>(&'a self, namespace: &'a str, rooms: &'a [String], emit: Stored<'a>) -> BoxFuture<'a, Result<StreamId, StoreError>>;

    /// Entries of one room's stream with an id above `after` (all when `None`), oldest first.
    fn range<'a>(&'a self, namespace: &'a str, room: &'a str, after: Option<StreamId>) -> BoxFuture<'a, Result<Vec<Entry>, StoreError>>;

    /// The id up to which `user` has seen everything (for clients that send no `last_id`).
    fn seen<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<Option<StreamId>, StoreError>>;
    /// Moves each user's seen mark forward to its id (never back).
    fn advance_seen<'a>(&'a self, marks: &'a [(String, StreamId)]) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Moves `user`'s seen mark back to `id` (never forward, except from no mark at all).
    fn rewind_seen<'a>(&'a self, user: &'a str, id: StreamId) -> BoxFuture<'a, Result<(), StoreError>>;

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
