//! Redis reachability as seen by the cluster driver.
//!
//! Herald keeps serving its local sockets when Redis is gone; it only loses cross-node
//! delivery. Callers therefore need a cheap, non-blocking answer to "is Redis usable right
//! now?" (to fall back to local emits), and operators need one log line per outage rather
//! than one per failed message. This module owns both: the current [`RedisState`], a watch
//! channel to follow it, the outage counter, and the once-per-outage logging.

use std::fmt::Display;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::watch;

/// Whether the cluster driver currently has a working Redis connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisState {
    /// Subscriptions are live and publishing is expected to work.
    Up,
    /// Redis is unreachable (or not reached yet); the driver is reconnecting in the background.
    Down,
}

/// Tracks [`RedisState`] transitions for the driver's background task.
///
/// Only the background task changes the state; everyone else reads it.
#[derive(Debug)]
pub(crate) struct Reachability {
    state: watch::Sender<RedisState>,
    outages: AtomicU64,
    listening_since_ms: AtomicU64,
    /// When the last established connection was lost (unix ms; 0 before the first loss): the
    /// subscriptions had received everything published before then.
    lost_at_ms: AtomicU64,
    /// Set once the current period of unavailability has been logged, so that the retries that
    /// follow stay quiet.
    unavailability_logged: AtomicBool,
    /// Why the last connection attempt failed (cleared when one succeeds), for `/ready`.
    last_error: std::sync::Mutex<Option<String>>,
}

impl Reachability {
    /// Starts `Down`: nothing is reachable until the first connection succeeds.
    pub(crate) fn new() -> Self {
        Self {
            state: watch::Sender::new(RedisState::Down),
            outages: AtomicU64::new(0),
            listening_since_ms: AtomicU64::new(0),
            lost_at_ms: AtomicU64::new(0),
            unavailability_logged: AtomicBool::new(false),
            last_error: std::sync::Mutex::new(None),
        }
    }

    /// Why Redis is unreachable, as the last attempt failed (a wrong password, a certificate).
    pub(crate) fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn current(&self) -> RedisState {
        *self.state.borrow()
    }

    pub(crate) fn watch(&self) -> watch::Receiver<RedisState> {
        self.state.subscribe()
    }

    /// Number of times an established connection was lost (startup failures are not outages).
    pub(crate) fn outages(&self) -> u64 {
        self.outages.load(Ordering::Relaxed)
    }

    /// When the current subscriptions started to be set up (unix ms): nothing published before
    /// then reached them.
    pub(crate) fn listening_since_ms(&self) -> u64 {
        self.listening_since_ms.load(Ordering::Relaxed)
    }

    /// When the last established connection was lost (unix ms; 0 before the first loss).
    pub(crate) fn lost_at_ms(&self) -> u64 {
        self.lost_at_ms.load(Ordering::Relaxed)
    }

    /// Records that subscriptions are live again, set up from `opened_at_ms` on.
    pub(crate) fn mark_up(&self, addr: &str, opened_at_ms: u64) {
        self.listening_since_ms.store(opened_at_ms, Ordering::Relaxed);
        self.unavailability_logged.store(false, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let previous = self.state.send_replace(RedisState::Up);
        if previous == RedisState::Down {
            tracing::info!(redis = addr, "Redis connection established; cross-node delivery active");
        }
    }

    /// Records a lost connection or a failed connection attempt. Logs a warning only for the
    /// first failure of each period of unavailability.
    pub(crate) fn mark_down(&self, addr: &str, cause: &dyn Display) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(cause.to_string());
        let previous = self.state.send_replace(RedisState::Down);
        let already_logged = self.unavailability_logged.swap(true, Ordering::Relaxed);
        if previous == RedisState::Up {
            self.lost_at_ms.store(crate::notification::now_ms(), Ordering::Relaxed);
            let outage = self.outages.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::warn!(
                redis = addr,
                outage,
                %cause,
                "Redis connection lost; delivering locally only and reconnecting in the background"
            );
        } else if !already_logged {
            tracing::warn!(
                redis = addr,
                %cause,
                "Redis unreachable; delivering locally only and retrying in the background"
            );
        } else {
            tracing::debug!(redis = addr, %cause, "Redis still unreachable");
        }
    }

    /// Records that the driver stopped on purpose: `Down`, but neither an outage nor a warning.
    pub(crate) fn mark_stopped(&self) {
        self.state.send_replace(RedisState::Down);
    }
}
