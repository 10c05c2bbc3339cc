//! Presence in a cluster: the counts live in Redis, each instance's part in its own hash field.
//!
//! Keys (`<S>` is a [`Scope::key`], `<inst>` an instance run id):
//! - `herald:pc:<S>:<user>`: hash `<inst>` → sockets there;
//! - `herald:pd:<user>`: hash `<inst>|<device>` → sockets there on that device;
//! - `herald:ps:<S>:<user>`: `on:<since ms>`, or `leaving:<since ms>` during the grace;
//! - `herald:pleaving`: sorted set `<S>\x1f<user>` by the time the grace ends;
//! - `herald:pm:<S>`: sorted set of the users online in `<S>` by since (`u`: everyone online);
//! - `herald:pi:<inst>`: set of the `<S>\x1f<user>` an instance holds sockets for;
//! - `herald:instances`: hash `<inst>` → last upkeep (ms); `herald:node:<inst>` expires after
//!   `presence.instance_timeout_secs` unless the instance renews it.
//!
//! Each change is one script that updates the counts and decides the transition atomically, so
//! the instance whose change made a user online (or started the grace) is the only one to know.
//! A grace that ends is claimed by removing it from `herald:pleaving`: one instance wins.
//!
//! Every instance checks the others each second: an instance is dead when its heartbeat key
//! expired, or when its `herald:node:<inst>` subscription is gone (Redis drops it the moment
//! the process dies). One instance claims the dead one and removes its part, which starts the
//! grace of each user it held. So a user of a killed instance goes offline after the grace
//! plus about a second; of a frozen or partitioned one, after the instance timeout plus the grace.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::future::BoxFuture;
use redis::aio::ConnectionManager;
use redis::Script;

use super::{Backend, Change, Changed, Member, Scope, UserPresence};
use crate::cluster::channels::node_channel;
use crate::cluster::gated::{due_members, Gated};
use crate::cluster::keys::redis_key;
use crate::notification::now_ms;

fn instances_key() -> String {
    redis_key!("instances")
}
fn leaving_key() -> String {
    redis_key!("pleaving")
}
/// A new instance may take this long to subscribe to its channel before it counts as dead.
const STARTING_MS: u64 = 5000;

const CHANGE: &str = r#"
local inst, delta, dev, now = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local max, grace, member, user = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7], ARGV[8]
if delta > 0 and max > 0 then
  local f = redis.call('HGETALL', KEYS[1])
  local total = 0
  for i = 1, #f, 2 do
    if f[i] == inst or redis.call('EXISTS', ARGV[9] .. f[i]) == 1 then total = total + tonumber(f[i + 1]) end
  end
  if total + delta > max then return {1, 0} end
end
local n = redis.call('HINCRBY', KEYS[1], inst, delta)
if n <= 0 then
  redis.call('HDEL', KEYS[1], inst)
  redis.call('SREM', KEYS[4], member)
else
  redis.call('SADD', KEYS[4], member)
end
if dev ~= '' then
  local d = redis.call('HINCRBY', KEYS[5], inst .. '|' .. dev, delta)
  if d <= 0 then redis.call('HDEL', KEYS[5], inst .. '|' .. dev) end
end
local state = redis.call('GET', KEYS[2])
if delta > 0 then
  if not state then
    redis.call('SET', KEYS[2], 'on:' .. now)
    redis.call('ZADD', KEYS[6], now, user)
    return {0, 1}
  end
  if string.sub(state, 1, 8) == 'leaving:' then
    redis.call('SET', KEYS[2], 'on:' .. string.sub(state, 9))
    redis.call('ZREM', KEYS[3], member)
  end
  return {0, 0}
end
if state and string.sub(state, 1, 3) == 'on:' and redis.call('HLEN', KEYS[1]) == 0 then
  redis.call('SET', KEYS[2], 'leaving:' .. string.sub(state, 4))
  redis.call('ZADD', KEYS[3], now + grace, member)
end
return {0, 0}
"#;

/// Removes one instance's part of one (scope, user): a dead instance's, or this one's before
/// writing it again.
const REMOVE: &str = r#"
redis.call('HDEL', KEYS[1], ARGV[1])
local prefix = ARGV[1] .. '|'
for _, k in ipairs(redis.call('HKEYS', KEYS[5])) do
  if string.sub(k, 1, #prefix) == prefix then redis.call('HDEL', KEYS[5], k) end
end
redis.call('SREM', KEYS[4], ARGV[4])
local state = redis.call('GET', KEYS[2])
if state and string.sub(state, 1, 3) == 'on:' and redis.call('HLEN', KEYS[1]) == 0 then
  redis.call('SET', KEYS[2], 'leaving:' .. string.sub(state, 4))
  redis.call('ZADD', KEYS[3], tonumber(ARGV[2]) + tonumber(ARGV[3]), ARGV[4])
end
return 1
"#;

/// Ends one grace, if this instance is the first to claim it and nobody came back.
const FINISH: &str = r#"
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
local state = redis.call('GET', KEYS[2])
if state and string.sub(state, 1, 8) == 'leaving:' and redis.call('HLEN', KEYS[3]) == 0 then
  redis.call('DEL', KEYS[2])
  redis.call('ZREM', KEYS[4], ARGV[2])
  return 1
end
return 0
"#;

pub struct RedisPresence {
    redis: Gated,
    instance: String,
    grace_ms: u64,
    timeout: Duration,
    registered: AtomicBool,
    change: Script,
    remove: Script,
    finish: Script,
}

fn member(scope: &Scope, user: &str) -> String {
    format!("{}\x1f{user}", scope.key())
}

fn parse_member(member: &str) -> Option<(Scope, String)> {
    let (scope, user) = member.split_once('\x1f')?;
    Some((Scope::from_key(scope)?, user.to_string()))
}

/// The six keys of [`CHANGE`] and [`REMOVE`].
fn keys(scope: &Scope, user: &str, instance: &str) -> [String; 6] {
    let s = scope.key();
    [
        redis_key!("pc:{s}:{user}"),
        redis_key!("ps:{s}:{user}"),
        leaving_key(),
        redis_key!("pi:{instance}"),
        redis_key!("pd:{user}"),
        redis_key!("pm:{s}"),
    ]
}

impl RedisPresence {
    pub fn new(redis: Gated, instance: &str, grace: Duration, timeout: Duration) -> RedisPresence {
        RedisPresence {
            redis,
            instance: instance.to_string(),
            grace_ms: grace.as_millis() as u64,
            timeout,
            registered: AtomicBool::new(false),
            change: Script::new(CHANGE),
            remove: Script::new(REMOVE),
            finish: Script::new(FINISH),
        }
    }

    async fn conn(&self) -> Result<ConnectionManager, String> {
        self.redis.get().await
    }

    async fn change_now(&self, conn: &mut ConnectionManager, change: &Change) -> Result<Changed, String> {
        let mut invocation = self.change.prepare_invoke();
        for key in keys(&change.scope, &change.user, &self.instance) {
            invocation.key(key);
        }
        invocation
            .arg(&self.instance)
            .arg(change.delta)
            .arg(change.device.as_deref().unwrap_or(""))
            .arg(now_ms())
            .arg(change.max)
            .arg(self.grace_ms)
            .arg(member(&change.scope, &change.user))
            .arg(&change.user)
            .arg(node_channel(""));
        let (refused, came_online): (i64, i64) = invocation.invoke_async(conn).await.map_err(|e| e.to_string())?;
        Ok(Changed { refused: refused == 1, came_online: came_online == 1 })
    }

    /// Removes `instance`'s part of every (scope, user) it holds.
    async fn remove_instance(&self, conn: &mut ConnectionManager, instance: &str) -> Result<usize, String> {
        let held: Vec<String> = redis::cmd("SMEMBERS").arg(redis_key!("pi:{instance}")).query_async(conn).await.map_err(|e| e.to_string())?;
        let now = now_ms();
        for entry in &held {
            let Some((scope, user)) = parse_member(entry) else { continue };
            let mut invocation = self.remove.prepare_invoke();
            for key in keys(&scope, &user, instance) {
                invocation.key(key);
            }
            invocation.arg(instance).arg(now).arg(self.grace_ms).arg(entry);
            let _: i64 = invocation.invoke_async(conn).await.map_err(|e| e.to_string())?;
        }
        let _: () = redis::cmd("DEL").arg(redis_key!("pi:{instance}")).query_async(conn).await.map_err(|e| e.to_string())?;
        Ok(held.len())
    }

    /// Says this instance is alive. `Ok(true)`: it had been taken for dead (its part removed).
    async fn heartbeat(&self, conn: &mut ConnectionManager) -> Result<bool, String> {
        let ttl = self.timeout.as_secs().max(1);
        let (_, new): ((), i64) = redis::pipe()
            .cmd("SET")
            .arg(node_channel(&self.instance))
            .arg("1")
            .arg("EX")
            .arg(ttl)
            .cmd("HSETNX")
            .arg(instances_key())
            .arg(&self.instance)
            .arg(now_ms())
            .query_async(conn)
            .await
            .map_err(|e| e.to_string())?;
        let was_registered = self.registered.swap(true, Ordering::Relaxed);
        Ok(new == 1 && was_registered)
    }

    /// Finds dead instances and removes their part (one instance claims each).
    async fn reap(&self, conn: &mut ConnectionManager) -> Result<(), String> {
        let instances: HashMap<String, u64> = redis::cmd("HGETALL").arg(instances_key()).query_async(conn).await.map_err(|e| e.to_string())?;
        let others: Vec<(&String, &u64)> = instances.iter().filter(|(i, _)| **i != self.instance).collect();
        if others.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (instance, _) in &others {
            pipe.cmd("EXISTS").arg(node_channel(instance));
            pipe.cmd("PUBSUB").arg("NUMSUB").arg(node_channel(instance));
        }
        let replies: Vec<redis::Value> = pipe.query_async(conn).await.map_err(|e| e.to_string())?;
        let now = now_ms();
        for ((instance, registered), reply) in others.iter().zip(replies.chunks(2)) {
            let heartbeat: i64 = redis::from_redis_value(reply[0].clone()).unwrap_or(0);
            let numsub: Vec<redis::Value> = redis::from_redis_value(reply[1].clone()).unwrap_or_default();
            let subscribed: i64 = numsub.get(1).and_then(|v| redis::from_redis_value(v.clone()).ok()).unwrap_or(0);
            let dead = heartbeat == 0 || (subscribed == 0 && now.saturating_sub(**registered) > STARTING_MS);
            if !dead {
                continue;
            }
            let claimed: Option<String> = redis::cmd("SET")
                .arg(redis_key!("preap:{instance}"))
                .arg(&self.instance)
                .arg("NX")
                .arg("EX")
                .arg(60)
                .query_async(conn)
                .await
                .map_err(|e| e.to_string())?;
            if claimed.is_none() {
                continue;
            }
            let _: i64 = redis::cmd("HDEL").arg(instances_key()).arg(instance.as_str()).query_async(conn).await.map_err(|e| e.to_string())?;
            let removed = self.remove_instance(conn, instance).await?;
            tracing::info!(instance = %instance, users = removed, "instance gone: its users go offline after the grace");
        }
        Ok(())
    }
}

impl Backend for RedisPresence {
    fn change<'a>(&'a self, change: &'a Change) -> BoxFuture<'a, Result<Changed, String>> {
        Box::pin(async move {
            let mut conn = self.conn().await?;
            self.change_now(&mut conn, change).await
        })
    }

    fn due(&self, now: u64) -> BoxFuture<'_, Result<Vec<(Scope, String)>, String>> {
        Box::pin(async move {
            let mut conn = self.conn().await?;
            let ending = due_members(&mut conn, &leaving_key(), now, 500).await?;
            let mut gone = Vec::new();
            for entry in ending {
                let Some((scope, user)) = parse_member(&entry) else {
                    let _: i64 = redis::cmd("ZREM").arg(leaving_key()).arg(&entry).query_async(&mut conn).await.map_err(|e| e.to_string())?;
                    continue;
                };
                let [counts, state, leaving, _, _, members] = keys(&scope, &user, &self.instance);
                let finished: i64 = self
                    .finish
                    .key(leaving)
                    .key(state)
                    .key(counts)
                    .key(members)
                    .arg(&entry)
                    .arg(&user)
                    .invoke_async(&mut conn)
                    .await
                    .map_err(|e| e.to_string())?;
                if finished == 1 {
                    gone.push((scope, user));
                }
            }
            Ok(gone)
        })
    }

    fn maintain<'a>(&'a self, rewrite: Option<&'a [Change]>) -> BoxFuture<'a, Result<bool, String>> {
        Box::pin(async move {
            let mut conn = self.conn().await?;
            if let Some(local) = rewrite {
                self.remove_instance(&mut conn, &self.instance).await?;
                for change in local {
                    self.change_now(&mut conn, change).await?;
                }
            }
            let lost = self.heartbeat(&mut conn).await?;
            if lost {
                tracing::warn!("this instance was taken for dead (Redis did not hear from it): writing its presence again");
            }
            self.reap(&mut conn).await?;
            Ok(lost)
        })
    }

    fn user<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<UserPresence, String>> {
        Box::pin(async move {
            let mut conn = self.conn().await?;
            let [counts, state, ..] = keys(&Scope::User, user, &self.instance);
            let (state, counts, devices, instances): (Option<String>, HashMap<String, u64>, HashMap<String, u64>, HashMap<String, u64>) =
                redis::pipe()
                    .cmd("GET")
                    .arg(state)
                    .cmd("HGETALL")
                    .arg(counts)
                    .cmd("HGETALL")
                    .arg(redis_key!("pd:{user}"))
                    .cmd("HGETALL")
                    .arg(instances_key())
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| e.to_string())?;
            let live = |instance: &str| instances.contains_key(instance);
            let mut presence = UserPresence { user: user.into(), ..Default::default() };
            if let Some(state) = state {
                presence.online = true;
                presence.since_ms = state.split_once(':').and_then(|(_, since)| since.parse().ok());
            }
            presence.sockets = counts.iter().filter(|(i, _)| live(i)).map(|(_, n)| *n).sum();
            for (field, n) in devices {
                if let Some((instance, device)) = field.split_once('|') {
                    if live(instance) {
                        *presence.devices.entry(device.to_string()).or_default() += n;
                    }
                }
            }
            Ok(presence)
        })
    }

    fn online<'a>(&'a self, users: &'a [String]) -> BoxFuture<'a, Result<Vec<bool>, String>> {
        Box::pin(async move {
            let mut conn = self.conn().await?;
            let mut online = Vec::with_capacity(users.len());
            for chunk in users.chunks(1000) {
                let keys: Vec<String> = chunk.iter().map(|u| redis_key!("ps:u:{u}")).collect();
                let states: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query_async(&mut conn).await.map_err(|e| e.to_string())?;
                online.extend(states.iter().map(Option::is_some));
            }
            Ok(online)
        })
    }

    fn room<'a>(&'a self, scope: &'a Scope, offset: usize, limit: usize) -> BoxFuture<'a, Result<(u64, Vec<Member>), String>> {
        Box::pin(async move {
            let mut conn = self.conn().await?;
            let key = redis_key!("pm:{}", scope.key());
            if limit == 0 {
                let count: u64 = redis::cmd("ZCARD").arg(&key).query_async(&mut conn).await.map_err(|e| e.to_string())?;
                return Ok((count, vec![]));
            }
            let (count, page): (u64, Vec<(String, f64)>) = redis::pipe()
                .cmd("ZCARD")
                .arg(&key)
                .cmd("ZRANGE")
                .arg(&key)
                .arg(offset)
                .arg(offset + limit - 1)
                .arg("WITHSCORES")
                .query_async(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            Ok((count, page.into_iter().map(|(user, since)| Member { user, since_ms: since as u64 }).collect()))
        })
    }

    fn online_count(&self) -> BoxFuture<'_, Result<u64, String>> {
        Box::pin(async move {
            let mut conn = self.conn().await?;
            redis::cmd("ZCARD").arg(redis_key!("pm:u")).query_async(&mut conn).await.map_err(|e| e.to_string())
        })
    }
}
