//! When each Socket.IO socket's token expires: one schedule for every socket of the instance.
//!
//! Why not a task per socket: a sleeping task and its future cost every connection about 400
//! bytes, and the task held the socket itself until its token's warning time, so that a socket
//! that disconnected stayed in memory for as long as its token had left (an hour, for a typical
//! token). Here a socket is an entry of two maps (under 100 bytes) from its connect (or
//! `auth:refresh`) to its disconnect; `socket::session` runs the one task that reads the
//! schedule and sends `auth:expiring`, `auth:expired` and the disconnect.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use socketioxide::socket::Sid;
use tokio::sync::mpsc;

/// What the schedule is told: a socket's (new) token, or that the socket went away.
#[derive(Debug)]
pub enum Change {
    Watch { sid: Sid, namespace: String, warn_at: u64, expires_at: u64 },
    Forget(Sid),
}

/// The handle every connect, refresh and disconnect uses; the schedule's task takes the
/// receiving end once ([`Expiries::take_changes`]).
pub struct Expiries {
    changes: mpsc::UnboundedSender<Change>,
    receiver: Mutex<Option<mpsc::UnboundedReceiver<Change>>>,
}

impl Default for Expiries {
    fn default() -> Self {
        let (changes, receiver) = mpsc::unbounded_channel();
        Expiries { changes, receiver: Mutex::new(Some(receiver)) }
    }
}

impl Expiries {
    /// Watches the socket's current token (replacing what was watched for it).
    pub fn watch(&self, sid: Sid, namespace: &str, warn_at: u64, expires_at: u64) {
        let _ = self.changes.send(Change::Watch { sid, namespace: namespace.to_string(), warn_at, expires_at });
    }

    /// The socket is gone: nothing to send it any more.
    pub fn forget(&self, sid: Sid) {
        let _ = self.changes.send(Change::Forget(sid));
    }

    /// The receiving end, for the task that runs the schedule (`None` once taken).
    pub fn take_changes(&self) -> Option<mpsc::UnboundedReceiver<Change>> {
        self.receiver.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// What is due for a socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Due {
    /// `auth:expiring`: the token expires at `expires_at` (unix seconds).
    Warn { sid: Sid, namespace: String, expires_at: u64 },
    /// `auth:expired` and the disconnect.
    Expire { sid: Sid, namespace: String },
}

#[derive(Debug)]
struct Watched {
    namespace: String,
    expires_at: u64,
    /// When its next step is due (its key in `Schedule::order`).
    next_at: u64,
    warned: bool,
}

/// The sockets watched, by sid and in the order their next step is due.
#[derive(Debug, Default)]
pub struct Schedule {
    sockets: HashMap<Sid, Watched>,
    order: BTreeSet<(u64, Sid)>,
}

impl Schedule {
    pub fn apply(&mut self, change: Change) {
        match change {
            Change::Watch { sid, namespace, warn_at, expires_at } => {
                self.forget(sid);
                self.order.insert((warn_at, sid));
                self.sockets.insert(sid, Watched { namespace, expires_at, next_at: warn_at, warned: false });
            }
            Change::Forget(sid) => self.forget(sid),
        }
    }

    fn forget(&mut self, sid: Sid) {
        if let Some(watched) = self.sockets.remove(&sid) {
            self.order.remove(&(watched.next_at, sid));
        }
    }

    /// When the next step is due (unix seconds), if any socket is watched.
    pub fn next_at(&self) -> Option<u64> {
        self.order.first().map(|(at, _)| *at)
    }

    /// The next step due at `now` or before: a warning moves the socket on to its expiry, an
    /// expiry ends its watch.
    pub fn pop_due(&mut self, now: u64) -> Option<Due> {
        let &(at, sid) = self.order.first().filter(|(at, _)| *at <= now)?;
        self.order.remove(&(at, sid));
        let watched = self.sockets.get_mut(&sid).expect("every scheduled socket is watched");
        if watched.warned {
            let watched = self.sockets.remove(&sid).expect("just found");
            return Some(Due::Expire { sid, namespace: watched.namespace });
        }
        watched.warned = true;
        watched.next_at = watched.expires_at;
        self.order.insert((watched.expires_at, sid));
        Some(Due::Warn { sid, namespace: watched.namespace.clone(), expires_at: watched.expires_at })
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.sockets.len()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watch(schedule: &mut Schedule, sid: Sid, warn_at: u64, expires_at: u64) {
        schedule.apply(Change::Watch { sid, namespace: "/".into(), warn_at, expires_at });
    }

    #[test]
    fn a_token_is_warned_then_expired_in_time_order() {
        let mut schedule = Schedule::default();
        let (a, b) = (Sid::new(), Sid::new());
        watch(&mut schedule, a, 100, 160);
        watch(&mut schedule, b, 90, 150);
        assert_eq!(schedule.next_at(), Some(90));
        assert_eq!(schedule.pop_due(89), None);
        assert_eq!(schedule.pop_due(120), Some(Due::Warn { sid: b, namespace: "/".into(), expires_at: 150 }));
        assert_eq!(schedule.pop_due(120), Some(Due::Warn { sid: a, namespace: "/".into(), expires_at: 160 }));
        assert_eq!(schedule.pop_due(120), None);
        assert_eq!(schedule.next_at(), Some(150));
        assert_eq!(schedule.pop_due(200), Some(Due::Expire { sid: b, namespace: "/".into() }));
        assert_eq!(schedule.pop_due(200), Some(Due::Expire { sid: a, namespace: "/".into() }));
        assert!(schedule.is_empty() && schedule.next_at().is_none());
    }

    #[test]
    fn a_refresh_replaces_the_watch_and_a_disconnect_ends_it() {
        let mut schedule = Schedule::default();
        let (a, b) = (Sid::new(), Sid::new());
        watch(&mut schedule, a, 100, 160);
        watch(&mut schedule, b, 100, 160);
        assert!(matches!(schedule.pop_due(100), Some(Due::Warn { .. })));
        // `a` (or `b`) was warned; both refresh: their old steps are gone.
        watch(&mut schedule, a, 1000, 1060);
        watch(&mut schedule, b, 1000, 1060);
        assert_eq!(schedule.len(), 2);
        assert_eq!(schedule.pop_due(999), None);
        schedule.apply(Change::Forget(b));
        assert_eq!(schedule.pop_due(2000), Some(Due::Warn { sid: a, namespace: "/".into(), expires_at: 1060 }));
        assert_eq!(schedule.pop_due(2000), Some(Due::Expire { sid: a, namespace: "/".into() }));
        assert_eq!(schedule.pop_due(2000), None);
        assert!(schedule.is_empty());
    }
}
