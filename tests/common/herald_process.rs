//! The real `herald` binary as a child process: what cluster tests run three of, so that each
//! instance has its own runtime, sockets and Redis connections, as in production.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{API_KEY, SECRET};

pub struct HeraldProcess {
    pub port: u16,
    pub node_id: String,
    /// Its own `storage.data_dir` (the outbox with Redis, the database without), kept across
    /// [`HeraldProcess::restart`].
    pub data_dir: std::path::PathBuf,
    redis_url: String,
    settings: Vec<(String, String)>,
    process: Option<Child>,
}

impl HeraldProcess {
    /// Starts an instance sharing `redis_url` and waits until it answers `/health`.
    pub async fn start(node_id: &str, redis_url: &str) -> HeraldProcess {
        Self::start_with(node_id, redis_url, &[]).await
    }

    /// Like `start`, with more `HERALD__*` settings.
    pub async fn start_with(node_id: &str, redis_url: &str, settings: &[(&str, &str)]) -> HeraldProcess {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let data_dir = std::env::temp_dir().join(format!("herald-test-{node_id}-{}", uuid_like()));
        let mut instance = HeraldProcess {
            port,
            node_id: node_id.to_string(),
            data_dir,
            redis_url: redis_url.to_string(),
            settings: settings.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            process: None,
        };
        instance.spawn().await;
        instance
    }

    /// Starts the same instance again (same port, settings and data directory) after a kill.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    async fn spawn(&mut self) {
        let (port, node_id, redis_url) = (self.port, self.node_id.clone(), self.redis_url.clone());
        let process = Command::new(env!("CARGO_BIN_EXE_herald"))
            .envs(self.settings.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("HERALD__STORAGE__DATA_DIR", &self.data_dir)
            .env("HERALD__SERVER__HOST", "127.0.0.1")
            .env("HERALD__SERVER__PORT", port.to_string())
            .env("HERALD__SERVER__NODE_ID", &node_id)
            .env("HERALD__SERVER__SHUTDOWN_GRACE_SECS", "2")
            .env("HERALD__REDIS__URL", &redis_url)
            .env("HERALD__AUTH__JWT_SECRET", SECRET)
            .env("HERALD__API__KEYS", API_KEY)
            .env("HERALD__SOCKETIO__NAMESPACES", "/,/chat")
            .env("RUST_LOG", std::env::var("HERALD_TEST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::null())
            .stderr(if std::env::var("HERALD_TEST_LOG").is_ok() { Stdio::inherit() } else { Stdio::null() })
            .spawn()
            .expect("herald binary runs");
        self.process = Some(process);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.health().await.is_none() {
            assert!(Instant::now() < deadline, "herald {node_id} did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        format!("127.0.0.1:{}", self.port).parse().unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub async fn health(&self) -> Option<Value> {
        let response = reqwest::get(self.url("/health")).await.ok()?;
        response.json().await.ok()
    }

    pub async fn status(&self, path: &str) -> u16 {
        reqwest::get(self.url(path)).await.map(|r| r.status().as_u16()).unwrap_or(0)
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let response = reqwest::Client::new().post(self.url(path)).bearer_auth(API_KEY).json(&body).send().await.expect("request sent");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// `post` with an `Idempotency-Key` header; also returns the `Retry-After` header.
    pub async fn post_with_key(&self, path: &str, key: &str, body: Value) -> (u16, Value, Option<String>) {
        let response = reqwest::Client::new()
            .post(self.url(path))
            .bearer_auth(API_KEY)
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
            .await
            .expect("request sent");
        let status = response.status().as_u16();
        let retry_after = response.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(String::from);
        (status, response.json().await.unwrap_or(Value::Null), retry_after)
    }

    /// `GET` with the API key.
    pub async fn get(&self, path: &str) -> Value {
        let response = reqwest::Client::new().get(self.url(path)).bearer_auth(API_KEY).send().await.expect("request sent");
        response.json().await.unwrap_or(Value::Null)
    }

    /// Waits until `/health` satisfies `condition`.
    pub async fn wait_health(&self, what: &str, condition: impl Fn(&Value) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(health) = self.health().await {
                if condition(&health) {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "{}: never {what}", self.node_id);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `kill -9`: the instance vanishes without running any shutdown code.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }
}

impl Drop for HeraldProcess {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// A name no other test process uses.
fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A socket of `user` on `instance` (token in `auth`, with `last_id` when given), past its welcome.
pub async fn welcomed_client(instance: &HeraldProcess, user: &str, last_id: Option<&str>) -> super::TestClient {
    let token = herald::auth::mint_dev_token(super::SECRET, user, None, &[], 3600).unwrap();
    let auth = serde_json::json!({ "token": token, "last_id": last_id });
    let mut client = super::TestClient::connect(instance.addr(), "", Some(auth), "/").await.expect("connects");
    assert_eq!(client.next_event("notification").await.expect("welcome")[0]["type"], "welcome");
    client
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Polls `check` every 100 ms (blocking: for checks that run processes) until it holds.
pub fn wait_for(what: &str, timeout: std::time::Duration, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !check() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
