//! Sends webhook calls: signed, retried with backoff, bounded.
//!
//! Every call is a POST of one JSON event to one configured URL (never anywhere else: redirects
//! are not followed) with these headers:
//! - `Herald-Event`: the event type; `Herald-Event-Id`: the event's id (the same on every retry,
//!   so a receiver can ignore one it already handled);
//! - `Herald-Timestamp`: unix seconds when this attempt was signed;
//! - `Herald-Signature`: `v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
//!
//! A 2xx answer ends the call. A 5xx answer, a timeout or a connection error is retried after
//! 1 s, 2 s, 4 s, ... (at most a minute apart) up to `webhooks.max_attempts`; any other answer
//! (4xx, 3xx) is final. At most `webhooks.max_queue` calls wait (retries included): beyond it new
//! ones are dropped. Every outcome is counted in `herald_webhook_calls_total{outcome}`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::{Notify, Semaphore};

use crate::configuration::WebhookSettings;
use crate::metrics::Metrics;

/// Calls in flight at once.
const CONCURRENCY: usize = 16;
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The signature of `body` signed at `timestamp`, as in the `Herald-Signature` header.
pub fn signature(secret: &str, timestamp: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    let mut hex = String::with_capacity(3 + bytes.len() * 2);
    hex.push_str("v1=");
    for b in bytes {
        hex.push_str(&format!("{b:02x}"));
    }
    hex
}

/// One event for one URL.
#[derive(Debug, Clone)]
struct Call {
    url: Arc<str>,
    kind: &'static str,
    id: Arc<str>,
    body: Arc<[u8]>,
    attempt: u32,
    not_before: Instant,
}

pub struct Sender {
    settings: WebhookSettings,
    client: reqwest::Client,
    queue: Mutex<VecDeque<Call>>,
    /// Calls taken from the queue and not finished (they may come back as retries).
    in_flight: std::sync::atomic::AtomicUsize,
    wake: Notify,
    metrics: Arc<Metrics>,
}

impl Sender {
    pub fn new(settings: &WebhookSettings, metrics: Arc<Metrics>) -> anyhow::Result<Sender> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(settings.timeout_secs))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Sender {
            settings: settings.clone(),
            client,
            queue: Mutex::default(),
            in_flight: Default::default(),
            wake: Notify::new(),
            metrics,
        })
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Call>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Calls waiting or in flight.
    pub fn depth(&self) -> usize {
        self.queue().len() + self.in_flight.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Queues `body` (an event of type `kind` with id `id`) for every configured URL.
    pub fn send(&self, kind: &'static str, id: &str, body: Vec<u8>) {
        let body: Arc<[u8]> = body.into();
        let id: Arc<str> = id.into();
        for url in &self.settings.urls {
            if self.depth() >= self.settings.max_queue {
                self.metrics.inc("herald_webhook_calls_total", &[("outcome", "dropped_queue_full")]);
                tracing::warn!(event = kind, "webhook dropped: queue full (webhooks.max_queue)");
                continue;
            }
            let call = Call { url: url.as_str().into(), kind, id: id.clone(), body: body.clone(), attempt: 0, not_before: Instant::now() };
            self.queue().push_back(call);
        }
        self.wake.notify_one();
    }

    async fn attempt(&self, call: &Call) -> Result<(), (bool, String)> {
        let timestamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let response = self
            .client
            .post(&*call.url)
            .header("content-type", "application/json")
            .header("herald-event", call.kind)
            .header("herald-event-id", &*call.id)
            .header("herald-timestamp", timestamp.to_string())
            .header("herald-signature", signature(&self.settings.secret, timestamp, &call.body))
            .body(call.body.to_vec())
            .send()
            .await;
        match response {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) if r.status().is_server_error() => Err((true, format!("answered {}", r.status()))),
            Ok(r) => Err((false, format!("answered {}", r.status()))),
            Err(e) if e.is_timeout() => Err((true, "timed out".into())),
            Err(e) => Err((true, format!("unreachable: {e}"))),
        }
    }

    async fn finish(self: &Arc<Self>, mut call: Call) {
        let result = self.attempt(&call).await;
        let outcome = match result {
            Ok(()) => "delivered",
            Err((retry, reason)) => {
                call.attempt += 1;
                if retry && call.attempt < self.settings.max_attempts {
                    let backoff = Duration::from_secs(1u64 << (call.attempt - 1).min(6)).min(MAX_BACKOFF);
                    tracing::debug!(url = %call.url, event = call.kind, %reason, attempt = call.attempt, "webhook retried");
                    call.not_before = Instant::now() + backoff;
                    self.queue().push_back(call);
                    "retried"
                } else {
                    tracing::warn!(url = %call.url, event = call.kind, %reason, attempts = call.attempt, "webhook given up");
                    if retry {
                        "dropped_attempts"
                    } else {
                        "rejected"
                    }
                }
            }
        };
        self.metrics.inc("herald_webhook_calls_total", &[("outcome", outcome)]);
    }

    /// Sends queued calls as they are due, for as long as the server runs.
    pub async fn run(self: Arc<Self>) {
        let slots = Arc::new(Semaphore::new(CONCURRENCY));
        loop {
            let due = {
                let mut queue = self.queue();
                let now = Instant::now();
                let (due, wait): (VecDeque<Call>, VecDeque<Call>) = queue.drain(..).partition(|c| c.not_before <= now);
                *queue = wait;
                self.in_flight.fetch_add(due.len(), std::sync::atomic::Ordering::Relaxed);
                due
            };
            for call in due {
                let Ok(permit) = slots.clone().acquire_owned().await else { return };
                let sender = self.clone();
                tokio::spawn(async move {
                    sender.finish(call).await;
                    sender.in_flight.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                    drop(permit);
                });
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_dot_body() {
        // Computed with Python: hmac.new(b"s3cret", b"1700000000.{}", hashlib.sha256).hexdigest()
        assert_eq!(signature("s3cret", 1_700_000_000, b"{}"), "v1=97926816e98fbb41ccb1673225ff29a2f35369099990e1b1561651e7bd097ebf");
    }
}
