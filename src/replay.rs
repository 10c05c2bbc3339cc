//! What a user missed: replay on connect, and the inbox (history, read state) over the socket
//! and HTTP (SPEC §7, §4 `notifications:*`).
//!
//! Replay must neither lose nor repeat a notification that is being delivered while the socket
//! connects, and must send everything in id order. It works with the gate in [`Delivery`]: every
//! stored emit applied on this instance holds the gate for reading. A replay
//! 1. joins the rooms while holding the gate for writing, and registers the socket as replaying
//!    ([`join`]): from then on, stored emits for it are held back rather than sent;
//! 2. works out its cursor and reads the stored entries after it (no lock held);
//! 3. holding the gate for writing again, merges what was read with what was held, marks the
//!    entries read from the store as replayed to this socket (so that an entry still on its way
//!    to this instance leaves this socket out when it arrives), sends everything in id order,
//!    and unregisters the socket ([`replay`]).

use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

use serde_json::{json, Value as Json};

use crate::connection::Peer;
use crate::delivery::{stamp_id, Delivery, Replaying};
use crate::notification::{iso_now, EVENT};
use crate::payload::Value;
use crate::store::{merged_range, Entry, ReadState, StoreError, StreamId, BROADCAST_STREAM};

/// Proof that a socket joined its rooms and is registered as replaying.
pub struct Joined {
    rooms: Vec<String>,
}

impl Joined {
    pub fn rooms(&self) -> &[String] {
        &self.rooms
    }
}

/// Joins `rooms` (step 1): from here on stored emits to them are held for the replay.
pub async fn join<P: Peer + ?Sized>(delivery: &Delivery, socket: &P, rooms: Vec<String>) -> Joined {
    let _gate = delivery.gate().write().await;
    socket.join(rooms.clone());
    let replaying = Replaying {
        namespace: socket.namespace().to_string(),
        rooms: rooms.iter().cloned().collect(),
        held: vec![],
        since: Instant::now(),
    };
    delivery.recent().replaying.insert(socket.sid().to_string(), replaying);
    Joined { rooms }
}

/// Sends what was stored for the joined rooms after `after` (nothing from the store when
/// `None`), with what was held since the join, in id order (steps 2 and 3). Returns false when
/// the store could not be read.
pub async fn replay<P: Peer + ?Sized>(delivery: &Delivery, socket: &P, joined: Joined, after: Option<StreamId>, max_replay: usize) -> bool {
    let streams = persisted_streams(delivery, &joined.rooms);
    let (mut entries, read) = match after {
        None => (vec![], true),
        Some(after) => match merged_range(delivery.store().as_ref(), socket.namespace(), &streams, Some(after)).await {
            Ok(entries) => (entries, true),
            Err(e) => {
                delivery.metrics().inc("herald_replay_failures_total", &[]);
                tracing::warn!(sid = socket.sid(), error = %e, "replay skipped: store unavailable");
                (vec![], false)
            }
        },
    };

    let _gate = delivery.gate().write().await;
    let held = {
        let mut recent = delivery.recent();
        let held = recent.replaying.remove(socket.sid()).map(|r| r.held).unwrap_or_default();
        let held_ids: HashSet<StreamId> = held.iter().map(|(nid, _, _)| *nid).collect();
        entries.retain(|e| !held_ids.contains(&e.nid));
        let now = Instant::now();
        for entry in &entries {
            recent.replayed.entry(entry.nid).or_insert_with(|| (vec![], now)).0.push(socket.sid().to_string());
        }
        held
    };
    let missed = entries.len();
    if missed > max_replay {
        let summary = offline_summary(&entries, max_replay);
        entries.drain(..missed - max_replay);
        emit(socket, EVENT, &crate::payload::Args::one(summary));
    }
    let mut out: Vec<(StreamId, String, crate::payload::Args)> = entries
        .into_iter()
        .map(|entry| {
            let mut args = entry.args;
            stamp_id(&mut args, entry.nid);
            (entry.nid, entry.event, args)
        })
        .collect();
    out.extend(held);
    out.sort_by_key(|(nid, _, _)| *nid);
    for (_, event, args) in &out {
        emit(socket, event, args);
    }
    delivery.metrics().add("herald_replayed_total", &[], missed.min(max_replay) as u64);
    read
}

fn emit<P: Peer + ?Sized>(socket: &P, event: &str, args: &crate::payload::Args) {
    if let Err(e) = socket.emit(event, args) {
        tracing::debug!(sid = socket.sid(), error = %e, "replayed notification not sent");
    }
}

/// The streams among `rooms` that are stored, plus the namespace's broadcast stream.
pub fn persisted_streams(delivery: &Delivery, rooms: &[String]) -> Vec<String> {
    let mut streams: Vec<String> = rooms.iter().filter(|r| delivery.persist().persists_room(r)).cloned().collect();
    if delivery.persist().persists_broadcasts() {
        streams.push(BROADCAST_STREAM.to_string());
    }
    streams
}

/// `{"type":"offline_summary", "data":{"missed":N, "replayed":M, "by_type":{...}}, ...}`
fn offline_summary(entries: &[Entry], replayed: usize) -> Value {
    let mut by_type: BTreeMap<String, u64> = BTreeMap::new();
    for entry in entries {
        let kind = entry.args.0.first().and_then(|a| a.get("type")).and_then(Value::as_str).unwrap_or(&entry.event);
        *by_type.entry(kind.to_string()).or_default() += 1;
    }
    Value::from(json!({
        "type": "offline_summary",
        "message": format!("{} notifications arrived while you were offline", entries.len()),
        "timestamp": iso_now(),
        "data": { "missed": entries.len(), "replayed": replayed, "by_type": by_type },
    }))
}

/// One user's stored notifications in one namespace.
pub struct Inbox<'a> {
    delivery: &'a Delivery,
    namespace: &'a str,
    user: &'a str,
    streams: Vec<String>,
}

/// Largest page of history.
pub const MAX_HISTORY: usize = 200;

impl<'a> Inbox<'a> {
    /// The inbox over `rooms` (the persisted ones are kept).
    pub fn new(delivery: &'a Delivery, namespace: &'a str, user: &'a str, rooms: &[String]) -> Inbox<'a> {
        Inbox { delivery, namespace, user, streams: persisted_streams(delivery, rooms) }
    }

    /// The inbox over the rooms the user's token granted when they last connected.
    pub async fn of_user(delivery: &'a Delivery, namespace: &'a str, user: &'a str) -> Result<Inbox<'a>, StoreError> {
        let mut rooms = delivery.store().user_rooms(user).await?;
        let own = crate::rooms::user_room(user);
        if !rooms.contains(&own) {
            rooms.push(own);
        }
        Ok(Inbox::new(delivery, namespace, user, &rooms))
    }

    async fn entries(&self) -> Result<(Vec<Entry>, ReadState), StoreError> {
        let entries = merged_range(self.delivery.store().as_ref(), self.namespace, &self.streams, None).await?;
        let state = self.delivery.store().read_state(self.user).await?;
        Ok((entries, state))
    }

    /// Newest first: at most `limit` entries with ids in (`after`, `before`), and the unread count.
    pub async fn history(&self, after: Option<StreamId>, before: Option<StreamId>, limit: usize) -> Result<(Vec<Json>, usize), StoreError> {
        let (entries, state) = self.entries().await?;
        let unread = entries.iter().filter(|e| !is_read(&state, e.nid)).count();
        let items = entries
            .iter()
            .rev()
            .filter(|e| after.is_none_or(|a| e.nid > a) && before.is_none_or(|b| e.nid < b))
            .take(limit.min(MAX_HISTORY))
            .map(|e| item(e, is_read(&state, e.nid)))
            .collect();
        Ok((items, unread))
    }

    /// Marks `ids` (and everything up to `up_to`) read; returns the unread count.
    pub async fn mark_read(&self, ids: &[StreamId], up_to: Option<StreamId>) -> Result<usize, StoreError> {
        self.delivery.store().mark_read(self.user, ids, up_to).await?;
        let (entries, state) = self.entries().await?;
        Ok(entries.iter().filter(|e| !is_read(&state, e.nid)).count())
    }
}

fn is_read(state: &ReadState, nid: StreamId) -> bool {
    state.up_to.is_some_and(|u| nid <= u) || state.ids.binary_search(&nid).is_ok()
}

/// A stored entry as history shows it: the payload with its id and `read`, or, for payloads
/// that are not objects, `{id, event, args, read}`.
fn item(entry: &Entry, read: bool) -> Json {
    let mut args = entry.args.clone();
    stamp_id(&mut args, entry.nid);
    match args.0.first() {
        Some(first @ Value::Object(_)) if args.0.len() == 1 => {
            let mut json = serde_json::to_value(first).unwrap_or(Json::Null);
            json["read"] = Json::Bool(read);
            json
        }
        _ => {
            json!({ "id": entry.nid.to_string(), "event": entry.event, "args": serde_json::to_value(&args.0).unwrap_or(Json::Null), "read": read })
        }
    }
}

/// `{"before"?: id, "after"?: id, "limit"?: n}`, from a socket event or an HTTP query.
#[derive(Debug, Default)]
pub struct HistoryQuery {
    pub after: Option<StreamId>,
    pub before: Option<StreamId>,
    pub limit: usize,
}

/// Page size when the client names none.
const DEFAULT_HISTORY: usize = 50;

impl HistoryQuery {
    pub fn from_json(value: Json) -> Result<HistoryQuery, String> {
        let map = match value {
            Json::Null => serde_json::Map::new(),
            Json::Object(map) => map,
            _ => return Err("expected {\"before\"?: id, \"after\"?: id, \"limit\"?: n}".into()),
        };
        let id = |key: &str| -> Result<Option<StreamId>, String> {
            match map.get(key) {
                None | Some(Json::Null) => Ok(None),
                Some(Json::String(s)) => s.parse().map(Some),
                Some(_) => Err(format!("{key} must be a notification id string")),
            }
        };
        let limit = match map.get("limit") {
            None | Some(Json::Null) => DEFAULT_HISTORY,
            Some(n) => n.as_u64().filter(|n| *n > 0).ok_or("limit must be a positive integer")? as usize,
        };
        Ok(HistoryQuery { after: id("after")?, before: id("before")?, limit: limit.min(MAX_HISTORY) })
    }
}

/// `{"ids": [...]}` and/or `{"up_to": id}`.
#[derive(Debug, Default)]
pub struct ReadRequest {
    pub ids: Vec<StreamId>,
    pub up_to: Option<StreamId>,
}

impl ReadRequest {
    pub fn from_json(value: Json) -> Result<ReadRequest, String> {
        const EXPECTED: &str = "expected {\"ids\": [id, ...]} or {\"up_to\": id}";
        let Json::Object(map) = value else { return Err(EXPECTED.into()) };
        let ids = match map.get("ids") {
            None | Some(Json::Null) => vec![],
            Some(Json::Array(ids)) => ids
                .iter()
                .map(|i| i.as_str().ok_or_else(|| "ids must be notification id strings".to_string()).and_then(|s| s.parse()))
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(EXPECTED.into()),
        };
        let up_to = match map.get("up_to") {
            None | Some(Json::Null) => None,
            Some(Json::String(s)) => Some(s.parse()?),
            Some(_) => return Err("up_to must be a notification id string".into()),
        };
        if ids.is_empty() && up_to.is_none() {
            return Err(EXPECTED.into());
        }
        Ok(ReadRequest { ids, up_to })
    }
}
