//! The Redis ingress: backends that emit through Redis reach Herald's sockets unchanged
//! (SPEC §6): python-socketio / Flask-SocketIO message queues, Node `@socket.io/redis-emitter`,
//! and Herald's own `notify:*` channels.
//!
//! Every instance receives every message, so each applies it to its own sockets only
//! (`Scope::Local`) and passes the message's hash as its dedup key: the store keeps one copy per
//! publish, whatever the number of instances, and hands every instance the same id (see
//! `store::redis`).
//!
//! The subscription is the resilient driver's: after a Redis restart or `CLIENT KILL TYPE
//! pubsub` it resubscribes by itself. `/health` shows its state and the age of the last message.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::maybe_done;
use futures_util::stream::FuturesOrdered;
use futures_util::{poll, StreamExt};

use super::decode::{self, DecodeError, Decoded, Limits};
use crate::cluster::driver::ResilientDriver;
use crate::delivery::{outcome, Delivery, Origin, Scope, Staged};
use crate::store::Dedup;

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

/// Messages whose store round-trips overlap. They are still stored and delivered in the order
/// they were published, so that a room receives them, live and replayed, in that order.
const IN_FLIGHT: usize = 64;

/// Where a message stands after decoding (and storing, for a stored emit).
enum Step {
    Staged(Source, Staged),
    Done(Source, &'static str),
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
    let mut staged = FuturesOrdered::new();
    loop {
        tokio::select! {
            biased;
            Some(step) = staged.next(), if !staged.is_empty() => deliver(&delivery, step).await,
            message = subscription.next(), if staged.len() < IN_FLIGHT => {
                let Some((channel, payload)) = message else { break };
                status.touch();
                let Some(source) = Source::of(&channel, &python_channels) else { continue };
                let mut staging = Box::pin(maybe_done(stage(&driver, &delivery, &limits, source, channel, payload)));
                // The first poll sends the store command, so that Redis stores messages in the
                // order they were published, whatever order the replies come back in.
                let _ = poll!(staging.as_mut());
                staged.push_back(async move {
                    staging.as_mut().await;
                    staging.as_mut().take_output().expect("a finished stage has an output")
                });
            }
        }
    }
    while let Some(step) = staged.next().await {
        deliver(&delivery, step).await;
    }
    tracing::info!("Redis ingress stopped");
}

/// Delivers a staged message (in publish order) and counts its outcome.
async fn deliver(delivery: &Delivery, step: Step) {
    let (source, outcome) = match step {
        Step::Staged(source, staged) => (source, outcome(&delivery.complete(staged).await)),
        Step::Done(source, outcome) => (source, outcome),
    };
    delivery.metrics().inc("herald_ingress_messages_total", &[("source", source.label()), ("outcome", outcome)]);
}

/// Decodes one message and, for a command, stages it (stores it when it is a stored emit).
async fn stage(
    driver: &ResilientDriver,
    delivery: &Delivery,
    limits: &Limits,
    source: Source,
    channel: String,
    payload: bytes::Bytes,
) -> Step {
    match source.decode(&channel, &payload, limits) {
        Ok(Decoded::Command(command)) => {
            let key = dedup_key(&channel, &payload);
            let dedup = Dedup { key: &key, listening_since_ms: driver.listening_since_ms() };
            let origin = Origin { scope: Scope::Local, source: source.label(), dedup: Some(dedup), nid: None, idempotency: None };
            Step::Staged(source, delivery.stage(command, origin).await)
        }
        Ok(Decoded::Ignored(why)) => {
            tracing::debug!(channel = %channel, why, "ingress message ignored");
            Step::Done(source, "ignored")
        }
        Err(e) => {
            tracing::warn!(channel = %truncate(&channel), error = %e, bytes = payload.len(), "malformed ingress message skipped");
            Step::Done(source, e.reason())
        }
    }
}

fn truncate(channel: &str) -> &str {
    match channel.char_indices().nth(120) {
        Some((at, _)) => &channel[..at],
        None => channel,
    }
}

/// The dedup key of a message: its channel and bytes, hashed the same way on every instance.
fn dedup_key(channel: &str, payload: &[u8]) -> String {
    format!("{:016x}", fnv1a(channel.as_bytes(), fnv1a(payload, 0xcbf2_9ce4_8422_2325)))
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
    fn dedup_keys_depend_on_channel_and_bytes() {
        assert_eq!(dedup_key("notify:user:1", b"{}"), dedup_key("notify:user:1", b"{}"));
        assert_ne!(dedup_key("notify:user:1", b"{}"), dedup_key("notify:user:2", b"{}"));
        assert_ne!(dedup_key("notify:user:1", b"{}"), dedup_key("notify:user:1", b"{ }"));
    }
}
