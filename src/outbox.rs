//! What the HTTP API accepts is delivered, or refused: never a `2xx` for something lost (SPEC §7).
//!
//! A [`Submission`] is one API call: one or more commands (a notification to several users is one
//! emit per user, sharing one id) under one idempotency key. [`accept`] applies it at once, or,
//! when the store or the other instances cannot be reached (a Redis outage), keeps it in the
//! [`Outbox`]: a SQLite file under `storage.data_dir`, bounded by `outbox.max_entries`, that
//! [`run`] flushes in order as soon as Redis returns, also after a restart. Without room (or
//! without an outbox: the embedded default, whose store is the local disk) the answer is 503.
//!
//! Every part is applied under its own idempotency key (`<key>#<part>`), so a part that reached
//! Redis before its answer was lost is not applied twice when the outbox sends it again, and a
//! producer that retries with the same `Idempotency-Key` gets the first id back.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::join_all;
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::{json, Value as Json};
use tokio::sync::{watch, Notify};

use crate::cluster::redis_state::RedisState;
use crate::delivery::{Command, Delivery, DeliveryError, Origin, Target};
use crate::payload::stored;
use crate::store::{Idempotency, StreamId};

/// One API call's commands, applied together under one idempotency key.
#[derive(Debug, Clone, PartialEq)]
pub struct Submission {
    pub key: Option<String>,
    pub parts: Vec<Command>,
    /// The id of a notification that is not stored (made by this instance), if any.
    pub nid: Option<StreamId>,
}

/// What became of an accepted submission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// Delivered (and stored, for stored emits) under this id.
    Done(Option<StreamId>),
    /// In the outbox: delivered and stored when Redis returns.
    Queued,
}

#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// Redis is unreachable and there is no room to keep the submission: retry later.
    #[error("{0}")]
    Unavailable(String),
    /// The submission itself is wrong (e.g. an unknown namespace).
    #[error("{0}")]
    Invalid(String),
}

/// Applies `submission` now, or queues it in `outbox` when it cannot reach Redis.
pub async fn accept(delivery: &Delivery, outbox: Option<&Outbox>, mut submission: Submission, window: Duration) -> Result<Accepted, Refused> {
    // Behind queued submissions, a new one waits its turn: the outbox keeps their order.
    let queued_before = outbox.is_some_and(|o| !o.is_empty());
    if !queued_before {
        // Without an outbox nothing keeps the submission after this: its parts are moved, not copied.
        let parts = match outbox {
            Some(_) => submission.parts.clone(),
            None => std::mem::take(&mut submission.parts),
        };
        match submit(delivery, submission.key.as_deref(), submission.nid, parts, window).await {
            Ok(id) => return Ok(Accepted::Done(id)),
            Err(DeliveryError::Unavailable(e)) if outbox.is_some() => tracing::debug!(error = %e, "queued in the outbox"),
            Err(DeliveryError::Unavailable(e)) => return Err(Refused::Unavailable(e)),
            Err(e) => return Err(Refused::Invalid(e.to_string())),
        }
    }
    let outbox = outbox.expect("only reached with an outbox");
    match outbox.push(&submission) {
        Ok(()) => {
            delivery.metrics().inc("herald_outbox_total", &[("outcome", "queued")]);
            Ok(Accepted::Queued)
        }
        Err(e) => {
            delivery.metrics().inc("herald_outbox_total", &[("outcome", "refused")]);
            Err(Refused::Unavailable(e))
        }
    }
}

/// Applies every part; the first stored part's id is the notification's. Parts are applied one
/// at a time until the notification has its id; the rest, which all carry it, are staged (stored)
/// at once, so that the store takes them together (the embedded default commits them in one
/// transaction, Redis pipelines them), and completed (delivered) in their order. A part that
/// fails does not keep the others from being delivered; the first failure is the answer.
async fn submit(
    delivery: &Delivery,
    key: Option<&str>,
    nid: Option<StreamId>,
    parts: Vec<Command>,
    window: Duration,
) -> Result<Option<StreamId>, DeliveryError> {
    let keys: Vec<Option<String>> = (0..parts.len()).map(|i| key.map(|k| format!("{k}#{i}"))).collect();
    let origin = |i: usize, nid: Option<StreamId>| Origin {
        nid,
        idempotency: keys[i].as_deref().map(|key| Idempotency { key, window }),
        ..Origin::http()
    };
    let mut id = nid;
    let mut parts = parts.into_iter().enumerate();
    while id.is_none() {
        let Some((i, part)) = parts.next() else { return Ok(None) };
        id = delivery.apply(part, origin(i, None)).await?;
    }
    let staged = join_all(parts.map(|(i, part)| delivery.stage(part, origin(i, id)))).await;
    let mut failed = None;
    for staged in staged {
        if let Err(e) = delivery.complete(staged).await {
            failed.get_or_insert(e);
        }
    }
    failed.map_or(Ok(id), Err)
}

/// Submissions waiting for Redis, on disk, oldest first.
pub struct Outbox {
    connection: Mutex<Connection>,
    max_entries: usize,
    len: AtomicUsize,
    added: Notify,
}

impl Outbox {
    /// Opens (or creates) the outbox file; `max_entries` 0 means no outbox at all (`None`).
    pub fn open(path: &Path, max_entries: usize) -> Result<Option<Outbox>, String> {
        if max_entries == 0 {
            return Ok(None);
        }
        let what = |e: rusqlite::Error| format!("outbox {}: {e}", path.display());
        let connection = Connection::open(path).map_err(what)?;
        connection
            .execute_batch(
                "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=5000;
                 CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT NOT NULL);",
            )
            .map_err(what)?;
        let len: i64 = connection.query_row("SELECT COUNT(*) FROM outbox", [], |row| row.get(0)).map_err(what)?;
        if len > 0 {
            tracing::info!(entries = len, "outbox holds submissions from before the restart: flushed when Redis is reachable");
        }
        Ok(Some(Outbox { connection: Mutex::new(connection), max_entries, len: AtomicUsize::new(len as usize), added: Notify::new() }))
    }

    pub fn len(&self) -> usize {
        self.len.load(Ordering::SeqCst)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn push(&self, submission: &Submission) -> Result<(), String> {
        if self.len() >= self.max_entries {
            return Err(format!("Redis is unreachable and the outbox is full ({} entries)", self.max_entries));
        }
        let connection = self.connection.lock().unwrap_or_else(|e| e.into_inner());
        connection
            .execute("INSERT INTO outbox (body) VALUES (?1)", params![encode(submission).to_string()])
            .map_err(|e| format!("Redis is unreachable and the outbox cannot be written: {e}"))?;
        self.len.fetch_add(1, Ordering::SeqCst);
        self.added.notify_one();
        Ok(())
    }

    /// The oldest entry: its sequence number and the submission (`None` when it is unreadable).
    fn first(&self) -> Result<Option<(i64, Option<Submission>)>, String> {
        let connection = self.connection.lock().unwrap_or_else(|e| e.into_inner());
        let row: Option<(i64, String)> = connection
            .query_row("SELECT seq, body FROM outbox ORDER BY seq LIMIT 1", [], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional()
            .map_err(|e| e.to_string())?;
        Ok(row.map(|(seq, body)| (seq, serde_json::from_str(&body).ok().and_then(|json| decode(&json)))))
    }

    fn remove(&self, seq: i64) -> Result<(), String> {
        let connection = self.connection.lock().unwrap_or_else(|e| e.into_inner());
        let removed = connection.execute("DELETE FROM outbox WHERE seq = ?1", params![seq]).map_err(|e| e.to_string())?;
        if removed > 0 {
            self.len.fetch_sub(1, Ordering::SeqCst);
        }
        Ok(())
    }
}

/// Flushes the outbox, in order, whenever Redis is up, for as long as the server runs.
pub async fn run(outbox: Arc<Outbox>, delivery: Delivery, mut redis: watch::Receiver<RedisState>, window: Duration) {
    loop {
        if outbox.is_empty() {
            outbox.added.notified().await;
            continue;
        }
        if *redis.borrow_and_update() != RedisState::Up {
            let _ = redis.changed().await;
            continue;
        }
        let (seq, submission) = match outbox.first() {
            Ok(Some(entry)) => entry,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "outbox unreadable; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let outcome = match submission {
            None => {
                tracing::error!(seq, "unreadable outbox entry dropped");
                "dropped"
            }
            Some(submission) => match submit(&delivery, submission.key.as_deref(), submission.nid, submission.parts, window).await {
                Ok(_) => "flushed",
                Err(DeliveryError::Unavailable(e)) => {
                    tracing::debug!(error = %e, "outbox flush waits for Redis");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    continue;
                }
                Err(e) => {
                    tracing::error!(seq, error = %e, "outbox entry cannot be applied: dropped");
                    "dropped"
                }
            },
        };
        delivery.metrics().inc("herald_outbox_total", &[("outcome", outcome)]);
        if let Err(e) = outbox.remove(seq) {
            tracing::warn!(error = %e, "outbox entry not removed; it is sent again (idempotently)");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

fn encode(submission: &Submission) -> Json {
    let parts: Vec<Json> = submission
        .parts
        .iter()
        .map(|part| {
            let target = part.target();
            let mut json = json!({ "ns": target.namespace, "rooms": target.rooms, "except": target.except });
            match part {
                Command::Emit { event, args, .. } => {
                    json["kind"] = "emit".into();
                    json["event"] = event.as_str().into();
                    json["args"] = stored::encode(args).into();
                }
                Command::Join { rooms, .. } => {
                    json["kind"] = "join".into();
                    json["to"] = json!(rooms);
                }
                Command::Leave { rooms, .. } => {
                    json["kind"] = "leave".into();
                    json["to"] = json!(rooms);
                }
                Command::Disconnect { .. } => json["kind"] = "disconnect".into(),
            }
            json
        })
        .collect();
    json!({ "key": submission.key, "nid": submission.nid.map(|n| n.to_string()), "parts": parts })
}

fn decode(json: &Json) -> Option<Submission> {
    let strings = |value: &Json| -> Option<Vec<String>> { value.as_array()?.iter().map(|v| v.as_str().map(String::from)).collect() };
    let mut parts = Vec::new();
    for part in json["parts"].as_array()? {
        let target =
            Target { namespace: part["ns"].as_str()?.to_string(), rooms: strings(&part["rooms"])?, except: strings(&part["except"])? };
        parts.push(match part["kind"].as_str()? {
            "emit" => {
                Command::Emit { target, event: part["event"].as_str()?.to_string(), args: stored::decode(part["args"].as_str()?).ok()? }
            }
            "join" => Command::Join { target, rooms: strings(&part["to"])? },
            "leave" => Command::Leave { target, rooms: strings(&part["to"])? },
            "disconnect" => Command::Disconnect { target },
            _ => return None,
        });
    }
    let nid = match &json["nid"] {
        Json::Null => None,
        value => Some(value.as_str()?.parse().ok()?),
    };
    Some(Submission { key: json["key"].as_str().map(String::from), parts, nid })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::{Args, Value};

    fn submission() -> Submission {
        let target = Target { namespace: "/".into(), rooms: vec!["user_1".into()], except: vec!["x".into()] };
        Submission {
            key: Some("k".into()),
            parts: vec![
                Command::Emit { target: target.clone(), event: "notification".into(), args: Args::one(Value::Int(1)) },
                Command::Join { target: target.clone(), rooms: vec!["r".into()] },
                Command::Disconnect { target },
            ],
            nid: Some(StreamId::new(5, 1)),
        }
    }

    #[test]
    fn submissions_survive_the_disk_in_order_and_the_outbox_is_bounded() {
        let dir = std::env::temp_dir().join(format!("herald-outbox-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("outbox.db");
        let outbox = Outbox::open(&path, 2).unwrap().unwrap();
        let mut second = submission();
        second.key = Some("k2".into());
        outbox.push(&submission()).unwrap();
        outbox.push(&second).unwrap();
        assert!(outbox.push(&submission()).unwrap_err().contains("full"));
        drop(outbox);

        let outbox = Outbox::open(&path, 2).unwrap().unwrap();
        assert_eq!(outbox.len(), 2, "entries survive a restart");
        let (seq, first) = outbox.first().unwrap().unwrap();
        assert_eq!(first, Some(submission()));
        outbox.remove(seq).unwrap();
        assert_eq!(outbox.first().unwrap().unwrap().1, Some(second));
        assert_eq!(outbox.len(), 1);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn no_room_means_no_outbox() {
        assert!(Outbox::open(Path::new("/nonexistent/never"), 0).unwrap().is_none());
        assert!(Outbox::open(Path::new("/nonexistent/dir/outbox.db"), 10).is_err());
    }
}
