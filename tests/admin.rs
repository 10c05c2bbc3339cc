//! The dashboard (`/admin`): the page, its credential, its data and its actions, in the embedded
//! default (headless Chromium drives it against two instances in
//! `client-test/backends/test/12-dashboard.test.js`).

mod common;

use common::{spawn_app_with, TestApp, SECRET};
use herald::auth::mint_dev_token;
use serde_json::{json, Value};

const ADMIN_KEY: &str = "test-admin-key";

async fn admin(app: &TestApp, method: &str, path: &str, credential: Option<&str>, body: Option<Value>) -> (u16, Value) {
    let mut request = match method {
        "GET" => app.http.get(app.url(path)),
        _ => app.http.post(app.url(path)).json(&body.unwrap_or(json!({}))),
    };
    if let Some(credential) = credential {
        request = request.bearer_auth(credential);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_page_is_served_and_its_data_needs_the_admin_credential() {
    let app = spawn_app_with(|s| s.admin.keys = vec![ADMIN_KEY.into()]).await;
    let page = app.http.get(app.url("/admin")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("/admin/admin.js") && html.contains("/admin/admin.css"), "{html}");
    for asset in ["/admin/admin.js", "/admin/admin.css"] {
        assert_eq!(app.http.get(app.url(asset)).send().await.unwrap().status(), 200, "{asset}");
    }

    assert_eq!(admin(&app, "GET", "/admin/api/overview", None, None).await.0, 401);
    assert_eq!(admin(&app, "GET", "/admin/api/overview", Some("wrong"), None).await.0, 401);
    assert_eq!(admin(&app, "GET", "/admin/api/overview", Some(&app.token("not-admin")), None).await.0, 401, "a user token");
    let admin_token = mint_dev_token(SECRET, "ops", Some("admin"), &[], 60).unwrap();
    assert_eq!(admin(&app, "GET", "/admin/api/overview", Some(&admin_token), None).await.0, 200, "a token with the admin role");

    let _tab = app.connect("9").await;
    let (status, body) = admin(&app, "GET", "/admin/api/overview", Some(ADMIN_KEY), None).await;
    assert_eq!(status, 200);
    assert_eq!(body["mode"], "embedded");
    assert_eq!(body["online_users"], 1);
    let me = &body["instances"][0];
    assert_eq!(me["node"], "test-node");
    assert_eq!(me["connections"]["websocket"], 1);
    assert_eq!(me["counters"]["connects"], 1);
    let text = body.to_string();
    assert!(!text.contains(ADMIN_KEY) && !text.contains(SECRET) && !text.contains(&app.token("9")), "no secret or token in {text}");
}

#[tokio::test]
async fn the_actions_reach_real_sockets() {
    let app = spawn_app_with(|s| s.admin.keys = vec![ADMIN_KEY.into()]).await;
    let mut tab = app.connect("31").await;
    let (status, body) = admin(&app, "POST", "/admin/api/notify", Some(ADMIN_KEY), Some(json!({ "user": "31", "message": "hello from ops" }))).await;
    assert_eq!(status, 202, "{body}");
    let n = tab.next_notification().await.unwrap();
    assert_eq!((n["message"].clone(), n["type"].clone()), (json!("hello from ops"), json!("test")));
    assert_eq!(admin(&app, "POST", "/admin/api/notify", Some(ADMIN_KEY), Some(json!({}))).await.0, 400);
    assert_eq!(admin(&app, "POST", "/admin/api/notify", None, Some(json!({ "user": "31" }))).await.0, 401);

    let (status, _) = admin(&app, "POST", "/admin/api/disconnect", Some(ADMIN_KEY), Some(json!({ "user": "31" }))).await;
    assert_eq!(status, 202);
    assert!(tab.closed_by_server().await, "the user's socket was disconnected");
}

#[tokio::test]
async fn without_admin_keys_or_roles_the_dashboard_is_closed() {
    let app = spawn_app_with(|s| {
        s.admin.keys = vec![];
        s.admin.roles = vec![];
    })
    .await;
    let (status, body) = admin(&app, "GET", "/admin/api/overview", Some("anything"), None).await;
    assert_eq!(status, 401);
    assert!(body["error"].as_str().unwrap().contains("disabled"), "{body}");
}
