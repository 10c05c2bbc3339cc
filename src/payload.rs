//! The arguments of an event, as every ingress hands them to the delivery path.
//!
//! Backends send JSON (HTTP API, python-socketio ≥ 5.14, `notify:*`), pickle (python-socketio
//! ≤ 5.13) or msgpack (`@socket.io/redis-emitter`), and any of them may carry binary. [`Value`] is
//! the one tree they all decode into: JSON's shapes plus `Binary`, with object keys kept in order.
//! [`Args`] serializes as a tuple, which socketioxide expands into several Socket.IO arguments,
//! and `Binary` serializes as bytes, which socketioxide sends as binary attachments.

use bytes::Bytes;
use serde::ser::{SerializeMap, SerializeSeq, SerializeTuple};
use serde::{Serialize, Serializer};

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    String(String),
    Binary(Bytes),
    Array(Vec<Value>),
    Object(Vec<(String, Value)>),
}

impl Value {
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Object(fields) => fields.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// Sets `key` on an object (replacing an existing field); no effect on other values.
    pub fn insert(&mut self, key: &str, value: Value) {
        if let Value::Object(fields) = self {
            match fields.iter_mut().find(|(k, _)| k == key) {
                Some((_, v)) => *v = value,
                None => fields.push((key.to_string(), value)),
            }
        }
    }
}

impl From<serde_json::Value> for Value {
    fn from(json: serde_json::Value) -> Self {
        match json {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Bool(b) => Value::Bool(b),
            serde_json::Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    Value::Int(i)
                } else if let Some(u) = n.as_u64() {
                    Value::UInt(u)
                } else {
                    Value::Float(n.as_f64().unwrap_or(f64::NAN))
                }
            }
            serde_json::Value::String(s) => Value::String(s),
            serde_json::Value::Array(items) => Value::Array(items.into_iter().map(Value::from).collect()),
            serde_json::Value::Object(map) => Value::Object(map.into_iter().map(|(k, v)| (k, Value::from(v))).collect()),
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::String(s.to_string())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::String(s)
    }
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Null => serializer.serialize_unit(),
            Value::Bool(b) => serializer.serialize_bool(*b),
            Value::Int(i) => serializer.serialize_i64(*i),
            Value::UInt(u) => serializer.serialize_u64(*u),
            // JSON has no NaN or Infinity: they travel as null, as JSON.stringify does.
            Value::Float(f) if !f.is_finite() => serializer.serialize_unit(),
            Value::Float(f) => serializer.serialize_f64(*f),
            Value::String(s) => serializer.serialize_str(s),
            Value::Binary(b) => serializer.serialize_bytes(b),
            Value::Array(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Value::Object(fields) => {
                let mut map = serializer.serialize_map(Some(fields.len()))?;
                for (k, v) in fields {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

/// The arguments of one event, in order. Serializes as a tuple: `[event, arg0, arg1, ...]` on
/// the wire.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Args(pub Vec<Value>);

impl Args {
    pub fn one(value: Value) -> Args {
        Args(vec![value])
    }
}

impl Serialize for Args {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut tuple = serializer.serialize_tuple(self.0.len())?;
        for arg in &self.0 {
            tuple.serialize_element(arg)?;
        }
        tuple.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trips_in_order() {
        let json: serde_json::Value = serde_json::from_str(r#"{"b":1,"a":[true,null,2.5,"x"],"n":-3}"#).unwrap();
        let value = Value::from(json);
        assert_eq!(serde_json::to_string(&value).unwrap(), r#"{"a":[true,null,2.5,"x"],"b":1,"n":-3}"#);
    }

    #[test]
    fn non_finite_floats_become_null() {
        let value = Value::Array(vec![Value::Float(f64::NAN), Value::Float(f64::INFINITY)]);
        assert_eq!(serde_json::to_string(&value).unwrap(), "[null,null]");
    }

    #[test]
    fn insert_replaces_or_appends() {
        let mut v = Value::Object(vec![("id".into(), Value::Int(1))]);
        v.insert("id", "x".into());
        v.insert("k", Value::Bool(true));
        assert_eq!(serde_json::to_string(&v).unwrap(), r#"{"id":"x","k":true}"#);
    }
}

/// The JSON form of [`Args`] kept in storage and sent between instances: binary values become
/// `{"_herald_bin": "<base64>"}` so that they come back as binary.
pub mod stored {
    use base64::Engine;

    use super::{Args, Value};

    const BINARY_KEY: &str = "_herald_bin";

    pub fn encode(args: &Args) -> String {
        serde_json::Value::Array(args.0.iter().map(to_json).collect()).to_string()
    }

    pub fn decode(text: &str) -> Result<Args, serde_json::Error> {
        match serde_json::from_str::<serde_json::Value>(text)? {
            serde_json::Value::Array(items) => Ok(Args(items.into_iter().map(from_json).collect())),
            other => Ok(Args(vec![from_json(other)])),
        }
    }

    fn to_json(value: &Value) -> serde_json::Value {
        match value {
            Value::Binary(bytes) => {
                serde_json::json!({ BINARY_KEY: base64::engine::general_purpose::STANDARD.encode(bytes) })
            }
            Value::Array(items) => serde_json::Value::Array(items.iter().map(to_json).collect()),
            Value::Object(fields) => serde_json::Value::Object(fields.iter().map(|(k, v)| (k.clone(), to_json(v))).collect()),
            other => serde_json::to_value(other).unwrap_or(serde_json::Value::Null),
        }
    }

    fn from_json(json: serde_json::Value) -> Value {
        match json {
            serde_json::Value::Object(map) if map.len() == 1 && map.contains_key(BINARY_KEY) => {
                let encoded = map[BINARY_KEY].as_str().unwrap_or_default();
                match base64::engine::general_purpose::STANDARD.decode(encoded) {
                    Ok(bytes) => Value::Binary(bytes.into()),
                    Err(_) => Value::Object(map.into_iter().map(|(k, v)| (k, from_json(v))).collect()),
                }
            }
            serde_json::Value::Object(map) => Value::Object(map.into_iter().map(|(k, v)| (k, from_json(v))).collect()),
            serde_json::Value::Array(items) => Value::Array(items.into_iter().map(from_json).collect()),
            other => Value::from(other),
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn binary_survives_a_round_trip() {
            let args = Args(vec![
                Value::Object(vec![("blob".into(), Value::Binary(vec![0u8, 1, 255].into())), ("n".into(), Value::Int(1))]),
                Value::String("x".into()),
            ]);
            assert_eq!(decode(&encode(&args)).unwrap(), args);
        }
    }
}
