//! The Redis ingress: backends that emit through Redis reach Herald's sockets unchanged
//! (SPEC §6): python-socketio / Flask-SocketIO message queues, Node `@socket.io/redis-emitter`,
//! and Herald's own `notify:*` channels.
//!
//! Every instance receives every message, so each applies it to its own sockets only
//! (`Scope::Local`) and passes a dedup key with it: the first instance to store a persisted
//! notification stores it, the others get the same id back. The key is the message's hash plus
//! how many times this instance has seen the same bytes recently; every instance receives
//! pub/sub messages in the same order, so the n-th copy of identical bytes gets the same key
//! everywhere, and two identical notifications sent on purpose are both kept.
//!
//! The subscription is the resilient driver's: after a Redis restart or `CLIENT KILL TYPE
//! pubsub` it resubscribes by itself. `/health` shows its state and the age of the last message.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use super::decode::{self, DecodeError, Decoded, Limits};
use crate::cluster::driver::ResilientDriver;
use crate::delivery::{Delivery, DeliveryError, Origin, Scope};

/// Pattern subscriptions besides the python channels.
const NODE_EMIT: &str = "socket.io#";
const NODE_REQUEST: &str = "socket.io-request#";
const NOTIFY: &str = "notify:";

/// What `/health` reports about the listener.
#[derive(Default)]
pub struct IngressStatus {
    last_message: Mutex<Option<Instant>>,
}

impl IngressStatus {
    pub fn last_message_age(&self) -> Option<Duration> {
        self.last_message.lock().unwrap_or_else(|e| e.into_inner()).map(|at| at.elapsed())
    }

    fn touch(&self) {
        *self.last_message.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }
}

/// Which decoder a channel belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Python,
    Node,
    Notify,
}

impl Source {
    fn of(channel: &str, python_channels: &[String]) -> Option<Source> {
        if python_channels.iter().any(|c| c == channel) {
            Some(Source::Python)
        } else if channel.starts_with(NODE_EMIT) || channel.starts_with(NODE_REQUEST) {
            Some(Source::Node)
        } else if channel.starts_with(NOTIFY) {
            Some(Source::Notify)
        } else {
            None
        }
    }

    fn label(self) -> &'static str {
        match self {
            Source::Python => "python",
            Source::Node => "node",
            Source::Notify => "notify",
        }
    }

    fn decode(self, channel: &str, payload: &[u8], limits: &Limits) -> Result<Decoded, DecodeError> {
        match self {
            Source::Python => decode::python(payload, limits),
            Source::Node => decode::node(channel, payload, limits),
            Source::Notify => decode::notify(channel, payload, limits),
        }
    }
}

/// Listens until the driver shuts down.
pub async fn run(driver: ResilientDriver, delivery: Delivery, python_channels: Vec<String>, limits: Limits, status: Arc<IngressStatus>) {
    let patterns = vec![format!("{NODE_EMIT}*"), format!("{NODE_REQUEST}*"), format!("{NOTIFY}*")];
    let mut subscription = match driver.subscribe_stream(python_channels.clone(), patterns).await {
        Ok(subscription) => subscription,
        Err(e) => {
            tracing::error!(error = %e, "Redis ingress not subscribed");
            return;
        }
    };
    tracing::info!(channels = ?python_channels, "Redis ingress listening");
    let mut occurrences = Occurrences::default();
    while let Some((channel, payload)) = subscription.next().await {
        status.touch();
        let Some(source) = Source::of(&channel, &python_channels) else { continue };
        let outcome = match source.decode(&channel, &payload, &limits) {
            Ok(Decoded::Command(command)) => {
                let key = occurrences.key(&channel, &payload);
                let origin = Origin { scope: Scope::Local, source: source.label(), dedup_key: Some(&key), nid: None };
                match delivery.apply(command, origin).await {
                    Ok(_) => "delivered",
                    Err(DeliveryError::UnknownNamespace(_)) => "unknown_namespace",
                    Err(DeliveryError::Socket(_)) => "failed",
                }
            }
            Ok(Decoded::Ignored(why)) => {
                tracing::debug!(channel = %channel, why, "ingress message ignored");
                "ignored"
            }
            Err(e) => {
                tracing::warn!(channel = %truncate(&channel), error = %e, bytes = payload.len(), "malformed ingress message skipped");
                e.reason()
            }
        };
        delivery.metrics().inc("herald_ingress_messages_total", &[("source", source.label()), ("outcome", outcome)]);
    }
    tracing::info!("Redis ingress stopped");
}

fn truncate(channel: &str) -> &str {
    match channel.char_indices().nth(120) {
        Some((at, _)) => &channel[..at],
        None => channel,
    }
}

/// How long identical messages are counted as occurrences of one another, from the last one
/// seen. It equals the store's dedup key lifetime: a count restarts only after this long without
/// the same message, by which time every key it could repeat has expired. An instance that
/// starts less than this after an identical message was sent may count differently from the
/// others for that message; the window is kept short for that reason.
const OCCURRENCE_WINDOW: Duration = crate::store::redis::DEDUP_TTL;

/// Counts recent identical messages to build dedup keys (see the module doc).
#[derive(Default)]
struct Occurrences {
    seen: HashMap<u64, (u32, Instant)>,
}

impl Occurrences {
    fn key(&mut self, channel: &str, payload: &[u8]) -> String {
        let now = Instant::now();
        if self.seen.len() > 10_000 {
            self.seen.retain(|_, (_, at)| now.duration_since(*at) < OCCURRENCE_WINDOW);
        }
        let hash = fnv1a(channel.as_bytes(), fnv1a(payload, 0xcbf2_9ce4_8422_2325));
        let entry = self.seen.entry(hash).or_insert((0, now));
        if now.duration_since(entry.1) >= OCCURRENCE_WINDOW {
            *entry = (0, now);
        }
        entry.0 += 1;
        entry.1 = now;
        format!("{hash:016x}:{}", entry.0)
    }
}

/// FNV-1a: stable across processes and builds, unlike std's hasher.
fn fnv1a(bytes: &[u8], mut hash: u64) -> u64 {
    for b in bytes {
        hash ^= *b as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_route_to_their_decoder() {
        let python = vec!["flask-socketio".to_string(), "socketio".to_string()];
        assert_eq!(Source::of("flask-socketio", &python), Some(Source::Python));
        assert_eq!(Source::of("socket.io#/#", &python), Some(Source::Node));
        assert_eq!(Source::of("socket.io-request#/#", &python), Some(Source::Node));
        assert_eq!(Source::of("notify:user:1", &python), Some(Source::Notify));
        assert_eq!(Source::of("herald-request#/#", &python), None);
    }

    #[test]
    fn identical_messages_get_successive_keys() {
        let mut occurrences = Occurrences::default();
        let a = occurrences.key("notify:user:1", b"{}");
        let b = occurrences.key("notify:user:1", b"{}");
        let c = occurrences.key("notify:user:2", b"{}");
        assert_ne!(a, b);
        assert!(a.ends_with(":1") && b.ends_with(":2") && c.ends_with(":1"));
    }
}
