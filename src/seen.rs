//! Where each user stopped: the seen mark from which an unchanged client (one that sends no
//! `auth.last_id`) is replayed what it missed (SPEC §7).
//!
//! The mark must not lag, or a user whose instance dies gets again what they already had; and it
//! must not run ahead of what reached them, or they miss something. So:
//! - while a user is connected here, their mark follows the stored notifications this instance
//!   has delivered, written every [`FLUSH_EVERY`] in one batch for the users they reached (all
//!   users here after an emit to a role, project or other shared room). It takes the
//!   largest id delivered as of the previous flush, so that a notification still on its way
//!   here (a relay a few milliseconds behind) is not skipped. If the instance dies, its users
//!   are replayed from at most two flushes before the loss.
//! - a clean disconnect moves the mark to now (when that write fails, in a disconnect storm or
//!   a Redis outage, the next flushes retry it);
//! - a lost connection (heartbeat timeout, transport error) moves it back to a heartbeat
//!   window (ping interval + timeout) before now, since what was sent to a dead socket in that
//!   window never arrived.
//!
//! Flushes and rewinds are serialized by one lock, and a flush reads the connected users under
//! it: a rewind is never overwritten by a flush that still counted the lost socket.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;

use crate::delivery::Reached;
use crate::replay::lagging_now;
use crate::state::AppState;
use crate::store::StreamId;

/// How often the marks of connected users are written.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct SeenMarks {
    book: Mutex<Book>,
}

#[derive(Default)]
struct Book {
    /// The largest id delivered here as of the previous flush, and who was reached before it.
    delivered_before: (StreamId, Reached),
    /// The mark last written for each connected user.
    written: HashMap<String, StreamId>,
    /// Marks of clean disconnects that could not be written at once (a disconnect storm or a
    /// Redis outage): retried with each flush.
    unwritten: HashMap<String, StreamId>,
    /// The last flush failed: the next failure is not logged again (an outage logs once).
    failing: bool,
}

impl SeenMarks {
    /// Writes the marks of the users connected here that moved since the last flush, and the
    /// clean-disconnect marks not written yet.
    async fn flush(&self, state: &AppState) {
        let mut book = self.book.lock().await;
        let (mark, reached) = std::mem::replace(&mut book.delivered_before, state.delivery.take_reached());
        let users: HashSet<String> = state.connections.users().into_iter().collect();
        book.written.retain(|user, _| users.contains(user));
        let mut marks: Vec<(String, StreamId)> = Vec::new();
        if mark != StreamId::default() {
            // Users nothing reached keep their mark, unless they have none from here yet.
            let moved = |user: &String| match book.written.get(user) {
                None => true,
                Some(written) => *written < mark && reached.includes(user),
            };
            marks.extend(users.into_iter().filter(moved).map(|user| (user, mark)));
        }
        let connected = marks.len();
        marks.extend(book.unwritten.iter().map(|(user, id)| (user.clone(), *id)));
        if marks.is_empty() {
            return;
        }
        match state.delivery.store().advance_seen(&marks).await {
            Ok(()) => {
                if std::mem::take(&mut book.failing) {
                    tracing::info!(users = marks.len(), "seen marks written again");
                }
                book.unwritten.clear();
                book.written.extend(marks.into_iter().take(connected));
            }
            Err(e) if !book.failing => {
                book.failing = true;
                tracing::warn!(error = %e, users = marks.len(), "seen marks not advanced; retried every second");
            }
            Err(e) => tracing::debug!(error = %e, users = marks.len(), "seen marks still not advanced"),
        }
    }

    /// A socket of `user` went away. `clean`: the client closed it (or the server did), so it
    /// had everything sent until now; otherwise it was lost and may have missed a heartbeat
    /// window's worth.
    pub async fn disconnected(&self, state: &AppState, user: &str, clean: bool) {
        let store = state.delivery.store();
        if clean {
            let mark = lagging_now(0);
            if let Err(e) = store.advance_seen(&[(user.to_string(), mark)]).await {
                tracing::debug!(error = %e, user, "seen mark not written; retried with the next flush");
                let mut book = self.book.lock().await;
                let queued = book.unwritten.entry(user.to_string()).or_insert(mark);
                *queued = (*queued).max(mark);
            }
            return;
        }
        let mut book = self.book.lock().await;
        if state.connections.of_user(user) > 0 {
            // Another socket of the user is still here: the user is online.
            return;
        }
        book.written.remove(user);
        book.unwritten.remove(user);
        let window = state.settings.socketio.heartbeat_window().as_millis() as u64;
        if let Err(e) = store.rewind_seen(user, lagging_now(window)).await {
            tracing::warn!(error = %e, user, "seen mark not moved back");
        }
    }
}

/// Flushes the marks every [`FLUSH_EVERY`] for as long as the server runs.
pub async fn keep_marks(state: Arc<AppState>) {
    let mut ticker = tokio::time::interval(FLUSH_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        state.seen.flush(&state).await;
    }
}
