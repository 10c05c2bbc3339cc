//! `GET /api/v1/openapi.json`: the served document describes exactly the routes the server
//! serves, with the methods it serves, and the security it enforces.

mod common;

use std::collections::BTreeSet;

use common::{spawn_app, spawn_app_with, TestApp, API_KEY};
use reqwest::Method;
use serde_json::Value;

/// The documented operations: (method, path template).
fn operations(document: &Value) -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            ops.insert((method.to_uppercase(), path.clone()));
        }
    }
    ops
}

fn concrete(template: &str) -> String {
    regex::Regex::new(r"\{[^}]+\}").unwrap().replace_all(template, "openapi-user").into_owned()
}

async fn status(app: &TestApp, method: &str, path: &str, key: bool) -> u16 {
    let mut request = app.http.request(Method::from_bytes(method.as_bytes()).unwrap(), app.url(path));
    if key {
        request = request.bearer_auth(API_KEY);
    }
    if method == "POST" {
        request = request.header("content-type", "application/json").body("{}");
    }
    request.send().await.unwrap().status().as_u16()
}

async fn document(app: &TestApp) -> Value {
    let response = app.http.get(app.url("/api/v1/openapi.json")).send().await.unwrap();
    assert_eq!(response.status(), 200, "served without an API key");
    assert_eq!(response.headers()["content-type"], "application/json");
    response.json().await.unwrap()
}

#[tokio::test]
async fn every_documented_operation_is_served_with_the_documented_methods_and_security() {
    // Every room has presence here, so that the room presence route answers for any room.
    let app = spawn_app_with(|s| s.presence.rooms = vec!["*".into()]).await;
    let document = document(&app).await;
    assert_eq!(document["openapi"], "3.1.0");
    let ops = operations(&document);
    assert!(ops.len() >= 9, "{ops:?}");
    for (method, template) in &ops {
        let path = concrete(template);
        let operation = &document["paths"][template][method.to_lowercase()];
        let with_key = status(&app, method, &path, true).await;
        assert!(![404, 405].contains(&with_key), "{method} {template} is documented but answers {with_key}");
        let api_key = operation["security"] == serde_json::json!([{ "api_key": [] }]);
        let secured = api_key || operation["security"] == serde_json::json!([{ "admin": [] }]);
        let without_key = status(&app, method, &path, false).await;
        if secured {
            assert_eq!(without_key, 401, "{method} {template} needs the API key");
            assert!(operation["responses"]["401"].is_object(), "{method} {template} documents its 401");
        } else {
            assert!(operation.get("security").is_none(), "{method} {template}: {}", operation["security"]);
            assert_ne!(without_key, 401, "{method} {template} is documented without security");
        }
        assert_eq!(template.starts_with("/api/v1/") && template != "/api/v1/openapi.json", api_key, "{method} {template}");
        assert_eq!(template.starts_with("/admin/api/"), secured && !api_key, "{method} {template}: the dashboard's routes need the admin credential");
        for code in operation["responses"].as_object().unwrap().keys() {
            assert!(code.parse::<u16>().is_ok(), "{method} {template}: response {code}");
        }
        assert!(operation["operationId"].is_string() && operation["summary"].is_string(), "{method} {template}");
    }
    // No other method is served on a documented path.
    let paths: BTreeSet<&String> = ops.iter().map(|(_, p)| p).collect();
    for template in paths {
        for method in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
            if !ops.contains(&(method.to_string(), template.clone())) {
                let got = status(&app, method, &concrete(template), true).await;
                assert_eq!(got, 405, "{method} {template} is not documented, yet answers {got}");
            }
        }
    }
    let scheme = &document["components"]["securitySchemes"]["api_key"];
    assert_eq!((scheme["type"].as_str(), scheme["scheme"].as_str()), (Some("http"), Some("bearer")), "{scheme}");
}

/// Every `$ref` points at a schema the document has, and every schema is used.
#[tokio::test]
async fn every_schema_reference_resolves() {
    let app = spawn_app().await;
    let document = document(&app).await;
    let text = document.to_string();
    let refs: BTreeSet<String> = regex::Regex::new(r##""\$ref":"#/components/schemas/([A-Za-z0-9_]+)""##)
        .unwrap()
        .captures_iter(&text)
        .map(|c| c[1].to_string())
        .collect();
    let schemas: BTreeSet<String> = document["components"]["schemas"].as_object().unwrap().keys().cloned().collect();
    assert!(!refs.is_empty());
    assert_eq!(refs, schemas, "referenced schemas vs described schemas");
}

/// The paths the test suites request, read from their source: each one the server routes
/// (any answer but 404) must be documented, and each documented one must be exercised. A route
/// added without its `#[utoipa::path]` (or with a plain `.route`) fails here.
#[tokio::test]
async fn the_routes_the_tests_exercise_are_exactly_the_documented_ones() {
    let app = spawn_app().await;
    let document = document(&app).await;
    let ops = operations(&document);
    let templates: Vec<(String, regex::Regex)> = ops
        .iter()
        .map(|(_, t)| {
            (
                t.clone(),
                regex::Regex::new(&format!("^{}$", regex::Regex::new(r"\\\{[^}]+\\\}").unwrap().replace_all(&regex::escape(t), "[^/]+")))
                    .unwrap(),
            )
        })
        .collect();

    let literal = regex::Regex::new(r#""(/(?:api/|admin/api/|health|ready|metrics)[^"?\s]*)"#).unwrap();
    let mut exercised = BTreeSet::new();
    let mut dirs = vec![std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests"))];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let source = std::fs::read_to_string(&path).unwrap();
                exercised.extend(literal.captures_iter(&source).map(|c| c[1].to_string()));
            }
        }
    }
    let placeholder = regex::Regex::new(r"\{[^}]*\}").unwrap();
    let mut covered = BTreeSet::new();
    for path in &exercised {
        match templates.iter().find(|(_, re)| re.is_match(path)) {
            Some((template, _)) => {
                covered.insert(template.clone());
            }
            None => {
                // Not documented: it must not be a route (a test of 404s, say).
                let concrete = placeholder.replace_all(path, "x").into_owned();
                for method in ["GET", "POST"] {
                    let got = status(&app, method, &concrete, true).await;
                    assert_eq!(got, 404, "{method} {path} is requested by a test and served ({got}), but not documented");
                }
            }
        }
    }
    let documented: BTreeSet<String> = ops.iter().map(|(_, t)| t.clone()).collect();
    assert_eq!(covered, documented, "documented routes no test requests: {:?}", documented.difference(&covered).collect::<Vec<_>>());
}

/// The request examples in the document are accepted by the server as they stand.
#[tokio::test]
async fn the_documented_request_examples_are_accepted() {
    let app = spawn_app().await;
    let document = document(&app).await;
    for (template, schema, expected) in [
        ("/api/v1/notify", "NotifyRequest", 202),
        ("/api/v1/emit", "EmitRequest", 202),
        ("/api/v1/users/{user}/notifications/read", "ReadRequest", 200),
    ] {
        let example = &document["components"]["schemas"][schema]["example"];
        assert!(example.is_object(), "{schema} has an example");
        let mut body = example.clone();
        if schema == "ReadRequest" {
            // An id the store knows.
            body["up_to"] = Value::String(app.notify_user("openapi-user", "m").await);
        }
        let response = app.http.post(app.url(&concrete(template))).bearer_auth(API_KEY).json(&body).send().await.unwrap();
        let status = response.status().as_u16();
        assert_eq!(status, expected, "{template} with {body}: {}", response.text().await.unwrap());
    }
}

/// The operations endpoints answer the content type their documented 200 says.
#[tokio::test]
async fn the_operations_endpoints_answer_the_documented_content_type() {
    let app = spawn_app().await;
    let document = document(&app).await;
    for path in ["/health", "/ready", "/metrics", "/api/v1/openapi.json"] {
        let content = document["paths"][path]["get"]["responses"]["200"]["content"].as_object().expect(path);
        assert_eq!(content.len(), 1, "{path}");
        let documented = content.keys().next().unwrap();
        let response = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(response.headers()["content-type"].to_str().unwrap(), documented, "{path}");
    }
}
