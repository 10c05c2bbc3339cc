//! python-socketio's message queue (`RedisManager`, `AsyncRedisManager`, `KombuManager`, and
//! Flask-SocketIO's `message_queue=`), every generation Herald must keep working with.
//!
//! Each message is a dict with a `method` (`emit`, `enter_room`, `leave_room`, `close_room`,
//! `disconnect`, `callback`) and that method's fields. How `emit` carries its arguments in
//! `data` changed several times (see `wire-samples/python-socketio.txt`):
//!
//! | version | encoding | `data` |
//! |---|---|---|
//! | ≤ 5.13 | pickle | the emitted object: a tuple is several arguments, `None` none, `bytes` binary |
//! | 5.14.x | JSON, no `binary` key | the emitted object as is: one argument (a tuple arrives as one list, as python-socketio itself delivered it) |
//! | 5.15.0 | JSON, `binary` key | unwrapped like 5.14, but a list is taken as the argument list (the shape of 5.15.1) |
//! | ≥ 5.15.1 | JSON, `binary` key | the argument list: `[x]` one argument, `[a, b]` a tuple, `[null]` no argument (also for `(None,)`) |
//!
//! With `binary: true`, `data` is `[payload, attachment, ...]`: base64 attachments that replace
//! the `{"_placeholder": true, "num": N}` objects in the payload. `KombuManager` wraps the same
//! messages in a kombu envelope whose `body` is the base64 of the JSON or pickle message.

use base64::Engine;
use bytes::Bytes;
use serde_pickle::{HashableValue, Value as Pickle};

use crate::delivery::{Command, Target};
use crate::payload::{Args, Value};

use super::{
    check_size, expect_object, field, integer, json, malformed, namespace, pickle, required_str, string_list, take_field, wrong_type,
    DecodeError, Decoded, Limits,
};

/// Decodes one message published by python-socketio (JSON or pickle, bare or in a kombu envelope).
pub fn python(payload: &[u8], limits: &Limits) -> Result<Decoded, DecodeError> {
    check_size(payload, limits)?;
    let (message, args) = decode(payload, limits, Envelope::Allowed)?;
    command(&message, args)
}

/// Whether a payload may be a kombu envelope (not inside another one).
#[derive(PartialEq)]
enum Envelope {
    Allowed,
    Inside,
}

/// The message's fields (an object) and the arguments its `data` stands for.
fn decode(payload: &[u8], limits: &Limits, envelope: Envelope) -> Result<(Value, Args), DecodeError> {
    if payload.first() == Some(&pickle::PROTO) {
        return from_pickle(payload, limits);
    }
    let message = json::parse(payload, limits)?;
    expect_object(&message, "message")?;
    if envelope == Envelope::Allowed {
        if let Some(body) = kombu_body(&message)? {
            return decode(&body, limits, Envelope::Inside);
        }
    }
    from_json(message)
}

/// The body of a kombu envelope (`{"body": ..., "properties": {"body_encoding": ...}}`), if
/// `message` is one.
fn kombu_body(message: &Value) -> Result<Option<Vec<u8>>, DecodeError> {
    let (None, Some(body)) = (field(message, "method"), field(message, "body")) else {
        return Ok(None);
    };
    let body = body.as_str().ok_or(wrong_type("body", "a string"))?;
    let encoding = field(message, "properties").and_then(|properties| field(properties, "body_encoding"));
    match encoding.map(|encoding| encoding.as_str().ok_or(wrong_type("properties.body_encoding", "a string"))) {
        None => Ok(Some(body.as_bytes().to_vec())),
        Some(Ok("base64")) => Ok(Some(base64_decode(body, "kombu body")?)),
        Some(Ok(other)) => Err(malformed("kombu envelope", format_args!("body encoding {other:?}"))),
        Some(Err(e)) => Err(e),
    }
}

fn from_json(mut message: Value) -> Result<(Value, Args), DecodeError> {
    let data = take_field(&mut message, "data");
    let args = match field(&message, "binary") {
        None => one_argument(data),
        Some(Value::Bool(false)) => argument_list(data),
        Some(Value::Bool(true)) => argument_list(with_attachments(data)?),
        Some(_) => return Err(wrong_type("binary", "a boolean")),
    };
    Ok((message, args))
}

fn from_pickle(payload: &[u8], limits: &Limits) -> Result<(Value, Args), DecodeError> {
    let Pickle::Dict(mut message) = pickle::parse(payload, limits)? else {
        return Err(wrong_type("message", "a dict"));
    };
    // Inside the message dict, so one level down.
    let depth = 1;
    let args = match message.remove(&HashableValue::String("data".into())) {
        None | Some(Pickle::None) => Args::default(),
        Some(Pickle::Tuple(items)) => Args(items.into_iter().map(|item| pickle::to_value(item, depth, limits)).collect::<Result<_, _>>()?),
        Some(data) => Args::one(pickle::to_value(data, depth, limits)?),
    };
    Ok((pickle::to_value(Pickle::Dict(message), 0, limits)?, args))
}

fn one_argument(data: Value) -> Args {
    match data {
        Value::Null => Args::default(),
        data => Args::one(data),
    }
}

fn argument_list(data: Value) -> Args {
    match data {
        Value::Array(items) if items == [Value::Null] => Args::default(),
        Value::Array(items) => Args(items),
        data => one_argument(data),
    }
}

/// `[payload, base64, ...]` → the payload with its placeholders replaced by the attachments.
fn with_attachments(data: Value) -> Result<Value, DecodeError> {
    let Value::Array(mut parts) = data else {
        return Err(wrong_type("data", "a list of the payload and its attachments"));
    };
    if parts.is_empty() {
        return Err(malformed("message", "binary data without a payload"));
    }
    let payload = parts.remove(0);
    let attachments = parts
        .iter()
        .map(|part| {
            let encoded = part.as_str().ok_or(wrong_type("data", "base64 attachments"))?;
            Ok(Bytes::from(base64_decode(encoded, "attachment")?))
        })
        .collect::<Result<Vec<_>, DecodeError>>()?;
    fill_placeholders(payload, &attachments)
}

/// Recursion is bounded: the payload was parsed with the depth limit.
fn fill_placeholders(value: Value, attachments: &[Bytes]) -> Result<Value, DecodeError> {
    match value {
        Value::Object(fields) if fields.iter().any(|(k, v)| k == "_placeholder" && *v == Value::Bool(true)) => {
            let placeholder = Value::Object(fields);
            let num = field(&placeholder, "num").and_then(integer).ok_or(wrong_type("_placeholder.num", "an integer"))?;
            let attachment = usize::try_from(num).ok().and_then(|num| attachments.get(num));
            let attachment = attachment.ok_or_else(|| malformed("message", format_args!("no attachment {num}")))?;
            Ok(Value::Binary(attachment.clone()))
        }
        Value::Object(fields) => Ok(Value::Object(
            fields.into_iter().map(|(key, value)| Ok((key, fill_placeholders(value, attachments)?))).collect::<Result<_, DecodeError>>()?,
        )),
        Value::Array(items) => {
            Ok(Value::Array(items.into_iter().map(|item| fill_placeholders(item, attachments)).collect::<Result<_, _>>()?))
        }
        other => Ok(other),
    }
}

fn base64_decode(text: &str, what: &'static str) -> Result<Vec<u8>, DecodeError> {
    base64::engine::general_purpose::STANDARD.decode(text).map_err(|e| malformed(what, e))
}

fn command(message: &Value, args: Args) -> Result<Decoded, DecodeError> {
    let method = required_str(message, "method")?;
    if method == "callback" {
        return Ok(Decoded::Ignored("python-socketio callback (acks are not relayed)"));
    }
    let namespace = namespace(message, "namespace")?;
    let command = match method {
        "emit" => Command::Emit {
            target: Target { namespace, rooms: string_list(message, "room")?, except: string_list(message, "skip_sid")? },
            event: required_str(message, "event")?.to_string(),
            args,
        },
        "enter_room" => Command::Join { target: sid_target(message, namespace)?, rooms: vec![room(message)?] },
        "leave_room" => Command::Leave { target: sid_target(message, namespace)?, rooms: vec![room(message)?] },
        "close_room" => {
            let room = room(message)?;
            Command::Leave { target: Target::rooms(&namespace, vec![room.clone()]), rooms: vec![room] }
        }
        "disconnect" => Command::Disconnect { target: sid_target(message, namespace)? },
        other => return Err(DecodeError::UnknownMethod(other.to_string())),
    };
    Ok(Decoded::Command(command))
}

/// The one socket a message names: every socket joins a room named by its sid.
fn sid_target(message: &Value, namespace: String) -> Result<Target, DecodeError> {
    let sid = required_str(message, "sid")?.to_string();
    Ok(Target { namespace, rooms: vec![sid], except: vec![] })
}

fn room(message: &Value) -> Result<String, DecodeError> {
    Ok(required_str(message, "room")?.to_string())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::ingress::decode::test_support::{assert_decoded, binary, emit, json, mutations, section, strings, target, Sample};

    const FILE: &str = "python-socketio.txt";

    fn join(sid: &str, room: &str, namespace: &str) -> Decoded {
        Decoded::Command(Command::Join { target: target(namespace, &[sid], &[]), rooms: strings(&[room]) })
    }

    fn leave(sid: &str, room: &str, namespace: &str) -> Decoded {
        Decoded::Command(Command::Leave { target: target(namespace, &[sid], &[]), rooms: strings(&[room]) })
    }

    fn disconnect(sid: &str) -> Decoded {
        Decoded::Command(Command::Disconnect { target: target("/", &[sid], &[]) })
    }

    const CALLBACK: Decoded = Decoded::Ignored("python-socketio callback (acks are not relayed)");

    /// The steps of the first sections' header, as every generation decodes them; `multi` and
    /// the bytes steps differ between generations.
    fn steps(multi: Vec<Value>, with_bytes: bool) -> Vec<Decoded> {
        let mut steps = vec![
            emit("/", &["room1"], &[], "chat", vec![json(r#"{"msg":"hi","n":1}"#)]),
            emit("/", &[], &[], "news", vec![json(r#"{"a":1,"b":[1,2.5,null,true]}"#)]),
            emit("/", &[], &[], "multi", multi),
        ];
        if with_bytes {
            steps.push(emit("/", &[], &[], "bin", vec![binary(&[0, 1, 2, 255])]));
            let file = Value::Object(vec![("name".into(), "a.bin".into()), ("blob".into(), binary(&[0xde, 0xad, 0xbe, 0xef]))]);
            steps.push(emit("/", &["sid123"], &[], "file", vec![file]));
        }
        steps.extend([
            emit("/chat", &[], &[], "msg", vec!["hello".into()]),
            emit("/", &["r1", "r2"], &["sidA"], "x", vec!["y".into()]),
            emit("/", &[], &[], "ping", vec![]),
            join("sidXYZ", "roomA", "/"),
            leave("sidXYZ", "roomA", "/chat"),
            Decoded::Command(Command::Leave { target: target("/", &["roomA"], &[]), rooms: strings(&["roomA"]) }),
            disconnect("sidXYZ"),
            emit("/", &["room9"], &[], "raw", vec![json(r#"{"k":"v"}"#)]),
            CALLBACK,
        ]);
        steps
    }

    fn assert_section(samples: Vec<Sample>, expected: Vec<Decoded>) {
        assert_eq!(samples.len(), expected.len(), "{}", samples[0].section);
        for (i, (sample, expected)) in samples.into_iter().zip(&expected).enumerate() {
            let context = format!("{} #{i}", sample.section);
            let decoded = python(&sample.payload, &Limits::default()).unwrap_or_else(|e| panic!("{context}: {e}"));
            assert_decoded(decoded, expected, &context);
        }
    }

    fn multi_args() -> Vec<Value> {
        vec![Value::Int(1), "two".into(), json(r#"{"three":3}"#)]
    }

    #[test]
    fn json_5_18() {
        assert_section(section(FILE, "python-socketio 5.18.1 + Flask"), steps(multi_args(), true));
    }

    #[test]
    fn pickle_5_13() {
        assert_section(section(FILE, "python-socketio 5.13.0"), steps(multi_args(), true));
    }

    #[test]
    fn json_5_14_delivers_data_as_one_argument() {
        assert_section(section(FILE, "python-socketio 5.14.1"), steps(vec![json(r#"[1,"two",{"three":3}]"#)], false));
    }

    #[test]
    fn json_5_15_0() {
        assert_section(section(FILE, "python-socketio 5.15.0"), steps(multi_args(), true));
    }

    #[test]
    fn async_manager() {
        assert_section(
            section(FILE, "python-socketio 5.18.1 AsyncRedisManager"),
            vec![
                emit("/", &["roomB"], &[], "async_ev", vec![json(r#"{"x":1}"#)]),
                emit("/admin", &[], &[], "async_bin", vec![binary(&[1, 2]), "tail".into()]),
            ],
        );
    }

    #[test]
    fn kombu_envelopes_of_json_and_pickle() {
        let kombu = emit("/", &["roomK"], &[], "kombu_ev", vec![json(r#"{"x":1}"#)]);
        assert_section(section(FILE, "KombuManager"), vec![kombu.clone(), kombu]);
    }

    #[test]
    fn edge_values() {
        let nan = Value::Object(vec![("nan".into(), Value::Float(f64::NAN)), ("inf".into(), Value::Float(f64::INFINITY))]);
        let big_unicode =
            Value::Object(vec![("big".into(), Value::Float(1_180_591_620_717_411_303_424.0)), ("uni".into(), "héllo ☃ 😀".into())]);
        assert_section(
            section(FILE, "python-socketio 5.18.1 edge values"),
            vec![
                emit("/", &[], &[], "edge_nan", vec![nan]),
                emit("/", &[], &[], "edge_big_uni", vec![big_unicode]),
                emit("/", &[], &[], "edge_bytearray", vec![binary(&[7, 8])]),
                emit("/", &[], &[], "edge_list_single_arg", vec![json("[1,2]")]),
                emit("/", &[], &[], "edge_tuple_none", vec![]),
            ],
        );
    }

    #[test]
    fn every_capture_is_a_test_vector() {
        let tested = [
            "python-socketio 5.18.1 + Flask",
            "python-socketio 5.13.0",
            "python-socketio 5.14.1",
            "python-socketio 5.15.0",
            "python-socketio 5.18.1 AsyncRedisManager",
            "KombuManager",
            "python-socketio 5.18.1 edge values",
        ];
        assert_eq!(all_payloads().len(), tested.iter().map(|heading| section(FILE, heading).len()).sum::<usize>());
    }

    fn reason(payload: &str) -> &'static str {
        python(payload.as_bytes(), &Limits::default()).unwrap_err().reason()
    }

    #[test]
    fn refuses_bad_messages() {
        assert_eq!(reason(r#"{"method":"shout","event":"x"}"#), "unknown_method");
        assert_eq!(reason(r#"{"event":"x"}"#), "malformed");
        assert_eq!(reason(r#"["emit"]"#), "wrong_type");
        assert_eq!(reason(r#"{"method":"emit","event":7}"#), "wrong_type");
        assert_eq!(reason(r#"{"method":"emit","event":"x","room":{"a":1}}"#), "wrong_type");
        assert_eq!(reason(r#"{"method":"emit","event":"x","skip_sid":[1]}"#), "wrong_type");
        assert_eq!(reason(r#"{"method":"emit","event":"x","namespace":5}"#), "wrong_type");
        assert_eq!(reason(r#"{"method":"emit","event":"x","binary":"yes"}"#), "wrong_type");
        assert_eq!(reason(r#"{"method":"enter_room","sid":"s"}"#), "malformed");
        assert_eq!(reason(r#"{"method":"disconnect","sid":["s"]}"#), "wrong_type");
        let binary = r#"{"method":"emit","event":"b","binary":true,"data":"#;
        assert_eq!(reason(&format!("{binary}[]}}")), "malformed");
        assert_eq!(reason(&format!(r#"{binary}[[{{"_placeholder":true,"num":1}}],"AA=="]}}"#)), "malformed");
        assert_eq!(reason(&format!(r#"{binary}[[{{"_placeholder":true,"num":"0"}}],"AA=="]}}"#)), "wrong_type");
        assert_eq!(reason(&format!(r#"{binary}[[{{"_placeholder":true,"num":0}}],"!!"]}}"#)), "malformed");
        assert_eq!(reason(r#"{"body":"!!","properties":{"body_encoding":"base64"}}"#), "malformed");
        assert_eq!(reason(r#"{"body":"e30=","properties":{"body_encoding":"rot13"}}"#), "malformed");
        let too_small = Limits { max_bytes: 10, ..Limits::default() };
        assert_eq!(python(b"{\"method\":\"emit\"}", &too_small).unwrap_err().reason(), "too_large");
    }

    #[test]
    fn deep_payloads_are_refused_at_every_stage() {
        let n = 100_000;
        let deep_data = format!(r#"{{"method":"emit","event":"x","data":{}{}}}"#, "[".repeat(n), "]".repeat(n));
        assert_eq!(reason(&deep_data), "too_deep");
        // A kombu body holding the same.
        let body = base64::engine::general_purpose::STANDARD.encode(&deep_data);
        assert_eq!(reason(&format!(r#"{{"body":"{body}","properties":{{"body_encoding":"base64"}}}}"#)), "too_deep");
        // A pickled message dict whose data is 100_000 nested lists.
        let mut pickle = b"\x80\x04}(\x8c\x06method\x8c\x04emit\x8c\x05event\x8c\x01x\x8c\x04data".to_vec();
        pickle.extend(std::iter::repeat_n(b']', n));
        pickle.extend(std::iter::repeat_n(b'a', n - 1));
        pickle.extend(b"u.");
        assert_eq!(python(&pickle, &Limits::default()).unwrap_err().reason(), "too_deep");
    }

    fn all_payloads() -> Vec<Vec<u8>> {
        crate::ingress::decode::test_support::samples(FILE).into_iter().map(|s| s.payload).collect()
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = python(&bytes, &Limits::default());
        }

        #[test]
        fn arbitrary_bytes_after_a_pickle_header_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = python(&[&[0x80, 0x04][..], &bytes].concat(), &Limits::default());
        }

        #[test]
        fn mutated_samples_never_panic(bytes in mutations(all_payloads())) {
            let _ = python(&bytes, &Limits::default());
        }

        /// JSON samples with one field replaced by a value of another shape.
        #[test]
        fn samples_with_a_field_of_another_type_never_panic(
            sample in prop::sample::select(all_payloads().into_iter().filter(|p| p.first() == Some(&b'{')).collect::<Vec<_>>()),
            at in any::<prop::sample::Index>(),
            replacement in prop::sample::select(vec![
                "null", "true", "-1", "2.5", "\"s\"", "[]", "{}", "[null]", "[\"a\", 1]", "[[]]", "[{}]",
                "{\"_placeholder\":true,\"num\":0}", "[{\"_placeholder\":true,\"num\":9},\"AA==\"]", "[\"!\"]",
            ]),
        ) {
            let Value::Object(mut fields) = json(std::str::from_utf8(&sample).unwrap()) else { unreachable!("samples are objects") };
            let field = at.index(fields.len());
            fields[field].1 = json(replacement);
            let _ = python(&serde_json::to_vec(&Value::Object(fields)).unwrap(), &Limits::default());
        }
    }
}
