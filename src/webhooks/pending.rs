//! What webhooks wait for, kept where every instance sees it once: missed notifications batched
//! per user, and notifications to check for being read later.
//!
//! In the embedded default this is memory. With Redis, `herald:wh:missed:<user>` lists a user's
//! missed notifications and `herald:wh:due` says when each user's batch is sent (the first miss
//! plus `webhooks.batch_window_ms`); the instance that removes a user from `herald:wh:due` takes
//! the whole batch, so a batch is one call whichever instances stored its notifications.
//! `herald:wh:unread` holds notifications to check for being read, by due time.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use futures_util::future::BoxFuture;
use redis::aio::ConnectionManager;
use redis::Script;

use crate::cluster::gated::{due_members, Gated};
use crate::cluster::keys::redis_key;

pub trait Pending: Send + Sync + 'static {
    /// Adds a missed notification to `user`'s batch (sent at `due` if it is the batch's first).
    /// `Ok(true)`: the batch was full and its oldest entry was dropped.
    fn add_missed<'a>(&'a self, user: &'a str, entry: String, due: u64, max: usize) -> BoxFuture<'a, Result<bool, String>>;
    /// Takes the batches due at `now`: (user, entries).
    fn take_missed(&self, now: u64) -> BoxFuture<'_, Result<Vec<(String, Vec<String>)>, String>>;
    fn schedule_unread(&self, entry: String, due: u64) -> BoxFuture<'_, Result<(), String>>;
    fn take_unread(&self, now: u64) -> BoxFuture<'_, Result<Vec<String>, String>>;
}

#[derive(Default)]
pub struct MemoryPending {
    book: Mutex<Book>,
}

#[derive(Default)]
struct Book {
    missed: HashMap<String, (u64, Vec<String>)>,
    unread: BTreeMap<(u64, u64), String>,
    seq: u64,
}

impl MemoryPending {
    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Pending for MemoryPending {
    fn add_missed<'a>(&'a self, user: &'a str, entry: String, due: u64, max: usize) -> BoxFuture<'a, Result<bool, String>> {
        Box::pin(async move {
            let mut book = self.book();
            let batch = book.missed.entry(user.to_string()).or_insert((due, vec![]));
            batch.1.push(entry);
            let full = batch.1.len() > max;
            if full {
                batch.1.remove(0);
            }
            Ok(full)
        })
    }

    fn take_missed(&self, now: u64) -> BoxFuture<'_, Result<Vec<(String, Vec<String>)>, String>> {
        Box::pin(async move {
            let mut book = self.book();
            let due: Vec<String> = book.missed.iter().filter(|(_, (at, _))| *at <= now).map(|(u, _)| u.clone()).collect();
            Ok(due.into_iter().filter_map(|u| book.missed.remove(&u).map(|(_, entries)| (u, entries))).collect())
        })
    }

    fn schedule_unread(&self, entry: String, due: u64) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let mut book = self.book();
            book.seq += 1;
            let seq = book.seq;
            book.unread.insert((due, seq), entry);
            Ok(())
        })
    }

    fn take_unread(&self, now: u64) -> BoxFuture<'_, Result<Vec<String>, String>> {
        Box::pin(async move {
            let mut book = self.book();
            let later = book.unread.split_off(&(now + 1, 0));
            Ok(std::mem::replace(&mut book.unread, later).into_values().collect())
        })
    }
}

fn due_key() -> String {
    redis_key!("wh:due")
}
fn unread_key() -> String {
    redis_key!("wh:unread")
}

const ADD: &str = r#"
local n = redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], 'NX', ARGV[2], ARGV[4])
local max = tonumber(ARGV[3])
if n > max then
  redis.call('LTRIM', KEYS[1], -max, -1)
  return 1
end
return 0
"#;

const TAKE: &str = r#"
if redis.call('ZREM', KEYS[2], ARGV[1]) == 0 then return {} end
local items = redis.call('LRANGE', KEYS[1], 0, -1)
redis.call('DEL', KEYS[1])
return items
"#;

pub struct RedisPending {
    redis: Gated,
    add: Script,
    take: Script,
}

impl RedisPending {
    pub fn new(redis: Gated) -> RedisPending {
        RedisPending { redis, add: Script::new(ADD), take: Script::new(TAKE) }
    }

    async fn conn(&self) -> Result<ConnectionManager, String> {
        self.redis.get().await
    }
}

fn missed_key(user: &str) -> String {
    redis_key!("wh:missed:{user}")
}

impl Pending for RedisPending {
    fn add_missed<'a>(&'a self, user: &'a str, entry: String, due: u64, max: usize) -> BoxFuture<'a, Result<bool, String>> {
        Box::pin(async move {
            let mut conn = self.conn().await?;
            let dropped: i64 = self
                .add
                .key(missed_key(user))
                .key(due_key())
                .arg(entry)
                .arg(due)
                .arg(max)
                .arg(user)
                .invoke_async(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            Ok(dropped == 1)
        })
    }

    fn take_missed(&self, now: u64) -> BoxFuture<'_, Result<Vec<(String, Vec<String>)>, String>> {
        Box::pin(async move {
            let mut conn = self.conn().await?;
            let users = due_members(&mut conn, &due_key(), now, 200).await?;
            let mut batches = Vec::new();
            for user in users {
                let entries: Vec<String> =
                    self.take.key(missed_key(&user)).key(due_key()).arg(&user).invoke_async(&mut conn).await.map_err(|e| e.to_string())?;
                if !entries.is_empty() {
                    batches.push((user, entries));
                }
            }
            Ok(batches)
        })
    }

    fn schedule_unread(&self, entry: String, due: u64) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let mut conn = self.conn().await?;
            redis::cmd("ZADD").arg(unread_key()).arg(due).arg(entry).query_async(&mut conn).await.map_err(|e| e.to_string())
        })
    }

    fn take_unread(&self, now: u64) -> BoxFuture<'_, Result<Vec<String>, String>> {
        Box::pin(async move {
            let mut conn = self.conn().await?;
            let entries = due_members(&mut conn, &unread_key(), now, 500).await?;
            let mut mine = Vec::new();
            for entry in entries {
                // Whoever removes an entry checks it.
                let removed: i64 = redis::cmd("ZREM").arg(unread_key()).arg(&entry).query_async(&mut conn).await.map_err(|e| e.to_string())?;
                if removed == 1 {
                    mine.push(entry);
                }
            }
            Ok(mine)
        })
    }
}
