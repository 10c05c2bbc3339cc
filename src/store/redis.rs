//! The shared store: one Redis Stream per persisted room, read by every instance.
//!
//! Appends go through one Lua script so that "store once, whatever the number of instances" is
//! atomic (see [`APPEND`]). Every call has short timeouts so that a Redis outage costs
//! an error (counted by the caller) and never blocks live delivery.
//!
//! Keys: `herald:stream:<ns>:<room>` (fields `nid`, `event`, `args`; `nid` empty means "this
//! entry's own id", as on the first stream of an emit), `herald:dedup:<key>` (sorted set of the
//! ids stored for one published message, by time) and `herald:dedup:<key>:<id>` (the instances
//! that claimed that copy), `herald:seen:<user>`,
//! `herald:read:<user>` (string: read up to), `herald:read:<user>:ids` (set) and
//! `herald:rooms:<user>` (JSON list of the persisted rooms the user's token granted).

use std::time::Duration;

use futures_util::future::BoxFuture;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use tokio::sync::watch;

use crate::cluster::redis_state::RedisState;

use super::{Entry, ReadState, Store, StoreError, Stored, StreamId};
use crate::notification::now_ms;
use crate::payload::stored;

/// How long after an instance stored a published message the others may claim it: far longer
/// than a pub/sub message takes to reach every instance, short enough that an instance that
/// missed a publish does not take an older identical one for the next.
const CLAIM_WINDOW: Duration = Duration::from_secs(3);

/// Appends an emit to its streams, or, for pub/sub ingress (KEYS[1] names the message's dedup
/// set), claims the copy another instance already stored.
///
/// Every instance receives each published message once, within milliseconds of the others, and
/// calls this with the same dedup key (the message's hash) and its own node id. An instance takes
/// the oldest entry for that key, stored within the claim window, that it has not taken yet;
/// when there is none, the message is new and it stores it. So N instances store each publish
/// once; a message published twice on purpose is stored twice (each instance claims one copy
/// per receipt); an instance never claims a copy stored before its subscription started; and
/// an instance that missed a publish while resubscribing claims nothing older than the window.
const APPEND: &str = r#"
local dedup = KEYS[1]
local node = ARGV[8]
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
if dedup ~= '' then
  redis.call('ZREMRANGEBYSCORE', dedup, '-inf', now_ms - tonumber(ARGV[5]))
  for _, nid in ipairs(redis.call('ZRANGEBYSCORE', dedup, ARGV[9], '+inf')) do
    if redis.call('SADD', dedup .. ':' .. nid, node) == 1 then
      redis.call('PEXPIRE', dedup .. ':' .. nid, ARGV[5] * 2)
      return nid
    end
  end
end
local nid = ARGV[7]
for i = 2, #KEYS do
  local id = redis.call('XADD', KEYS[i], 'MAXLEN', '~', ARGV[3], '*', 'nid', nid, 'event', ARGV[1], 'args', ARGV[2])
  redis.call('XTRIM', KEYS[i], 'MINID', '~', ARGV[4])
  redis.call('PEXPIRE', KEYS[i], ARGV[6])
  if nid == '' then nid = id end
end
if dedup ~= '' then
  redis.call('ZADD', dedup, now_ms, nid)
  redis.call('PEXPIRE', dedup, ARGV[5] * 2)
  redis.call('SADD', dedup .. ':' .. nid, node)
  redis.call('PEXPIRE', dedup .. ':' .. nid, ARGV[5] * 2)
end
return nid
"#;

/// Sets each KEYS[i] to ARGV[i] unless it already holds an id on the kept side of it: larger
/// when ARGV[#KEYS + 1] is 1, smaller when it is -1 (see [`Keep`]).
const SET_ID_IF: &str = r#"
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function compare(a, b)
  local am, as = parse(a)
  local bm, bs = parse(b)
  if not am or not bm then return nil end
  if am ~= bm then return am < bm and -1 or 1 end
  if as ~= bs then return as < bs and -1 or 1 end
  return 0
end
local keep = tonumber(ARGV[#KEYS + 1])
local changed = 0
for i, key in ipairs(KEYS) do
  local current = redis.call('GET', key)
  local order = current and compare(current, ARGV[i])
  if not (order == keep or order == 0) then
    redis.call('SET', key, ARGV[i])
    changed = changed + 1
  end
end
return changed
"#;

/// How many keys one `SET_ID_IF` call moves at most, so that one call never holds Redis long.
const IDS_PER_CALL: usize = 1000;

/// Which ids [`SET_ID_IF`] leaves in place.
#[derive(Clone, Copy)]
enum Keep {
    Larger = 1,
    Smaller = -1,
}

pub struct RedisStore {
    connection: ConnectionManager,
    /// This instance's name: what it claims stored copies of pub/sub messages under.
    node_id: String,
    /// The cluster driver's view of Redis: while it is down, calls fail at once.
    redis_state: watch::Receiver<RedisState>,
    max_len: usize,
    max_age: Duration,
    set_id_if: Script,
}

impl RedisStore {
    /// Connects lazily: an unreachable Redis at startup is not an error here.
    pub fn new(
        url: &str,
        node_id: &str,
        redis_state: watch::Receiver<RedisState>,
        max_len: usize,
        max_age: Duration,
    ) -> Result<RedisStore, StoreError> {
        let client = redis::Client::open(url).map_err(|e| StoreError(e.to_string()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(Duration::from_millis(1000)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500))
            // Room for every command the Redis ingress has in flight (and more), so that none
            // waits for a place in the queue: a wait could time out and reorder appends.
            .set_pipeline_buffer_size(1024);
        let connection = ConnectionManager::new_lazy_with_config(client, config).map_err(|e| StoreError(e.to_string()))?;
        Ok(RedisStore { connection, node_id: node_id.to_string(), redis_state, max_len, max_age, set_id_if: Script::new(SET_ID_IF) })
    }

    /// Moves each key to its id, unless it already holds an id on the `keep` side of it.
    async fn set_ids(&self, ids: impl IntoIterator<Item = (String, StreamId)>, keep: Keep) -> Result<(), StoreError> {
        let mut invocation = self.set_id_if.prepare_invoke();
        for (key, id) in ids {
            invocation.key(key).arg(id.to_string());
        }
        invocation.arg(keep as i8);
        let _: i64 = self.invoke(&invocation).await?;
        Ok(())
    }

    /// Runs `cmd`, once more when the first attempt met a connection Redis had dropped (after a
    /// Redis restart the manager reconnects only once a command has failed on the old one).
    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        match cmd.query_async(&mut self.conn()?).await {
            Err(e) if dropped(&e) => cmd.query_async(&mut self.conn()?).await.map_err(failed),
            result => result.map_err(failed),
        }
    }

    /// [`Self::query`] for a script.
    async fn invoke<T: redis::FromRedisValue>(&self, invocation: &redis::ScriptInvocation<'_>) -> Result<T, StoreError> {
        match invocation.invoke_async(&mut self.conn()?).await {
            Err(e) if dropped(&e) => invocation.invoke_async(&mut self.conn()?).await.map_err(failed),
            result => result.map_err(failed),
        }
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

/// A call that failed before Redis ran it, and can be sent again. Not a timeout: a timed-out
/// append may have run, and sending it again would store it twice or out of order.
fn dropped(e: &redis::RedisError) -> bool {
    (e.is_connection_dropped() || e.is_io_error()) && !e.is_timeout()
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
            let Stored { event, args, dedup, nid } = emit;
            // EVAL with the script's text rather than EVALSHA: a NOSCRIPT retry (first call,
            // or after a Redis restart) would send some appends late, and the Redis ingress
            // relies on appends reaching Redis in the order it sends them.
            let mut eval = redis::cmd("EVAL");
            eval.arg(APPEND).arg(1 + rooms.len());
            eval.arg(dedup.map(|d| format!("herald:dedup:{}", d.key)).unwrap_or_default());
            for room in rooms {
                eval.arg(stream_key(namespace, room));
            }
            let oldest_kept = now_ms().saturating_sub(self.max_age.as_millis() as u64);
            eval.arg(event)
                .arg(stored::encode(args))
                .arg(self.max_len)
                .arg(format!("{oldest_kept}-0"))
                .arg(CLAIM_WINDOW.as_millis() as u64)
                .arg(self.max_age.as_millis() as u64 + 60_000)
                .arg(nid.map(|n| n.to_string()).unwrap_or_default())
                .arg(&self.node_id)
                .arg(dedup.map_or(0, |d| d.listening_since_ms));
            let nid: String = self.query(&eval).await?;
            parse_id(&nid)
        })
    }

    fn range<'a>(&'a self, namespace: &'a str, room: &'a str, after: Option<StreamId>) -> BoxFuture<'a, Result<Vec<Entry>, StoreError>> {
        Box::pin(async move {
            let start = after.map(|a| format!("({a}")).unwrap_or_else(|| "-".into());
            let reply: redis::streams::StreamRangeReply =
                self.query(redis::cmd("XRANGE").arg(stream_key(namespace, room)).arg(start).arg("+")).await?;
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
            let value: Option<String> = self.query(redis::cmd("GET").arg(format!("herald:seen:{user}"))).await?;
            value.map(|v| parse_id(&v)).transpose()
        })
    }

    fn advance_seen<'a>(&'a self, marks: &'a [(String, StreamId)]) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            for chunk in marks.chunks(IDS_PER_CALL) {
                self.set_ids(chunk.iter().map(|(user, id)| (format!("herald:seen:{user}"), *id)), Keep::Larger).await?;
            }
            Ok(())
        })
    }

    fn rewind_seen<'a>(&'a self, user: &'a str, id: StreamId) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move { self.set_ids([(format!("herald:seen:{user}"), id)], Keep::Smaller).await })
    }

    fn set_user_rooms<'a>(&'a self, user: &'a str, rooms: &'a [String]) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let value = serde_json::to_string(rooms).unwrap_or_default();
            let ttl = self.max_age.as_secs() + 60;
            let _: () = self.query(redis::cmd("SET").arg(format!("herald:rooms:{user}")).arg(value).arg("EX").arg(ttl)).await?;
            Ok(())
        })
    }

    fn user_rooms<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        Box::pin(async move {
            let value: Option<String> = self.query(redis::cmd("GET").arg(format!("herald:rooms:{user}"))).await?;
            Ok(value.and_then(|v| serde_json::from_str(&v).ok()).unwrap_or_default())
        })
    }

    fn read_state<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<ReadState, StoreError>> {
        Box::pin(async move {
            let up_to: Option<String> = self.query(redis::cmd("GET").arg(format!("herald:read:{user}"))).await?;
            let ids: Vec<String> = self.query(redis::cmd("SMEMBERS").arg(format!("herald:read:{user}:ids"))).await?;
            let mut ids: Vec<StreamId> = ids.iter().filter_map(|i| i.parse().ok()).collect();
            ids.sort();
            let up_to = up_to.map(|u| parse_id(&u)).transpose()?;
            ids.retain(|id| up_to.is_none_or(|u| *id > u));
            Ok(ReadState { up_to, ids })
        })
    }

    fn mark_read<'a>(&'a self, user: &'a str, ids: &'a [StreamId], up_to: Option<StreamId>) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            if let Some(up_to) = up_to {
                self.set_ids([(format!("herald:read:{user}"), up_to)], Keep::Larger).await?;
            }
            if !ids.is_empty() {
                let key = format!("herald:read:{user}:ids");
                let members: Vec<String> = ids.iter().map(StreamId::to_string).collect();
                let _: i64 = self.query(redis::cmd("SADD").arg(&key).arg(members)).await?;
                let _: bool = self.query(redis::cmd("EXPIRE").arg(&key).arg(self.max_age.as_secs() + 60)).await?;
            }
            Ok(())
        })
    }
}
