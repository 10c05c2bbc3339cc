//! herald-floor: the Rust floor of Herald's benchmarks. The least a server can do and still pass
//! `bench/loadgen`'s scenarios: accept a WebSocket at `/socket.io/?EIO=4&transport=websocket`,
//! check the JWT the way Herald does (HS256, `exp` required, `user_id` or `sub`), put the socket
//! in `user_<id>` / `role_<r>` / `project_<p>`, send the welcome, answer `room:join`, and deliver
//! `POST /api/v1/notify` (and, with `REDIS_URL`, Redis `notify:*` messages) as Herald's
//! `notification` payload. One tokio task per connection, no library between the WebSocket and
//! the rooms: what Herald's figures are measured against (see BENCHMARKS.md, "Floors").
//!
//! What it does not do: long-polling, the Engine.IO upgrade, pong timeouts (it pings, it does not
//! drop silent peers), storage, replay, acks, rate limits, clustering, metrics, CORS.
//!
//! Run (the bench starts it the same way):
//!
//! ```sh
//! PORT=5000 JWT_SECRET=dev-secret-change-me API_KEYS=dev-key-change-me [REDIS_URL=redis://127.0.0.1:6379/0] \
//!   bench/floor-rust/target/release/herald-floor
//! ```
//!
//! Modules: `http` (the listener, `/health`, `/api/v1/notify`, the upgrade), `socket` (one
//! connection: the minimal Engine.IO / Socket.IO framing), `rooms` (who is in which room),
//! `redis` (the optional Redis ingress), `notification` (the payload and its id).

mod http;
mod notification;
mod redis;
mod rooms;
mod socket;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

/// Everything the connections and the HTTP handlers share.
pub struct State {
    pub rooms: rooms::Rooms,
    pub ids: notification::Ids,
    api_keys: Vec<String>,
    key: DecodingKey,
    sids: AtomicU64,
}

/// Who a token says the client is.
pub struct Identity {
    pub user_id: String,
    pub role: Option<String>,
    pub projects: Vec<String>,
}

impl State {
    /// Herald's check (`src/auth.rs`) for its default configuration: the header's algorithm must
    /// be HS256, `exp` is required and checked with no leeway, `nbf` when present, the user is
    /// `user_id` or else `sub` (a non-empty string or a number).
    pub fn verify(&self, token: &str) -> Option<Identity> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp"]);
        validation.validate_nbf = true;
        validation.leeway = 0;
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &self.key, &validation).ok()?.claims;
        let scalar = |v: &Value| match v {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
        let user_id = claims.get("user_id").and_then(scalar).or_else(|| claims.get("sub").and_then(scalar))?;
        claims.get("exp").and_then(Value::as_f64).filter(|e| *e >= 0.0)?;
        let role = claims.get("role").and_then(scalar);
        let projects = match claims.get("projects") {
            Some(Value::Array(items)) => items.iter().filter_map(scalar).collect(),
            _ => vec![],
        };
        Some(Identity { user_id, role, projects })
    }

    pub fn api_key_ok(&self, authorization: Option<&str>) -> bool {
        let Some(key) = authorization.and_then(|h| h.strip_prefix("Bearer ")).map(str::trim) else { return false };
        self.api_keys.iter().any(|k| k == key)
    }

    /// A session id for the Engine.IO open and Socket.IO CONNECT packets (unique per process).
    pub fn next_sid(&self) -> (u64, String) {
        let n = self.sids.fetch_add(1, Ordering::Relaxed);
        (n, format!("floor{n:011x}"))
    }
}

fn env(name: &str, default: &str) -> String {
    std::env::var(name).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| default.to_string())
}

fn main() {
    let host = env("HOST", "127.0.0.1");
    let port: u16 = env("PORT", "5000").parse().expect("PORT");
    let secret = env("JWT_SECRET", "dev-secret-change-me");
    let api_keys = env("API_KEYS", "dev-key-change-me").split(',').filter(|k| !k.is_empty()).map(String::from).collect();
    let redis_url = std::env::var("REDIS_URL").ok().filter(|v| !v.is_empty());
    let state = Arc::new(State {
        rooms: rooms::Rooms::default(),
        ids: notification::Ids::default(),
        api_keys,
        key: DecodingKey::from_secret(secret.as_bytes()),
        sids: AtomicU64::new(1),
    });
    // The same runtime as Herald's: tokio's multi-threaded scheduler, one worker per core.
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(async move {
        if let Some(url) = redis_url {
            tokio::spawn(redis::ingress(url, state.clone()));
        }
        let listener = tokio::net::TcpListener::bind((host.as_str(), port)).await.expect("bind");
        eprintln!("herald-floor listening on {host}:{port} pid {}", std::process::id());
        tokio::select! {
            _ = http::serve(listener, state) => {}
            _ = shutdown() => {}
        }
    });
}

async fn shutdown() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
