//! SPEC §2: where a token may be, and what a refused client reads.

mod common;

use common::{spawn_app, spawn_app_with, TestClient, SECRET};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;

fn now() -> u64 {
    herald::auth::now_secs()
}

fn hs256(claims: serde_json::Value) -> String {
    encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
}

#[tokio::test]
async fn token_is_accepted_from_each_carrier() {
    let app = spawn_app().await;
    let token = app.token("7");

    let by_auth = TestClient::connect(app.addr, "", Some(json!({ "token": token })), "/").await;
    let by_query = TestClient::connect(app.addr, &format!("token={token}"), None, "/").await;
    assert!(by_auth.is_ok(), "auth.token: {by_auth:?}", by_auth = by_auth.as_ref().err());
    assert!(by_query.is_ok(), "?token=: {:?}", by_query.as_ref().err());

    // Authorization header on the WebSocket upgrade request.
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = format!("ws://{}/socket.io/?EIO=4&transport=websocket", app.addr).into_client_request().unwrap();
    request.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    let by_header = TestClient::connect_request(request, None, "/").await;
    assert!(by_header.is_ok(), "Authorization header: {:?}", by_header.as_ref().err());
}

#[tokio::test]
async fn refusals_carry_the_spec_message() {
    let app = spawn_app().await;
    let refused = |query: String| async move { TestClient::connect(app.addr, &query, None, "/").await.err() };

    assert_eq!(refused(String::new()).await.as_deref(), Some("missing token"));
    assert_eq!(refused("token=not-a-jwt".into()).await.as_deref(), Some("invalid token"));
    let expired = hs256(json!({ "user_id": 1, "exp": now() - 60 }));
    assert_eq!(refused(format!("token={expired}")).await.as_deref(), Some("token expired"));
    let no_exp = hs256(json!({ "user_id": 1 }));
    assert_eq!(refused(format!("token={no_exp}")).await.as_deref(), Some("invalid token"));
    let no_user = hs256(json!({ "exp": now() + 60 }));
    assert_eq!(refused(format!("token={no_user}")).await.as_deref(), Some("invalid token"));
    let not_yet = hs256(json!({ "user_id": 1, "exp": now() + 600, "nbf": now() + 300 }));
    assert_eq!(refused(format!("token={not_yet}")).await.as_deref(), Some("invalid token"));
    let wrong_key = encode(&Header::default(), &json!({ "user_id": 1, "exp": now() + 60 }), &EncodingKey::from_secret(b"other")).unwrap();
    assert_eq!(refused(format!("token={wrong_key}")).await.as_deref(), Some("invalid token"));
    // alg: none, hand-built: header {"alg":"none","typ":"JWT"}, claims {"user_id":1,"exp":9999999999}
    let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJ1c2VyX2lkIjoxLCJleHAiOjk5OTk5OTk5OTl9.";
    assert_eq!(refused(format!("token={none}")).await.as_deref(), Some("invalid token"));
    let huge = json!({ "token": "a".repeat(100_000) });
    let refused_huge = TestClient::connect(app.addr, "", Some(huge), "/").await.err();
    assert_eq!(refused_huge.as_deref(), Some("invalid token"));
    // HS384 is a valid HMAC algorithm but not a configured one.
    let hs384 =
        encode(&Header::new(Algorithm::HS384), &json!({ "user_id": 1, "exp": now() + 60 }), &EncodingKey::from_secret(SECRET.as_bytes()))
            .unwrap();
    assert_eq!(refused(format!("token={hs384}")).await.as_deref(), Some("invalid token"));

    // After all that, the server still serves.
    app.connect("1").await;
    let (_, metrics) = (0, app.http.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap());
    assert!(metrics.contains("herald_refusals_total{reason=\"invalid token\"} 8"), "{metrics}");
}

/// An RS256 deployment: tokens signed with the private key pass; an HS256 token whose secret is
/// the public key (the classic algorithm-confusion attack) does not.
#[tokio::test]
async fn rs256_with_a_public_key_and_no_algorithm_confusion() {
    let dir = std::env::temp_dir().join(format!("herald-rsa-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let private = dir.join("private.pem");
    let public = dir.join("public.pem");
    let status = std::process::Command::new("openssl")
        .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out"])
        .arg(&private)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl runs");
    assert!(status.success());
    let status =
        std::process::Command::new("openssl").args(["pkey", "-pubout", "-in"]).arg(&private).arg("-out").arg(&public).status().unwrap();
    assert!(status.success());

    let public_path = public.to_string_lossy().to_string();
    let app = spawn_app_with(|s| {
        s.auth.jwt_secret = String::new();
        s.auth.public_key_pem = public_path;
        s.auth.algorithms = vec!["RS256".into()];
    })
    .await;
    let claims = json!({ "user_id": "u-1", "exp": now() + 60 });
    let good =
        encode(&Header::new(Algorithm::RS256), &claims, &EncodingKey::from_rsa_pem(&std::fs::read(&private).unwrap()).unwrap()).unwrap();
    let client = TestClient::connect(app.addr, &format!("token={good}"), None, "/").await;
    assert!(client.is_ok(), "{:?}", client.err());

    let confused = encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(&std::fs::read(&public).unwrap())).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let refused = TestClient::connect(app.addr, &format!("token={confused}"), None, "/").await.err();
    assert_eq!(refused.as_deref(), Some("invalid token"));
}

#[tokio::test]
async fn anonymous_sockets_connect_when_auth_is_optional() {
    let app = spawn_app_with(|s| s.auth.required = false).await;
    let mut client = TestClient::connect(app.addr, "", None, "/").await.expect("anonymous connects");
    let welcome = client.next_event("notification").await.unwrap();
    assert_eq!(welcome[0]["data"]["user_id"], serde_json::Value::Null);
    // A bad token is still refused: optional auth does not mean unchecked auth.
    let refused = TestClient::connect(app.addr, "token=bad", None, "/").await.err();
    assert_eq!(refused.as_deref(), Some("invalid token"));
}

#[tokio::test]
async fn refuses_to_start_without_a_key_when_auth_is_required() {
    let mut settings = common::test_settings();
    settings.auth.jwt_secret = String::new();
    let error = herald::startup::Application::build(settings).await.err().expect("refused");
    assert!(error.to_string().contains("auth.required"), "{error}");
}
