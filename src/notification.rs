//! The notification envelope Herald builds itself (SPEC §3 welcome, §5 API notifications).
//!
//! Flask-SocketIO services emitted `{type, message, data, timestamp}`; Herald keeps those fields
//! and adds `priority`, `channel` and `id` (the stored notification's id, stamped by the delivery
//! path).

use chrono::{SecondsFormat, Utc};

use crate::payload::Value;

pub const EVENT: &str = "notification";

/// Current time as ISO-8601 UTC with milliseconds, e.g. `2026-11-24T09:22:41.123Z`.
pub fn iso_now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub fn now_ms() -> u64 {
    Utc::now().timestamp_millis().max(0) as u64
}

/// A notification as the HTTP API describes it, before it has an id and a channel.
#[derive(Debug, Clone)]
pub struct Notification {
    pub kind: String,
    pub message: String,
    pub data: Value,
    pub priority: u8,
}

impl Notification {
    /// The envelope delivered to `channel` (the delivery path adds `id`).
    pub fn envelope(&self, timestamp: &str, channel: &str) -> Value {
        Value::Object(vec![
            ("type".into(), self.kind.clone().into()),
            ("message".into(), self.message.clone().into()),
            ("data".into(), self.data.clone()),
            ("timestamp".into(), timestamp.into()),
            ("priority".into(), Value::UInt(self.priority as u64)),
            ("channel".into(), channel.into()),
        ])
    }
}

/// The `notification` every socket receives right after connecting.
pub fn welcome(user_id: Option<&str>, sid: &str) -> Value {
    Value::Object(vec![
        ("type".into(), "welcome".into()),
        ("message".into(), "connected".into()),
        ("timestamp".into(), iso_now().into()),
        (
            "data".into(),
            Value::Object(vec![("user_id".into(), user_id.map(Value::from).unwrap_or(Value::Null)), ("sid".into(), sid.into())]),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_iso_utc() {
        let t = iso_now();
        assert!(t.ends_with('Z') && t.contains('T'), "{t}");
    }
}
