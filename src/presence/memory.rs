//! Presence of the embedded default: one instance, so the counts live in its memory.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use futures_util::future::BoxFuture;

use super::{Backend, Change, Changed, Member, Scope, UserPresence};
use crate::notification::now_ms;

pub struct MemoryPresence {
    grace: Duration,
    book: Mutex<Book>,
}

#[derive(Default)]
struct Book {
    entries: HashMap<(Scope, String), Entry>,
    /// Members of each presence room, by the time they came in, for paging in a stable order.
    rooms: HashMap<Scope, BTreeMap<(u64, String), ()>>,
}

#[derive(Default)]
struct Entry {
    sockets: u64,
    devices: HashMap<String, u64>,
    since: u64,
    /// The last socket went away: offline at this time (unix ms) unless one comes back.
    leaving_at: Option<u64>,
}

impl MemoryPresence {
    pub fn new(grace: Duration) -> MemoryPresence {
        MemoryPresence { grace, book: Mutex::default() }
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn change_now(&self, change: &Change, now: u64) -> Changed {
        let mut book = self.book();
        let key = (change.scope.clone(), change.user.clone());
        if change.delta > 0 && change.max > 0 && book.entries.get(&key).is_some_and(|e| e.sockets >= change.max) {
            return Changed { refused: true, came_online: false };
        }
        let existed = book.entries.contains_key(&key);
        let entry = book.entries.entry(key.clone()).or_insert_with(|| Entry { since: now, ..Entry::default() });
        entry.sockets = (entry.sockets as i64 + change.delta).max(0) as u64;
        if let Some(device) = &change.device {
            let n = entry.devices.entry(device.clone()).or_default();
            *n = (*n as i64 + change.delta).max(0) as u64;
            if *n == 0 {
                entry.devices.remove(device);
            }
        }
        let mut came_online = false;
        if change.delta > 0 {
            entry.leaving_at = None;
            came_online = !existed;
        } else if entry.sockets == 0 && entry.leaving_at.is_none() {
            entry.leaving_at = Some(now + self.grace.as_millis() as u64);
        }
        let since = entry.since;
        if !existed && change.delta <= 0 {
            book.entries.remove(&key); // nothing to take away
        } else if came_online && matches!(change.scope, Scope::Room { .. }) {
            book.rooms.entry(change.scope.clone()).or_default().insert((since, change.user.clone()), ());
        }
        Changed { refused: false, came_online }
    }

    fn due_now(&self, now: u64) -> Vec<(Scope, String)> {
        let mut book = self.book();
        let gone: Vec<(Scope, String)> =
            book.entries.iter().filter(|(_, e)| e.leaving_at.is_some_and(|at| at <= now)).map(|(k, _)| k.clone()).collect();
        for key in &gone {
            if let Some(entry) = book.entries.remove(key) {
                if let Some(members) = book.rooms.get_mut(&key.0) {
                    members.remove(&(entry.since, key.1.clone()));
                    if members.is_empty() {
                        book.rooms.remove(&key.0);
                    }
                }
            }
        }
        gone
    }
}

impl Backend for MemoryPresence {
    fn change<'a>(&'a self, change: &'a Change) -> BoxFuture<'a, Result<Changed, String>> {
        Box::pin(async move { Ok(self.change_now(change, now_ms())) })
    }

    fn due(&self, now: u64) -> BoxFuture<'_, Result<Vec<(Scope, String)>, String>> {
        Box::pin(async move { Ok(self.due_now(now)) })
    }

    fn maintain<'a>(&'a self, _rewrite: Option<&'a [Change]>) -> BoxFuture<'a, Result<bool, String>> {
        // Nothing is ever lost: the counts live in this process.
        Box::pin(async { Ok(false) })
    }

    fn user<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<UserPresence, String>> {
        Box::pin(async move {
            let book = self.book();
            Ok(match book.entries.get(&(Scope::User, user.to_string())) {
                None => UserPresence { user: user.into(), ..Default::default() },
                Some(e) => UserPresence {
                    user: user.into(),
                    online: true,
                    sockets: e.sockets,
                    since_ms: Some(e.since),
                    devices: e.devices.clone(),
                },
            })
        })
    }

    fn online<'a>(&'a self, users: &'a [String]) -> BoxFuture<'a, Result<Vec<bool>, String>> {
        Box::pin(async move {
            let book = self.book();
            Ok(users.iter().map(|u| book.entries.contains_key(&(Scope::User, u.clone()))).collect())
        })
    }

    fn room<'a>(&'a self, scope: &'a Scope, offset: usize, limit: usize) -> BoxFuture<'a, Result<(u64, Vec<Member>), String>> {
        Box::pin(async move {
            let book = self.book();
            let Some(members) = book.rooms.get(scope) else { return Ok((0, vec![])) };
            let page = members.keys().skip(offset).take(limit).map(|(since, user)| Member { user: user.clone(), since_ms: *since }).collect();
            Ok((members.len() as u64, page))
        })
    }

    fn online_count(&self) -> BoxFuture<'_, Result<u64, String>> {
        Box::pin(async move { Ok(self.book().entries.keys().filter(|(s, _)| *s == Scope::User).count() as u64) })
    }

    fn can_lose(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(user: &str, delta: i64) -> Change {
        Change { scope: Scope::User, user: user.into(), delta, device: Some("web".into()), max: 2 }
    }

    #[test]
    fn a_reload_within_the_grace_is_not_an_offline_online_pair() {
        let presence = MemoryPresence::new(Duration::from_secs(5));
        assert!(presence.change_now(&change("u", 1), 1000).came_online);
        assert!(!presence.change_now(&change("u", 1), 1001).came_online, "a second tab");
        presence.change_now(&change("u", -1), 2000);
        presence.change_now(&change("u", -1), 2000);
        assert!(presence.due_now(6999).is_empty(), "still within the grace");
        assert!(!presence.change_now(&change("u", 1), 6000).came_online, "the reload came back in time");
        presence.change_now(&change("u", -1), 8000);
        assert!(presence.due_now(12_999).is_empty());
        assert_eq!(presence.due_now(13_000), vec![(Scope::User, "u".to_string())]);
        assert!(presence.due_now(20_000).is_empty(), "announced once");
        assert!(presence.change_now(&change("u", 1), 21_000).came_online);
    }

    #[test]
    fn the_per_user_limit_counts_every_socket() {
        let presence = MemoryPresence::new(Duration::from_secs(5));
        assert!(!presence.change_now(&change("u", 1), 1).refused);
        assert!(!presence.change_now(&change("u", 1), 1).refused);
        assert!(presence.change_now(&change("u", 1), 1).refused);
    }

    #[tokio::test]
    async fn rooms_list_their_members_in_arrival_order() {
        let presence = MemoryPresence::new(Duration::from_secs(0));
        let room = Scope::Room { namespace: "/".into(), room: "team".into() };
        for (user, at) in [("b", 1), ("a", 2), ("c", 3)] {
            presence.change_now(&Change { scope: room.clone(), user: user.into(), delta: 1, device: None, max: 0 }, at);
        }
        let (count, page) = presence.room(&room, 1, 5).await.unwrap();
        assert_eq!(count, 3);
        assert_eq!(page.iter().map(|m| m.user.as_str()).collect::<Vec<_>>(), vec!["a", "c"]);
        presence.change_now(&Change { scope: room.clone(), user: "a".into(), delta: -1, device: None, max: 0 }, 4);
        assert_eq!(presence.due_now(4), vec![(room.clone(), "a".to_string())]);
        assert_eq!(presence.room(&room, 0, 5).await.unwrap().0, 2);
    }
}
