//! Herald's own JSON channels, for backends that only want to notify a user, a role, a project,
//! a room or everyone: `PUBLISH notify:user:42 '{"type":"alert",...}'` reaches room `user_42`
//! with event `notification` and that object as its one argument.

use crate::delivery::{Command, Target};
use crate::notification::EVENT;
use crate::payload::Args;

use super::{check_size, expect_object, json, malformed, DecodeError, Decoded, Limits};

/// Decodes one message published on a `notify:*` channel.
pub fn notify(channel: &str, payload: &[u8], limits: &Limits) -> Result<Decoded, DecodeError> {
    check_size(payload, limits)?;
    let rooms = rooms(channel)?;
    let notification = json::parse(payload, limits)?;
    expect_object(&notification, "payload")?;
    let target = Target::rooms("/", rooms);
    Ok(Decoded::Command(Command::Emit { target, event: EVENT.to_string(), args: Args::one(notification) }))
}

/// The rooms a channel addresses; none for `notify:global`, which is every socket.
fn rooms(channel: &str) -> Result<Vec<String>, DecodeError> {
    let unknown = || DecodeError::UnknownMethod(channel.to_string());
    let rest = channel.strip_prefix("notify:").ok_or_else(unknown)?;
    if rest == "global" {
        return Ok(vec![]);
    }
    let (kind, id) = rest.split_once(':').ok_or_else(unknown)?;
    let prefix = match kind {
        "user" => "user_",
        "role" => "role_",
        "project" => "project_",
        "room" => "",
        _ => return Err(unknown()),
    };
    if id.is_empty() {
        return Err(malformed("channel", format_args!("{channel:?} names no {kind}")));
    }
    Ok(vec![format!("{prefix}{id}")])
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::ingress::decode::test_support::{assert_decoded, emit, json, mutations};

    const PAYLOAD: &str = r#"{"type":"alert","message":"Build ✓","data":{"n":NaN,"ids":[1,2]}}"#;

    #[test]
    fn each_channel_kind_reaches_its_room() {
        for (channel, rooms) in [
            ("notify:user:42", vec!["user_42"]),
            ("notify:role:admin", vec!["role_admin"]),
            ("notify:project:p-7", vec!["project_p-7"]),
            ("notify:room:test-progress-9", vec!["test-progress-9"]),
            ("notify:room:a:b", vec!["a:b"]),
            ("notify:global", vec![]),
        ] {
            let decoded = notify(channel, PAYLOAD.as_bytes(), &Limits::default()).unwrap();
            assert_decoded(decoded, &emit("/", &rooms, &[], "notification", vec![json(PAYLOAD)]), channel);
        }
    }

    #[test]
    fn keeps_the_producers_key_order() {
        let decoded = notify("notify:global", br#"{"z":1,"a":2}"#, &Limits::default()).unwrap();
        let Decoded::Command(Command::Emit { args, .. }) = decoded else { panic!("{decoded:?}") };
        assert_eq!(serde_json::to_string(&args.0[0]).unwrap(), r#"{"z":1,"a":2}"#);
    }

    fn reason(channel: &str, payload: &str) -> &'static str {
        notify(channel, payload.as_bytes(), &Limits::default()).unwrap_err().reason()
    }

    #[test]
    fn refuses_bad_channels_and_payloads() {
        assert_eq!(reason("notify:user:", "{}"), "malformed");
        assert_eq!(reason("notify:room:", "{}"), "malformed");
        assert_eq!(reason("notify:team:x", "{}"), "unknown_method");
        assert_eq!(reason("notify:user", "{}"), "unknown_method");
        assert_eq!(reason("notify:global:x", "{}"), "unknown_method");
        assert_eq!(reason("other:user:1", "{}"), "unknown_method");
        assert_eq!(reason("notify:user:1", "[1]"), "wrong_type");
        assert_eq!(reason("notify:user:1", "\"hi\""), "wrong_type");
        assert_eq!(reason("notify:user:1", "{\"a\":"), "malformed");
        assert_eq!(reason("notify:user:1", &format!("{{\"a\":{}", "[".repeat(100_000))), "too_deep");
        let limits = Limits { max_bytes: 4, ..Limits::default() };
        assert_eq!(notify("notify:global", b"{\"a\":1}", &limits).unwrap_err().reason(), "too_large");
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(channel in "notify:[a-z]{0,8}:?.{0,8}", bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = notify(&channel, &bytes, &Limits::default());
        }

        #[test]
        fn mutated_payloads_never_panic(bytes in mutations(vec![PAYLOAD.as_bytes().to_vec()])) {
            let _ = notify("notify:user:1", &bytes, &Limits::default());
        }
    }
}
