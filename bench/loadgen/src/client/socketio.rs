//! Socket.IO v5 framing on top of Engine.IO v4 message packets (`4…`): the CONNECT answer
//! (`40` / `44`), events (`42`: the welcome and every notification), the `room:join` ack (`43`).
//! The same state machine serves the WebSocket and the long-polling transport, which only differ
//! in how packets travel.

use std::sync::Mutex;

use serde_json::json;

use super::Ready;
use crate::worker::Agg;

pub fn packet_kind(text: &str) -> &str {
    text.get(..2).unwrap_or(text)
}

pub enum Phase {
    Handshake,
    AwaitJoin,
    Running,
}

/// Per-connection Socket.IO state. The CONNECT ack (`40`) and the welcome `notification` may come
/// in either order (python-socketio sends what the connect handler emits before its CONNECT ack).
pub struct ConnState {
    pub phase: Phase,
    pub connected: bool,
    pub welcomed: bool,
    pub join: Option<String>,
    pub ready: Option<Ready>,
}

impl ConnState {
    /// Reports a failure to connect (once: later failures of a connected socket are not
    /// connect failures).
    pub fn fail(&mut self, e: String) {
        if let Some(r) = self.ready.take() {
            let _ = r.send(Err(e));
        }
    }

    pub fn new(join: Option<String>, ready: Ready) -> ConnState {
        ConnState { phase: Phase::Handshake, connected: false, welcomed: false, join, ready: Some(ready) }
    }

    pub fn after_handshake(&mut self) -> Option<String> {
        if !(self.connected && self.welcomed) {
            return None;
        }
        if let Some(room) = &self.join {
            self.phase = Phase::AwaitJoin;
            return Some(format!("421[\"room:join\",{}]", json!(room)));
        }
        self.phase = Phase::Running;
        if let Some(r) = self.ready.take() {
            let _ = r.send(Ok(false));
        }
        None
    }

    /// Handles one Engine.IO message packet (`4` + Socket.IO packet); returns a packet to send
    /// back and whether to stop.
    pub fn on_socketio(&mut self, pkt: &str, agg: &Mutex<Agg>) -> (Option<String>, bool) {
        match packet_kind(pkt) {
            "40" => {
                if matches!(self.phase, Phase::Handshake) && !self.connected {
                    self.connected = true;
                    return (self.after_handshake(), false);
                }
                (None, false)
            }
            "44" => {
                if let Some(r) = self.ready.take() {
                    let _ = r.send(Err(format!("connect_error {}", pkt.get(2..).unwrap_or(""))));
                }
                (None, true)
            }
            "41" => (None, true),
            "42" => {
                if matches!(self.phase, Phase::Handshake) && !self.welcomed && pkt.contains("\"welcome\"") {
                    agg.lock().unwrap().welcome += 1;
                    self.welcomed = true;
                    return (self.after_handshake(), false);
                }
                agg.lock().unwrap().on_event(pkt);
                (None, false)
            }
            "43" => {
                if matches!(self.phase, Phase::AwaitJoin) {
                    self.phase = Phase::Running;
                    let ok = pkt.contains("true") && !pkt.contains("false");
                    if let Some(r) = self.ready.take() {
                        let _ = r.send(if ok { Ok(true) } else { Err(format!("join refused {pkt}")) });
                    }
                }
                (None, false)
            }
            _ => (None, false),
        }
    }
}
