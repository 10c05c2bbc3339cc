//! Pure decoders (no I/O) that turn one Redis pub/sub message into a delivery [`Command`].
//!
//! Backends publish in three dialects (SPEC §6): python-socketio's message queue (JSON since
//! 5.14, pickle before), the Node `@socket.io/redis-emitter` (msgpack, plus JSON requests), and
//! Herald's own `notify:*` JSON channels. Each dialect has its decoder here, so that the Redis
//! listener only routes channels and counts outcomes, and so that every byte a backend (or an
//! attacker with access to Redis) can publish is judged in one place that is easy to test.
//!
//! Every decoder checks the payload size first, bounds nesting with [`Limits::max_depth`] while
//! parsing (iteratively, or by recursion bounded by that limit), and answers a [`DecodeError`]
//! rather than panicking on hostile input. [`DecodeError::reason`] gives a short stable label for
//! metrics.
//!
//! The tests replay every real capture in `tests/fixtures/wire-samples/` (a copy of the
//! contract's `shared/wire-samples/`) and fuzz each decoder with proptest. To fuzz longer than the default 256 cases:
//!
//! ```text
//! PROPTEST_CASES=100000 cargo test --release --lib ingress::decode
//! ```

mod json;
mod node;
mod notify;
mod pickle;
mod python;

pub use node::node;
pub use notify::notify;
pub use python::python;

use std::fmt::Display;

use crate::delivery::Command;
use crate::payload::Value;

/// Bounds on what a decoder accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest payload accepted, in bytes, checked before anything is parsed.
    pub max_bytes: usize,
    /// Deepest nesting of arrays and objects accepted. Decoders recurse at most about this deep
    /// (twice as deep for msgpack), so keep it in the hundreds at most.
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_bytes: 1_000_000, max_depth: 64 }
    }
}

/// What a message asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    Command(Command),
    /// A well-formed message Herald deliberately does not act on; says which kind, for logs.
    Ignored(&'static str),
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("payload of {size} bytes is over the {limit}-byte limit")]
    TooLarge { size: usize, limit: usize },
    #[error("malformed {format}: {detail}")]
    Malformed { format: &'static str, detail: String },
    #[error("nested deeper than {limit} levels")]
    TooDeep { limit: usize },
    #[error("unknown method or message type {0:?}")]
    UnknownMethod(String),
    #[error("refused pickle: {0}")]
    ForbiddenPickle(String),
    #[error("field {field}: expected {expected}")]
    WrongType { field: &'static str, expected: &'static str },
}

impl DecodeError {
    /// Short stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::Malformed { .. } => "malformed",
            DecodeError::TooDeep { .. } => "too_deep",
            DecodeError::UnknownMethod(_) => "unknown_method",
            DecodeError::ForbiddenPickle(_) => "forbidden_pickle",
            DecodeError::WrongType { .. } => "wrong_type",
        }
    }
}

fn malformed(format: &'static str, detail: impl Display) -> DecodeError {
    DecodeError::Malformed { format, detail: detail.to_string() }
}

fn wrong_type(field: &'static str, expected: &'static str) -> DecodeError {
    DecodeError::WrongType { field, expected }
}

fn check_size(payload: &[u8], limits: &Limits) -> Result<(), DecodeError> {
    if payload.len() > limits.max_bytes {
        return Err(DecodeError::TooLarge { size: payload.len(), limit: limits.max_bytes });
    }
    Ok(())
}

/// The nesting level one below `depth`, for converters that recurse into containers.
fn nested(depth: usize, limits: &Limits) -> Result<usize, DecodeError> {
    if depth >= limits.max_depth {
        return Err(DecodeError::TooDeep { limit: limits.max_depth });
    }
    Ok(depth + 1)
}

fn expect_object(value: &Value, name: &'static str) -> Result<(), DecodeError> {
    match value {
        Value::Object(_) => Ok(()),
        _ => Err(wrong_type(name, "an object")),
    }
}

/// A field of a message object; a missing field and `null` are both `None`.
fn field<'a>(message: &'a Value, name: &str) -> Option<&'a Value> {
    message.get(name).filter(|value| **value != Value::Null)
}

/// Removes a field from a message object, to own it without copying; `Null` when absent.
fn take_field(message: &mut Value, name: &str) -> Value {
    match message {
        Value::Object(fields) => match fields.iter().position(|(key, _)| key == name) {
            Some(at) => fields.remove(at).1,
            None => Value::Null,
        },
        _ => Value::Null,
    }
}

fn required_str<'a>(message: &'a Value, name: &'static str) -> Result<&'a str, DecodeError> {
    match field(message, name) {
        None => Err(malformed("message", format_args!("missing field {name}"))),
        Some(value) => value.as_str().ok_or(wrong_type(name, "a string")),
    }
}

/// A namespace field; absent means the default namespace, as for every Socket.IO producer.
fn namespace(message: &Value, name: &'static str) -> Result<String, DecodeError> {
    match field(message, name) {
        None => Ok("/".to_string()),
        Some(value) => Ok(value.as_str().ok_or(wrong_type(name, "a string"))?.to_string()),
    }
}

fn integer(value: &Value) -> Option<i64> {
    match value {
        Value::Int(i) => Some(*i),
        Value::UInt(u) => i64::try_from(*u).ok(),
        _ => None,
    }
}

/// A field holding one room or a list of rooms (python `room`/`skip_sid`, node `rooms`/`except`).
fn string_list(message: &Value, name: &'static str) -> Result<Vec<String>, DecodeError> {
    let expected = "a string or a list of strings";
    match field(message, name) {
        None => Ok(vec![]),
        Some(Value::String(one)) => Ok(vec![one.clone()]),
        Some(Value::Array(items)) => items.iter().map(|item| item.as_str().map(str::to_string).ok_or(wrong_type(name, expected))).collect(),
        Some(_) => Err(wrong_type(name, expected)),
    }
}

#[cfg(test)]
mod test_support;
