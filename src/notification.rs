//! The notification envelope Herald builds itself (SPEC §3 welcome, §5 API notifications).
//!
//! Flask-SocketIO services emitted `{type, message, data, timestamp}`; Herald keeps those fields
//! and adds `id` (sortable, `<unix-ms>-<seq>` like a Redis stream id), `priority` and `channel`.

use std::sync::Mutex;

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

/// Issues ids that sort in issue order within this process: `<unix-ms>-<seq>`.
#[derive(Default)]
pub struct IdGenerator {
    last: Mutex<(u64, u64)>,
}

impl IdGenerator {
    pub fn next(&self) -> String {
        let now = now_ms();
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        *last = if now > last.0 { (now, 0) } else { (last.0, last.1 + 1) };
        format!("{}-{}", last.0, last.1)
    }
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
    /// The envelope delivered to `channel`.
    pub fn envelope(&self, id: &str, timestamp: &str, channel: &str) -> Value {
        Value::Object(vec![
            ("id".into(), id.into()),
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
            Value::Object(vec![
                ("user_id".into(), user_id.map(Value::from).unwrap_or(Value::Null)),
                ("sid".into(), sid.into()),
            ]),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_in_issue_order() {
        let ids = IdGenerator::default();
        let a: Vec<String> = (0..1000).map(|_| ids.next()).collect();
        let parse = |id: &str| {
            let (ms, seq) = id.split_once('-').unwrap();
            (ms.parse::<u64>().unwrap(), seq.parse::<u64>().unwrap())
        };
        assert!(a.windows(2).all(|w| parse(&w[0]) < parse(&w[1])));
    }

    #[test]
    fn timestamps_are_iso_utc() {
        let t = iso_now();
        assert!(t.ends_with('Z') && t.contains('T'), "{t}");
    }
}
