//! The shared store: one Redis Stream per persisted room, read by every instance.
//!
//! Appends go through one Lua script so that "store once, whatever the number of instances" is
//! atomic: under a `dedup_key`, the first instance appends and records the id; the others get
//! that id back and append nothing. Every call has short timeouts so that a Redis outage costs
//! an error (counted by the caller) and never blocks live delivery.
//!
//! Keys: `herald:stream:<ns>:<room>` (fields `nid`, `event`, `args`; `nid` empty means "this
//! entry's own id", as on the first stream of an emit), `herald:dedup:<key>`, `herald:seen:<user>`,
//! `herald:read:<user>` (string: read up to), `herald:read:<user>:ids` (set) and
//! `herald:rooms:<user>` (JSON list of the persisted rooms the user's token granted).

use std::time::Duration;

use futures_util::future::BoxFuture;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};
use tokio::sync::watch;

use crate::cluster::redis_state::RedisState;

use super::{Entry, ReadState, Store, StoreError, Stored, StreamId};
use crate::notification::now_ms;
use crate::payload::stored;

/// How long a dedup key is remembered: far longer than a pub/sub message takes to reach every
/// instance, short enough that the ingress's occurrence counts (which restart after the same
/// quiet time) never meet an old key.
pub const DEDUP_TTL: Duration = Duration::from_secs(10);

const APPEND: &str = r#"
local dedup = KEYS[1]
if dedup ~= '' then
  local existing = redis.call('GET', dedup)
  if existing then return existing end
end
local nid = ARGV[7]
for i = 2, #KEYS do
  local id = redis.call('XADD', KEYS[i], 'MAXLEN', '~', ARGV[3], '*', 'nid', nid, 'event', ARGV[1], 'args', ARGV[2])
  redis.call('XTRIM', KEYS[i], 'MINID', '~', ARGV[4])
  redis.call('PEXPIRE', KEYS[i], ARGV[6])
  if nid == '' then nid = id end
end
if dedup ~= '' then redis.call('SET', dedup, nid, 'EX', ARGV[5]) end
return nid
"#;

/// Sets KEYS[1] to ARGV[1] unless it already holds a larger id.
const SET_MAX_ID: &str = r#"
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local current = redis.call('GET', KEYS[1])
if current then
  local cm, cs = parse(current)
  local nm, ns = parse(ARGV[1])
  if cm and (nm < cm or (nm == cm and ns <= cs)) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1])
return 1
"#;

pub struct RedisStore {
    connection: ConnectionManager,
    /// The cluster driver's view of Redis: while it is down, calls fail at once.
    redis_state: watch::Receiver<RedisState>,
    max_len: usize,
    max_age: Duration,
    append: Script,
    set_max_id: Script,
}

impl RedisStore {
    /// Connects lazily: an unreachable Redis at startup is not an error here.
    pub fn new(url: &str, redis_state: watch::Receiver<RedisState>, max_len: usize, max_age: Duration) -> Result<RedisStore, StoreError> {
        let client = redis::Client::open(url).map_err(|e| StoreError(e.to_string()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(Duration::from_millis(1000)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let connection = ConnectionManager::new_lazy_with_config(client, config).map_err(|e| StoreError(e.to_string()))?;
        Ok(RedisStore { connection, redis_state, max_len, max_age, append: Script::new(APPEND), set_max_id: Script::new(SET_MAX_ID) })
    }

    /// A connection, or an error at once while Redis is known to be down.
    fn conn(&self) -> Result<ConnectionManager, StoreError> {
        match *self.redis_state.borrow() {
            RedisState::Up => Ok(self.connection.clone()),
            RedisState::Down => Err(StoreError("Redis is unreachable".into())),
        }
    }
}

fn stream_key(namespace: &str, room: &str) -> String {
    format!("herald:stream:{namespace}:{room}")
}

fn failed(e: redis::RedisError) -> StoreError {
    StoreError(e.to_string())
}

fn parse_id(text: &str) -> Result<StreamId, StoreError> {
    text.parse().map_err(StoreError)
}

impl Store for RedisStore {
    fn append<'a>(&'a self, namespace: &'a str, rooms: &'a [String], emit: Stored<'a>) -> BoxFuture<'a, Result<StreamId, StoreError>> {
        Box::pin(async move {
            let Stored { event, args, dedup_key, nid } = emit;
            let mut invocation = self.append.prepare_invoke();
            invocation.key(dedup_key.map(|k| format!("herald:dedup:{k}")).unwrap_or_default());
            for room in rooms {
                invocation.key(stream_key(namespace, room));
            }
            let oldest_kept = now_ms().saturating_sub(self.max_age.as_millis() as u64);
            invocation
                .arg(event)
                .arg(stored::encode(args))
                .arg(self.max_len)
                .arg(format!("{oldest_kept}-0"))
                .arg(DEDUP_TTL.as_secs())
                .arg(self.max_age.as_millis() as u64 + 60_000)
                .arg(nid.map(|n| n.to_string()).unwrap_or_default());
            let nid: String = invocation.invoke_async(&mut self.conn()?).await.map_err(failed)?;
            parse_id(&nid)
        })
    }

    fn range<'a>(&'a self, namespace: &'a str, room: &'a str, after: Option<StreamId>) -> BoxFuture<'a, Result<Vec<Entry>, StoreError>> {
        Box::pin(async move {
            let start = after.map(|a| format!("({a}")).unwrap_or_else(|| "-".into());
            let reply: redis::streams::StreamRangeReply =
                self.conn()?.xrange(stream_key(namespace, room), start, "+").await.map_err(failed)?;
            let mut entries = Vec::with_capacity(reply.ids.len());
            for item in reply.ids {
                let field = |name: &str| item.get::<String>(name).unwrap_or_default();
                let nid = match field("nid").as_str() {
                    "" => parse_id(&item.id)?,
                    nid => parse_id(nid)?,
                };
                match stored::decode(&field("args")) {
                    Ok(args) => entries.push(Entry { nid, event: field("event"), args }),
                    Err(e) => tracing::warn!(id = %item.id, error = %e, "unreadable stream entry skipped"),
                }
            }
            Ok(entries)
        })
    }

    fn seen<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<Option<StreamId>, StoreError>> {
        Box::pin(async move {
            let value: Option<String> = self.conn()?.get(format!("herald:seen:{user}")).await.map_err(failed)?;
            value.map(|v| parse_id(&v)).transpose()
        })
    }

    fn advance_seen<'a>(&'a self, user: &'a str, id: StreamId) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let _: i64 = self
                .set_max_id
                .key(format!("herald:seen:{user}"))
                .arg(id.to_string())
                .invoke_async(&mut self.conn()?)
                .await
                .map_err(failed)?;
            Ok(())
        })
    }

    fn set_user_rooms<'a>(&'a self, user: &'a str, rooms: &'a [String]) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let value = serde_json::to_string(rooms).unwrap_or_default();
            let _: () = self
                .conn()?
                .set_ex(format!("herald:rooms:{user}"), value, self.max_age.as_secs() + 60)
                .await
                .map_err(failed)?;
            Ok(())
        })
    }

    fn user_rooms<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        Box::pin(async move {
            let value: Option<String> = self.conn()?.get(format!("herald:rooms:{user}")).await.map_err(failed)?;
            Ok(value.and_then(|v| serde_json::from_str(&v).ok()).unwrap_or_default())
        })
    }

    fn read_state<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<ReadState, StoreError>> {
        Box::pin(async move {
            let mut conn = self.conn()?;
            let up_to: Option<String> = conn.get(format!("herald:read:{user}")).await.map_err(failed)?;
            let ids: Vec<String> = conn.smembers(format!("herald:read:{user}:ids")).await.map_err(failed)?;
            let mut ids: Vec<StreamId> = ids.iter().filter_map(|i| i.parse().ok()).collect();
            ids.sort();
            let up_to = up_to.map(|u| parse_id(&u)).transpose()?;
            ids.retain(|id| up_to.is_none_or(|u| *id > u));
            Ok(ReadState { up_to, ids })
        })
    }

    fn mark_read<'a>(&'a self, user: &'a str, ids: &'a [StreamId], up_to: Option<StreamId>) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut conn = self.conn()?;
            if let Some(up_to) = up_to {
                let _: i64 = self
                    .set_max_id
                    .key(format!("herald:read:{user}"))
                    .arg(up_to.to_string())
                    .invoke_async(&mut conn)
                    .await
                    .map_err(failed)?;
            }
            if !ids.is_empty() {
                let key = format!("herald:read:{user}:ids");
                let members: Vec<String> = ids.iter().map(StreamId::to_string).collect();
                let _: i64 = conn.sadd(&key, members).await.map_err(failed)?;
                let _: bool = conn.expire(&key, self.max_age.as_secs() as i64 + 60).await.map_err(failed)?;
            }
            Ok(())
        })
    }
}
