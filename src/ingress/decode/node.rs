//! The Node `@socket.io/redis-emitter` (5.x) and the `@socket.io/redis-adapter` traffic of
//! socket.io servers sharing the Redis, as captured in `wire-samples/node-redis-emitter.txt`.
//!
//! - Broadcasts go to `<key>#<nsp>#` or `<key>#<nsp>#<room>#` (key `socket.io` by default) as
//!   msgpack `[uid, packet, opts]`: `packet` is `{type: 2, data: [event, ...args], nsp}`, `opts`
//!   is `{rooms, except, flags}`. msgpack `bin` is binary. Flags (`volatile`, `compress`) only
//!   tune delivery, so the emit is delivered whatever they say.
//! - Requests go to `<key>-request#<nsp>#`: JSON from the emitter, msgpack from the adapter.
//!   Herald acts on types 2 (socketsJoin), 3 (socketsLeave) and 4 (disconnectSockets) and
//!   ignores the others (fetchSockets, allRooms, serverSideEmit, broadcasts with acks, ...),
//!   which only socket.io servers can answer.

use crate::delivery::{Command, Target};
use crate::payload::{Args, Value};

use super::{
    check_size, expect_object, field, integer, json, malformed, namespace, nested, string_list, take_field, wrong_type, DecodeError,
    Decoded, Limits,
};

/// Decodes one message published on a redis-emitter channel.
pub fn node(channel: &str, payload: &[u8], limits: &Limits) -> Result<Decoded, DecodeError> {
    check_size(payload, limits)?;
    let channel = Channel::parse(channel)?;
    if channel.request {
        request(channel.namespace, payload, limits)
    } else {
        broadcast(channel.namespace, payload, limits)
    }
}

struct Channel<'a> {
    namespace: &'a str,
    request: bool,
}

impl Channel<'_> {
    fn parse(channel: &str) -> Result<Channel<'_>, DecodeError> {
        let parts = channel.strip_suffix('#').and_then(|inner| inner.split_once('#'));
        let (key, rest) = parts.ok_or_else(|| malformed("channel", format_args!("{channel:?} is not <key>#<nsp>#")))?;
        // The room part of `<key>#<nsp>#<room>#` is only a routing hint: `opts.rooms` has it.
        let namespace = rest.split_once('#').map_or(rest, |(namespace, _room)| namespace);
        if !namespace.starts_with('/') {
            return Err(malformed("channel", format_args!("{channel:?} names no namespace")));
        }
        Ok(Channel { namespace, request: key.ends_with("-request") })
    }
}

fn broadcast(channel_namespace: &str, payload: &[u8], limits: &Limits) -> Result<Decoded, DecodeError> {
    let message = msgpack(payload, limits)?;
    let Value::Array(parts) = message else {
        return Err(wrong_type("message", "[uid, packet, opts]"));
    };
    let [_uid, mut packet, opts] = <[Value; 3]>::try_from(parts).map_err(|_| wrong_type("message", "[uid, packet, opts]"))?;
    expect_object(&packet, "packet")?;
    expect_object(&opts, "opts")?;
    let kind = field(&packet, "type").and_then(integer).ok_or(wrong_type("packet.type", "an integer"))?;
    // 2 is EVENT, 5 BINARY_EVENT (older emitters); anything else is not an emit.
    if kind != 2 && kind != 5 {
        return Err(DecodeError::UnknownMethod(format!("packet type {kind}")));
    }
    let namespace = namespace(&packet, "nsp")?;
    if namespace != channel_namespace {
        return Err(malformed("message", format_args!("namespace {namespace:?} on the channel of {channel_namespace:?}")));
    }
    let Value::Array(data) = take_field(&mut packet, "data") else {
        return Err(wrong_type("packet.data", "[event, ...args]"));
    };
    let mut data = data.into_iter();
    let Some(Value::String(event)) = data.next() else {
        return Err(wrong_type("packet.data", "[event, ...args]"));
    };
    let target = Target { namespace, rooms: string_list(&opts, "rooms")?, except: string_list(&opts, "except")? };
    Ok(Decoded::Command(Command::Emit { target, event, args: Args(data.collect()) }))
}

fn request(namespace: &str, payload: &[u8], limits: &Limits) -> Result<Decoded, DecodeError> {
    let request = if payload.first() == Some(&b'{') { json::parse(payload, limits)? } else { msgpack(payload, limits)? };
    expect_object(&request, "request")?;
    let kind = field(&request, "type").and_then(integer).ok_or(wrong_type("type", "an integer"))?;
    let command = match kind {
        2 => Command::Join { target: request_target(namespace, &request)?, rooms: string_list(&request, "rooms")? },
        3 => Command::Leave { target: request_target(namespace, &request)?, rooms: string_list(&request, "rooms")? },
        // `close: true` also closes the client's connection; sockets are disconnected either way.
        4 => Command::Disconnect { target: request_target(namespace, &request)? },
        6 => return Ok(Decoded::Ignored("node serverSideEmit (for socket.io servers)")),
        _ => return Ok(Decoded::Ignored("node adapter request only socket.io servers answer")),
    };
    Ok(Decoded::Command(command))
}

/// The sockets a request acts on. `opts` is required: without it the request would act on every
/// socket of the namespace.
fn request_target(namespace: &str, request: &Value) -> Result<Target, DecodeError> {
    let opts = field(request, "opts").ok_or_else(|| malformed("request", "missing opts"))?;
    expect_object(opts, "opts")?;
    Ok(Target { namespace: namespace.to_string(), rooms: string_list(opts, "rooms")?, except: string_list(opts, "except")? })
}

fn msgpack(payload: &[u8], limits: &Limits) -> Result<Value, DecodeError> {
    let mut rest = payload;
    // rmpv spends about two levels of its budget per level of nesting.
    let budget = limits.max_depth.saturating_mul(2).saturating_add(4);
    let value = rmpv::decode::read_value_with_max_depth(&mut rest, budget).map_err(|e| match e {
        rmpv::decode::Error::DepthLimitExceeded => DecodeError::TooDeep { limit: limits.max_depth },
        e => malformed("msgpack", e),
    })?;
    if !rest.is_empty() {
        return Err(malformed("msgpack", "bytes after the message"));
    }
    to_value(value, 0, limits)
}

/// Converts a msgpack value nested `depth` containers deep.
fn to_value(value: rmpv::Value, depth: usize, limits: &Limits) -> Result<Value, DecodeError> {
    Ok(match value {
        rmpv::Value::Nil => Value::Null,
        rmpv::Value::Boolean(b) => Value::Bool(b),
        rmpv::Value::Integer(i) => match (i.as_i64(), i.as_u64()) {
            (Some(i), _) => Value::Int(i),
            (None, Some(u)) => Value::UInt(u),
            (None, None) => return Err(malformed("msgpack", "integer out of range")),
        },
        rmpv::Value::F32(f) => Value::Float(f.into()),
        rmpv::Value::F64(f) => Value::Float(f),
        rmpv::Value::String(s) => Value::String(s.into_str().ok_or_else(|| malformed("msgpack", "invalid UTF-8"))?),
        rmpv::Value::Binary(bytes) => Value::Binary(bytes.into()),
        rmpv::Value::Array(items) => {
            let depth = nested(depth, limits)?;
            Value::Array(items.into_iter().map(|item| to_value(item, depth, limits)).collect::<Result<_, _>>()?)
        }
        rmpv::Value::Map(entries) => {
            let depth = nested(depth, limits)?;
            Value::Object(
                entries
                    .into_iter()
                    .map(|(key, value)| match key {
                        rmpv::Value::String(key) => {
                            Ok((key.into_str().ok_or_else(|| malformed("msgpack", "invalid UTF-8"))?, to_value(value, depth, limits)?))
                        }
                        _ => Err(wrong_type("map key", "a string")),
                    })
                    .collect::<Result<_, _>>()?,
            )
        }
        rmpv::Value::Ext(..) => return Err(wrong_type("msgpack value", "no extension types")),
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::ingress::decode::test_support::{assert_decoded, binary, emit, json, mutations, samples, section, strings, target, Sample};

    const FILE: &str = "node-redis-emitter.txt";

    fn decode(sample: &Sample) -> Result<Decoded, DecodeError> {
        node(&sample.channel, &sample.payload, &Limits::default())
    }

    fn assert_samples(samples: &[Sample], expected: Vec<Decoded>) {
        assert_eq!(samples.len(), expected.len());
        for (i, (sample, expected)) in samples.iter().zip(&expected).enumerate() {
            let context = format!("{} #{i} on {}", sample.section, sample.channel);
            let decoded = decode(sample).unwrap_or_else(|e| panic!("{context}: {e}"));
            assert_decoded(decoded, expected, &context);
        }
    }

    fn join(rooms: &[&str], except: &[&str], joined: &[&str]) -> Decoded {
        Decoded::Command(Command::Join { target: target("/", rooms, except), rooms: strings(joined) })
    }

    const SERVER_SIDE_EMIT: Decoded = Decoded::Ignored("node serverSideEmit (for socket.io servers)");
    const SERVERS_ONLY: Decoded = Decoded::Ignored("node adapter request only socket.io servers answer");

    #[test]
    fn emitter() {
        let samples = section(FILE, "@socket.io/redis-emitter");
        // socketioxide-redis traffic on `notif-*` channels is routed elsewhere; here it is refused.
        let (emitter, socketioxide): (Vec<Sample>, Vec<Sample>) = samples.into_iter().partition(|s| s.channel.starts_with("socket.io"));
        let file = Value::Object(vec![("name".into(), "a.bin".into()), ("blob".into(), binary(&[0xde, 0xad, 0xbe, 0xef]))]);
        assert_samples(
            &emitter,
            vec![
                emit("/", &["room1"], &[], "chat", vec![json(r#"{"msg":"hi","n":1}"#)]),
                emit("/", &[], &[], "news", vec![json(r#"{"a":1,"b":[1,2.5,null,true]}"#)]),
                emit("/", &[], &[], "multi", vec![Value::Int(1), "two".into(), json(r#"{"three":3}"#)]),
                emit("/", &[], &[], "bin", vec![binary(&[0, 1, 2, 255])]),
                emit("/", &["sid123"], &[], "file", vec![file]),
                emit("/chat", &[], &[], "msg", vec!["hello".into()]),
                emit("/", &["r1", "r2"], &["r3"], "x", vec!["y".into()]),
                emit("/", &[], &[], "tick", vec![Value::Int(42)]),
                emit("/", &[], &[], "big", vec!["z".into()]),
                emit("/chat", &["roomV"], &[], "v", vec![Value::Int(1)]),
                join(&["room1"], &[], &["roomA", "roomB"]),
                Decoded::Command(Command::Leave { target: target("/", &["room1"], &["r9"]), rooms: strings(&["roomA"]) }),
                Decoded::Command(Command::Disconnect { target: target("/", &["roomA"], &[]) }),
                SERVER_SIDE_EMIT,
            ],
        );
        assert_eq!(socketioxide.len(), 4);
        for sample in &socketioxide {
            assert!(decode(sample).is_err(), "{}", sample.channel);
        }
    }

    #[test]
    fn socket_io_server_with_redis_adapter() {
        assert_samples(
            &section(FILE, "socket.io server"),
            vec![
                emit("/", &["room1"], &[], "chat", vec![json(r#"{"msg":"hi"}"#)]),
                emit("/", &[], &[], "bin", vec![binary(&[1, 2, 3])]),
                emit("/chat", &[], &["r3"], "m", vec!["x".into(), Value::Int(2)]),
                SERVERS_ONLY,
                join(&["room1"], &[], &["roomZ"]),
                Decoded::Command(Command::Disconnect { target: target("/", &["roomZ"], &[]) }),
                SERVERS_ONLY,
                SERVERS_ONLY,
                SERVER_SIDE_EMIT,
            ],
        );
    }

    #[test]
    fn every_capture_is_a_test_vector() {
        let tested = ["@socket.io/redis-emitter", "socket.io server"];
        assert_eq!(all_samples().len(), tested.iter().map(|heading| section(FILE, heading).len()).sum::<usize>());
    }

    fn reason(channel: &str, payload: &[u8]) -> &'static str {
        node(channel, payload, &Limits::default()).unwrap_err().reason()
    }

    #[test]
    fn refuses_bad_messages() {
        // [uid, {type: 2, data: ["e"], nsp: "/"}, {}] on the wrong channels.
        let emit = b"\x93\xa1u\x83\xa4type\x02\xa4data\x91\xa1e\xa3nsp\xa1/\x80";
        assert!(node("socket.io#/#", emit, &Limits::default()).is_ok());
        assert_eq!(reason("socket.io#/chat#", emit), "malformed");
        assert_eq!(reason("socket.io", emit), "malformed");
        assert_eq!(reason("socket.io#/", emit), "malformed");
        assert_eq!(reason("socket.io##", emit), "malformed");
        // Packet type 3 (ACK), no event name, opts not a map, trailing bytes, ext type.
        assert_eq!(reason("socket.io#/#", b"\x93\xa1u\x83\xa4type\x03\xa4data\x91\xa1e\xa3nsp\xa1/\x80"), "unknown_method");
        assert_eq!(reason("socket.io#/#", b"\x93\xa1u\x83\xa4type\x02\xa4data\x91\x01\xa3nsp\xa1/\x80"), "wrong_type");
        assert_eq!(reason("socket.io#/#", b"\x93\xa1u\x83\xa4type\x02\xa4data\x91\xa1e\xa3nsp\xa1/\x90"), "wrong_type");
        assert_eq!(reason("socket.io#/#", &[&emit[..], b"\xc0"].concat()), "malformed");
        assert_eq!(reason("socket.io#/#", b"\x93\xa1u\x83\xa4type\x02\xa4data\x92\xa1e\xd4\x01\x00\xa3nsp\xa1/\x80"), "wrong_type");
        // Requests: no opts, rooms not strings, not an object.
        assert_eq!(reason("socket.io-request#/#", br#"{"type":2,"rooms":["a"]}"#), "malformed");
        assert_eq!(reason("socket.io-request#/#", br#"{"type":2,"opts":{"rooms":[1]},"rooms":["a"]}"#), "wrong_type");
        assert_eq!(reason("socket.io-request#/#", b"\x91\x02"), "wrong_type");
        assert_eq!(reason("socket.io-request#/#", br#"{"type":"2"}"#), "wrong_type");
    }

    #[test]
    fn deep_payloads_are_refused() {
        let deep = [vec![0x91; 100_000], vec![0xc0]].concat();
        assert_eq!(reason("socket.io#/#", &deep), "too_deep");
        let deep_json = "[".repeat(100_000);
        assert_eq!(reason("socket.io-request#/#", deep_json.as_bytes()), "malformed");
        let deep_object = format!("{{\"type\":2,\"opts\":{}", "[".repeat(100_000));
        assert_eq!(reason("socket.io-request#/#", deep_object.as_bytes()), "too_deep");
        // Within rmpv's budget but over the limit once converted.
        let limits = Limits { max_depth: 3, ..Limits::default() };
        let nested_arg = b"\x93\xa1u\x83\xa4type\x02\xa4data\x92\xa1e\x91\x91\xc0\xa3nsp\xa1/\x80";
        assert_eq!(node("socket.io#/#", nested_arg, &limits).unwrap_err().reason(), "too_deep");
    }

    fn all_samples() -> Vec<(String, Vec<u8>)> {
        samples(FILE).into_iter().map(|s| (s.channel, s.payload)).collect()
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512), request in any::<bool>()) {
            let channel = if request { "socket.io-request#/#" } else { "socket.io#/#" };
            let _ = node(channel, &bytes, &Limits::default());
        }

        #[test]
        fn mutated_samples_never_panic(
            bytes in mutations(all_samples().into_iter().map(|(_, payload)| payload).collect()),
            channel in prop::sample::select(all_samples().into_iter().map(|(channel, _)| channel).collect::<Vec<_>>()),
        ) {
            let _ = node(&channel, &bytes, &Limits::default());
        }
    }
}
