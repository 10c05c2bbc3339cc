//! Who is in which room: room name → socket id → that socket's outbox (a bounded channel its
//! task drains into the WebSocket). An emit frames the message once and clones a reference to it
//! into each member's outbox; a full outbox (a socket that stopped reading) drops the message
//! and counts it, as Herald does (`herald_unreachable_sockets_total`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::RwLock;

use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// Messages waiting for one socket; the capacity of Herald's (socketioxide's) per-socket buffer.
pub const OUTBOX: usize = 128;
pub type Outbox = mpsc::Sender<Message>;

/// The room every socket is in: broadcasts go there.
pub const ALL: &str = "\0all";

#[derive(Default)]
pub struct Rooms {
    rooms: RwLock<HashMap<String, HashMap<u64, Outbox>>>,
    pub sockets: AtomicUsize,
    pub dropped: AtomicU64,
}

impl Rooms {
    pub fn join(&self, room: &str, socket: u64, outbox: &Outbox) {
        let mut rooms = self.rooms.write().unwrap();
        rooms.entry(room.to_string()).or_default().insert(socket, outbox.clone());
    }

    pub fn leave(&self, room: &str, socket: u64) {
        let mut rooms = self.rooms.write().unwrap();
        if let Some(members) = rooms.get_mut(room) {
            members.remove(&socket);
            if members.is_empty() {
                rooms.remove(room);
            }
        }
    }

    /// Sends one frame to every socket in `room`; returns how many got it.
    pub fn emit(&self, room: &str, frame: String) -> usize {
        let msg = Message::text(frame); // one buffer, reference-counted by every clone
        let rooms = self.rooms.read().unwrap();
        let Some(members) = rooms.get(room) else { return 0 };
        let mut sent = 0;
        for outbox in members.values() {
            match outbox.try_send(msg.clone()) {
                Ok(()) => sent += 1,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        sent
    }
}
