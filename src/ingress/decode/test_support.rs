//! What the decoder tests share: the real captures in `tests/fixtures/wire-samples/` (copied from the
//! contract's `shared/wire-samples/`, so the repository builds and tests on its own), a normal form for
//! comparing decoded values, and proptest strategies that mutate valid messages.

use proptest::prelude::*;

use super::Decoded;
use crate::delivery::{Command, Target};
use crate::payload::{Args, Value};

/// One captured Redis PUBLISH.
pub struct Sample {
    /// The `################` heading the capture appears under.
    pub section: String,
    pub channel: String,
    pub payload: Vec<u8>,
}

/// Every capture of `file` (in `tests/fixtures/wire-samples/`), in order.
pub fn samples(file: &str) -> Vec<Sample> {
    let path = format!("{}/tests/fixtures/wire-samples/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut samples = Vec::new();
    let (mut section, mut channel) = (String::new(), String::new());
    for line in text.lines() {
        if let Some(title) = line.strip_prefix("################ ") {
            section = title.to_string();
        } else if let Some(rest) = line.strip_prefix("--- channel='") {
            channel = rest.split('\'').next().unwrap().to_string();
        } else if let Some(hex) = line.strip_prefix("hex:") {
            let hex = hex.trim();
            let payload = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
            samples.push(Sample { section: section.clone(), channel: channel.clone(), payload });
        }
    }
    samples
}

/// The captures of `file` under the heading that starts with `section`.
pub fn section(file: &str, section: &str) -> Vec<Sample> {
    let found: Vec<Sample> = samples(file).into_iter().filter(|s| s.section.starts_with(section)).collect();
    assert!(!found.is_empty(), "no section {section:?} in {file}");
    found
}

/// `value` with every object's keys sorted (pickle dicts arrive sorted, JSON objects do not).
pub fn sorted(value: Value) -> Value {
    match value {
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        Value::Object(fields) => {
            let mut fields: Vec<(String, Value)> = fields.into_iter().map(|(k, v)| (k, sorted(v))).collect();
            fields.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(fields)
        }
        other => other,
    }
}

/// Asserts that `actual` decodes to `expected`, ignoring object key order; compared through
/// `Debug` so that NaN equals NaN.
pub fn assert_decoded(actual: Decoded, expected: &Decoded, context: &str) {
    fn normal(decoded: &Decoded) -> String {
        let decoded = match decoded.clone() {
            Decoded::Command(Command::Emit { target, event, args }) => {
                Decoded::Command(Command::Emit { target, event, args: Args(args.0.into_iter().map(sorted).collect()) })
            }
            other => other,
        };
        format!("{decoded:?}")
    }
    assert_eq!(normal(&actual), normal(expected), "{context}");
}

pub fn emit(namespace: &str, rooms: &[&str], except: &[&str], event: &str, args: Vec<Value>) -> Decoded {
    Decoded::Command(Command::Emit { target: target(namespace, rooms, except), event: event.to_string(), args: Args(args) })
}

pub fn target(namespace: &str, rooms: &[&str], except: &[&str]) -> Target {
    Target { namespace: namespace.to_string(), rooms: strings(rooms), except: strings(except) }
}

pub fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Builds a `Value` from JSON text (tests only; the text must be valid).
pub fn json(text: &str) -> Value {
    super::json::parse(text.as_bytes(), &super::Limits::default()).unwrap()
}

pub fn binary(bytes: &[u8]) -> Value {
    Value::Binary(bytes.to_vec().into())
}

/// Valid `payloads` with a few bytes replaced, inserted or removed, and possibly truncated.
pub fn mutations(payloads: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let edit = (any::<prop::sample::Index>(), any::<u8>(), 0u8..3);
    (any::<prop::sample::Index>(), prop::collection::vec(edit, 1..6), prop::option::of(any::<prop::sample::Index>())).prop_map(
        move |(which, edits, cut)| {
            let mut bytes = which.get(&payloads).clone();
            for (at, byte, kind) in edits {
                let len = bytes.len();
                match kind {
                    0 if len > 0 => bytes[at.index(len)] = byte,
                    1 => bytes.insert(at.index(len + 1), byte),
                    _ if len > 0 => {
                        bytes.remove(at.index(len));
                    }
                    _ => {}
                }
            }
            if let Some(cut) = cut {
                bytes.truncate(cut.index(bytes.len() + 1));
            }
            bytes
        },
    )
}
