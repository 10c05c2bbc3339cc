//! This instance's plain WebSocket sockets, by room: what the delivery path applies commands to
//! next to socketioxide's sockets (see `delivery::Transports`).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use serde::Serialize;
use tokio::sync::{mpsc, Notify};

use crate::delivery::{Command, Target};
use crate::notification::EVENT;
use crate::payload::{Args, Value};

/// Close codes of the plain endpoint (README "Plain WebSocket clients").
pub mod close {
    /// The server shuts down.
    pub const GOING_AWAY: u16 = 1001;
    /// A binary frame: the endpoint speaks JSON text frames only.
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// A frame larger than `socketio.max_payload_bytes`.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// `POST /api/v1/users/<id>/disconnect`, a backend's disconnect, or the socket was replaced.
    pub const DISCONNECTED: u16 = 4000;
    pub const MISSING_TOKEN: u16 = 4001;
    pub const INVALID_TOKEN: u16 = 4002;
    pub const TOKEN_EXPIRED: u16 = 4003;
    /// Connects per IP, or a socket that kept flooding events.
    pub const RATE_LIMITED: u16 = 4008;
    /// No WebSocket pong (nor any frame) within the heartbeat window.
    pub const HEARTBEAT_TIMEOUT: u16 = 4009;
    pub const TOO_MANY_CONNECTIONS: u16 = 4029;
    pub const SERVER_FULL: u16 = 4503;
}

/// What the connection's task is asked to send.
#[derive(Debug, Clone, PartialEq)]
pub enum Out {
    Frame(String),
}

/// One plain socket, as the registry and its connection's task share it.
pub struct Plain {
    pub sid: String,
    pub namespace: String,
    tx: mpsc::Sender<Out>,
    close: Mutex<Option<(u16, String)>>,
    closing: Notify,
    open: AtomicBool,
}

impl Plain {
    /// A socket and the receiving end of its outgoing queue (`capacity` frames).
    pub fn new(sid: String, namespace: String, capacity: usize) -> (Arc<Plain>, mpsc::Receiver<Out>) {
        let (tx, rx) = mpsc::channel(capacity);
        let plain = Plain { sid, namespace, tx, close: Mutex::new(None), closing: Notify::new(), open: AtomicBool::new(true) };
        (Arc::new(plain), rx)
    }

    /// Queues a text frame; false when the socket is closed or its queue is full.
    pub fn send(&self, frame: String) -> bool {
        self.is_open() && self.tx.try_send(Out::Frame(frame)).is_ok()
    }

    /// Asks the connection's task to close with `code` and `reason` (the first request wins).
    pub fn close(&self, code: u16, reason: &str) {
        let mut close = self.close.lock().unwrap_or_else(|e| e.into_inner());
        if close.is_none() {
            *close = Some((code, reason.to_string()));
        }
        drop(close);
        self.closing.notify_one();
    }

    /// Resolves once [`close`](Self::close) was called: the code and reason asked for.
    pub async fn closed(&self) -> (u16, String) {
        loop {
            if let Some(close) = self.close.lock().unwrap_or_else(|e| e.into_inner()).clone() {
                return close;
            }
            self.closing.notified().await;
        }
    }

    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Relaxed) && self.close.lock().unwrap_or_else(|e| e.into_inner()).is_none()
    }

    pub fn mark_gone(&self) {
        self.open.store(false, Ordering::Relaxed);
    }
}

/// `{"type":"event","event":..,"args":[..]}`: how an event other than a one-argument
/// `notification` reaches a plain socket.
#[derive(Serialize)]
struct EventFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    event: &'a str,
    args: &'a [Value],
}

/// The text frame for an emit: a `notification`'s payload as it is, anything else wrapped.
pub fn frame(event: &str, args: &Args) -> String {
    let result = match args.0.as_slice() {
        [payload] if event == EVENT => serde_json::to_string(payload),
        all => serde_json::to_string(&EventFrame { kind: "event", event, args: all }),
    };
    result.unwrap_or_else(|e| format!("{{\"type\":\"error\",\"error\":{:?}}}", e.to_string()))
}

struct Entry {
    socket: Arc<Plain>,
    rooms: HashSet<String>,
}

#[derive(Default)]
struct Inner {
    sockets: HashMap<String, Entry>,
    rooms: HashMap<String, HashSet<String>>,
}

/// Every plain socket of this instance, and the rooms each is in.
#[derive(Default)]
pub struct Registry {
    inner: RwLock<Inner>,
}

impl Registry {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn insert(&self, socket: Arc<Plain>) {
        self.write().sockets.insert(socket.sid.clone(), Entry { socket, rooms: HashSet::new() });
    }

    /// Takes the socket out of the registry and its rooms; returns the rooms it was in.
    pub fn remove(&self, sid: &str) -> Vec<String> {
        let mut inner = self.write();
        let Some(entry) = inner.sockets.remove(sid) else { return vec![] };
        entry.socket.mark_gone();
        for room in &entry.rooms {
            leave_room(&mut inner.rooms, room, sid);
        }
        entry.rooms.into_iter().collect()
    }

    pub fn join(&self, sid: &str, rooms: &[String]) {
        let inner = &mut *self.write();
        let Some(entry) = inner.sockets.get_mut(sid) else { return };
        for room in rooms {
            if entry.rooms.insert(room.clone()) {
                inner.rooms.entry(room.clone()).or_default().insert(sid.to_string());
            }
        }
    }

    pub fn leave(&self, sid: &str, rooms: &[String]) {
        let inner = &mut *self.write();
        let Some(entry) = inner.sockets.get_mut(sid) else { return };
        for room in rooms {
            if entry.rooms.remove(room) {
                leave_room(&mut inner.rooms, room, sid);
            }
        }
    }

    pub fn rooms_of(&self, sid: &str) -> Vec<String> {
        self.read().sockets.get(sid).map(|e| e.rooms.iter().cloned().collect()).unwrap_or_default()
    }

    /// The sids of `namespace`'s plain sockets in `room`.
    pub fn members(&self, namespace: &str, room: &str) -> Vec<String> {
        let inner = self.read();
        let Some(sids) = inner.rooms.get(room) else { return vec![] };
        sids.iter().filter(|sid| inner.sockets.get(*sid).is_some_and(|e| e.socket.namespace == namespace)).cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.read().sockets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The sockets `target` designates: in any of its rooms (all of its namespace when it has
    /// none), in none of its exceptions.
    fn targets(&self, target: &Target) -> Vec<Arc<Plain>> {
        let inner = self.read();
        let reached =
            |entry: &Entry| entry.socket.namespace == target.namespace && !target.except.iter().any(|room| entry.rooms.contains(room));
        if target.rooms.is_empty() {
            return inner.sockets.values().filter(|e| reached(e)).map(|e| e.socket.clone()).collect();
        }
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for room in &target.rooms {
            for sid in inner.rooms.get(room).into_iter().flatten() {
                if !seen.insert(sid.as_str()) {
                    continue;
                }
                if let Some(entry) = inner.sockets.get(sid).filter(|e| reached(e)) {
                    out.push(entry.socket.clone());
                }
            }
        }
        out
    }

    /// Applies `command` to this instance's plain sockets; returns how many could not take
    /// the frame (closed, or their queue full).
    pub fn apply(&self, command: &Command) -> usize {
        let targets = self.targets(command.target());
        match command {
            Command::Emit { event, args, .. } => {
                if targets.is_empty() {
                    return 0;
                }
                let frame = frame(event, args);
                targets.iter().filter(|s| !s.send(frame.clone())).count()
            }
            Command::Join { rooms, .. } => {
                for socket in &targets {
                    self.join(&socket.sid, rooms);
                }
                0
            }
            Command::Leave { rooms, .. } => {
                for socket in &targets {
                    self.leave(&socket.sid, rooms);
                }
                0
            }
            Command::Disconnect { .. } => {
                for socket in &targets {
                    socket.close(close::DISCONNECTED, "disconnected by server");
                }
                0
            }
        }
    }

    /// Closes every plain socket (shutdown).
    pub fn close_all(&self, code: u16, reason: &str) {
        for entry in self.read().sockets.values() {
            entry.socket.close(code, reason);
        }
    }
}

fn leave_room(rooms: &mut HashMap<String, HashSet<String>>, room: &str, sid: &str) {
    if let Some(members) = rooms.get_mut(room) {
        members.remove(sid);
        if members.is_empty() {
            rooms.remove(room);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn socket(registry: &Registry, sid: &str, rooms: &[&str]) -> mpsc::Receiver<Out> {
        let (plain, rx) = Plain::new(sid.into(), "/".into(), 4);
        registry.insert(plain);
        registry.join(sid, &rooms.iter().map(|r| r.to_string()).collect::<Vec<_>>());
        rx
    }

    fn emit(rooms: &[&str], except: &[&str], event: &str, args: Args) -> Command {
        let target = Target {
            namespace: "/".into(),
            rooms: rooms.iter().map(|r| r.to_string()).collect(),
            except: except.iter().map(|r| r.to_string()).collect(),
        };
        Command::Emit { target, event: event.into(), args }
    }

    #[test]
    fn emits_reach_room_members_once_minus_exceptions() {
        let registry = Registry::default();
        let mut a = socket(&registry, "a", &["a", "user_1", "role_x"]);
        let mut b = socket(&registry, "b", &["b", "user_2", "role_x"]);
        let payload = Args::one(Value::Object(vec![("type".into(), "t".into()), ("message".into(), "m".into())]));
        assert_eq!(registry.apply(&emit(&["user_1", "role_x"], &["b"], EVENT, payload.clone())), 0);
        assert_eq!(a.try_recv().unwrap(), Out::Frame(r#"{"type":"t","message":"m"}"#.into()));
        assert!(a.try_recv().is_err(), "one copy for a socket in two target rooms");
        assert!(b.try_recv().is_err(), "excepted");
        let two = Args(vec![Value::Int(1), Value::from("x")]);
        registry.apply(&emit(&[], &[], "custom", two));
        assert_eq!(a.try_recv().unwrap(), Out::Frame(r#"{"type":"event","event":"custom","args":[1,"x"]}"#.into()));
        assert!(b.try_recv().is_ok());
        assert_eq!(registry.members("/", "role_x").len(), 2);
        assert_eq!(registry.remove("a").len(), 3);
        assert_eq!(registry.members("/", "role_x"), vec!["b".to_string()]);
        assert_eq!(registry.apply(&emit(&["user_1"], &[], EVENT, payload)), 0);
    }

    #[test]
    fn a_full_queue_counts_as_unreachable_and_disconnect_closes() {
        let registry = Registry::default();
        let _rx = socket(&registry, "a", &["r"]);
        for _ in 0..4 {
            assert_eq!(registry.apply(&emit(&["r"], &[], "e", Args::default())), 0);
        }
        assert_eq!(registry.apply(&emit(&["r"], &[], "e", Args::default())), 1);
        registry.apply(&Command::Disconnect { target: Target::rooms("/", vec!["r".into()]) });
        let plain = registry.targets(&Target::rooms("/", vec!["r".into()])).remove(0);
        assert!(!plain.is_open());
        let closed = futures_util::FutureExt::now_or_never(plain.closed());
        assert_eq!(closed, Some((close::DISCONNECTED, "disconnected by server".into())));
    }
}
