//! Herald's `notification` payload, byte for byte in field order: `{type, message, data,
//! timestamp, priority, channel, id}` (`src/notification.rs`), framed once per room as the
//! Socket.IO event `42["notification",{…}]` and shared by every socket in that room. Ids are
//! Herald's shape, `<ms>-<seq>`.

use std::sync::Mutex;

use chrono::{SecondsFormat, Utc};
use serde_json::Value;

/// What a notification says, before it has a channel.
pub struct Body<'a> {
    pub kind: &'a str,
    pub message: &'a str,
    pub data: &'a Value,
    pub priority: u64,
}

impl Body<'_> {
    /// Reads `type`, `message`, `data`, `priority` from a JSON object (the API body or a Redis
    /// payload); `None` unless `type` and `message` are non-empty strings.
    pub fn from_json(v: &Value) -> Option<Body<'_>> {
        static EMPTY: Value = Value::Null;
        let kind = v.get("type")?.as_str().filter(|s| !s.is_empty())?;
        let message = v.get("message")?.as_str().filter(|s| !s.is_empty())?;
        let data = v.get("data").unwrap_or(&EMPTY);
        let priority = v.get("priority").and_then(Value::as_u64).unwrap_or(2);
        Some(Body { kind, message, data, priority })
    }

    /// The Socket.IO text frame for one channel.
    pub fn frame(&self, timestamp: &str, channel: &str, id: &str) -> String {
        let q = |s: &str| Value::from(s).to_string();
        let data = if self.data.is_null() { "{}".to_string() } else { self.data.to_string() };
        format!(
            "42[\"notification\",{{\"type\":{},\"message\":{},\"data\":{},\"timestamp\":\"{}\",\"priority\":{},\"channel\":{},\"id\":\"{}\"}}]",
            q(self.kind),
            q(self.message),
            data,
            timestamp,
            self.priority,
            q(channel),
            id
        )
    }
}

pub fn iso_now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// `<milliseconds>-<sequence within that millisecond>`, increasing.
#[derive(Default)]
pub struct Ids(Mutex<(u64, u64)>);

impl Ids {
    pub fn next(&self) -> String {
        let now = Utc::now().timestamp_millis().max(0) as u64;
        let mut last = self.0.lock().unwrap();
        if now > last.0 {
            *last = (now, 0);
        } else {
            last.1 += 1;
        }
        format!("{}-{}", last.0, last.1)
    }
}
