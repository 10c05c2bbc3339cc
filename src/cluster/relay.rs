//! Stored notifications between instances.
//!
//! A stored emit that enters on one instance (the HTTP API) is published on [`relay_channel`](super::channels::relay_channel)
//! by the store, in the same atomic step as the append (see `store::redis`), as
//! `<nid>\n<message>`; every instance, the sender included, applies it to its own sockets
//! through [`Delivery::apply_stored_locally`]. Going through each instance's delivery path
//! (rather than the adapter's broadcast) is what lets replay on every instance know exactly
//! which stored notifications its sockets already received; publishing with the append is what
//! makes every instance receive them in id order, and never one stored but not sent.
//!
//! Commands that entered here and are not stored (an HTTP emit of another event, a disconnect)
//! reach the other instances' Socket.IO sockets through the adapter, and their plain WebSocket
//! sockets through [`plain_channel`](super::channels::plain_channel) ([`PlainRelay`]), applied there to the plain sockets only.
//!
//! The same subscription holds this instance's own channel (`herald:node:<node_id>`): Redis
//! drops it the moment the process dies, which is how the others tell a dead instance at once.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use serde_json::json;

use super::driver::ResilientDriver;
use super::redis_state::RedisState;
use crate::delivery::{Command, Delivery, Fanout, Target};
use crate::payload::stored;
use crate::store::StreamId;

use super::channels::{node_channel, relay_log_key};
pub use super::channels::{plain_channel, relay_channel};
use crate::plain::Registry;

/// Encodes stored emits for every instance.
pub struct RedisRelay;

impl Fanout for RedisRelay {
    fn message(&self, command: &Command) -> Option<String> {
        let Command::Emit { target, event, args } = command else { return None };
        let message = json!({
            "ns": target.namespace,
            "rooms": target.rooms,
            "except": target.except,
            "event": event,
            "args": stored::encode(args),
        });
        Some(message.to_string())
    }
}

/// Publishes commands for the other instances' plain sockets (see the module doc).
pub struct PlainRelay {
    driver: ResilientDriver,
    instance: String,
}

impl PlainRelay {
    pub fn new(driver: ResilientDriver, instance: String) -> PlainRelay {
        PlainRelay { driver, instance }
    }
}

impl crate::plain::Peers for PlainRelay {
    fn publish<'a>(&'a self, command: &'a Command) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let message = encode_plain(&self.instance, command);
            self.driver.publish_plain(plain_channel(), message.into_bytes())
                .await
                .map_err(|e| e.to_string())
        })
    }
}

fn encode_plain(instance: &str, command: &Command) -> String {
    let target = command.target();
    let mut message = json!({ "from": instance, "ns": target.namespace, "rooms": target.rooms, "except": target.except });
    match command {
        Command::Emit { event, args, .. } => {
            message["kind"] = json!("emit");
            message["event"] = json!(event);
            message["args"] = json!(stored::encode(args));
        }
        Command::Join { rooms, .. } => {
            message["kind"] = json!("join");
            message["join"] = json!(rooms);
        }
        Command::Leave { rooms, .. } => {
            message["kind"] = json!("leave");
            message["join"] = json!(rooms);
        }
        Command::Disconnect { .. } => message["kind"] = json!("disconnect"),
    }
    message.to_string()
}

/// A string field of a relayed message.
fn field_text(message: &serde_json::Value, key: &str) -> Result<String, String> {
    message[key].as_str().map(String::from).ok_or_else(|| format!("{key} missing"))
}

/// A list-of-strings field of a relayed message.
fn field_list(message: &serde_json::Value, key: &str) -> Result<Vec<String>, String> {
    message[key]
        .as_array()
        .ok_or_else(|| format!("{key} missing"))?
        .iter()
        .map(|r| r.as_str().map(String::from).ok_or_else(|| format!("{key} must hold strings")))
        .collect()
}

/// `(sender instance, command)` from a [`plain_channel`](super::channels::plain_channel) message.
fn decode_plain(payload: &[u8]) -> Result<(String, Command), String> {
    let message: serde_json::Value = serde_json::from_slice(payload).map_err(|e| e.to_string())?;
    let (text, list) = (|key: &str| field_text(&message, key), |key: &str| field_list(&message, key));
    let target = Target { namespace: text("ns")?, rooms: list("rooms")?, except: list("except")? };
    let command = match text("kind")?.as_str() {
        "emit" => Command::Emit { target, event: text("event")?, args: stored::decode(&text("args")?).map_err(|e| e.to_string())? },
        "join" => Command::Join { target, rooms: list("join")? },
        "leave" => Command::Leave { target, rooms: list("join")? },
        "disconnect" => Command::Disconnect { target },
        other => return Err(format!("unknown kind {other:?}")),
    };
    Ok((text("from")?, command))
}

/// Applies relayed stored emits to this instance's sockets, and other instances' commands to
/// its plain sockets, until the subscription ends.
pub async fn run(driver: ResilientDriver, delivery: Delivery, plain: Arc<Registry>, node_id: String) {
    let (relay_name, plain_name) = (relay_channel(), plain_channel());
    // Against a Redis Cluster the relay channel is a shard channel (see `sharded.rs`).
    let mut resubscribed = driver.sharded_confirmations();
    let mut channels = vec![plain_name.clone(), node_channel(&node_id)];
    if resubscribed.is_none() {
        channels.push(relay_name.clone());
    }
    let subscribed = match resubscribed {
        None => driver.subscribe_stream(channels, vec![]).await.map(|plain| plain.boxed()),
        Some(_) => match (driver.subscribe_stream(channels, vec![]).await, driver.subscribe_sharded(vec![relay_name.clone()]).await) {
            (Ok(plain), Ok(sharded)) => Ok(futures_util::stream::select(plain, sharded).boxed()),
            (Err(e), _) | (_, Err(e)) => Err(e),
        },
    };
    let mut subscription = match subscribed {
        Ok(subscription) => subscription,
        Err(e) => {
            tracing::error!(error = %e, "relay not subscribed: stored notifications from other instances will not arrive");
            return;
        }
    };
    let mut states = driver.watch_state();
    states.borrow_and_update();
    // The relay log entry of the last stored emit applied here.
    let mut applied: Option<StreamId> = None;
    loop {
        // Biased, the changes first: a subscription made again delivers its first messages only
        // after its change is visible (the driver marks Redis up, the cluster connection confirms
        // the subscription, before any message of the new subscription is passed on), and the gap
        // must be caught up from the log before them. A live message applied first would move
        // `applied` past the gap, and the catch-up would skip it.
        let (channel, payload) = tokio::select! {
            biased;
            changed = states.changed() => {
                if changed.is_err() {
                    return;
                }
                if *states.borrow_and_update() == RedisState::Up {
                    catch_up(&driver, &delivery, &mut applied).await;
                }
                continue;
            }
            Some(()) = confirmed(&mut resubscribed) => {
                // The sharded relay subscription was made again: something may have been missed.
                catch_up(&driver, &delivery, &mut applied).await;
                continue;
            }
            message = subscription.next() => match message {
                Some(message) => message,
                None => return,
            },
        };
        if channel == plain_name {
            match decode_plain(&payload) {
                Ok((from, _)) if from == node_id => {}
                Ok((_, command)) => {
                    let unreachable = plain.apply(&command);
                    if unreachable > 0 {
                        delivery.metrics().add("herald_unreachable_sockets_total", &[], unreachable as u64);
                    }
                }
                Err(e) => {
                    delivery.metrics().inc("herald_ingress_messages_total", &[("source", "plain_relay"), ("outcome", "malformed")]);
                    tracing::warn!(error = %e, "malformed plain relay message skipped");
                }
            }
            continue;
        }
        if channel != relay_name {
            continue;
        }
        match decode(&payload) {
            Ok((nid, entry, command)) => {
                if let (Some(entry), Some(done)) = (entry, applied) {
                    if entry <= done {
                        continue; // applied by a catch-up already
                    }
                }
                if entry.is_some() {
                    applied = entry;
                }
                let _ = delivery.apply_stored_locally(nid, command).await;
            }
            Err(e) => {
                delivery.metrics().inc("herald_ingress_messages_total", &[("source", "relay"), ("outcome", "malformed")]);
                tracing::warn!(error = %e, "malformed relay message skipped");
            }
        }
    }
}

/// The next change of the sharded subscription's confirmations; never, without sharding.
async fn confirmed(confirmations: &mut Option<tokio::sync::watch::Receiver<u64>>) -> Option<()> {
    match confirmations {
        Some(receiver) => receiver.changed().await.ok(),
        None => std::future::pending().await,
    }
}

/// Most relay log entries read per round of a catch-up.
const CATCH_UP_BATCH: usize = 500;

/// Applies what the relay log holds after `applied` (nothing before this instance applied its
/// first relayed emit: its sockets were replayed on connect).
async fn catch_up(driver: &ResilientDriver, delivery: &Delivery, applied: &mut Option<StreamId>) {
    let Some(mut after) = *applied else { return };
    let mut caught = 0u64;
    loop {
        let entries: Vec<(String, Vec<(String, String)>)> =
            match driver.query(redis::cmd("XRANGE").arg(relay_log_key()).arg(format!("({after}")).arg("+").arg("COUNT").arg(CATCH_UP_BATCH)).await {
                Ok(entries) => entries,
                Err(e) => {
                    tracing::warn!(error = %e, "relay catch-up failed: stored notifications of the gap reach sockets by replay only");
                    return;
                }
            };
        let n = entries.len();
        for (id, fields) in entries {
            let Ok(entry) = id.parse::<StreamId>() else { continue };
            after = entry;
            let field = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
            let (Some(nid), Some(message)) = (field("nid"), field("m")) else { continue };
            match decode(format!("{nid} {id}\n{message}").as_bytes()) {
                Ok((nid, _, command)) => {
                    let _ = delivery.apply_stored_locally(nid, command).await;
                    caught += 1;
                }
                Err(e) => tracing::warn!(error = %e, "malformed relay log entry skipped"),
            }
        }
        *applied = Some(after);
        if n < CATCH_UP_BATCH {
            break;
        }
    }
    if caught > 0 {
        delivery.metrics().add("herald_relay_caught_up_total", &[], caught);
        tracing::info!(notifications = caught, "relay caught up after a gap in the subscription");
    }
}

/// `<nid>[ <relay log entry>]\n<message>` → (nid, entry, command).
fn decode(payload: &[u8]) -> Result<(StreamId, Option<StreamId>, Command), String> {
    let newline = payload.iter().position(|b| *b == b'\n').ok_or("no id line")?;
    let line = std::str::from_utf8(&payload[..newline]).map_err(|e| e.to_string())?;
    let (nid, entry) = match line.split_once(' ') {
        Some((nid, entry)) => (nid.parse::<StreamId>()?, Some(entry.parse::<StreamId>()?)),
        None => (line.parse::<StreamId>()?, None),
    };
    let message: serde_json::Value = serde_json::from_slice(&payload[newline + 1..]).map_err(|e| e.to_string())?;
    let (text, list) = (|key: &str| field_text(&message, key), |key: &str| field_list(&message, key));
    let target = Target { namespace: text("ns")?, rooms: list("rooms")?, except: list("except")? };
    let args = stored::decode(&text("args")?).map_err(|e| e.to_string())?;
    Ok((nid, entry, Command::Emit { target, event: text("event")?, args }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_relay_messages_are_errors() {
        for bad in [
            &b"garbage"[..],
            b"1-0\n{}",
            b"{}",
            b"x\n{\"ns\":\"/\",\"rooms\":[],\"except\":[],\"event\":\"e\",\"args\":\"[]\"}",
            b"1-0\n{\"ns\":\"/\",\"rooms\":[1],\"except\":[],\"event\":\"e\",\"args\":\"[]\"}",
        ] {
            assert!(decode(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let good = b"1-0\n{\"ns\":\"/\",\"rooms\":[\"user_1\"],\"except\":[],\"event\":\"notification\",\"args\":\"[{\\\"a\\\":1}]\"}";
        let (nid, entry, command) = decode(good).unwrap();
        assert_eq!(entry, None);
        assert_eq!(nid, StreamId::new(1, 0));
        assert!(matches!(command, Command::Emit { ref event, .. } if event == "notification"));
    }
}
