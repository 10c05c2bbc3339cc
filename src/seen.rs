//! Where each user stopped: the cursor from which an unchanged client (one that sends no
//! `auth.last_id`) is replayed what it missed (SPEC §7: "since its user was last online").
//!
//! A user is online while a socket of theirs is connected on a live instance. The store keeps,
//! per user, a session entry per instance (`sockets`, and `since`: what had reached the user
//! when their first socket there connected) and a seen mark (where they stood when their last
//! socket went away). Each instance also writes, every [`FLUSH_EVERY`], one *delivered mark*:
//! every stored notification up to it reached its sockets. Nothing is written per notification
//! or per recipient, so a broadcast to 10,000 connected users costs no mark writes at all.
//!
//! On connect, an unchanged client's cursor is:
//! - nothing to replay, when another socket of the user is connected on a live instance (a new
//!   tab or device of an online user gets nothing they already received);
//! - otherwise the largest of the seen mark and, for each instance that died holding sockets of
//!   the user, `max(since, that instance's delivered mark)`. Those entries are then folded into
//!   the seen mark. An instance that dies is known at once: it no longer subscribes to its
//!   channel in Redis (see `store::redis`).
//!
//! When a user's last socket on an instance goes away the entry ends, and the seen mark moves to
//! now less [`IN_FLIGHT`] (a clean close: what was on its way may not have arrived), or less the
//! heartbeat window (a lost connection: a dead socket may have missed that much). These are the
//! documented windows in which a notification may arrive twice rather than never.
//!
//! A socket that connects while its user is online elsewhere is replayed nothing; but the other
//! socket may be dead without anyone knowing yet (a lost connection is noticed within the
//! heartbeat window; a client may reconnect sooner, e.g. when a load balancer moves its polling
//! session). So the new socket is *watched* for a heartbeat window: if the other socket's loss is
//! noticed meanwhile, the new one is sent what was stored between that loss's mark and its own
//! connect ([`LateReplay`]): twice rather than never, within the documented window.
//!
//! Session writes do not wait on the store: they join a queue, in order, each with the count
//! this instance has at that moment (so a socket that goes away while its connect is still being
//! handled never leaves an entry behind), and the queue is written every [`WRITE_EVERY`] in one
//! transaction or pipeline. Writes that fail (a Redis outage) stay queued, folded to each user's
//! last state, and are retried.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;

use crate::cluster::driver::ResilientDriver;
use crate::cluster::redis_state::RedisState;
use crate::delivery::{stamp_id, Delivery};
use crate::limits::ConnectionCounts;
use crate::notification::now_ms;
use crate::store::{merged_range, SessionWrite, Store, StreamId};

/// How often the delivered mark is written and failed writes are retried.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// How long a stored notification may take from the store to every instance's sockets: what a
/// socket that closed may still have had on its way. With Redis, a relay through pub/sub (it
/// takes milliseconds; this leaves room for load).
pub const IN_FLIGHT: Duration = Duration::from_secs(1);

/// The same in the embedded default, where a notification is stored and applied in one call.
pub const IN_FLIGHT_EMBEDDED: Duration = Duration::from_millis(100);

/// How often queued session writes go to the store.
pub const WRITE_EVERY: Duration = Duration::from_millis(20);

pub struct SeenMarks {
    store: Arc<dyn Store>,
    node_id: String,
    heartbeat_window: Duration,
    in_flight: Duration,
    /// Cluster mode: the relay is only known to have delivered everything while its
    /// subscriptions are live (see [`Subscriptions`]).
    relay: Option<Arc<dyn Subscriptions>>,
    book: std::sync::Mutex<Book>,
    /// Serializes writers of the queue (the periodic writer, and callers that flush).
    writing: Mutex<()>,
}

#[derive(Default)]
struct Book {
    /// Users with sockets here: how many, and the `since` of their session entry.
    here: HashMap<String, (usize, StreamId)>,
    /// Session writes not written yet, in order.
    queue: Vec<SessionWrite>,
    /// The batch being written now: taken from the queue, not in the store yet.
    in_flight: Vec<SessionWrite>,
    /// The last flush failed: the next failure is not logged again (an outage logs once).
    failing: bool,
    /// Sockets that connected while their user was online, by user.
    watches: HashMap<String, Vec<Watch>>,
    /// Where the next flush's store checks of watched users begin.
    next_check: usize,
}

/// What the delivered mark needs to know of the subscriptions that bring stored notifications to
/// this instance (cluster mode: the relay, through the Redis driver).
pub trait Subscriptions: Send + Sync {
    /// Since when (unix ms) the subscriptions have been live without a break; `None` while they
    /// are not (Redis unreachable).
    fn live_since_ms(&self) -> Option<u64>;
    /// When the last break began (unix ms; 0: never): everything published before then had
    /// reached them.
    fn lost_at_ms(&self) -> u64;
}

impl Subscriptions for ResilientDriver {
    fn live_since_ms(&self) -> Option<u64> {
        (self.state() == RedisState::Up).then(|| self.listening_since_ms())
    }

    fn lost_at_ms(&self) -> u64 {
        ResilientDriver::lost_at_ms(self)
    }
}

/// How many watched users a flush checks in the store at most (the others wait their turn).
const CHECKS_PER_FLUSH: usize = 500;

/// What a socket that connected while its user was online elsewhere is sent when the other
/// socket turns out to have been lost: what was stored after `after` and up to `until` (its
/// own connect), to the socket `sid`.
#[derive(Debug, Clone, PartialEq)]
pub struct LateReplay {
    pub user: String,
    pub sid: String,
    pub namespace: String,
    pub streams: Vec<String>,
    pub after: StreamId,
    pub until: StreamId,
}

/// A socket that connected while its user was online: `late` holds what it would be sent.
struct Watch {
    late: LateReplay,
    /// The user was online on another instance (checked in the store), not only here.
    elsewhere: bool,
    until: std::time::Instant,
}

/// Where an unchanged client's replay starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cursor {
    /// Replay after this id (`None`: nothing, e.g. a user never seen before).
    From(Option<StreamId>),
    /// Nothing to replay: another socket of the user is connected, here or on another instance.
    Online { elsewhere: bool },
}

/// Whether a user has another socket on this instance, as `cursor` needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtherTabs {
    Here,
    NoneHere,
}

impl SeenMarks {
    pub fn new(store: Arc<dyn Store>, node_id: &str, heartbeat_window: Duration, relay: Option<Arc<dyn Subscriptions>>) -> SeenMarks {
        let in_flight = if relay.is_some() { IN_FLIGHT } else { IN_FLIGHT_EMBEDDED };
        SeenMarks {
            store,
            node_id: node_id.to_string(),
            heartbeat_window,
            in_flight,
            relay,
            book: Default::default(),
            writing: Mutex::new(()),
        }
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where replay starts for an unchanged client of `user` connecting here.
    pub async fn cursor(&self, user: &str, others: OtherTabs) -> Cursor {
        if others == OtherTabs::Here {
            return Cursor::Online { elsewhere: false };
        }
        // A session of the user that ended here moments ago may still wait in the queue, or be
        // on its way to the store. Looked at before the store is read: a write that leaves the
        // queue after this look is in the store when it is read.
        let queued = {
            let book = self.book();
            book.in_flight.iter().chain(book.queue.iter()).fold(None, |seen: Option<StreamId>, write| match write {
                SessionWrite::End { user: u, mark, .. } if u == user => seen.max(Some(*mark)),
                _ => seen,
            })
        };
        let sessions = match self.store.sessions(user).await {
            Ok(sessions) => sessions,
            Err(e) => {
                tracing::warn!(error = %e, user, "seen mark unavailable: no replay");
                return Cursor::From(None);
            }
        };
        let seen = sessions.seen.max(queued);
        let elsewhere: Vec<_> = sessions.nodes.iter().filter(|n| n.node != self.node_id).collect();
        if elsewhere.is_empty() {
            return Cursor::From(seen);
        }
        let names: Vec<String> = elsewhere.iter().map(|n| n.node.clone()).collect();
        let marks = match self.store.node_marks(&names).await {
            Ok(marks) => marks,
            Err(e) => {
                tracing::warn!(error = %e, user, "instances unknown: no replay");
                return Cursor::From(None);
            }
        };
        let mut cursor = seen;
        let mut dead = Vec::new();
        for (session, mark) in elsewhere.iter().zip(marks) {
            if mark.alive {
                if session.sockets > 0 {
                    return Cursor::Online { elsewhere: true };
                }
                continue;
            }
            let stood = session.since.max(mark.delivered.unwrap_or_default());
            cursor = cursor.max(Some(stood));
            dead.push((session.node.clone(), stood));
        }
        if !dead.is_empty() {
            let mut book = self.book();
            book.queue.extend(dead.into_iter().map(|(node, mark)| SessionWrite::End { user: user.to_string(), node, mark }));
        }
        Cursor::From(cursor)
    }

    /// Watches a socket that connected while its user was online (see the module doc).
    pub fn watch(&self, late: LateReplay, elsewhere: bool) {
        let until = std::time::Instant::now() + self.heartbeat_window + FLUSH_EVERY * 5;
        self.book().watches.entry(late.user.clone()).or_default().push(Watch { late, elsewhere, until });
    }

    /// The watched sockets of `user` that connected after `mark`: what they are to be sent.
    fn take_late(&self, user: &str, mark: StreamId, book: &mut Book) -> Vec<LateReplay> {
        let Some(watches) = book.watches.get_mut(user) else { return vec![] };
        let mut late = Vec::new();
        watches.retain(|w| {
            if w.late.until > mark {
                late.push(LateReplay { after: mark, ..w.late.clone() });
                return false;
            }
            true
        });
        if watches.is_empty() {
            book.watches.remove(user);
        }
        late
    }

    /// A socket of `user` connected here (and was counted in `counts`); everything up to
    /// `since` had reached the user.
    pub fn connected(&self, user: &str, counts: &ConnectionCounts, since: StreamId) {
        let mut book = self.book();
        let sockets = counts.of_user(user);
        if sockets == 0 {
            return; // it went away already, and its disconnect queued what was left
        }
        let entry = book.here.entry(user.to_string()).or_insert((sockets, since));
        entry.0 = sockets;
        let since = entry.1;
        book.queue.push(SessionWrite::Set { user: user.to_string(), node: self.node_id.clone(), sockets: sockets as u64, since });
    }

    /// A socket of `user` went away (and was uncounted from `counts`). `clean`: the client or
    /// the server closed it; otherwise it was lost (heartbeat timeout, transport error).
    ///
    /// Returns what watched sockets of the user here are to be sent: they connected while this
    /// one was still here, so they were replayed nothing, and this one may have missed the last
    /// [`IN_FLIGHT`] (a clean close) or heartbeat window (a lost connection).
    pub fn disconnected(&self, user: &str, counts: &ConnectionCounts, clean: bool) -> Vec<LateReplay> {
        let mut book = self.book();
        let sockets = counts.of_user(user);
        if sockets > 0 {
            // A socket that connected while this one was still here got nothing; this one may
            // not have received what was on its way (clean) or what it missed unnoticed (lost).
            let lag = if clean { self.in_flight } else { self.heartbeat_window };
            let late = self.take_late(user, StreamId::lagging(lag.as_millis() as u64), &mut book);
            if let Some(entry) = book.here.get_mut(user) {
                entry.0 = sockets;
                let since = entry.1;
                book.queue.push(SessionWrite::Set { user: user.to_string(), node: self.node_id.clone(), sockets: sockets as u64, since });
            }
            return late;
        }
        let lag = if clean { self.in_flight } else { self.heartbeat_window };
        let since = book.here.remove(user).map(|(_, since)| since);
        book.watches.remove(user);
        let mark = StreamId::lagging(lag.as_millis() as u64).max(since.unwrap_or_default());
        book.queue.push(SessionWrite::End { user: user.to_string(), node: self.node_id.clone(), mark });
        vec![]
    }

    /// Writes the queued session writes, in order; on failure they stay queued, folded.
    pub async fn write_queue(&self) -> Result<(), crate::store::StoreError> {
        let _writing = self.writing.lock().await;
        let batch = {
            let mut book = self.book();
            let batch = std::mem::take(&mut book.queue);
            book.in_flight.clone_from(&batch);
            batch
        };
        if batch.is_empty() {
            return Ok(());
        }
        let result = self.store.write_sessions(&batch).await;
        let mut book = self.book();
        book.in_flight.clear();
        if result.is_err() {
            let newer = std::mem::take(&mut book.queue);
            let mut all = batch;
            all.extend(newer);
            book.queue = fold(all);
        }
        result
    }

    /// Checks watched users online on other instances: when those sessions ended (the other
    /// socket went away) before this socket connected, returns what it is to be sent.
    async fn check_watches(&self) -> Vec<LateReplay> {
        let users: Vec<String> = {
            let mut book = self.book();
            let now = std::time::Instant::now();
            book.watches.retain(|_, watches| {
                watches.retain(|w| w.until > now);
                !watches.is_empty()
            });
            let mut users: Vec<String> =
                book.watches.iter().filter(|(_, w)| w.iter().any(|w| w.elsewhere)).map(|(u, _)| u.clone()).collect();
            users.sort();
            let start = book.next_check % users.len().max(1);
            users.rotate_left(start);
            users.truncate(CHECKS_PER_FLUSH);
            book.next_check = start + users.len();
            users
        };
        let mut late = Vec::new();
        for user in users {
            let Ok(sessions) = self.store.sessions(&user).await else { continue };
            let others: Vec<_> = sessions.nodes.iter().filter(|n| n.node != self.node_id && n.sockets > 0).collect();
            let names: Vec<String> = others.iter().map(|n| n.node.clone()).collect();
            let marks = match self.store.node_marks(&names).await {
                Ok(marks) => marks,
                Err(_) => continue,
            };
            if marks.iter().any(|m| m.alive) {
                continue;
            }
            // The sockets elsewhere went away: the seen mark says where the user stood, or, for
            // an instance that died holding them, what it had delivered (as in `cursor`).
            let mut mark = sessions.seen.unwrap_or_default();
            for (session, node) in others.iter().zip(&marks) {
                mark = mark.max(session.since.max(node.delivered.unwrap_or_default()));
            }
            let mut book = self.book();
            late.extend(self.take_late(&user, mark, &mut book));
            if let Some(watches) = book.watches.get_mut(&user) {
                watches.retain(|w| !w.elsewhere);
            }
        }
        late
    }

    /// What this instance can say it delivered at `now` (unix ms): every stored notification up
    /// to the mark reached its sockets. `None`: nothing yet.
    fn delivered_mark(&self, now: u64) -> Option<StreamId> {
        let lag = self.in_flight.as_millis() as u64;
        let delivered = StreamId::lagging_from(now, lag);
        let Some(relay) = &self.relay else { return Some(delivered) };
        match relay.live_since_ms() {
            // Live since before the mark: what was stored earlier arrived live, or, stored
            // during the last break, by the relay's catch-up at the start of these subscriptions.
            Some(since) if since < delivered.ms => Some(delivered),
            // Within a break, or just after one (the catch-up may still be running): what was
            // stored before the break began had arrived, and that much can still be said. (Not
            // writing any mark here froze it for two flushes or more after every reconnect, so an
            // instance that crashed soon after a Redis hiccup had its users replayed what it
            // delivered seconds before the crash.)
            _ => match relay.lost_at_ms() {
                0 => None,
                lost => Some(StreamId::lagging_from(lost.min(now), lag)),
            },
        }
    }

    /// Writes this instance's delivered mark and retries what failed.
    async fn flush(&self) {
        let mut failed = None;
        if let Some(delivered) = self.delivered_mark(now_ms()) {
            if let Err(e) = self.store.write_node_mark(&self.node_id, delivered).await {
                failed = Some(e);
            }
        }
        if let Err(e) = self.write_queue().await {
            failed.get_or_insert(e);
        }
        let mut book = self.book();
        match failed {
            None if std::mem::take(&mut book.failing) => tracing::info!("seen marks written again"),
            None => {}
            Some(e) if !book.failing => {
                book.failing = true;
                tracing::warn!(error = %e, "seen marks not written; retried every second");
            }
            Some(e) => tracing::debug!(error = %e, "seen marks still not written"),
        }
    }
}

/// Writes queued session writes every [`WRITE_EVERY`]; flushes the marks every [`FLUSH_EVERY`],
/// and sends watched sockets what they turn out to have missed, for as long as the server runs.
pub async fn keep_marks(seen: Arc<SeenMarks>, delivery: Delivery) {
    let mut ticker = tokio::time::interval(WRITE_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_flush = std::time::Instant::now();
    loop {
        ticker.tick().await;
        if last_flush.elapsed() >= FLUSH_EVERY {
            last_flush = std::time::Instant::now();
            seen.flush().await;
            for late in seen.check_watches().await {
                send_late(&delivery, &late).await;
            }
        } else if !seen.book().failing {
            // While the store fails, the queue waits for the next flush (logged once there).
            let _ = seen.write_queue().await;
        }
    }
}

/// The same writes, shortened to each user's end state on each node: for a user whose
/// sessions went away (and maybe came back), one `End` with the largest mark, then the last `Set`.
fn fold(writes: Vec<SessionWrite>) -> Vec<SessionWrite> {
    let mut ends: HashMap<(String, String), StreamId> = HashMap::new();
    let mut sets: HashMap<(String, String), SessionWrite> = HashMap::new();
    let mut order: Vec<(String, String)> = Vec::new();
    for write in writes {
        let key = match &write {
            SessionWrite::Set { user, node, .. } | SessionWrite::End { user, node, .. } => (user.clone(), node.clone()),
        };
        if !ends.contains_key(&key) && !sets.contains_key(&key) {
            order.push(key.clone());
        }
        match write {
            SessionWrite::End { mark, .. } => {
                let end = ends.entry(key.clone()).or_insert(mark);
                *end = (*end).max(mark);
                sets.remove(&key);
            }
            set => {
                sets.insert(key, set);
            }
        }
    }
    let mut folded = Vec::new();
    for key in order {
        if let Some(mark) = ends.remove(&key) {
            folded.push(SessionWrite::End { user: key.0.clone(), node: key.1.clone(), mark });
        }
        if let Some(set) = sets.remove(&key) {
            folded.push(set);
        }
    }
    folded
}

/// Sends a watched socket what it turns out to have missed (see [`LateReplay`]).
pub async fn send_late(delivery: &Delivery, late: &LateReplay) {
    let entries = match merged_range(delivery.store().as_ref(), &late.namespace, &late.streams, Some(late.after)).await {
        Ok(entries) => entries,
        Err(e) => {
            tracing::warn!(error = %e, sid = late.sid, "late replay skipped: store unavailable");
            return;
        }
    };
    let mut sent = 0;
    for entry in entries.into_iter().filter(|e| e.nid <= late.until) {
        let mut args = entry.args;
        stamp_id(&mut args, entry.nid);
        delivery.emit_to_socket(&late.namespace, &late.sid, &entry.event, args).await;
        sent += 1;
    }
    if sent > 0 {
        delivery.metrics().add("herald_replayed_total", &[], sent);
        tracing::debug!(sid = late.sid, user = late.user, sent, "late replay after another socket of the user was lost");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(user: &str, sockets: u64) -> SessionWrite {
        SessionWrite::Set { user: user.into(), node: "n".into(), sockets, since: StreamId::new(1, 0) }
    }

    fn end(user: &str, ms: u64) -> SessionWrite {
        SessionWrite::End { user: user.into(), node: "n".into(), mark: StreamId::new(ms, 0) }
    }

    #[test]
    fn failed_writes_fold_to_each_users_end_state() {
        let folded = fold(vec![set("a", 1), set("b", 1), set("a", 2), end("b", 5), end("a", 7), set("a", 1), end("b", 3)]);
        // a: went away (mark 7) and came back with one socket; b: gone, with the larger mark.
        assert_eq!(folded, vec![end("a", 7), set("a", 1), end("b", 5)]);
        assert_eq!(fold(vec![set("c", 1), set("c", 3)]), vec![set("c", 3)]);
    }

    #[tokio::test]
    async fn a_socket_gone_before_its_connect_is_recorded_leaves_no_entry() {
        let store: Arc<dyn Store> = Arc::new(crate::store::sqlite::SqliteStore::open(None, "n", 10, Duration::from_secs(60)).unwrap());
        let seen = SeenMarks::new(store.clone(), "n", Duration::from_secs(45), None);
        let counts = ConnectionCounts::default();
        let limits = crate::configuration::LimitSettings::default();
        counts.try_add(Some("u"), &limits).unwrap();
        counts.remove(Some("u"));
        assert!(seen.disconnected("u", &counts, true).is_empty());
        seen.connected("u", &counts, StreamId::new(1, 0)); // its connect handler finishes late
        seen.write_queue().await.unwrap();
        let sessions = store.sessions("u").await.unwrap();
        assert!(sessions.nodes.is_empty(), "{sessions:?}");
        assert!(sessions.seen.is_some(), "the clean disconnect's mark is written");
    }

    /// Subscriptions that were lost at `lost` and are live again since `since` (unix ms).
    struct Hiccup {
        since: Option<u64>,
        lost: u64,
    }

    impl Subscriptions for Hiccup {
        fn live_since_ms(&self) -> Option<u64> {
            self.since
        }
        fn lost_at_ms(&self) -> u64 {
            self.lost
        }
    }

    async fn mark_after_flush(relay: Hiccup) -> Option<StreamId> {
        let store: Arc<dyn Store> = Arc::new(crate::store::sqlite::SqliteStore::open(None, "n", 10, Duration::from_secs(60)).unwrap());
        let seen = SeenMarks::new(store.clone(), "n", Duration::from_secs(45), Some(Arc::new(relay)));
        seen.flush().await;
        store.node_marks(&["n".to_string()]).await.unwrap()[0].delivered
    }

    #[tokio::test]
    async fn the_delivered_mark_keeps_up_with_what_arrived_before_a_redis_hiccup() {
        let now = now_ms();
        // Live for a while: everything up to IN_FLIGHT ago.
        let mark = mark_after_flush(Hiccup { since: Some(now - 10_000), lost: 0 }).await.unwrap();
        let lag = IN_FLIGHT.as_millis() as u64;
        assert!(mark.ms + lag >= now && mark.ms + lag <= now_ms(), "{mark}: the flush's clock, IN_FLIGHT behind");
        // Never live yet: nothing can be said.
        assert_eq!(mark_after_flush(Hiccup { since: None, lost: 0 }).await, None);
        // Lost 3 s ago, live again for 200 ms (its catch-up may still run), or still down: what
        // had arrived before the loss (before, no mark at all until two flushes later, and an
        // instance dying meanwhile had its users replayed seconds it had delivered).
        for since in [Some(now - 200), None] {
            let mark = mark_after_flush(Hiccup { since, lost: now - 3_000 }).await;
            assert_eq!(mark, Some(StreamId::lagging_from(now - 3_000, IN_FLIGHT.as_millis() as u64)), "{since:?}");
        }
    }
}
