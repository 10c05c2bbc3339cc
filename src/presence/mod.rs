//! Who is online, cluster-wide, and the transitions platforms act on (issue: presence).
//!
//! A user is online while at least one socket of theirs is connected on a live instance; many
//! tabs and devices count once. The same holds per room for rooms matching `presence.rooms`: a
//! user is *in* such a room while a socket of theirs is. When the last socket goes away the user
//! stays online for `presence.grace_secs` (a reload, a quick reconnect): only when the grace ends
//! with no socket back do they go offline. So transitions are debounced where they are decided,
//! once for the whole cluster, and every consumer sees the same ones:
//!
//! - user online / offline → the `user.online` / `user.offline` webhooks ([`crate::webhooks`]);
//! - room join / leave → `presence:join` / `presence:leave` emitted to the room's members
//!   through the delivery path (an emit like any other, to every instance).
//!
//! Where the counts live is a [`Backend`]: in memory in the embedded default
//! ([`memory::MemoryPresence`]), in Redis with a cluster ([`redis::RedisPresence`]), where each
//! instance's contribution is its own hash field, changed atomically with the transition it
//! causes, so two instances never both announce one transition. An instance that dies is reaped
//! by the others (see `redis`): its users go offline after the grace, without any restart.
//!
//! The per-user socket count is also what `limits.max_connections_per_user` checks across
//! instances: the check and the count happen in one step.

pub mod memory;
pub mod redis;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::configuration::PresenceSettings;
use crate::delivery::{Command, Delivery, Origin, Scope as DeliveryScope, Target};
use crate::notification::now_ms;
use crate::payload::{Args, Value};
use crate::rooms::Pattern;

/// Events sent to a presence room's members.
pub const JOIN_EVENT: &str = "presence:join";
pub const LEAVE_EVENT: &str = "presence:leave";

/// Where a user's presence is counted: everywhere (the user), or one room of one namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    User,
    Room { namespace: String, room: String },
}

impl Scope {
    /// The scope's name in storage: `u`, or `r:<namespace>:<room>`.
    pub fn key(&self) -> String {
        match self {
            Scope::User => "u".into(),
            Scope::Room { namespace, room } => format!("r:{namespace}:{room}"),
        }
    }

    pub fn from_key(key: &str) -> Option<Scope> {
        if key == "u" {
            return Some(Scope::User);
        }
        let rest = key.strip_prefix("r:")?;
        // Namespaces start with '/' and contain no ':' in practice; rooms may contain ':'.
        let (namespace, room) = rest.split_once(':')?;
        Some(Scope::Room { namespace: namespace.into(), room: room.into() })
    }
}

/// One change of a user's sockets on this instance.
#[derive(Debug, Clone)]
pub struct Change {
    pub scope: Scope,
    pub user: String,
    /// +n sockets connected / joined, -n went away.
    pub delta: i64,
    /// The device of the sockets, if any (user scope only).
    pub device: Option<String>,
    /// Refuse an addition that would give the user more than this many sockets on live
    /// instances (user scope; 0: no limit).
    pub max: u64,
}

/// What a change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Changed {
    /// The addition would exceed `max`: nothing was changed.
    pub refused: bool,
    /// The user was not online (or in the room) and now is: announce it.
    pub came_online: bool,
}

/// A transition, decided once for the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    Online { scope: Scope, user: String },
    Offline { scope: Scope, user: String },
}

/// A user's presence as the HTTP API shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct UserPresence {
    pub user: String,
    /// Online: a socket connected, or the last one went away less than the grace ago.
    pub online: bool,
    /// Sockets connected now, on live instances.
    pub sockets: u64,
    /// When the user came online (unix ms), if online.
    pub since_ms: Option<u64>,
    /// Sockets per device, for sockets that named one.
    pub devices: HashMap<String, u64>,
}

/// A member of a presence room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Member {
    pub user: String,
    /// Since when (unix ms) the user is in the room.
    pub since_ms: u64,
}

/// Where presence is counted: in memory (one instance) or in Redis (a cluster).
pub trait Backend: Send + Sync + 'static {
    fn change<'a>(&'a self, change: &'a Change) -> BoxFuture<'a, Result<Changed, String>>;
    /// Ends the graces that are over: the users (scopes) that go offline now, each returned by
    /// exactly one instance.
    fn due(&self, now: u64) -> BoxFuture<'_, Result<Vec<(Scope, String)>, String>>;
    /// Periodic upkeep (every [`MAINTAIN_EVERY`]): say this instance is alive, reap dead ones.
    /// With `rewrite`, first replaces this instance's whole contribution by it. `Ok(true)`: the
    /// backend lost this instance's contribution (it was taken for dead): call again with it.
    fn maintain<'a>(&'a self, rewrite: Option<&'a [Change]>) -> BoxFuture<'a, Result<bool, String>>;
    fn user<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<UserPresence, String>>;
    /// Which of `users` are online (in order).
    fn online<'a>(&'a self, users: &'a [String]) -> BoxFuture<'a, Result<Vec<bool>, String>>;
    /// Members of a presence room: the total, and `limit` of them from `offset` (oldest first).
    fn room<'a>(&'a self, scope: &'a Scope, offset: usize, limit: usize) -> BoxFuture<'a, Result<(u64, Vec<Member>), String>>;
    /// Users online now, cluster-wide.
    fn online_count(&self) -> BoxFuture<'_, Result<u64, String>>;
    /// Whether the backend can lose this instance's part (Redis can: an outage, or this
    /// instance taken for dead), so that the service keeps a copy to write again.
    fn can_lose(&self) -> bool {
        true
    }
}

/// How often graces are checked and the backend maintained.
pub const TICK: Duration = Duration::from_millis(250);
pub const MAINTAIN_EVERY: Duration = Duration::from_secs(1);

/// The presence service every transport uses. Cheap to share (`Arc`).
pub struct Presence {
    backend: Arc<dyn Backend>,
    rooms: Vec<Pattern>,
    /// Keep `local` (only for a backend that can lose it).
    keep_local: bool,
    /// What this instance holds: (scope, user) → sockets, and sockets per device.
    local: Mutex<HashMap<(Scope, String), (u64, HashMap<String, u64>)>>,
    /// A change did not reach the backend: write everything again at the next upkeep.
    dirty: std::sync::atomic::AtomicBool,
    transitions: mpsc::UnboundedSender<Transition>,
    receiver: Mutex<Option<mpsc::UnboundedReceiver<Transition>>>,
}

/// Why a connection is refused by presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyConnections;

impl Presence {
    pub fn new(backend: Arc<dyn Backend>, settings: &PresenceSettings) -> Presence {
        let (transitions, receiver) = mpsc::unbounded_channel();
        Presence {
            keep_local: backend.can_lose(),
            backend,
            rooms: settings.rooms.iter().map(|p| Pattern::new(p)).collect(),
            local: Mutex::default(),
            dirty: Default::default(),
            transitions,
            receiver: Mutex::new(Some(receiver)),
        }
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Are there rooms with presence at all?
    pub fn has_rooms(&self) -> bool {
        !self.rooms.is_empty()
    }

    /// Does `room` have presence (`presence.rooms`)?
    pub fn tracks_room(&self, room: &str) -> bool {
        self.rooms.iter().any(|p| p.matches(room))
    }

    fn local(&self) -> std::sync::MutexGuard<'_, HashMap<(Scope, String), (u64, HashMap<String, u64>)>> {
        self.local.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn note_local(&self, change: &Change) {
        let mut local = self.local();
        let key = (change.scope.clone(), change.user.clone());
        let entry = local.entry(key.clone()).or_default();
        entry.0 = (entry.0 as i64 + change.delta).max(0) as u64;
        if let Some(device) = &change.device {
            let n = entry.1.entry(device.clone()).or_default();
            *n = (*n as i64 + change.delta).max(0) as u64;
            if *n == 0 {
                entry.1.remove(device);
            }
        }
        if entry.0 == 0 {
            local.remove(&key);
        }
    }

    async fn apply(&self, change: Change) -> Changed {
        let changed = match self.backend.change(&change).await {
            Ok(changed) => changed,
            Err(e) => {
                // Counted here anyway, and written again when the backend is back.
                if !self.dirty.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    tracing::warn!(error = %e, "presence not updated; written again when Redis is back");
                }
                Changed::default()
            }
        };
        if !changed.refused && self.keep_local {
            self.note_local(&change);
        }
        if changed.came_online {
            let _ = self.transitions.send(Transition::Online { scope: change.scope, user: change.user });
        }
        changed
    }

    /// A socket of `user` connects. `max`: `limits.max_connections_per_user` (checked across
    /// instances, where the count lives; 0: none).
    pub async fn connect(&self, user: &str, device: Option<&str>, max: u64) -> Result<(), TooManyConnections> {
        let change = Change { scope: Scope::User, user: user.into(), delta: 1, device: device.map(String::from), max };
        match self.apply(change).await.refused {
            true => Err(TooManyConnections),
            false => Ok(()),
        }
    }

    pub async fn disconnect(&self, user: &str, device: Option<&str>) {
        let change = Change { scope: Scope::User, user: user.into(), delta: -1, device: device.map(String::from), max: 0 };
        self.apply(change).await;
    }

    /// A socket of `user` entered `room` (only rooms with presence count).
    pub async fn enter(&self, namespace: &str, room: &str, user: &str) {
        if self.tracks_room(room) {
            let scope = Scope::Room { namespace: namespace.into(), room: room.into() };
            self.apply(Change { scope, user: user.into(), delta: 1, device: None, max: 0 }).await;
        }
    }

    pub async fn exit(&self, namespace: &str, room: &str, user: &str) {
        if self.tracks_room(room) {
            let scope = Scope::Room { namespace: namespace.into(), room: room.into() };
            self.apply(Change { scope, user: user.into(), delta: -1, device: None, max: 0 }).await;
        }
    }

    pub async fn user(&self, user: &str) -> Result<UserPresence, String> {
        self.backend.user(user).await
    }

    pub async fn online(&self, users: &[String]) -> Result<Vec<bool>, String> {
        self.backend.online(users).await
    }

    pub async fn room(&self, namespace: &str, room: &str, offset: usize, limit: usize) -> Result<(u64, Vec<Member>), String> {
        self.backend.room(&Scope::Room { namespace: namespace.into(), room: room.into() }, offset, limit).await
    }

    /// What this instance holds, as additions (for a backend that lost it).
    fn local_changes(&self) -> Vec<Change> {
        let local = self.local();
        let mut changes = Vec::new();
        for ((scope, user), (sockets, devices)) in local.iter() {
            let on_devices: u64 = devices.values().sum();
            for (device, n) in devices {
                changes.push(Change { scope: scope.clone(), user: user.clone(), delta: *n as i64, device: Some(device.clone()), max: 0 });
            }
            if *sockets > on_devices {
                changes.push(Change { scope: scope.clone(), user: user.clone(), delta: (*sockets - on_devices) as i64, device: None, max: 0 });
            }
        }
        changes
    }

    /// The transitions: one receiver, taken by [`run`].
    fn take_receiver(&self) -> Option<mpsc::UnboundedReceiver<Transition>> {
        self.receiver.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// Who hears about transitions besides room members: the webhooks.
pub trait Listener: Send + Sync + 'static {
    fn transition(&self, transition: &Transition);
}

/// Ends graces, maintains the backend and announces transitions, for as long as the server runs.
pub async fn run(presence: Arc<Presence>, delivery: Delivery, listener: Option<Arc<dyn Listener>>) {
    let Some(mut receiver) = presence.take_receiver() else { return };
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_maintain = std::time::Instant::now() - MAINTAIN_EVERY;
    loop {
        tokio::select! {
            transition = receiver.recv() => {
                let Some(transition) = transition else { return };
                announce(&delivery, listener.as_deref(), transition).await;
            }
            _ = ticker.tick() => {
                if last_maintain.elapsed() >= MAINTAIN_EVERY {
                    last_maintain = std::time::Instant::now();
                    maintain(&presence).await;
                }
                match presence.backend.due(now_ms()).await {
                    Ok(due) => {
                        for (scope, user) in due {
                            announce(&delivery, listener.as_deref(), Transition::Offline { scope, user }).await;
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "presence graces not checked"),
                }
            }
        }
    }
}

/// Upkeep; after lost changes (or when the backend lost this instance's part: it was taken
/// for dead), the backend is given this instance's whole contribution to write again.
async fn maintain(presence: &Presence) {
    use std::sync::atomic::Ordering::Relaxed;
    let dirty = presence.dirty.swap(false, Relaxed);
    let local = dirty.then(|| presence.local_changes());
    match presence.backend.maintain(local.as_deref()).await {
        Ok(lost) => {
            if lost {
                presence.dirty.store(true, Relaxed);
            } else if dirty {
                tracing::info!("presence written again");
            }
        }
        Err(e) => {
            presence.dirty.store(dirty || presence.dirty.load(Relaxed), Relaxed);
            tracing::debug!(error = %e, "presence upkeep failed");
        }
    }
}

async fn announce(delivery: &Delivery, listener: Option<&dyn Listener>, transition: Transition) {
    tracing::debug!(?transition, "presence");
    let kind = match &transition {
        Transition::Online { scope: Scope::User, .. } => "online",
        Transition::Offline { scope: Scope::User, .. } => "offline",
        Transition::Online { .. } => "join",
        Transition::Offline { .. } => "leave",
    };
    delivery.metrics().inc("herald_presence_transitions_total", &[("kind", kind)]);
    match &transition {
        Transition::Online { scope: Scope::Room { namespace, room }, user } => room_event(delivery, namespace, room, user, JOIN_EVENT).await,
        Transition::Offline { scope: Scope::Room { namespace, room }, user } => room_event(delivery, namespace, room, user, LEAVE_EVENT).await,
        _ => {}
    }
    if let Some(listener) = listener {
        listener.transition(&transition);
    }
}

/// `presence:join` / `presence:leave` `{"room", "user"}` to the room's members, on every instance.
async fn room_event(delivery: &Delivery, namespace: &str, room: &str, user: &str, event: &str) {
    let body = Value::Object(vec![("room".into(), Value::String(room.into())), ("user".into(), Value::String(user.into()))]);
    let command = Command::Emit { target: Target::rooms(namespace, vec![room.to_string()]), event: event.into(), args: Args(vec![body]) };
    let origin = Origin { scope: DeliveryScope::Cluster, source: "presence", dedup: None, nid: None, idempotency: None };
    if let Err(e) = delivery.apply(command, origin).await {
        tracing::debug!(error = %e, room, "presence event not sent");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_keys_round_trip() {
        for scope in [Scope::User, Scope::Room { namespace: "/".into(), room: "team:7".into() }] {
            assert_eq!(Scope::from_key(&scope.key()), Some(scope.clone()));
        }
        assert_eq!(Scope::from_key("x"), None);
    }
}
