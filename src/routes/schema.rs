//! The OpenAPI 3.1 description of the HTTP API, served at `GET /api/v1/openapi.json`.
//!
//! The operations come from the `#[utoipa::path]` annotations on the handlers, collected by the
//! same `OpenApiRouter` that routes requests to them ([`super::router`]), so the document and
//! the router cannot drift apart. The types below describe the JSON bodies the handlers read and
//! write by hand (`api.rs` parses bodies itself, to name the field at fault in each 400): they
//! are never built, only described.
#![allow(dead_code)]

use axum::body::Bytes;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Extension;
use serde_json::Value;
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::RefOr;
use utoipa::{IntoParams, Modify, OpenApi, PartialSchema, ToSchema};

/// The document's root: everything that is not an operation.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Herald HTTP API",
        description = "Backends send notifications and events to Socket.IO clients, read and mark a user's stored \
                       notifications, and disconnect a user. Operations endpoints: liveness, readiness, Prometheus \
                       metrics and this document. Every `/api/v1/*` operation except this document needs \
                       `Authorization: Bearer <key>` with a key from `api.keys`."
    ),
    tags(
        (name = "api", description = "The backend API (needs an API key)"),
        (name = "operations", description = "Health, readiness, metrics and this description (no API key)"),
        (name = "dashboard", description = "The dashboard's data and actions (admin credential; under `admin.path`)")
    ),
    modifiers(&ApiKeyScheme)
)]
pub struct ApiDoc;

/// The security scheme every API operation names: `Authorization: Bearer <key from api.keys>`.
pub const API_KEY: &str = "api_key";

struct ApiKeyScheme;

impl Modify for ApiKeyScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            API_KEY,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("One of the keys in `api.keys` (`HERALD__API__KEYS`); without a configured key the API answers 401"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "admin",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("A key of `admin.keys`, or a JWT (verified like a socket's) whose `role` is in `admin.roles`"))
                    .build(),
            ),
        );
    }
}

/// The serialized document, made once when the router is built.
#[derive(Clone)]
pub struct Document(Bytes);

impl Document {
    pub fn new(openapi: &utoipa::openapi::OpenApi) -> Document {
        Document(Bytes::from(openapi.to_pretty_json().expect("the OpenAPI document serializes")))
    }
}

/// `GET /api/v1/openapi.json`: this document. Served without an API key, like `/health`: it
/// describes the API, it gives no access to it.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "operations",
    operation_id = "openapi",
    summary = "This OpenAPI 3.1 description of the HTTP API",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json", body = Object))
)]
pub async fn document(Extension(document): Extension<Document>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], document.0)
}

/// The `Idempotency-Key` header of notify and emit.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
pub struct IdempotencyKey {
    /// 1 to 255 bytes of visible ASCII. A call with a key already used within
    /// `api.idempotency_window_secs` (24 h) gets the first call's answer and delivers nothing
    /// again, on any instance: retry a 503 or a timeout with the same key. For notify, a body
    /// `id` works the same when there is no header.
    #[param(rename = "Idempotency-Key", nullable = false, min_length = 1, max_length = 255)]
    idempotency_key: Option<String>,
}

/// The query of a user's history.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryParams {
    /// Only notifications with a greater id.
    #[param(nullable = false)]
    after: Option<String>,
    /// Only notifications with a smaller id.
    #[param(nullable = false)]
    before: Option<String>,
    /// At most this many: 50 when absent, 200 at most.
    #[param(nullable = false, minimum = 1)]
    limit: Option<u32>,
}

/// `{"error": "<reason>"}`: every refusal of the API (400, 401, 503).
#[derive(ToSchema)]
#[schema(example = json!({"error": "type must be a non-empty string"}))]
pub struct ErrorBody {
    /// What was wrong, in words (for 400: the field at fault).
    error: String,
}

/// A user id, role, project or room: a non-empty string, or a number (`42` and `"42"` are the
/// same user).
pub struct IdText;

impl PartialSchema for IdText {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(ObjectBuilder::new().schema_type(Type::String).min_length(Some(1)))
            .item(ObjectBuilder::new().schema_type(Type::Number))
            .description(Some("A non-empty string or a number"))
            .into()
    }
}

impl ToSchema for IdText {}

/// Where a notification goes: an object with exactly one of these keys.
pub struct Recipients;

fn one_key(key: &str, schema: impl Into<RefOr<Schema>>, description: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property(key, schema)
        .required(key)
        .additional_properties(Some(utoipa::openapi::schema::AdditionalProperties::FreeForm(false)))
        .description(Some(description))
}

impl PartialSchema for Recipients {
    fn schema() -> RefOr<Schema> {
        let id = || IdText::schema();
        OneOfBuilder::new()
            .item(one_key("user", id(), "One user (room `user_<id>`)"))
            .item(one_key(
                "users",
                ArrayBuilder::new().items(id()).min_items(Some(1)),
                "Several users, each notified once (`77` and `\"77\"` are one user)",
            ))
            .item(one_key("role", id(), "Everyone with the role (room `role_<role>`)"))
            .item(one_key("project", id(), "Everyone in the project (room `project_<p>`)"))
            .item(one_key("room", id(), "One room, by its full name"))
            .item(one_key(
                "broadcast",
                ObjectBuilder::new().schema_type(Type::Boolean).enum_values(Some([true])),
                "Every socket of the namespace",
            ))
            .description(Some("Exactly one recipient key"))
            .into()
    }
}

impl ToSchema for Recipients {}

/// `POST /api/v1/notify`: one notification, delivered as event `notification` with the envelope
/// `{id, type, message, data, timestamp, priority, channel}` (one id shared by every recipient).
#[derive(ToSchema)]
#[schema(example = json!({"to": {"user": 42}, "type": "grade", "message": "Your essay was graded", "data": {"score": 9}}))]
pub struct NotifyRequest {
    to: Recipients,
    /// The notification's type, e.g. `grade`.
    #[schema(rename = "type", min_length = 1)]
    kind: String,
    /// The text shown to the user.
    #[schema(min_length = 1)]
    message: String,
    /// Any JSON value given to clients as is (`{}` when absent).
    data: Option<Value>,
    /// 1 (low) to 4 (urgent); 2 when absent.
    #[schema(minimum = 1, maximum = 4, default = 2)]
    priority: Option<u8>,
    /// A namespace listed in `socketio.namespaces`; `/` when absent.
    #[schema(default = "/")]
    namespace: Option<String>,
    /// The producer's id for this notification: an idempotency key when there is no
    /// `Idempotency-Key` header (a string or a number, 1 to 255 bytes).
    id: Option<IdText>,
}

/// `202` from notify.
#[derive(ToSchema)]
#[schema(example = json!({"id": "1795512542340-0"}))]
pub struct NotifyAccepted {
    /// The notification's id (stored and published to every instance); `null` when it was queued
    /// in the outbox, and for a repeated idempotency key whose first call had no id.
    #[schema(required = true)]
    id: Option<String>,
    /// `true` when Redis is unreachable and the notification waits in this instance's on-disk
    /// outbox: it is stored and delivered, in order, as soon as Redis returns.
    #[schema(nullable = false)]
    queued: Option<bool>,
}

/// `POST /api/v1/emit`: any event, with any arguments, to rooms minus exceptions.
#[derive(ToSchema)]
#[schema(example = json!({"event": "score", "args": [{"team": "a", "points": 3}], "rooms": ["project_7"]}))]
pub struct EmitRequest {
    /// The event's name; not one reserved by Socket.IO (`connect`, `connect_error`,
    /// `disconnect`, `disconnecting`, `newListener`, `removeListener`).
    #[schema(min_length = 1)]
    event: String,
    /// The event's arguments (none when absent).
    args: Option<Vec<Value>>,
    /// Rooms to send to; the whole namespace when absent or empty.
    #[schema(inline)]
    rooms: Option<Vec<RoomName>>,
    /// Rooms whose sockets are left out.
    #[schema(inline)]
    except: Option<Vec<RoomName>>,
    /// A namespace listed in `socketio.namespaces`; `/` when absent.
    #[schema(default = "/")]
    namespace: Option<String>,
}

/// A room's full name.
#[derive(ToSchema)]
#[schema(value_type = String, min_length = 1)]
pub struct RoomName(String);

/// `202` from emit and disconnect.
#[derive(ToSchema)]
#[schema(example = json!({"ok": true}))]
pub struct Accepted {
    ok: bool,
    /// `true` when the command waits in the outbox while Redis is unreachable.
    #[schema(nullable = false)]
    queued: Option<bool>,
}

/// One stored notification, newest first: the envelope sent to clients with `read`, or, for
/// events whose payload is not one object, `{id, event, args, read}`.
#[derive(ToSchema)]
#[schema(example = json!({"id": "1795512542340-0", "type": "grade", "message": "Your essay was graded", "data": {"score": 9},
    "timestamp": "2026-11-24T09:29:02.340Z", "priority": 2, "channel": "user_42", "read": false}))]
pub struct HistoryItem {
    /// The notification's id.
    id: String,
    /// Whether the user marked it read.
    read: bool,
    #[schema(rename = "type", nullable = false)]
    kind: Option<String>,
    #[schema(nullable = false)]
    message: Option<String>,
    data: Option<Value>,
    #[schema(nullable = false)]
    timestamp: Option<String>,
    #[schema(nullable = false)]
    priority: Option<u8>,
    #[schema(nullable = false)]
    channel: Option<String>,
    /// Only for payloads that are not one object.
    #[schema(nullable = false)]
    event: Option<String>,
    /// Only for payloads that are not one object.
    #[schema(nullable = false)]
    args: Option<Vec<Value>>,
}

/// A user's stored notifications.
#[derive(ToSchema)]
pub struct History {
    ok: bool,
    items: Vec<HistoryItem>,
    /// How many stored notifications of the user are unread.
    unread: u64,
}

/// `POST /api/v1/users/{user}/notifications/read`: `ids`, `up_to`, or both.
#[derive(ToSchema)]
#[schema(example = json!({"up_to": "1795512542340-0"}), min_properties = 1)]
pub struct ReadRequest {
    /// Notification ids to mark read.
    #[schema(nullable = false)]
    ids: Option<Vec<String>>,
    /// Marks read every notification up to this id (included).
    #[schema(nullable = false)]
    up_to: Option<String>,
}

/// The unread count after marking.
#[derive(ToSchema)]
#[schema(example = json!({"ok": true, "unread": 0}))]
pub struct Unread {
    ok: bool,
    unread: u64,
}

#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum RedisStatus {
    Up,
    Down,
    Disabled,
}

#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum IngressState {
    Listening,
    Reconnecting,
}

/// The Redis ingress (with Redis only).
#[derive(ToSchema)]
pub struct Ingress {
    state: IngressState,
    /// Seconds since the last ingress message; `null` before the first one.
    #[schema(required = true)]
    last_message_age_secs: Option<f64>,
}

/// `GET /health`.
#[derive(ToSchema)]
#[schema(example = json!({"status": "ok", "node_id": "herald-1", "connections": 3, "redis": "disabled", "uptime_secs": 120}))]
pub struct Health {
    #[schema(value_type = String, example = "ok")]
    status: String,
    node_id: String,
    /// Sockets connected to this instance.
    connections: u64,
    redis: RedisStatus,
    uptime_secs: u64,
    /// With Redis: sockets on every instance; `null` when an instance did not answer within 1 s.
    cluster_connections: Option<u64>,
    /// With Redis, when `cluster_connections` is `null`: why.
    #[schema(nullable = false)]
    cluster_connections_error: Option<String>,
    #[schema(nullable = false)]
    ingress: Option<Ingress>,
}

#[derive(ToSchema)]
pub enum ReadyStatus {
    #[schema(rename = "ready")]
    Ready,
    #[schema(rename = "draining")]
    Draining,
    #[schema(rename = "waiting for redis")]
    WaitingForRedis,
}

/// `GET /ready`.
#[derive(ToSchema)]
#[schema(example = json!({"status": "ready"}))]
pub struct Readiness {
    status: ReadyStatus,
}

/// A user's presence.
#[derive(ToSchema)]
#[schema(example = json!({"user": "42", "online": true, "sockets": 2, "since": "2026-12-02T09:29:02.340Z", "devices": {"web": 1, "mobile": 1}}))]
pub struct UserPresence {
    user: String,
    /// A socket is connected on a live instance, or the last one went away less than `presence.grace_secs` ago.
    online: bool,
    /// Sockets connected now, on live instances.
    sockets: u64,
    /// When the user came online (RFC 3339), `null` when offline.
    since: Option<String>,
    /// Sockets per device, for sockets that named one.
    devices: std::collections::HashMap<String, u64>,
}

/// `{"users": [ids]}`: at most 10,000 ids.
#[derive(ToSchema)]
#[schema(example = json!({"users": [42, "43", "44"]}))]
pub struct BulkPresenceRequest {
    #[schema(value_type = Vec<IdText>, max_items = 10000)]
    users: Vec<String>,
}

/// Which of the ids are online.
#[derive(ToSchema)]
#[schema(example = json!({"count": 1, "online": ["42"], "offline": ["43", "44"]}))]
pub struct BulkPresence {
    /// How many are online.
    count: u64,
    online: Vec<String>,
    offline: Vec<String>,
}

/// A member of a presence room.
#[derive(ToSchema)]
pub struct RoomMember {
    user: String,
    /// Since when the user is in the room (RFC 3339).
    since: String,
}

/// A page of a presence room's members, oldest first.
#[derive(ToSchema)]
pub struct RoomPresence {
    room: String,
    namespace: String,
    /// Members in all.
    count: u64,
    users: Vec<RoomMember>,
    offset: u64,
    limit: u64,
    /// The `offset` of the next page; `null` on the last one.
    next_offset: Option<u64>,
}

/// `GET /api/v1/presence/rooms/{room}` query parameters.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RoomPresenceParams {
    /// The namespace (default `/`).
    #[param(nullable = false)]
    namespace: Option<String>,
    /// Members to skip (default 0).
    #[param(nullable = false, minimum = 0)]
    offset: Option<u64>,
    /// Members in the page (default 100, at most 1000).
    #[param(nullable = false, minimum = 0, maximum = 1000)]
    limit: Option<u64>,
}
