//! Webhooks to the backend: `notification.missed` (the hook for a push or e-mail fallback),
//! `user.online` and `user.offline` (issue: presence and webhooks).
//!
//! Where they come from on the delivery path:
//! - a notification stored for a user room (`user_<id>`, or a device room `user_<id>:<device>`)
//!   is seen here once, by the instance that stored it ([`crate::delivery::StoredListener`]).
//!   When the user is offline (no socket on any live instance, and not within the presence
//!   grace; for a device room: no socket on that device while other sockets are connected), it
//!   is added to the user's missed batch. With `webhooks.unread_after_secs`, a notification
//!   that reached the user is checked again that long after, and joins the batch when it is
//!   still unread;
//! - presence transitions of users ([`crate::presence::Listener`]), decided once per cluster.
//!
//! Missed notifications of one user within `webhooks.batch_window_ms` go in one call
//! ([`pending`]); calls are signed, retried and bounded ([`sender`]). The event body:
//!
//! ```json
//! {"id": "<uuid>", "type": "notification.missed", "created_at": "<RFC 3339>",
//!  "data": {"user": "42", "notifications": [{"reason": "offline", "notification": {...}}]}}
//! ```

pub mod pending;
pub mod sender;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value as Json};
use tokio::sync::mpsc;

use crate::auth::valid_device;
use crate::configuration::WebhookSettings;
use crate::delivery::{stamp_id, StoredListener};
use crate::metrics::Metrics;
use crate::notification::now_ms;
use crate::payload::{stored, Args};
use crate::presence::{Presence, Scope, Transition};
use crate::store::{Store, StreamId};
use pending::Pending;
use sender::Sender;

/// Stored notifications waiting for their presence check; beyond it they are dropped, counted.
const CHECK_QUEUE: usize = 10_000;
const TICK: Duration = Duration::from_millis(250);

/// A notification stored for one user (or one of their devices).
struct StoredFor {
    user: String,
    device: Option<String>,
    nid: StreamId,
    notification: Json,
}

pub struct Webhooks {
    settings: WebhookSettings,
    sender: Arc<Sender>,
    pending: Arc<dyn Pending>,
    presence: Arc<Presence>,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    checks: mpsc::Sender<StoredFor>,
    receiver: std::sync::Mutex<Option<mpsc::Receiver<StoredFor>>>,
}

impl Webhooks {
    pub fn new(
        settings: &WebhookSettings,
        pending: Arc<dyn Pending>,
        presence: Arc<Presence>,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Webhooks> {
        let (checks, receiver) = mpsc::channel(CHECK_QUEUE);
        Ok(Webhooks {
            settings: settings.clone(),
            sender: Arc::new(Sender::new(settings, metrics.clone())?),
            pending,
            presence,
            store,
            metrics,
            checks,
            receiver: std::sync::Mutex::new(Some(receiver)),
        })
    }

    /// Calls waiting or in flight (for `/metrics`).
    pub fn queue_depth(&self) -> usize {
        self.sender.depth()
    }

    fn event(&self, kind: &'static str, data: Json) {
        let id = uuid::Uuid::new_v4().to_string();
        let created_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let body = json!({ "id": id, "type": kind, "created_at": created_at, "data": data });
        self.metrics.inc("herald_webhook_events_total", &[("event", kind)]);
        self.sender.send(kind, &id, body.to_string().into_bytes());
    }

    /// Checks stored notifications against presence and sends due batches, for as long as the
    /// server runs.
    pub async fn run(self: Arc<Self>) {
        let Some(mut receiver) = self.receiver.lock().unwrap_or_else(|e| e.into_inner()).take() else { return };
        tokio::spawn(self.sender.clone().run());
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Vec::new();
        loop {
            tokio::select! {
                n = receiver.recv_many(&mut batch, 500) => {
                    if n == 0 {
                        return;
                    }
                    self.check(std::mem::take(&mut batch)).await;
                }
                _ = ticker.tick() => self.send_due().await,
            }
        }
    }

    /// Offline users' notifications join their missed batch; the others may be checked for
    /// being read later.
    async fn check(&self, stored: Vec<StoredFor>) {
        let users: Vec<String> = stored.iter().map(|s| s.user.clone()).collect();
        let online = match self.presence.online(&users).await {
            Ok(online) => online,
            Err(e) => {
                self.metrics.add("herald_webhook_calls_total", &[("outcome", "dropped_presence_unknown")], stored.len() as u64);
                tracing::warn!(error = %e, n = stored.len(), "missed-notification checks skipped: presence unavailable");
                return;
            }
        };
        let now = now_ms();
        for (item, online) in stored.into_iter().zip(online) {
            let mut missed = !online;
            if let (true, Some(device)) = (online, &item.device) {
                // Online elsewhere, but the device the notification was for has no socket.
                if let Ok(presence) = self.presence.user(&item.user).await {
                    missed = presence.sockets > 0 && presence.devices.get(device).copied().unwrap_or(0) == 0;
                }
            }
            if missed {
                self.add_missed(&item.user, "offline", item.notification).await;
            } else if self.settings.unread_after_secs > 0 {
                let entry = json!({ "user": item.user, "nid": item.nid.to_string(), "notification": item.notification });
                let due = now + self.settings.unread_after_secs * 1000;
                if let Err(e) = self.pending.schedule_unread(entry.to_string(), due).await {
                    tracing::debug!(error = %e, "unread check not scheduled");
                }
            }
        }
    }

    async fn add_missed(&self, user: &str, reason: &str, notification: Json) {
        let entry = json!({ "reason": reason, "notification": notification }).to_string();
        let due = now_ms() + self.settings.batch_window_ms;
        match self.pending.add_missed(user, entry, due, self.settings.max_batch).await {
            Ok(false) => {}
            Ok(true) => self.metrics.inc("herald_webhook_calls_total", &[("outcome", "dropped_batch_full")]),
            Err(e) => {
                self.metrics.inc("herald_webhook_calls_total", &[("outcome", "dropped_redis_down")]);
                tracing::warn!(error = %e, user, "missed notification not recorded for the webhook");
            }
        }
    }

    async fn send_due(&self) {
        let now = now_ms();
        match self.pending.take_unread(now).await {
            Ok(entries) => {
                for entry in entries {
                    self.check_unread(&entry).await;
                }
            }
            Err(e) => tracing::debug!(error = %e, "unread checks not taken"),
        }
        match self.pending.take_missed(now).await {
            Ok(batches) => {
                for (user, entries) in batches {
                    let notifications: Vec<Json> = entries.iter().filter_map(|e| serde_json::from_str(e).ok()).collect();
                    self.event("notification.missed", json!({ "user": user, "notifications": notifications }));
                }
            }
            Err(e) => tracing::debug!(error = %e, "missed batches not taken"),
        }
    }

    async fn check_unread(&self, entry: &str) {
        let Ok(entry) = serde_json::from_str::<Json>(entry) else { return };
        let (Some(user), Some(nid)) = (entry["user"].as_str(), entry["nid"].as_str().and_then(|n| n.parse::<StreamId>().ok())) else {
            return;
        };
        match self.store.read_state(user).await {
            Ok(read) if read.up_to.is_some_and(|up_to| up_to >= nid) || read.ids.contains(&nid) => {}
            Ok(_) => self.add_missed(user, "unread", entry["notification"].clone()).await,
            Err(e) => tracing::debug!(error = %e, user, "read state unavailable: unread check skipped"),
        }
    }
}

/// The user (and device) a stored stream belongs to: `user_<id>` or `user_<id>:<device>`.
fn recipient(stream: &str) -> Option<(String, Option<String>)> {
    let user = stream.strip_prefix("user_")?;
    match user.rsplit_once(':') {
        Some((user, device)) if valid_device(device) && !user.is_empty() => Some((user.to_string(), Some(device.to_string()))),
        _ => Some((user.to_string(), None)),
    }
}

impl StoredListener for Webhooks {
    fn stored(&self, streams: &[String], nid: StreamId, args: &Args) {
        if !self.settings.sends("notification.missed") {
            return;
        }
        let recipients: Vec<(String, Option<String>)> = streams.iter().filter_map(|s| recipient(s)).collect();
        if recipients.is_empty() {
            return;
        }
        let mut args = args.clone();
        stamp_id(&mut args, nid);
        let notification = serde_json::from_str::<Json>(&stored::encode(&args))
            .ok()
            .and_then(|mut a| a.as_array_mut().filter(|a| !a.is_empty()).map(|a| a.remove(0)))
            .unwrap_or(Json::Null);
        for (user, device) in recipients {
            let item = StoredFor { user, device, nid, notification: notification.clone() };
            if self.checks.try_send(item).is_err() {
                self.metrics.inc("herald_webhook_calls_total", &[("outcome", "dropped_check_queue_full")]);
            }
        }
    }
}

impl crate::presence::Listener for Webhooks {
    fn transition(&self, transition: &Transition) {
        match transition {
            Transition::Online { scope: Scope::User, user } if self.settings.sends("user.online") => {
                self.event("user.online", json!({ "user": user }))
            }
            Transition::Offline { scope: Scope::User, user } if self.settings.sends("user.offline") => {
                self.event("user.offline", json!({ "user": user }))
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_name_their_recipients() {
        assert_eq!(recipient("user_42"), Some(("42".into(), None)));
        assert_eq!(recipient("user_42:mobile"), Some(("42".into(), Some("mobile".into()))));
        assert_eq!(recipient("role_admin"), None);
    }
}
