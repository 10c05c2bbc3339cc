//! What every integration test shares: `spawn_app()` runs a real Herald on a free port, and
//! `TestClient` speaks the Engine.IO v4 / Socket.IO v5 protocol over a real WebSocket, frame by
//! frame, so tests can also send what a well-behaved client never would.
#![allow(dead_code)] // each test binary uses a different part of this module

pub mod herald_process;
pub mod redis_server;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use herald::auth::mint_dev_token;
use herald::configuration::Settings;
use herald::startup::Application;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const SECRET: &str = "test-secret";
pub const API_KEY: &str = "test-api-key";
const WAIT: Duration = Duration::from_secs(5);

pub struct TestApp {
    pub addr: SocketAddr,
    pub http: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

pub fn test_settings() -> Settings {
    let mut settings = Settings::default();
    settings.server.host = "127.0.0.1".into();
    settings.server.port = 0;
    settings.server.node_id = "test-node".into();
    settings.server.shutdown_grace_secs = 3;
    settings.auth.jwt_secret = SECRET.into();
    settings.api.keys = vec![API_KEY.into()];
    settings.storage.in_memory = true;
    settings
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(customize: impl FnOnce(&mut Settings)) -> TestApp {
    let mut settings = test_settings();
    customize(&mut settings);
    let app = Application::build(settings).await.expect("application builds");
    let addr = app.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    TestApp { addr, http: reqwest::Client::new(), stop: Some(stop), server: Some(server) }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn token(&self, user: &str) -> String {
        mint_dev_token(SECRET, user, None, &[], 3600).unwrap()
    }

    pub fn token_with(&self, user: &str, role: Option<&str>, projects: &[&str]) -> String {
        let projects: Vec<String> = projects.iter().map(|p| p.to_string()).collect();
        mint_dev_token(SECRET, user, role, &projects, 3600).unwrap()
    }

    /// Connects to `/` with the token in the query string (as Flask-SocketIO clients do), and
    /// reads the welcome.
    pub async fn connect(&self, user: &str) -> TestClient {
        let query = format!("token={}", self.token(user));
        let mut client = TestClient::connect(self.addr, &query, None, "/").await.expect("connects");
        let welcome = client.next_event("notification").await.expect("welcome");
        assert_eq!(welcome[0]["type"], "welcome");
        client
    }

    /// Connects with `auth: {token, last_id}` (a client that remembers where it stopped).
    pub async fn connect_after(&self, user: &str, last_id: Option<&str>) -> TestClient {
        let mut auth = json!({ "token": self.token(user) });
        if let Some(id) = last_id {
            auth["last_id"] = json!(id);
        }
        TestClient::connect(self.addr, "", Some(auth), "/").await.expect("connects")
    }

    /// Waits until this instance holds `n` sockets (e.g. after a disconnect was processed).
    pub async fn wait_for_connections(&self, n: u64) {
        for _ in 0..100 {
            if self.get("/health").await.1["connections"] == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("instance never reached {n} connections");
    }

    /// Sends a notification to one user and returns its id.
    pub async fn notify_user(&self, user: &str, message: &str) -> String {
        let (status, body) = self.post("/api/v1/notify", json!({ "to": { "user": user }, "type": "test", "message": message })).await;
        assert_eq!(status, 202, "{body}");
        body["id"].as_str().expect("stored notification id").to_string()
    }

    /// POSTs `body` (raw text) with the API key.
    pub async fn post_raw(&self, path: &str, body: &str) -> (u16, Value) {
        let response = self
            .http
            .post(self.url(path))
            .bearer_auth(API_KEY)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("request sent");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.post_raw(path, &body.to_string()).await
    }

    /// GETs `path` with the API key.
    pub async fn get_with_key(&self, path: &str) -> (u16, Value) {
        let response = self.http.get(self.url(path)).bearer_auth(API_KEY).send().await.expect("request sent");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self.http.get(self.url(path)).send().await.expect("request sent");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Stops the server the way SIGTERM does and waits for it to finish.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        let _ = self.stop.take().unwrap().send(());
        self.server.take().unwrap().await?
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A Socket.IO client over one WebSocket, connected to one namespace.
pub struct TestClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    namespace: String,
    pub sid: String,
    next_ack: u64,
    /// Frames read while waiting for something else (e.g. events that arrive before an ack).
    backlog: VecDeque<String>,
}

impl TestClient {
    /// Opens the Engine.IO session and connects to `namespace`; `Err` carries the
    /// `connect_error` message.
    pub async fn connect(addr: SocketAddr, query: &str, auth: Option<Value>, namespace: &str) -> Result<TestClient, String> {
        let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket&{query}");
        Self::connect_request(url.into_client_request().map_err(|e| e.to_string())?, auth, namespace).await
    }

    /// Like `connect`, with a prepared upgrade request (e.g. carrying an `Authorization` header).
    pub async fn connect_request(request: Request, auth: Option<Value>, namespace: &str) -> Result<TestClient, String> {
        let (ws, _) = tokio_tungstenite::connect_async(request).await.map_err(|e| e.to_string())?;
        let mut client = TestClient { ws, namespace: namespace.to_string(), sid: String::new(), next_ack: 1, backlog: VecDeque::new() };
        let open = client.next_text().await.ok_or("no open packet")?;
        assert!(open.starts_with('0'), "expected an Engine.IO open packet, got {open}");
        let auth = auth.map(|a| a.to_string()).unwrap_or_default();
        client.send_raw(&format!("40{}{auth}", client.ns_prefix())).await;
        loop {
            let packet = client.next_text().await.ok_or("closed before connect")?;
            // "4" (Engine.IO message), then the Socket.IO type, then "<nsp>," unless it is "/".
            let Some(body) = packet.strip_prefix('4') else { continue };
            let (kind, body) = body.split_at(1.min(body.len()));
            let body = body.strip_prefix(&client.ns_prefix()).unwrap_or(body);
            match kind {
                "0" => {
                    let ok: Value = serde_json::from_str(body).map_err(|e| e.to_string())?;
                    client.sid = ok["sid"].as_str().unwrap_or_default().to_string();
                    return Ok(client);
                }
                "4" => {
                    let err: Value = serde_json::from_str(body).map_err(|e| e.to_string())?;
                    return Err(err["message"].as_str().unwrap_or_default().to_string());
                }
                _ => {}
            }
        }
    }

    fn ns_prefix(&self) -> String {
        if self.namespace == "/" {
            String::new()
        } else {
            format!("{},", self.namespace)
        }
    }

    pub async fn send_raw(&mut self, text: &str) {
        self.ws.send(Message::Text(text.into())).await.expect("frame sent");
    }

    /// Sends a frame; false once the server has closed the connection (as it does after a
    /// malformed packet).
    pub async fn try_send(&mut self, text: &str) -> bool {
        self.ws.send(Message::Text(text.into())).await.is_ok()
    }

    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        let _ = self.ws.send(Message::Binary(bytes.into())).await;
    }

    /// The next text frame, answering Engine.IO pings on the way; `None` once closed.
    async fn next_text(&mut self) -> Option<String> {
        loop {
            let message = tokio::time::timeout(WAIT, self.ws.next()).await.ok()??.ok()?;
            match message {
                Message::Text(text) if text.as_str() == "2" => self.send_raw("3").await,
                Message::Text(text) => return Some(text.to_string()),
                Message::Close(_) => return None,
                _ => {}
            }
        }
    }

    pub async fn emit(&mut self, event: &str, args: &[Value]) {
        let mut packet = vec![json!(event)];
        packet.extend(args.iter().cloned());
        let frame = format!("42{}{}", self.ns_prefix(), Value::Array(packet));
        self.send_raw(&frame).await;
    }

    /// Emits with an ack id and returns the ack's first argument.
    pub async fn call(&mut self, event: &str, args: &[Value]) -> Value {
        let id = self.next_ack;
        self.next_ack += 1;
        let mut packet = vec![json!(event)];
        packet.extend(args.iter().cloned());
        let frame = format!("42{}{id}{}", self.ns_prefix(), Value::Array(packet));
        self.send_raw(&frame).await;
        let prefix = format!("43{}{id}", self.ns_prefix());
        loop {
            let text = self.next_text().await.unwrap_or_else(|| panic!("closed while waiting for ack of {event}"));
            match text.strip_prefix(&prefix) {
                Some(body) => {
                    let args: Value = serde_json::from_str(body).expect("ack is JSON");
                    return args[0].clone();
                }
                None => self.backlog.push_back(text),
            }
        }
    }

    /// Waits (at most [`WAIT`], pings answered meanwhile) for the next `event` and returns all
    /// its arguments; `None` on timeout or close.
    pub async fn next_event(&mut self, event: &str) -> Option<Vec<Value>> {
        tokio::time::timeout(WAIT, self.next_event_unbounded(event)).await.ok()?
    }

    async fn next_event_unbounded(&mut self, event: &str) -> Option<Vec<Value>> {
        let prefix = format!("42{}", self.ns_prefix());
        loop {
            let text = match self.backlog.pop_front() {
                Some(text) => text,
                None => self.next_text().await?,
            };
            let Some(body) = text.strip_prefix(&prefix) else { continue };
            let Ok(Value::Array(mut items)) = serde_json::from_str::<Value>(body) else { continue };
            if items.first().and_then(Value::as_str) == Some(event) {
                items.remove(0);
                return Some(items);
            }
        }
    }

    /// The first argument of the next `notification` whose `type` is not `welcome`.
    pub async fn next_notification(&mut self) -> Option<Value> {
        loop {
            let args = self.next_event("notification").await?;
            if args[0]["type"] != "welcome" {
                return Some(args[0].clone());
            }
        }
    }

    /// True when no `event` arrives within `wait`.
    pub async fn receives_nothing(&mut self, event: &str, wait: Duration) -> bool {
        tokio::time::timeout(wait, self.next_event(event)).await.map(|e| e.is_none()).unwrap_or(true)
    }

    /// Leaves the namespace and closes the connection, as `socket.disconnect()` does.
    pub async fn disconnect(mut self) {
        let frame = format!("41{}", self.ns_prefix());
        self.send_raw(&frame).await;
        let _ = self.ws.close(None).await;
    }

    /// Reads until the server closes the connection; true if it did within the wait.
    pub async fn closed_by_server(&mut self) -> bool {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next()).await {
                Err(_) => return false,
                Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => return true,
                // "1": Engine.IO close; "41<nsp>": the server disconnected this namespace.
                Ok(Some(Ok(Message::Text(t)))) if t.as_str() == "1" || t.as_str() == format!("41{}", self.ns_prefix()) => return true,
                Ok(Some(Ok(_))) => {}
            }
        }
    }
}
