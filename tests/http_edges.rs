//! HTTP edges: CORS answers for `server.cors_origins` (`*` never with credentials), and what
//! paths outside the routes answer (404 without a key; the API prefix needs a key first).

mod common;

use common::{spawn_app, spawn_app_with, TestApp, API_KEY};
use reqwest::header::{HeaderMap, ACCESS_CONTROL_ALLOW_CREDENTIALS as ACAC, ACCESS_CONTROL_ALLOW_ORIGIN as ACAO, VARY};
use reqwest::Method;
use serde_json::{json, Value};

const APP: &str = "https://app.example.com";
const EVIL: &str = "https://evil.example";
const POLLING: &str = "/socket.io/?EIO=4&transport=polling";

/// A browser's preflight for a POST with a JSON body and an Authorization header.
async fn preflight(app: &TestApp, path: &str, origin: &str) -> (u16, HeaderMap) {
    let response = app
        .http
        .request(Method::OPTIONS, app.url(path))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization, content-type")
        .send()
        .await
        .expect("preflight sent");
    (response.status().as_u16(), response.headers().clone())
}

/// A GET with an `Origin` header (what a page's fetch or a polling request sends).
async fn get_from(app: &TestApp, path: &str, origin: &str) -> (u16, HeaderMap) {
    let response = app.http.get(app.url(path)).header("origin", origin).send().await.expect("request sent");
    (response.status().as_u16(), response.headers().clone())
}

fn header<'a>(headers: &'a HeaderMap, name: &reqwest::header::HeaderName) -> Option<&'a str> {
    headers.get(name).map(|v| v.to_str().expect("ASCII header"))
}

fn assert_wildcard_without_credentials(headers: &HeaderMap, what: &str) {
    assert_eq!(header(headers, &ACAO), Some("*"), "{what}: {headers:?}");
    assert_eq!(header(headers, &ACAC), None, "{what}: credentials must not go with *: {headers:?}");
}

fn assert_echoed_with_credentials(headers: &HeaderMap, origin: &str, what: &str) {
    assert_eq!(header(headers, &ACAO), Some(origin), "{what}: {headers:?}");
    assert_eq!(header(headers, &ACAC), Some("true"), "{what}: {headers:?}");
    let vary = headers.get_all(VARY).iter().map(|v| v.to_str().unwrap().to_ascii_lowercase()).collect::<Vec<_>>().join(",");
    assert!(vary.contains("origin"), "{what}: an echoed origin needs Vary: Origin: {headers:?}");
}

fn assert_no_cors(headers: &HeaderMap, what: &str) {
    assert_eq!(header(headers, &ACAO), None, "{what}: {headers:?}");
    assert_eq!(header(headers, &ACAC), None, "{what}: {headers:?}");
}

#[tokio::test]
async fn wildcard_origins_allow_any_origin_without_credentials() {
    let app = spawn_app().await; // server.cors_origins = ["*"], the default
    for path in [POLLING, "/api/v1/notify", "/health"] {
        let (status, headers) = preflight(&app, path, EVIL).await;
        assert!((200..300).contains(&status), "preflight {path}: {status}");
        assert_wildcard_without_credentials(&headers, &format!("preflight {path}"));
        let methods = header(&headers, &reqwest::header::ACCESS_CONTROL_ALLOW_METHODS).unwrap_or_default();
        assert!(methods.contains("POST"), "preflight {path}: {headers:?}");
        let allowed = header(&headers, &reqwest::header::ACCESS_CONTROL_ALLOW_HEADERS).unwrap_or_default().to_ascii_lowercase();
        assert!(allowed.contains("authorization") && allowed.contains("content-type"), "preflight {path}: {headers:?}");
    }
    // Simple requests: the Engine.IO handshake (polling) and /health.
    let (status, headers) = get_from(&app, POLLING, EVIL).await;
    assert_eq!(status, 200, "polling handshake from any origin");
    assert_wildcard_without_credentials(&headers, "polling handshake");
    let (status, headers) = get_from(&app, "/health", APP).await;
    assert_eq!(status, 200);
    assert_wildcard_without_credentials(&headers, "/health");
}

#[tokio::test]
async fn listed_origins_get_credentials_and_others_get_nothing() {
    let app = spawn_app_with(|s| s.server.cors_origins = vec![APP.into(), "http://localhost:3000".into()]).await;
    for path in [POLLING, "/api/v1/notify"] {
        let (status, headers) = preflight(&app, path, APP).await;
        assert!((200..300).contains(&status), "preflight {path}: {status}");
        assert_echoed_with_credentials(&headers, APP, &format!("preflight {path} from a listed origin"));
        let (_, headers) = preflight(&app, path, "http://localhost:3000").await;
        assert_echoed_with_credentials(&headers, "http://localhost:3000", &format!("preflight {path} from the second listed origin"));
        let (_, headers) = preflight(&app, path, EVIL).await;
        assert_no_cors(&headers, &format!("preflight {path} from an unlisted origin"));
    }
    let (status, headers) = get_from(&app, POLLING, APP).await;
    assert_eq!(status, 200, "polling handshake from a listed origin");
    assert_echoed_with_credentials(&headers, APP, "polling handshake");
    let (_, headers) = get_from(&app, "/health", EVIL).await;
    assert_no_cors(&headers, "/health from an unlisted origin");
    // Not only no CORS headers: Socket.IO requests from an unlisted origin are refused.
    let (status, headers) = get_from(&app, POLLING, EVIL).await;
    assert_eq!(status, 403, "polling from an unlisted origin");
    assert_no_cors(&headers, "refused polling");
    // An origin that only starts like a listed one is another origin.
    let (_, headers) = preflight(&app, POLLING, "https://app.example.com.evil.example").await;
    assert_no_cors(&headers, "look-alike origin");
}

#[tokio::test]
async fn wildcard_plus_listed_origins_give_credentials_to_the_listed_ones_only() {
    let app = spawn_app_with(|s| s.server.cors_origins = vec!["*".into(), APP.into()]).await;
    let (_, headers) = preflight(&app, POLLING, APP).await;
    assert_echoed_with_credentials(&headers, APP, "listed origin");
    let (_, headers) = get_from(&app, POLLING, APP).await;
    assert_echoed_with_credentials(&headers, APP, "listed origin, simple request");
    for (status, headers) in [preflight(&app, POLLING, EVIL).await, get_from(&app, POLLING, EVIL).await] {
        assert!((200..300).contains(&status), "any origin is allowed: {status}");
        assert_eq!(header(&headers, &ACAO), Some(EVIL), "{headers:?}");
        assert_eq!(header(&headers, &ACAC), None, "no credentials for an unlisted origin: {headers:?}");
    }
}

#[tokio::test]
async fn a_bad_origin_in_the_settings_is_refused_at_start() {
    let mut settings = common::test_settings();
    settings.server.cors_origins = vec!["https://app.example.com/".into()];
    let err = herald::startup::Application::build(settings).await.err().expect("refused");
    assert!(err.to_string().contains("server.cors_origins"), "{err}");
}

async fn request(app: &TestApp, method: Method, path: &str, key: Option<&str>) -> (u16, HeaderMap, Value) {
    let mut request = app.http.request(method, app.url(path));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.header("content-type", "application/json").body("{}").send().await.expect("request sent");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn unknown_paths_are_404_without_a_key() {
    let app = spawn_app().await;
    for path in ["/", "/nope", "/favicon.ico", "/api", "/api/", "/api/v2/notify", "/api/v1notify", "/healthz", "/metrics/extra"] {
        for method in [Method::GET, Method::POST] {
            let (status, _, body) = request(&app, method.clone(), path, None).await;
            assert_eq!(status, 404, "{method} {path}: {body}");
            assert_eq!(body, json!({ "error": "not found" }), "{method} {path}");
        }
    }
}

#[tokio::test]
async fn the_api_prefix_needs_a_key_before_anything_else() {
    let app = spawn_app().await;
    // Without a key, every /api/v1 path is 401, existing or not: nothing tells a caller
    // without a key which API paths exist.
    for (method, path) in [
        (Method::POST, "/api/v1/notify"),
        (Method::POST, "/api/v1/nope"),
        (Method::GET, "/api/v1"),
        (Method::GET, "/api/v1/"),
        (Method::GET, "/api/v1/notify"),
        (Method::DELETE, "/api/v1/users/1/notifications"),
    ] {
        for key in [None, Some("wrong-key")] {
            let (status, _, body) = request(&app, method.clone(), path, key).await;
            assert_eq!(status, 401, "{method} {path} with {key:?}: {body}");
            assert_eq!(body, json!({ "error": "missing or invalid API key" }));
        }
    }
    // With the key: unknown API paths 404, wrong methods 405 (with Allow), JSON both times.
    for path in ["/api/v1/nope", "/api/v1", "/api/v1/users/1/nope"] {
        let (status, _, body) = request(&app, Method::POST, path, Some(API_KEY)).await;
        assert_eq!((status, body), (404, json!({ "error": "not found" })), "{path}");
    }
    let (status, headers, body) = request(&app, Method::GET, "/api/v1/notify", Some(API_KEY)).await;
    assert_eq!((status, body), (405, json!({ "error": "method not allowed" })));
    assert!(header(&headers, &reqwest::header::ALLOW).is_some_and(|a| a.contains("POST")), "{headers:?}");
    // The real routes still work.
    let (status, body) = app.post("/api/v1/notify", json!({ "to": { "user": 7 }, "type": "t", "message": "m" })).await;
    assert_eq!(status, 202, "{body}");
    let (status, _, body) = request(&app, Method::GET, "/api/v1/users/7/notifications", Some(API_KEY)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["items"][0]["message"], "m");
    // Refusals are counted: 6 paths x 2 tries.
    let text = app.http.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(text.contains("herald_api_refusals_total{reason=\"unauthorized\"} 12\n"), "{text}");
}

#[tokio::test]
async fn operations_paths_and_sockets_need_no_key() {
    let app = spawn_app().await;
    for path in ["/health", "/ready"] {
        let (status, body) = app.get(path).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    let metrics = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    assert!(metrics.text().await.unwrap().contains("herald_uptime_seconds"));
    let (status, _) = get_from(&app, POLLING, EVIL).await;
    assert_eq!(status, 200, "Engine.IO polling handshake");
    let mut client = app.connect("42").await;
    app.notify_user("42", "through the socket").await;
    assert_eq!(client.next_notification().await.expect("delivered")["message"], "through the socket");
    client.disconnect().await;
}
