//! Property tests (fuzzing) for everything that reads untrusted input on the socket and HTTP
//! side: random frames over real connections, random bodies to the API, random tokens. The
//! properties: no panic, a clear answer, and the server keeps serving others.
//!
//! Longer runs: `PROPTEST_CASES=5000 cargo test --release --test fuzz_inputs`.

mod common;

use common::{spawn_app, TestApp};
use proptest::prelude::*;
use serde_json::json;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// Frames that look like Engine.IO/Socket.IO packets often enough to get past the first byte.
fn frame() -> impl Strategy<Value = String> {
    let json_ish = prop::collection::vec(
        prop_oneof![
            Just("[".to_string()),
            Just("]".to_string()),
            Just("{".to_string()),
            Just("}".to_string()),
            Just("\"room:join\"".to_string()),
            Just("\"ping\"".to_string()),
            Just("\"notifications:read\"".to_string()),
            Just("\"auth:refresh\"".to_string()),
            Just(",".to_string()),
            Just(":".to_string()),
            Just("null".to_string()),
            Just("{\"_placeholder\":true,\"num\":0}".to_string()),
            "[a-z0-9_-]{0,12}".prop_map(|s| format!("\"{s}\"")),
            any::<i64>().prop_map(|n| n.to_string()),
        ],
        0..30,
    )
    .prop_map(|parts| parts.concat());
    (
        prop_oneof![Just("42"), Just("421"), Just("43"), Just("40"), Just("41"), Just("45"), Just("451-"), Just("4"), Just("2"), Just("")],
        json_ish,
        any::<String>(),
    )
        .prop_map(|(prefix, body, noise)| if noise.len() % 3 == 0 { format!("{prefix}{body}{noise}") } else { format!("{prefix}{body}") })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn random_frames_never_hurt_other_clients(frames in prop::collection::vec(frame(), 1..20)) {
        runtime().block_on(async {
            let app = spawn_app().await;
            let mut bystander = app.connect("b").await;
            let mut rude = app.connect("r").await;
            for frame in &frames {
                if !rude.try_send(frame).await {
                    break;
                }
            }
            let id = app.notify_user("b", "after the frames").await;
            assert_eq!(bystander.next_notification().await.expect("bystander served")["id"], id.as_str());
        });
    }

    #[test]
    fn random_api_bodies_get_a_clear_answer(body in any::<String>(), value in json_value()) {
        runtime().block_on(async {
            let app = spawn_app().await;
            for path in ["/api/v1/notify", "/api/v1/emit", "/api/v1/users/1/notifications/read"] {
                for raw in [body.clone(), value.to_string(), json!({ "to": value, "type": "t", "message": "m", "event": value, "args": value }).to_string()] {
                    let (status, answer) = app.post_raw(path, &raw).await;
                    assert!(matches!(status, 200 | 202 | 400), "{path} {raw}: {status}");
                    if status == 400 {
                        assert!(answer["error"].as_str().is_some_and(|e| !e.is_empty()), "{path}: {answer}");
                    }
                }
            }
            assert_alive(&app).await;
        });
    }

    #[test]
    fn random_tokens_are_refused_with_a_spec_message(token in "[A-Za-z0-9._~+/=-]{0,300}", auth in json_value()) {
        runtime().block_on(async {
            let app = spawn_app().await;
            let by_auth = common::TestClient::connect(app.addr, "", Some(json!({ "token": token, "last_id": auth })), "/").await.err();
            let by_garbage_auth = common::TestClient::connect(app.addr, "", Some(auth.clone()), "/").await.err();
            for refusal in [by_auth, by_garbage_auth] {
                let message = refusal.expect("refused");
                assert!(["missing token", "invalid token", "token expired"].contains(&message.as_str()), "{message}");
            }
            assert_alive(&app).await;
        });
    }
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        "[ -~]{0,20}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            prop::collection::hash_map("[a-z_]{1,8}", inner, 0..6).prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

async fn assert_alive(app: &TestApp) {
    let mut client = app.connect("alive").await;
    let id = app.notify_user("alive", "alive").await;
    assert_eq!(client.next_notification().await.expect("served")["id"], id.as_str());
}
