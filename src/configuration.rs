//! Settings: what an operator can change, with the defaults of SPEC §1.
//!
//! Settings come from three layers, later ones winning: built-in defaults, the TOML file
//! (`./config.toml` or `--config PATH`), then `HERALD__SECTION__KEY` environment variables
//! (list values comma-separated). Every key documented in `config.toml` exists here with the same
//! default, so an empty file behaves exactly like the shipped one.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub auth: AuthSettings,
    pub api: ApiSettings,
    pub redis: RedisSettings,
    pub socketio: SocketIoSettings,
    pub rooms: RoomSettings,
    pub limits: LimitSettings,
    pub delivery: DeliverySettings,
    pub storage: StorageSettings,
    pub outbox: OutboxSettings,
    pub presence: PresenceSettings,
    pub webhooks: WebhookSettings,
    pub admin: AdminSettings,
    pub websocket: WebSocketSettings,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    pub host: String,
    pub port: u16,
    pub cors_origins: Vec<String>,
    /// This instance's name in logs, `/health` and the cluster. Empty: host name + pid.
    pub node_id: String,
    pub trusted_proxies: Vec<String>,
    pub shutdown_grace_secs: u64,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            host: "0.0.0.0".into(),
            port: 5000,
            cors_origins: vec!["*".into()],
            node_id: String::new(),
            trusted_proxies: vec![],
            shutdown_grace_secs: 10,
        }
    }
}

impl ServerSettings {
    pub fn node_id(&self) -> String {
        if !self.node_id.is_empty() {
            return self.node_id.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "herald".into());
        format!("{host}-{}", std::process::id())
    }

    /// This run of this instance: the node id and when the process started. Sessions,
    /// delivered marks and liveness are kept per run, so an instance restarted under the same
    /// node id is never taken for the one that died.
    pub fn instance_id(&self) -> String {
        static STARTED: std::sync::OnceLock<u128> = std::sync::OnceLock::new();
        let started =
            STARTED.get_or_init(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros()));
        format!("{}@{started}", self.node_id())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// HS256 secret. Empty: no HMAC key.
    pub jwt_secret: String,
    /// Path to a PEM public key (RSA or EC) for RS256/ES256 tokens. Empty: none.
    pub public_key_pem: String,
    pub algorithms: Vec<String>,
    pub user_claim: String,
    pub required: bool,
    /// Clock skew tolerated on `exp`/`nbf`, in seconds.
    pub leeway_secs: u64,
    /// How long before its token expires a socket receives `auth:expiring`.
    pub expiry_warning_secs: u64,
    /// The token claim naming the socket's device (`web`, `mobile`, ...); `auth.device` when absent.
    pub device_claim: String,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            jwt_secret: String::new(),
            public_key_pem: String::new(),
            algorithms: vec!["HS256".into()],
            user_claim: "user_id".into(),
            required: true,
            leeway_secs: 0,
            expiry_warning_secs: 60,
            device_claim: "device".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiSettings {
    /// Bearer keys accepted by the HTTP API. Empty: the API refuses every request.
    pub keys: Vec<String>,
    /// How long an `Idempotency-Key` (or a notify body's `id`) is remembered.
    pub idempotency_window_secs: u64,
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self { keys: vec![], idempotency_window_secs: 24 * 3600 }
    }
}

impl ApiSettings {
    pub fn idempotency_window(&self) -> Duration {
        Duration::from_secs(self.idempotency_window_secs)
    }
}

/// Where the embedded default keeps its database, and the cluster mode its outbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageSettings {
    /// Created when missing. The embedded default's database is `herald.db` in it; with Redis,
    /// the outbox is `outbox.db`.
    pub data_dir: String,
    /// Keep everything in process memory instead (lost on restart): for tests.
    pub in_memory: bool,
}

impl Default for StorageSettings {
    fn default() -> Self {
        Self { data_dir: "./data".into(), in_memory: false }
    }
}

/// Cluster mode: HTTP commands that cannot reach Redis wait on disk, in order, until it returns.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutboxSettings {
    /// Commands the outbox holds at most; past that (or 0: no outbox) the API answers 503.
    pub max_entries: usize,
}

impl Default for OutboxSettings {
    fn default() -> Self {
        Self { max_entries: 10_000 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisSettings {
    /// Empty: the embedded default. `redis://` or `rediss://` (TLS) for one Redis, with
    /// `user:password@` for an ACL user; `redis+sentinel://` / `rediss+sentinel://` for Sentinel
    /// (see `cluster::endpoint`).
    pub url: String,
    pub python_channels: Vec<String>,
    /// PEM file of the CA that signed the server's certificate (TLS with a private CA). Empty:
    /// the usual public roots.
    pub tls_ca_file: String,
    /// Verify the server's certificate and name (TLS). Only turn off for tests.
    pub tls_verify: bool,
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            url: String::new(),
            python_channels: vec!["flask-socketio".into(), "socketio".into()],
            tls_ca_file: String::new(),
            tls_verify: true,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SocketIoSettings {
    pub namespaces: Vec<String>,
    pub ping_interval_secs: u64,
    pub ping_timeout_secs: u64,
    pub max_payload_bytes: u64,
}

impl Default for SocketIoSettings {
    fn default() -> Self {
        Self { namespaces: vec!["/".into()], ping_interval_secs: 15, ping_timeout_secs: 30, max_payload_bytes: 1_000_000 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoomSettings {
    /// Room patterns a client may `room:join`; `*` matches any run of characters.
    pub joinable: Vec<String>,
    /// Longest room name a client may name, in bytes.
    pub max_name_bytes: usize,
}

impl Default for RoomSettings {
    fn default() -> Self {
        Self {
            joinable: ["queue-updates", "test-progress-*", "test-history-updates", "system-alerts", "team-updates", "shared-tests"]
                .map(String::from)
                .to_vec(),
            max_name_bytes: 200,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSettings {
    pub max_rooms_per_socket: usize,
    pub max_connections: usize,
    pub max_connections_per_user: usize,
    pub connects_per_ip_per_minute: u32,
    pub events_per_second: u32,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            max_rooms_per_socket: 50,
            max_connections: 10_000,
            max_connections_per_user: 10,
            connects_per_ip_per_minute: 600,
            events_per_second: 20,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliverySettings {
    /// Notifications replayed on reconnect; beyond it the newest ones plus an `offline_summary`.
    pub max_replay: usize,
    /// Room patterns whose emits are stored (one stream per room).
    pub persisted_rooms: Vec<String>,
    /// Whether emits to a whole namespace (no room) are stored.
    pub persist_broadcasts: bool,
    /// Events that are stored when sent to a persisted room.
    pub persisted_events: Vec<String>,
    /// Entries kept per room stream.
    pub stream_max_len: usize,
    /// Age after which entries are dropped from a stream.
    pub stream_max_age_secs: u64,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        Self {
            max_replay: 100,
            persisted_rooms: vec!["user_*".into(), "role_*".into(), "project_*".into()],
            persist_broadcasts: true,
            persisted_events: vec!["notification".into()],
            stream_max_len: 1000,
            stream_max_age_secs: 7 * 24 * 3600,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminSettings {
    /// Where the dashboard is served (its data under `<path>/api/`).
    pub path: String,
    /// Keys that open the dashboard (`Authorization: Bearer <key>`). Empty: only tokens.
    pub keys: Vec<String>,
    /// A JWT (verified like a socket's) whose `role` is in this list opens it too. Empty: only keys.
    pub roles: Vec<String>,
}

impl Default for AdminSettings {
    fn default() -> Self {
        Self { path: "/admin".into(), keys: vec![], roles: vec!["admin".into()] }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PresenceSettings {
    /// A user (or a room member) whose last socket went away is still online this long: a page
    /// reload or a quick reconnect is not an offline/online pair.
    pub grace_secs: u64,
    /// An instance that stops answering (partitioned, frozen) counts as dead after this long; one
    /// that dies is known at once. Its users then go offline after `grace_secs`.
    pub instance_timeout_secs: u64,
    /// Room patterns with presence: members get `presence:join` / `presence:leave` and may ask
    /// `presence:list`; `GET /api/v1/presence/rooms/<room>` answers for them. Empty: none.
    pub rooms: Vec<String>,
}

impl Default for PresenceSettings {
    fn default() -> Self {
        Self { grace_secs: 5, instance_timeout_secs: 15, rooms: vec![] }
    }
}

impl PresenceSettings {
    pub fn grace(&self) -> Duration {
        Duration::from_secs(self.grace_secs)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookSettings {
    /// Where events are POSTed (each event to every URL). Empty: no webhooks.
    pub urls: Vec<String>,
    /// Signs every call (`Herald-Signature`). Required when `urls` is set.
    pub secret: String,
    /// Which events are sent: `notification.missed`, `user.online`, `user.offline`.
    pub events: Vec<String>,
    /// Missed notifications of one user within this window go in one call.
    pub batch_window_ms: u64,
    /// Most notifications in one `notification.missed` call (older ones beyond it are dropped, counted).
    pub max_batch: usize,
    /// Also `notification.missed` for a notification delivered but not read after this long. 0: off.
    pub unread_after_secs: u64,
    /// How long one call may take.
    pub timeout_secs: u64,
    /// Attempts per call (the first included) on 5xx, timeouts and connection errors.
    pub max_attempts: u32,
    /// Calls waiting to be sent (retries included); beyond it new ones are dropped, counted.
    pub max_queue: usize,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            urls: vec![],
            secret: String::new(),
            events: vec!["notification.missed".into(), "user.online".into(), "user.offline".into()],
            batch_window_ms: 2000,
            max_batch: 100,
            unread_after_secs: 0,
            timeout_secs: 5,
            max_attempts: 6,
            max_queue: 10_000,
        }
    }
}

impl WebhookSettings {
    pub fn sends(&self, event: &str) -> bool {
        !self.urls.is_empty() && self.events.iter().any(|e| e == event)
    }
}

/// Plain WebSocket clients (JSON text frames, no Socket.IO framing): see `crate::plain`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebSocketSettings {
    pub enabled: bool,
    /// The endpoint's path, on the server's port.
    pub path: String,
    /// The Socket.IO namespace plain sockets belong to (emits with this `namespace` reach them).
    pub namespace: String,
    /// A client with no token in the query or header has this long to send `{"type":"auth"}`.
    pub auth_timeout_secs: u64,
}

impl Default for WebSocketSettings {
    fn default() -> Self {
        Self { enabled: true, path: "/ws/notifications".into(), namespace: "/".into(), auth_timeout_secs: 10 }
    }
}

impl SocketIoSettings {
    pub fn ping_interval(&self) -> Duration {
        Duration::from_secs(self.ping_interval_secs)
    }
    pub fn ping_timeout(&self) -> Duration {
        Duration::from_secs(self.ping_timeout_secs)
    }
    /// The longest a dead connection can go unnoticed.
    pub fn heartbeat_window(&self) -> Duration {
        self.ping_interval() + self.ping_timeout()
    }
}

/// Keys whose environment value is a comma-separated list.
const LIST_KEYS: &[&str] = &[
    "server.cors_origins",
    "server.trusted_proxies",
    "auth.algorithms",
    "api.keys",
    "redis.python_channels",
    "socketio.namespaces",
    "rooms.joinable",
    "delivery.persisted_rooms",
    "delivery.persisted_events",
    "presence.rooms",
    "webhooks.urls",
    "webhooks.events",
    "admin.keys",
    "admin.roles",
];

impl Settings {
    /// Reads the file at `path` (which must exist unless it is the default `config.toml`), then
    /// the `HERALD__*` environment.
    pub fn load(path: &Path, path_is_explicit: bool) -> Result<Settings, config::ConfigError> {
        let mut env =
            config::Environment::with_prefix("HERALD").prefix_separator("__").separator("__").list_separator(",").try_parsing(true);
        for key in LIST_KEYS {
            env = env.with_list_parse_key(key);
        }
        config::Config::builder().add_source(config::File::from(path).required(path_is_explicit)).add_source(env).build()?.try_deserialize()
    }

    /// Refuses settings that cannot work, with the reason an operator needs.
    pub fn validate(&self) -> Result<(), String> {
        if self.auth.required && self.auth.jwt_secret.is_empty() && self.auth.public_key_pem.is_empty() {
            return Err("auth.required is true but neither auth.jwt_secret nor auth.public_key_pem is set \
                        (set HERALD__AUTH__JWT_SECRET, or auth.required = false for anonymous use)"
                .into());
        }
        if self.socketio.namespaces.iter().any(|n| !n.starts_with('/')) {
            return Err("socketio.namespaces: every namespace starts with '/'".into());
        }
        for proxy in &self.server.trusted_proxies {
            proxy.parse::<std::net::IpAddr>().map_err(|_| format!("server.trusted_proxies: {proxy:?} is not an IP address"))?;
        }
        if self.socketio.ping_interval_secs == 0 || self.socketio.ping_timeout_secs == 0 {
            return Err("socketio.ping_interval_secs and ping_timeout_secs must be positive".into());
        }
        for origin in &self.server.cors_origins {
            check_origin(origin).map_err(|why| format!("server.cors_origins: {origin:?} {why}"))?;
        }
        let admin = &self.admin.path;
        if !admin.starts_with('/') || admin.len() < 2 || admin.ends_with('/') || admin.starts_with("/api/") || admin.starts_with("/socket.io") {
            return Err(format!("admin.path: {admin:?} must be a path like \"/admin\" (not / nor under /api or /socket.io)"));
        }
        let ws = &self.websocket;
        if ws.enabled {
            if !ws.path.starts_with('/') || ws.path.starts_with("/socket.io") || ws.path.starts_with("/api/") {
                return Err(format!("websocket.path: {:?} must start with '/' and not be under /socket.io or /api/", ws.path));
            }
            if !self.socketio.namespaces.contains(&ws.namespace) {
                return Err(format!("websocket.namespace: {:?} is not in socketio.namespaces", ws.namespace));
            }
            if ws.auth_timeout_secs == 0 {
                return Err("websocket.auth_timeout_secs must be positive".into());
            }
        }
        if self.presence.instance_timeout_secs < 3 {
            return Err("presence.instance_timeout_secs must be at least 3".into());
        }
        let hooks = &self.webhooks;
        if !hooks.urls.is_empty() && hooks.secret.is_empty() {
            return Err("webhooks.urls is set but webhooks.secret is empty: every call is signed (set HERALD__WEBHOOKS__SECRET)".into());
        }
        for url in &hooks.urls {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!("webhooks.urls: {url:?} is not an http(s) URL"));
            }
        }
        const EVENTS: [&str; 3] = ["notification.missed", "user.online", "user.offline"];
        if let Some(unknown) = hooks.events.iter().find(|e| !EVENTS.contains(&e.as_str())) {
            return Err(format!("webhooks.events: unknown event {unknown:?} (known: {})", EVENTS.join(", ")));
        }
        if hooks.max_attempts == 0 || hooks.max_queue == 0 || hooks.max_batch == 0 || hooks.timeout_secs == 0 {
            return Err("webhooks.max_attempts, max_queue, max_batch and timeout_secs must be positive".into());
        }
        Ok(())
    }

    /// The effective settings with every secret replaced by [`REDACTED`], for printing
    /// (`herald config check`): see [`redact`].
    pub fn redacted(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).expect("settings are plain data");
        redact(&mut value);
        value
    }

    /// The redacted settings as TOML, in the layout of `config.toml`; it loads back as a
    /// settings file (with the secrets replaced by the placeholder).
    pub fn redacted_toml(&self) -> String {
        to_toml(&self.redacted())
    }
}

/// What a redacted secret reads as.
pub const REDACTED: &str = "<redacted>";

/// True for keys that hold a secret: `*secret`, `*password`, `*token`, `keys`, `*_keys`,
/// `*_key` (not `public_key_pem`, a path). New secret keys named this way are redacted
/// without further changes.
fn is_secret_key(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["secret", "password", "passwd", "token", "_key", "_keys"].iter().any(|end| name.ends_with(end)) || name == "keys"
}

/// Replaces secrets in `value` (settings as JSON) by [`REDACTED`]: non-empty values of secret
/// keys (each item of a list), and the password (or a lone user-info part, which some clients
/// read as the password) of every URL, e.g. `redis://:pw@host` → `redis://:<redacted>@host`.
/// Empty secrets stay empty, so the output still shows that a secret is missing.
pub fn redact(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            for (key, item) in map.iter_mut() {
                if is_secret_key(key) {
                    redact_all(item);
                } else {
                    redact(item);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        Value::String(s) => *s = redact_url(s),
        _ => {}
    }
}

fn redact_all(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::String(s) if !s.is_empty() => *s = REDACTED.into(),
        Value::Array(items) => items.iter_mut().for_each(redact_all),
        Value::Object(map) => map.values_mut().for_each(redact_all),
        Value::Number(_) | Value::Bool(_) => *value = Value::String(REDACTED.into()),
        _ => {}
    }
}

/// `scheme://user:password@host/...` with the password (or a user-info without `:`) redacted,
/// and the values of `password`/`secret`/`token` query parameters; other strings unchanged.
pub fn redact_url(s: &str) -> String {
    let Some(scheme_end) = s.find("://") else { return s.to_string() };
    let (scheme, rest) = s.split_at(scheme_end + 3);
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rfind('@') {
        Some(at) => {
            let (userinfo, host) = authority.split_at(at);
            match userinfo.split_once(':') {
                Some((user, password)) if !password.is_empty() => format!("{user}:{REDACTED}{host}"),
                Some(_) => authority.to_string(),
                None if userinfo.is_empty() => authority.to_string(),
                None => format!("{REDACTED}{host}"),
            }
        }
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let (query, fragment) = query.split_once('#').map_or((query, None), |(q, f)| (q, Some(f)));
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((name, v)) if is_secret_key(name) && !v.is_empty() => format!("{name}={REDACTED}"),
                    _ => pair.to_string(),
                })
                .collect();
            let fragment = fragment.map(|f| format!("#{f}")).unwrap_or_default();
            format!("{path}?{}{fragment}", query.join("&"))
        }
        None => tail.to_string(),
    };
    format!("{scheme}{authority}{tail}")
}

/// Settings as JSON (sections of scalars and lists) → TOML text.
fn to_toml(value: &serde_json::Value) -> String {
    use serde_json::Value;
    fn scalar(v: &Value) -> String {
        match v {
            // JSON string escapes are valid TOML basic-string escapes.
            Value::String(_) | Value::Number(_) | Value::Bool(_) => v.to_string(),
            Value::Array(items) => format!("[{}]", items.iter().map(scalar).collect::<Vec<_>>().join(", ")),
            Value::Null => "\"\"".into(),
            Value::Object(_) => "{}".into(),
        }
    }
    let mut out = String::new();
    let Value::Object(sections) = value else { return out };
    for (name, section) in sections {
        out.push_str(&format!("[{name}]\n"));
        if let Value::Object(keys) = section {
            for (key, v) in keys {
                out.push_str(&format!("{key} = {}\n", scalar(v)));
            }
        }
        out.push('\n');
    }
    out
}

/// An allowed browser origin is `*` or exactly what a browser sends: `scheme://host[:port]`,
/// lowercase, no path, no trailing slash.
fn check_origin(origin: &str) -> Result<(), &'static str> {
    if origin == "*" {
        return Ok(());
    }
    let Some((scheme, host)) = origin.split_once("://") else {
        return Err("is not an origin: expected \"*\" or scheme://host[:port], e.g. \"https://app.example.com\"");
    };
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_lowercase())
        && scheme.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
    if !scheme_ok || host.is_empty() {
        return Err("is not an origin: expected scheme://host[:port], e.g. \"https://app.example.com\"");
    }
    if host.contains(['/', '?', '#']) {
        return Err("has a path or a trailing slash: browsers send the origin without one (scheme://host[:port])");
    }
    if !host.is_ascii() {
        return Err("has non-ASCII characters: write the host in its punycode form (xn--...), as browsers send it");
    }
    if host.chars().any(|c| c.is_ascii_uppercase() || c.is_whitespace() || c.is_control()) {
        return Err("must be lowercase without spaces: browsers send it that way, and it is compared exactly");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_hides_every_secret_and_keeps_the_rest() {
        let mut s = Settings::default();
        s.auth.jwt_secret = "s3cret-jwt".into();
        s.api.keys = vec!["key-one".into(), "key-two".into()];
        s.redis.url = "redis://herald:p%40ss@redis.internal:6379/0".into();
        s.auth.public_key_pem = "/etc/herald/key.pem".into();
        let text = s.redacted_toml();
        for secret in ["s3cret-jwt", "key-one", "key-two", "p%40ss"] {
            assert!(!text.contains(secret), "{secret} leaked:\n{text}");
        }
        assert!(text.contains("jwt_secret = \"<redacted>\""), "{text}");
        assert!(text.contains("keys = [\"<redacted>\", \"<redacted>\"]"), "{text}");
        assert!(text.contains("url = \"redis://herald:<redacted>@redis.internal:6379/0\""), "{text}");
        assert!(text.contains("public_key_pem = \"/etc/herald/key.pem\""), "a path is not a secret: {text}");
        assert!(text.contains("port = 5000"), "{text}");
    }

    #[test]
    fn empty_secrets_stay_empty_so_a_missing_one_shows() {
        let v = Settings::default().redacted();
        assert_eq!(v["auth"]["jwt_secret"], "");
        assert_eq!(v["api"]["keys"], serde_json::json!([]));
    }

    #[test]
    fn secret_keys_are_redacted_wherever_they_appear() {
        let mut v = serde_json::json!({"webhook": {"signing_secret": "x", "url": "https://u:pw@hook.example/x?token=abc&a=1"},
                                       "db": {"password": "pw", "api_key": 12}});
        redact(&mut v);
        assert_eq!(v["webhook"]["signing_secret"], REDACTED);
        assert_eq!(v["webhook"]["url"], "https://u:<redacted>@hook.example/x?token=<redacted>&a=1");
        assert_eq!(v["db"]["password"], REDACTED);
        assert_eq!(v["db"]["api_key"], REDACTED);
    }

    #[test]
    fn urls_lose_their_passwords_only() {
        assert_eq!(redact_url("redis://127.0.0.1:6379/0"), "redis://127.0.0.1:6379/0");
        assert_eq!(redact_url("redis://:pw@h:6379"), "redis://:<redacted>@h:6379");
        assert_eq!(redact_url("rediss://user:pw@h/0#frag"), "rediss://user:<redacted>@h/0#frag");
        assert_eq!(redact_url("redis://pw-alone@h"), "redis://<redacted>@h");
        assert_eq!(redact_url("redis://user:@h"), "redis://user:@h");
        assert_eq!(redact_url("redis://h/0?password=pw"), "redis://h/0?password=<redacted>");
        assert_eq!(redact_url("not a url"), "not a url");
        assert_eq!(redact_url("a://b@c@d"), "a://<redacted>@d");
    }

    #[test]
    fn redacted_toml_loads_back_as_the_same_settings() {
        let mut s = Settings::default();
        s.server.cors_origins = vec!["https://app.example.com".into(), "quote\"and\\slash".into()];
        s.auth.jwt_secret = "x".into();
        let dir = std::env::temp_dir().join(format!("herald-redacted-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.toml");
        std::fs::write(&path, s.redacted_toml()).unwrap();
        let back = Settings::load(&path, true).expect("redacted output is a settings file");
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(back.server.cors_origins, s.server.cors_origins);
        assert_eq!(back.auth.jwt_secret, REDACTED);
        assert_eq!(serde_json::to_value(&back.delivery).unwrap(), serde_json::to_value(&s.delivery).unwrap());
    }

    #[test]
    fn origins_must_be_what_browsers_send() {
        assert!(check_origin("*").is_ok());
        assert!(check_origin("https://app.example.com").is_ok());
        assert!(check_origin("http://localhost:3000").is_ok());
        assert!(check_origin("capacitor://localhost").is_ok());
        for bad in [
            "https://app.example.com/",
            "https://app.example.com/path",
            "app.example.com",
            "null",
            "https://App.example.com",
            "https://",
            "HTTPS://a.b",
        ] {
            assert!(check_origin(bad).is_err(), "{bad}");
        }
        let mut s = Settings::default();
        s.auth.jwt_secret = "x".into();
        s.server.cors_origins = vec!["https://app.example.com/".into()];
        let err = s.validate().unwrap_err();
        assert!(err.contains("server.cors_origins") && err.contains("trailing slash"), "{err}");
    }
}
