//! The shared store: one Redis Stream per persisted room, read by every instance.
//!
//! Appends go through one Lua script so that "store once, whatever the number of instances" is
//! atomic (see [`APPEND`]). Every call has short timeouts so that a Redis outage costs
//! an error (counted by the caller) and never blocks live delivery.
//!
//! Keys: `herald:stream:<ns>:<room>` (fields `nid`, `event`, `args`; `nid` empty means "this
//! entry's own id", as on the first stream of an emit), `herald:dedup:<key>` (sorted set of the
//! ids stored for one published message, by time) and `herald:dedup:<key>:<id>` (the instances
//! that claimed that copy), `herald:idem:<key>` (the id stored under an idempotency key),
//! `herald:sessions:<user>` (hash: `<node>` → sockets, `<node>#since` → id), `herald:seen:<user>`,
//! `herald:delivered:<node>` (what the node had delivered, written every second),
//! `herald:read:<user>` (string: read up to), `herald:read:<user>:ids` (set) and
//! `herald:rooms:<user>` (JSON list of the persisted rooms the user's token granted). A node is
//! alive while its heartbeat key `herald:node:<node>` exists and it subscribes to the channel of
//! the same name.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use tokio::sync::watch;

use crate::cluster::endpoint::Endpoint;
use crate::cluster::gated::Gated;
use crate::cluster::redis_state::RedisState;

use super::{Appended, Entry, NodeMark, NodeSession, ReadState, SessionWrite, Sessions, Store, StoreError, Stored, StreamId};
use crate::cluster::channels::{node_channel, relay_channel, relay_log_key};
use crate::cluster::keys::redis_key;
use crate::notification::now_ms;
use crate::payload::stored;

/// How long after an instance stored a published message the others may claim it: far longer
/// than a pub/sub message takes to reach every instance, short enough that an instance that
/// missed a publish does not take an older identical one for the next.
const CLAIM_WINDOW: Duration = Duration::from_secs(3);

/// Appends an emit to its streams, or, for pub/sub ingress (KEYS[1] names the message's dedup
/// set), claims the copy another instance already stored. Answers `{nid, fresh}`.
///
/// Ids come from one counter (`herald:last-id`, named by ARGV[14]) and Redis's clock: every emit gets an
/// id above every id before it, whatever its streams, and all its streams' entries share it (two
/// emits to different rooms in the same millisecond never share an id, so a client resuming after
/// one never skips the other).
///
/// With an idempotency key (ARGV[10]) already stored, nothing happens and the first id comes
/// back with `fresh` 0. With a relay message (ARGV[13]), the stored emit is published on the
/// relay channel (ARGV[12], with ARGV[17]: `PUBLISH`, or `SPUBLISH` against a cluster) as `<nid> <entry id>\n<message>` in the same atomic step, and kept in
/// the relay log `herald:relaylog` (ARGV[15]; the last ~50,000, under their entry ids): every instance
/// receives stored emits in the order of their ids, a stored emit is never left unpublished, and
/// an instance whose subscription had a gap reads what it missed from the log.
///
/// Every instance receives each published message once, within milliseconds of the others, and
/// calls this with the same dedup key (the message's hash) and its own node id. An instance takes
/// the oldest entry for that key, stored within the claim window, that it has not taken yet;
/// when there is none, the message is new and it stores it. So N instances store each publish
/// once; a message published twice on purpose is stored twice (each instance claims one copy
/// per receipt); an instance never claims a copy stored before its subscription started; and
/// an instance that missed a publish while resubscribing claims nothing older than the window.
const APPEND: &str = r#"
-- KEYS[1] always names a key of Herald's slot (a cluster refuses keys of several slots); ARGV[16] says whether it is a dedup set.
local dedup = ARGV[16] == '1' and KEYS[1] or ''
local node = ARGV[8]
local idem = ARGV[10]
if idem ~= '' then
  local first = redis.call('GET', idem)
  if first then return {first, 0} end
end
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
if dedup ~= '' then
  redis.call('ZREMRANGEBYSCORE', dedup, '-inf', now_ms - tonumber(ARGV[5]))
  for _, nid in ipairs(redis.call('ZRANGEBYSCORE', dedup, ARGV[9], '+inf')) do
    if redis.call('SADD', dedup .. ':' .. nid, node) == 1 then
      redis.call('PEXPIRE', dedup .. ':' .. nid, ARGV[5] * 2)
      return {nid, 1}
    end
  end
end
-- One id for every stream of this emit, larger than any id given before in any stream.
local ms = now_ms
local seq = 0
local last = redis.call('GET', ARGV[14])
if last then
  local last_ms, last_seq = string.match(last, '^(%d+)-(%d+)$')
  if last_ms and tonumber(last_ms) >= ms then
    ms = tonumber(last_ms)
    seq = tonumber(last_seq) + 1
  end
end
local id = string.format('%d-%d', ms, seq)
redis.call('SET', ARGV[14], id)
local nid = ARGV[7]
local field = nid
if nid == '' then nid = id end
for i = 2, #KEYS do
  redis.call('XADD', KEYS[i], 'MAXLEN', '~', ARGV[3], id, 'nid', field, 'event', ARGV[1], 'args', ARGV[2])
  redis.call('XTRIM', KEYS[i], 'MINID', '~', ARGV[4])
  redis.call('PEXPIRE', KEYS[i], ARGV[6])
end
if dedup ~= '' then
  redis.call('ZADD', dedup, now_ms, nid)
  redis.call('PEXPIRE', dedup, ARGV[5] * 2)
  redis.call('SADD', dedup .. ':' .. nid, node)
  redis.call('PEXPIRE', dedup .. ':' .. nid, ARGV[5] * 2)
end
if idem ~= '' then
  redis.call('SET', idem, nid, 'PX', ARGV[11])
end
if ARGV[13] ~= '' then
  redis.call(ARGV[17], ARGV[12], nid .. ' ' .. id .. '\n' .. ARGV[13])
  redis.call('XADD', ARGV[15], 'MAXLEN', '~', 50000, id, 'nid', nid, 'm', ARGV[13])
end
return {nid, 1}
"#;

/// Sets each KEYS[i] to ARGV[i] unless it already holds a larger id (ids only move forward).
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
local keep = 1
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

/// The largest id given so far, in every stream (see [`APPEND`]).
fn last_id_key() -> String {
    redis_key!("last-id")
}

/// Remembers ARGV[1] under KEYS[1] for ARGV[2] ms unless the key holds a value: then answers it.
const CLAIM_KEY: &str = r#"
local first = redis.call('GET', KEYS[1])
if first then return first end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
"#;

/// Ends a user's sessions on the nodes in ARGV[3], ARGV[5], ... (with the marks ARGV[4], ARGV[6],
/// ...): their fields leave the sessions hash KEYS[1], and the seen mark KEYS[2] becomes the
/// largest of itself, each removed `since` and each mark. ARGV[1] is the `since` field suffix,
/// ARGV[2] how long the keys live (ms).
const END_SESSIONS: &str = r#"
local function parse(id)
  if not id then return nil end
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  if not ms then return nil end
  return {tonumber(ms), tonumber(seq), id}
end
local function larger(a, b)
  if not a then return b end
  if not b then return a end
  if a[1] ~= b[1] then return a[1] > b[1] and a or b end
  return a[2] >= b[2] and a or b
end
local best = parse(redis.call('GET', KEYS[2]))
local current = best
for i = 3, #ARGV, 2 do
  local node = ARGV[i]
  best = larger(best, parse(redis.call('HGET', KEYS[1], node .. ARGV[1])))
  best = larger(best, parse(ARGV[i + 1]))
  redis.call('HDEL', KEYS[1], node, node .. ARGV[1])
end
if best and best ~= current then
  redis.call('SET', KEYS[2], best[3], 'PX', ARGV[2])
end
return 1
"#;

/// The suffix of a sessions hash field holding `since` (the field named by the node alone holds
/// its socket count).
const SINCE: &str = "#since";

pub struct RedisStore {
    connection: Gated,
    /// This instance's name: what it claims stored copies of pub/sub messages under.
    node_id: String,
    /// The cluster driver's view of Redis: while it is down, calls fail at once.
    redis_state: watch::Receiver<RedisState>,
    max_len: usize,
    max_age: Duration,
    set_id_if: Script,
    claim_key: Script,
    /// The names every append passes to [`APPEND`], made once (they depend only on the
    /// deployment's key form, see [`crate::cluster::keys`]).
    append_names: AppendNames,
}

struct AppendNames {
    relay_channel: String,
    last_id: String,
    relay_log: String,
    /// `KEYS[1]` of an append without a dedup set: a key of Herald's slot all the same.
    no_dedup: String,
    /// `PUBLISH`, or `SPUBLISH` against a Redis Cluster (the relay channel is a shard channel).
    publish: &'static str,
}

impl RedisStore {
    /// Connects lazily: an unreachable Redis at startup is not an error here.
    pub fn new(
        endpoint: Arc<Endpoint>,
        node_id: &str,
        redis_state: watch::Receiver<RedisState>,
        max_len: usize,
        max_age: Duration,
    ) -> Result<RedisStore, StoreError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(Duration::from_millis(1000)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500))
            // Room for every command the Redis ingress has in flight (and more), so that none
            // waits for a place in the queue: a wait could time out and reorder appends.
            .set_pipeline_buffer_size(1024);
        let connection = Gated::with_config(endpoint, redis_state.clone(), config);
        Ok(RedisStore {
            connection,
            node_id: node_id.to_string(),
            redis_state,
            max_len,
            max_age,
            set_id_if: Script::new(SET_ID_IF),
            claim_key: Script::new(CLAIM_KEY),
            append_names: AppendNames {
                relay_channel: relay_channel(),
                last_id: last_id_key(),
                relay_log: relay_log_key(),
                no_dedup: redis_key!("dedup"),
                publish: if crate::cluster::keys::cluster_form() { "SPUBLISH" } else { "PUBLISH" },
            },
        })
    }

    /// Moves each key forward to its id (a key already holding a larger id keeps it).
    async fn set_ids(&self, ids: impl IntoIterator<Item = (String, StreamId)>) -> Result<(), StoreError> {
        let mut invocation = self.set_id_if.prepare_invoke();
        for (key, id) in ids {
            invocation.key(key).arg(id.to_string());
        }
        let _: i64 = self.invoke(&invocation).await?;
        Ok(())
    }

    /// Runs `cmd`, once more when the first attempt met a connection Redis had dropped (after a
    /// Redis restart the manager reconnects only once a command has failed on the old one).
    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        match cmd.query_async(&mut self.conn().await?).await {
            Err(e) if dropped(&e) => cmd.query_async(&mut self.conn().await?).await.map_err(failed),
            result => result.map_err(failed),
        }
    }

    /// [`Self::query`] for a pipeline.
    async fn query_pipe<T: redis::FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T, StoreError> {
        match pipe.query_async(&mut self.conn().await?).await {
            Err(e) if dropped(&e) => pipe.query_async(&mut self.conn().await?).await.map_err(failed),
            result => result.map_err(failed),
        }
    }

    /// How long per-user keys (sessions, seen marks) and delivered marks live: as long as what
    /// they point into.
    fn keep_ms(&self) -> u64 {
        self.max_age.as_millis() as u64 + 60_000
    }

    /// [`Self::query`] for a script.
    async fn invoke<T: redis::FromRedisValue>(&self, invocation: &redis::ScriptInvocation<'_>) -> Result<T, StoreError> {
        match invocation.invoke_async(&mut self.conn().await?).await {
            Err(e) if dropped(&e) => invocation.invoke_async(&mut self.conn().await?).await.map_err(failed),
            result => result.map_err(failed),
        }
    }

    /// A connection, or an error at once while Redis is known to be down.
    async fn conn(&self) -> Result<ConnectionManager, StoreError> {
        match *self.redis_state.borrow() {
            RedisState::Up => {}
            RedisState::Down => return Err(StoreError("Redis is unreachable".into())),
        }
        self.connection.get().await.map_err(StoreError)
    }
}

fn idempotency_key(key: &str) -> String {
    redis_key!("idem:{key}")
}

fn sessions_key(user: &str) -> String {
    redis_key!("sessions:{user}")
}

fn delivered_key(node: &str) -> String {
    redis_key!("delivered:{node}")
}

fn seen_key(user: &str) -> String {
    redis_key!("seen:{user}")
}

fn stream_key(namespace: &str, room: &str) -> String {
    redis_key!("stream:{namespace}:{room}")
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
    fn append<'a>(&'a self, namespace: &'a str, rooms: &'a [String], emit: Stored<'a>) -> BoxFuture<'a, Result<Appended, StoreError>> {
        Box::pin(async move {
            let Stored { event, args, dedup, nid, idempotency, relay } = emit;
            // EVAL with the script's text rather than EVALSHA: a NOSCRIPT retry (first call,
            // or after a Redis restart) would send some appends late, and the Redis ingress
            // relies on appends reaching Redis in the order it sends them.
            let mut eval = redis::cmd("EVAL");
            eval.arg(APPEND).arg(1 + rooms.len());
            match dedup {
                Some(d) => eval.arg(redis_key!("dedup:{}", d.key)),
                None => eval.arg(&self.append_names.no_dedup),
            };
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
                .arg(dedup.map_or(0, |d| d.listening_since_ms))
                .arg(idempotency.map(|i| idempotency_key(i.key)).unwrap_or_default())
                .arg(idempotency.map_or(0, |i| i.window.as_millis() as u64))
                .arg(&self.append_names.relay_channel)
                .arg(relay.unwrap_or_default())
                .arg(&self.append_names.last_id)
                .arg(&self.append_names.relay_log)
                .arg(if dedup.is_some() { "1" } else { "" })
                .arg(self.append_names.publish);
            let (nid, fresh): (String, i64) = self.query(&eval).await?;
            Ok(Appended { nid: parse_id(&nid)?, fresh: fresh == 1 })
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

    fn claim_key<'a>(&'a self, key: &'a str, value: &'a str, window: Duration) -> BoxFuture<'a, Result<Option<String>, StoreError>> {
        Box::pin(async move {
            let mut invocation = self.claim_key.prepare_invoke();
            invocation.key(idempotency_key(key)).arg(value).arg(window.as_millis() as u64);
            self.invoke(&invocation).await
        })
    }

    fn sessions<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<Sessions, StoreError>> {
        Box::pin(async move {
            let mut pipe = redis::pipe();
            pipe.cmd("HGETALL").arg(sessions_key(user)).cmd("GET").arg(seen_key(user));
            let (fields, seen): (Vec<(String, String)>, Option<String>) = self.query_pipe(&pipe).await?;
            let mut nodes: Vec<NodeSession> = Vec::new();
            let since: std::collections::HashMap<&str, &str> =
                fields.iter().filter_map(|(k, v)| k.strip_suffix(SINCE).map(|node| (node, v.as_str()))).collect();
            for (node, sockets) in fields.iter().filter(|(k, _)| !k.ends_with(SINCE)) {
                let since = since.get(node.as_str()).and_then(|s| s.parse().ok()).unwrap_or_default();
                nodes.push(NodeSession { node: node.clone(), sockets: sockets.parse().unwrap_or(0), since });
            }
            Ok(Sessions { seen: seen.map(|v| parse_id(&v)).transpose()?, nodes })
        })
    }

    fn write_sessions<'a>(&'a self, writes: &'a [SessionWrite]) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            // One round trip for the lot; EVAL with the script's text, as a pipeline cannot
            // retry a NOSCRIPT.
            for chunk in writes.chunks(500) {
                let mut pipe = redis::pipe();
                for write in chunk {
                    match write {
                        SessionWrite::Set { user, node, sockets, since } => {
                            let key = sessions_key(user);
                            pipe.cmd("HSET").arg(&key).arg(node).arg(*sockets).ignore();
                            pipe.cmd("HSETNX").arg(&key).arg(format!("{node}{SINCE}")).arg(since.to_string()).ignore();
                            pipe.cmd("PEXPIRE").arg(&key).arg(self.keep_ms()).ignore();
                        }
                        SessionWrite::End { user, node, mark } => {
                            pipe.cmd("EVAL").arg(END_SESSIONS).arg(2).arg(sessions_key(user)).arg(seen_key(user));
                            pipe.arg(SINCE).arg(self.keep_ms()).arg(node).arg(mark.to_string()).ignore();
                        }
                    }
                }
                self.query_pipe::<()>(&pipe).await?;
            }
            Ok(())
        })
    }

    fn node_marks<'a>(&'a self, nodes: &'a [String]) -> BoxFuture<'a, Result<Vec<NodeMark>, StoreError>> {
        Box::pin(async move {
            if nodes.is_empty() {
                return Ok(vec![]);
            }
            let mut pipe = redis::pipe();
            for node in nodes {
                pipe.cmd("EXISTS").arg(node_channel(node));
                pipe.cmd("PUBSUB").arg("NUMSUB").arg(node_channel(node));
                pipe.cmd("GET").arg(delivered_key(node));
            }
            let replies: Vec<redis::Value> = self.query_pipe(&pipe).await?;
            let mut marks = Vec::with_capacity(nodes.len());
            for reply in replies.chunks(3) {
                let heartbeat: i64 = redis::from_redis_value(reply[0].clone()).unwrap_or(0);
                let numsub: Vec<redis::Value> = redis::from_redis_value(reply[1].clone()).unwrap_or_default();
                let subscribed: i64 = numsub.get(1).and_then(|v| redis::from_redis_value(v.clone()).ok()).unwrap_or(0);
                let delivered: Option<String> = redis::from_redis_value(reply[2].clone()).unwrap_or(None);
                marks.push(NodeMark { alive: heartbeat > 0 && subscribed > 0, delivered: delivered.and_then(|d| d.parse().ok()) });
            }
            Ok(marks)
        })
    }

    fn write_node_mark<'a>(&'a self, node: &'a str, delivered: StreamId) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.set_ids([(delivered_key(node), delivered)]).await?;
            let _: bool = self.query(redis::cmd("PEXPIRE").arg(delivered_key(node)).arg(self.keep_ms())).await?;
            Ok(())
        })
    }

    fn set_user_rooms<'a>(&'a self, user: &'a str, rooms: &'a [String]) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let value = serde_json::to_string(rooms).unwrap_or_default();
            let ttl = self.max_age.as_secs() + 60;
            let _: () = self.query(redis::cmd("SET").arg(redis_key!("rooms:{user}")).arg(value).arg("EX").arg(ttl)).await?;
            Ok(())
        })
    }

    fn user_rooms<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        Box::pin(async move {
            let value: Option<String> = self.query(redis::cmd("GET").arg(redis_key!("rooms:{user}"))).await?;
            Ok(value.and_then(|v| serde_json::from_str(&v).ok()).unwrap_or_default())
        })
    }

    fn read_state<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<ReadState, StoreError>> {
        Box::pin(async move {
            let up_to: Option<String> = self.query(redis::cmd("GET").arg(redis_key!("read:{user}"))).await?;
            let ids: Vec<String> = self.query(redis::cmd("SMEMBERS").arg(redis_key!("read:{user}:ids"))).await?;
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
                self.set_ids([(redis_key!("read:{user}"), up_to)]).await?;
            }
            if !ids.is_empty() {
                let key = redis_key!("read:{user}:ids");
                let members: Vec<String> = ids.iter().map(StreamId::to_string).collect();
                let _: i64 = self.query(redis::cmd("SADD").arg(&key).arg(members)).await?;
                let _: bool = self.query(redis::cmd("EXPIRE").arg(&key).arg(self.max_age.as_secs() + 60)).await?;
            }
            Ok(())
        })
    }
}
