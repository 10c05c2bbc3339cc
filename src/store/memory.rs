//! The embedded default's store: streams in process memory, capped like Redis streams. Nothing
//! survives a restart; that is the documented trade-off of running without Redis.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use futures_util::future::BoxFuture;

use super::{Entry, ReadState, Store, StoreError, Stored, StreamId};
use crate::notification::now_ms;
pub struct MemoryStore {
    max_len: usize,
    max_age: Duration,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    last_id: StreamId,
    streams: HashMap<(String, String), VecDeque<(StreamId, Entry)>>,
    seen: HashMap<String, StreamId>,
    user_rooms: HashMap<String, Vec<String>>,
    read: HashMap<String, (Option<StreamId>, HashSet<StreamId>)>,
}

impl MemoryStore {
    pub fn new(max_len: usize, max_age: Duration) -> MemoryStore {
        MemoryStore { max_len, max_age, inner: Mutex::new(Inner::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Inner {
    fn next_id(&mut self) -> StreamId {
        let now = now_ms();
        self.last_id = if now > self.last_id.ms { StreamId::new(now, 0) } else { StreamId::new(self.last_id.ms, self.last_id.seq + 1) };
        self.last_id
    }
}

impl Store for MemoryStore {
    fn append<'a>(&'a self, namespace: &'a str, rooms: &'a [String], emit: Stored<'a>) -> BoxFuture<'a, Result<StreamId, StoreError>> {
        Box::pin(async move {
            // One instance receives each message once: `dedup` has nothing to deduplicate.
            let Stored { event, args, nid, .. } = emit;
            let mut inner = self.lock();
            let first_id = inner.next_id();
            let nid = nid.unwrap_or(first_id);
            let oldest_kept = StreamId::new(now_ms().saturating_sub(self.max_age.as_millis() as u64), 0);
            for room in rooms {
                let id = if room == &rooms[0] { first_id } else { inner.next_id() };
                let entry = Entry { nid, event: event.to_string(), args: args.clone() };
                let stream = inner.streams.entry((namespace.to_string(), room.clone())).or_default();
                stream.push_back((id, entry));
                while stream.len() > self.max_len || stream.front().is_some_and(|(id, _)| *id < oldest_kept) {
                    stream.pop_front();
                }
            }
            Ok(nid)
        })
    }

    fn range<'a>(&'a self, namespace: &'a str, room: &'a str, after: Option<StreamId>) -> BoxFuture<'a, Result<Vec<Entry>, StoreError>> {
        Box::pin(async move {
            let inner = self.lock();
            let Some(stream) = inner.streams.get(&(namespace.to_string(), room.to_string())) else { return Ok(vec![]) };
            Ok(stream.iter().filter(|(id, _)| after.is_none_or(|a| *id > a)).map(|(_, e)| e.clone()).collect())
        })
    }

    fn seen<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<Option<StreamId>, StoreError>> {
        Box::pin(async move { Ok(self.lock().seen.get(user).copied()) })
    }

    fn advance_seen<'a>(&'a self, marks: &'a [(String, StreamId)]) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut inner = self.lock();
            for (user, id) in marks {
                let seen = inner.seen.entry(user.clone()).or_insert(*id);
                *seen = (*seen).max(*id);
            }
            Ok(())
        })
    }

    fn rewind_seen<'a>(&'a self, user: &'a str, id: StreamId) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut inner = self.lock();
            let seen = inner.seen.entry(user.to_string()).or_insert(id);
            *seen = (*seen).min(id);
            Ok(())
        })
    }

    fn set_user_rooms<'a>(&'a self, user: &'a str, rooms: &'a [String]) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.lock().user_rooms.insert(user.to_string(), rooms.to_vec());
            Ok(())
        })
    }

    fn user_rooms<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        Box::pin(async move { Ok(self.lock().user_rooms.get(user).cloned().unwrap_or_default()) })
    }

    fn read_state<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<ReadState, StoreError>> {
        Box::pin(async move {
            let inner = self.lock();
            Ok(match inner.read.get(user) {
                Some((up_to, ids)) => {
                    let mut ids: Vec<StreamId> = ids.iter().copied().collect();
                    ids.sort();
                    ReadState { up_to: *up_to, ids }
                }
                None => ReadState::default(),
            })
        })
    }

    fn mark_read<'a>(&'a self, user: &'a str, ids: &'a [StreamId], up_to: Option<StreamId>) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut inner = self.lock();
            let (mark, set) = inner.read.entry(user.to_string()).or_default();
            if let Some(up_to) = up_to {
                *mark = Some(mark.map_or(up_to, |m| m.max(up_to)));
            }
            set.extend(ids.iter().copied());
            if let Some(mark) = *mark {
                set.retain(|id| *id > mark);
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::payload::{Args, Value};
    use crate::store::merged_range;

    fn args(n: i64) -> Args {
        Args::one(Value::Object(vec![("n".into(), Value::Int(n))]))
    }

    fn emit(args: &Args) -> Stored<'_> {
        Stored { event: "notification", args, dedup: None, nid: None }
    }

    #[tokio::test]
    async fn one_emit_to_several_rooms_reads_back_once() {
        let store = MemoryStore::new(10, Duration::from_secs(60));
        let rooms = vec!["user_1".to_string(), "role_a".to_string()];
        let nid = store.append("/", &rooms, emit(&args(1))).await.unwrap();
        let merged = merged_range(&store, "/", &rooms, None).await.unwrap();
        assert_eq!(merged.len(), 1);
        assert_eq!(merged[0].nid, nid);
        assert_eq!(merged_range(&store, "/", &rooms, Some(nid)).await.unwrap(), vec![]);
    }

    #[tokio::test]
    async fn caps_hold() {
        let store = MemoryStore::new(3, Duration::from_secs(60));
        let rooms = vec!["user_1".to_string()];
        for n in 1..10 {
            store.append("/", &rooms, emit(&args(n))).await.unwrap();
        }
        let kept: BTreeMap<StreamId, Entry> = store.range("/", "user_1", None).await.unwrap().into_iter().map(|e| (e.nid, e)).collect();
        assert_eq!(kept.len(), 3);
        assert_eq!(kept.values().last().unwrap().args, args(9));
    }

    #[tokio::test]
    async fn read_marks_and_seen_only_move_forward_seen_back_only_when_rewound() {
        let store = MemoryStore::new(10, Duration::from_secs(60));
        let mark = |id| [("1".to_string(), StreamId::new(id, 0))];
        store.advance_seen(&mark(5)).await.unwrap();
        store.advance_seen(&mark(3)).await.unwrap();
        assert_eq!(store.seen("1").await.unwrap(), Some(StreamId::new(5, 0)));
        store.rewind_seen("1", StreamId::new(8, 0)).await.unwrap();
        assert_eq!(store.seen("1").await.unwrap(), Some(StreamId::new(5, 0)));
        store.rewind_seen("1", StreamId::new(2, 0)).await.unwrap();
        assert_eq!(store.seen("1").await.unwrap(), Some(StreamId::new(2, 0)));
        store.rewind_seen("2", StreamId::new(4, 0)).await.unwrap();
        assert_eq!(store.seen("2").await.unwrap(), Some(StreamId::new(4, 0)));
        store.mark_read("1", &[StreamId::new(7, 0), StreamId::new(2, 0)], Some(StreamId::new(4, 0))).await.unwrap();
        let state = store.read_state("1").await.unwrap();
        assert_eq!(state, ReadState { up_to: Some(StreamId::new(4, 0)), ids: vec![StreamId::new(7, 0)] });
    }
}
