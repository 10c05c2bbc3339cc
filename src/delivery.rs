//! The one delivery path: every way of emitting (HTTP API, Redis ingress, and replay) turns into
//! a [`Command`] and goes through [`Delivery`].
//!
//! Keeping one path means one place decides how a command reaches sockets: which namespace,
//! which rooms minus which exceptions, whether the emit crosses instances (`Scope::Cluster`, for
//! commands that entered on this instance only) or stays on this instance (`Scope::Local`, for
//! commands every instance receives anyway, such as Redis pub/sub ingress), whether it is stored
//! for offline users (and so carries an id), and what is counted.
//!
//! Stored emits and replay share a gate so that a socket that connects while notifications are
//! flowing gets each of them exactly once: see [`crate::replay`].

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use socketioxide::adapter::Adapter;
use socketioxide::BroadcastError;
use socketioxide::SocketIo;

use crate::configuration::DeliverySettings;
use crate::metrics::Metrics;
use crate::payload::{Args, Value};
use crate::rooms::Pattern;
use crate::store::{Dedup, Idempotency, Store, Stored, StreamId, BROADCAST_STREAM};

/// Which sockets a command acts on: those of `namespace` in any of `rooms` (all of the namespace
/// when `rooms` is empty) and in none of `except`.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub namespace: String,
    pub rooms: Vec<String>,
    pub except: Vec<String>,
}

impl Target {
    pub fn rooms(namespace: &str, rooms: Vec<String>) -> Target {
        Target { namespace: namespace.to_string(), rooms, except: vec![] }
    }
}

/// What a backend can ask of the sockets.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Emit { target: Target, event: String, args: Args },
    Join { target: Target, rooms: Vec<String> },
    Leave { target: Target, rooms: Vec<String> },
    Disconnect { target: Target },
}

impl Command {
    pub fn target(&self) -> &Target {
        match self {
            Command::Emit { target, .. }
            | Command::Join { target, .. }
            | Command::Leave { target, .. }
            | Command::Disconnect { target } => target,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Command::Emit { .. } => "emit",
            Command::Join { .. } => "join",
            Command::Leave { .. } => "leave",
            Command::Disconnect { .. } => "disconnect",
        }
    }
}

/// Whether a command should reach other instances too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Entered on this instance only (HTTP API): fan out to every instance.
    Cluster,
    /// Every instance receives it on its own (Redis ingress): act on this instance's sockets.
    Local,
}

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("namespace {0} is not served")]
    UnknownNamespace(String),
    #[error("{0}")]
    Socket(String),
    /// The command entered here and could not reach the store or the other instances: nothing
    /// was delivered (the HTTP API queues it in the outbox or answers 503).
    #[error("unavailable: {0}")]
    Unavailable(String),
}

/// What the delivery path needs from the Socket.IO layer, whatever its adapter.
pub trait Sockets: Send + Sync + 'static {
    /// Applies `command`. `Ok(n)`: done, except for `n` sockets that could not take the packet
    /// (closed, or too slow: their buffer was full). One slow socket is that socket's problem,
    /// not an error of the command.
    fn apply<'a>(&'a self, command: &'a Command, scope: Scope) -> BoxFuture<'a, Result<usize, DeliveryError>>;
    /// Disconnects every socket of this instance (graceful shutdown).
    fn close(&self) -> BoxFuture<'_, ()>;
    /// Sockets on every instance (asks the others through the adapter).
    fn cluster_connections(&self) -> BoxFuture<'_, Result<usize, String>>;
    /// The ids of this instance's sockets of `namespace` in `room`, every transport.
    fn local_members(&self, namespace: &str, room: &str) -> Vec<String>;
    /// This instance's sockets by transport, and its `top` rooms with the most sockets (rooms
    /// shared by several users: not sid, user or device rooms).
    fn census(&self, top: usize) -> Census;
}

/// What [`Sockets::census`] counts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Census {
    /// Socket.IO over WebSocket and over HTTP long-polling; plain WebSocket clients.
    pub websocket: usize,
    pub polling: usize,
    pub plain: usize,
    pub rooms: Vec<(String, usize)>,
}

/// Every socket of this instance, whatever its transport: Socket.IO sockets (socketioxide, and
/// through its adapter those of the other instances) and plain WebSocket sockets
/// ([`crate::plain`]). A command reaches both the same way: same target, same rooms.
pub struct Transports<A: Adapter> {
    pub io: SocketIo<A>,
    pub plain: Arc<crate::plain::Registry>,
    /// Cluster mode: carries commands that entered here to the other instances' plain sockets
    /// (the adapter carries them to their Socket.IO sockets).
    pub peers: Option<Arc<dyn crate::plain::Peers>>,
}

impl<A: Adapter> Transports<A> {
    async fn apply_socketio(&self, command: &Command, scope: Scope) -> Result<usize, DeliveryError> {
        let target = command.target();
        let ns = self.io.of(&target.namespace).ok_or_else(|| DeliveryError::UnknownNamespace(target.namespace.clone()))?;
        let mut ops = ns.to(target.rooms.clone()).except(target.except.clone());
        if scope == Scope::Local {
            ops = ops.local();
        }
        let result = match command {
            Command::Emit { event, args, .. } => unreachable_sockets(ops.emit(event, args).await),
            Command::Join { rooms, .. } => ops.join(rooms.clone()).await.map(|()| 0).map_err(|e| e.to_string()),
            Command::Leave { rooms, .. } => ops.leave(rooms.clone()).await.map(|()| 0).map_err(|e| e.to_string()),
            Command::Disconnect { .. } => unreachable_sockets(ops.disconnect().await),
        };
        result.map_err(DeliveryError::Socket)
    }
}

impl<A: Adapter> Sockets for Transports<A> {
    fn apply<'a>(&'a self, command: &'a Command, scope: Scope) -> BoxFuture<'a, Result<usize, DeliveryError>> {
        Box::pin(async move {
            // Socket.IO first: with Scope::Cluster it fails as a whole when the other instances
            // cannot be reached, and then no plain socket gets it either (the outbox sends it later).
            let mut unreachable = self.apply_socketio(command, scope).await?;
            unreachable += self.plain.apply(command);
            if scope == Scope::Cluster {
                if let Some(peers) = &self.peers {
                    if let Err(e) = peers.publish(command).await {
                        // Their Socket.IO sockets got it; their plain sockets missed it.
                        tracing::warn!(error = %e, "command not sent to the other instances' plain sockets");
                        unreachable += 1;
                    }
                }
            }
            Ok(unreachable)
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.plain.close_all(crate::plain::close::GOING_AWAY, "server shutting down");
            SocketIo::close(&self.io).await;
            // Plain sockets are gone once their close handshake and session end are done.
            let deadline = Instant::now() + Duration::from_secs(5);
            while !self.plain.is_empty() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    }

    fn census(&self, top: usize) -> Census {
        let mut census = Census { plain: self.plain.len(), ..Census::default() };
        let mut rooms: HashMap<String, usize> = HashMap::new();
        for ns in self.io.nsps() {
            for socket in ns.local().sockets() {
                match socket.transport_type() {
                    socketioxide::TransportType::Websocket => census.websocket += 1,
                    socketioxide::TransportType::Polling => census.polling += 1,
                }
                let sid = socket.id.to_string();
                for room in socket.rooms() {
                    if room != sid.as_str() && !room.starts_with("user_") {
                        *rooms.entry(room.to_string()).or_default() += 1;
                    }
                }
            }
        }
        let mut rooms: Vec<(String, usize)> = rooms.into_iter().collect();
        rooms.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        rooms.truncate(top);
        census.rooms = rooms;
        census
    }

    fn cluster_connections(&self) -> BoxFuture<'_, Result<usize, String>> {
        Box::pin(async move {
            let mut total = 0;
            for ns in self.io.nsps() {
                total += ns.fetch_sockets().await.map_err(|e| e.to_string())?.len();
            }
            Ok(total)
        })
    }

    fn local_members(&self, namespace: &str, room: &str) -> Vec<String> {
        let mut sids: Vec<String> = match self.io.of(namespace) {
            Some(ns) => ns.within(room.to_string()).local().sockets().iter().map(|s| s.id.to_string()).collect(),
            None => vec![],
        };
        sids.extend(self.plain.members(namespace, room));
        sids
    }
}

/// Separates the sockets a broadcast could not reach from a failure of the broadcast itself.
fn unreachable_sockets(result: Result<(), BroadcastError>) -> Result<usize, String> {
    match result {
        Ok(()) => Ok(0),
        Err(BroadcastError::Socket(errors)) => Ok(errors.len()),
        Err(e) => Err(e.to_string()),
    }
}

/// Cluster mode: the message that carries a stored emit to every instance, which applies it
/// locally. The store publishes it atomically with the append (see [`Stored::relay`]).
pub trait Fanout: Send + Sync + 'static {
    fn message(&self, command: &Command) -> Option<String>;
}

/// Told of each notification this instance stored, once per notification whatever the number
/// of instances (the webhooks' missed-notification check sits here).
pub trait StoredListener: Send + Sync + 'static {
    fn stored(&self, streams: &[String], nid: StreamId, args: &Args);
}

/// Where a command comes from, for [`Delivery::apply`].
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub scope: Scope,
    /// The ingress, for `/metrics`: `http`, `python`, `node`, `notify`.
    pub source: &'static str,
    /// Identifies a message every instance receives (pub/sub ingress), so that it is stored once.
    pub dedup: Option<Dedup<'a>>,
    /// The id to store under, when this emit is one part of a notification that already has one.
    pub nid: Option<StreamId>,
    /// A producer's key: the same command applied again with it within the window does nothing.
    pub idempotency: Option<Idempotency<'a>>,
}

impl Origin<'static> {
    /// A command that entered on this instance through the HTTP API.
    pub fn http() -> Origin<'static> {
        Origin { scope: Scope::Cluster, source: "http", dedup: None, nid: None, idempotency: None }
    }
}

/// A command [`Delivery::stage`] has stored (when it is a stored emit), waiting to be delivered
/// by [`Delivery::complete`].
pub struct Staged {
    command: Command,
    scope: Scope,
    source: &'static str,
    started: Instant,
    id: StagedId,
}

/// The id a staged command is delivered with.
enum StagedId {
    /// Stored under this id: delivered through every instance's `apply_stored_locally`, by the
    /// relay when `relayed` (the store published it), here otherwise.
    Stored { nid: StreamId, relayed: bool },
    /// Not stored: the id the command came with, if any.
    Given(Option<StreamId>),
    /// Applied before under the same idempotency key: nothing to do again.
    Duplicate(Option<StreamId>),
    /// Could not be stored or checked, and is not delivered (commands that entered here).
    Failed(String),
}

/// Which emits are stored: an event in `persisted_events` sent to a room matching
/// `persisted_rooms`, or to a whole namespace when `persist_broadcasts`.
pub struct PersistPolicy {
    rooms: Vec<Pattern>,
    broadcasts: bool,
    events: Vec<String>,
}

impl PersistPolicy {
    pub fn new(settings: &DeliverySettings) -> PersistPolicy {
        PersistPolicy {
            rooms: settings.persisted_rooms.iter().map(|p| Pattern::new(p)).collect(),
            broadcasts: settings.persist_broadcasts,
            events: settings.persisted_events.clone(),
        }
    }

    /// The streams an emit of `event` to `rooms` is stored in (empty: not stored).
    pub fn streams(&self, event: &str, rooms: &[String]) -> Vec<String> {
        if !self.stores_event(event) {
            return vec![];
        }
        if rooms.is_empty() {
            return if self.broadcasts { vec![BROADCAST_STREAM.to_string()] } else { vec![] };
        }
        rooms.iter().filter(|r| self.persists_room(r)).cloned().collect()
    }

    pub fn stores_event(&self, event: &str) -> bool {
        self.events.iter().any(|e| e == event)
    }

    pub fn persists_room(&self, room: &str) -> bool {
        self.rooms.iter().any(|p| p.matches(room))
    }

    pub fn persists_broadcasts(&self) -> bool {
        self.broadcasts
    }
}

/// How long the bookkeeping of a replay is kept: a replay needs it for the milliseconds between
/// its socket joining and its replay being sent.
const RECENT_WINDOW: Duration = Duration::from_secs(60);

/// Bookkeeping shared by stored emits and replays (see [`crate::replay`]).
#[derive(Default)]
pub(crate) struct Recent {
    /// Sockets between joining their rooms and being sent their replay, by socket id: stored
    /// emits for them are held here and sent with the replay, in id order.
    pub replaying: HashMap<String, Replaying>,
    /// Notifications already replayed to these socket ids, to leave out when applied later.
    pub replayed: HashMap<StreamId, (Vec<String>, Instant)>,
}

/// A socket whose replay is being prepared.
pub(crate) struct Replaying {
    pub namespace: String,
    /// Its rooms, its own sid room included.
    pub rooms: HashSet<String>,
    /// Stored emits that reached it meanwhile: (nid, event, args with the id stamped).
    pub held: Vec<(StreamId, String, Args)>,
    pub since: Instant,
}

impl Replaying {
    fn is_reached_by(&self, target: &Target) -> bool {
        self.namespace == target.namespace
            && (target.rooms.is_empty() || target.rooms.iter().any(|room| self.rooms.contains(room)))
            && !target.except.iter().any(|room| self.rooms.contains(room))
    }
}

impl Recent {
    fn forget_old(&mut self) {
        let now = Instant::now();
        if self.replayed.len() > 1024 {
            self.replayed.retain(|_, (_, at)| now.duration_since(*at) <= RECENT_WINDOW);
        }
        if self.replaying.len() > 1024 {
            self.replaying.retain(|_, r| now.duration_since(r.since) <= RECENT_WINDOW);
        }
    }
}

/// The shared delivery path. Cheap to clone.
#[derive(Clone)]
pub struct Delivery {
    inner: Arc<Inner>,
}

struct Inner {
    sockets: Arc<dyn Sockets>,
    store: Arc<dyn Store>,
    persist: PersistPolicy,
    fanout: Mutex<Option<Arc<dyn Fanout>>>,
    stored_listener: std::sync::OnceLock<Arc<dyn StoredListener>>,
    metrics: Arc<Metrics>,
    gate: tokio::sync::RwLock<()>,
    recent: Mutex<Recent>,
    last_local_id: Mutex<StreamId>,
}

impl Delivery {
    pub fn new(sockets: Arc<dyn Sockets>, store: Arc<dyn Store>, persist: PersistPolicy, metrics: Arc<Metrics>) -> Delivery {
        Delivery {
            inner: Arc::new(Inner {
                sockets,
                store,
                persist,
                fanout: Mutex::new(None),
                stored_listener: std::sync::OnceLock::new(),
                metrics,
                gate: tokio::sync::RwLock::new(()),
                recent: Mutex::new(Recent::default()),
                last_local_id: Mutex::new(StreamId::default()),
            }),
        }
    }

    /// Cluster mode: stored emits entering here are published for every instance to apply.
    pub fn set_fanout(&self, fanout: Arc<dyn Fanout>) {
        *self.inner.fanout.lock().unwrap_or_else(|e| e.into_inner()) = Some(fanout);
    }

    /// Who is told of every notification stored here (the webhooks).
    pub fn set_stored_listener(&self, listener: Arc<dyn StoredListener>) {
        if self.inner.stored_listener.set(listener).is_err() {
            tracing::warn!("stored listener already set: the second one is ignored");
        }
    }

    /// This instance's sockets by transport and its busiest rooms (the dashboard).
    pub fn census(&self, top: usize) -> Census {
        self.inner.sockets.census(top)
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    pub fn persist(&self) -> &PersistPolicy {
        &self.inner.persist
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// Applies `command`; `origin` says where it came from. Returns the notification id when
    /// the emit was stored.
    pub async fn apply(&self, command: Command, origin: Origin<'_>) -> Result<Option<StreamId>, DeliveryError> {
        let staged = self.stage(command, origin).await;
        self.complete(staged).await
    }

    /// The first half of [`apply`](Self::apply): stores the command when it is a stored emit.
    /// Several stages may run at once (the Redis ingress overlaps their round-trips to the
    /// store); complete them in the order they were staged.
    pub async fn stage(&self, command: Command, origin: Origin<'_>) -> Staged {
        let Origin { scope, source, dedup, nid, idempotency } = origin;
        let started = Instant::now();
        if let Command::Emit { event, .. } = &command {
            // Label values from a fixed set: backends choose event names freely.
            let label = if self.inner.persist.stores_event(event) { event.as_str() } else { "other" };
            self.inner.metrics.inc("herald_events_out_total", &[("event", label)]);
        }
        let streams = match &command {
            Command::Emit { target, event, .. } => self.inner.persist.streams(event, &target.rooms),
            _ => Vec::new(),
        };
        let id = match &command {
            Command::Emit { target, event, args } if !streams.is_empty() => {
                let relay = match scope {
                    Scope::Cluster => self.fanout().and_then(|f| f.message(&command)),
                    Scope::Local => None,
                };
                let emit = Stored { event, args, dedup, nid, idempotency, relay: relay.as_deref() };
                let id = self.store_once(&target.namespace, &streams, emit, scope).await;
                if let StagedId::Stored { nid, .. } = &id {
                    if let Some(listener) = self.inner.stored_listener.get() {
                        listener.stored(&streams, *nid, args);
                    }
                }
                id
            }
            _ => match idempotency {
                None => StagedId::Given(nid),
                Some(key) => self.claim(key, nid).await,
            },
        };
        Staged { command, scope, source, started, id }
    }

    /// The second half of [`apply`](Self::apply): delivers a staged command and counts the outcome.
    pub async fn complete(&self, staged: Staged) -> Result<Option<StreamId>, DeliveryError> {
        let Staged { mut command, scope, source, started, id } = staged;
        let kind = command.kind();
        let result = match id {
            StagedId::Stored { nid, relayed: true } => Ok(Some(nid)),
            StagedId::Stored { nid, relayed: false } => self.apply_stored_locally(nid, command).await.map(|_| Some(nid)),
            StagedId::Duplicate(nid) => Ok(nid),
            StagedId::Failed(e) => Err(DeliveryError::Unavailable(e)),
            StagedId::Given(nid) => {
                // Not stored; an emit still carries the id its notification was given.
                if let (Some(nid), Command::Emit { args, .. }) = (nid, &mut command) {
                    stamp_id(args, nid);
                }
                self.apply_plain(&command, scope).await.map(|_| nid)
            }
        };
        self.inner.metrics.inc("herald_commands_total", &[("source", source), ("kind", kind), ("outcome", outcome(&result))]);
        self.inner.metrics.observe("herald_delivery_latency_seconds", &[("source", source)], started.elapsed().as_secs_f64());
        match &result {
            // The caller queues it or refuses it; an outage is logged once, by the driver.
            Err(e @ DeliveryError::Unavailable(_)) => tracing::debug!(source, kind, error = %e, "command not delivered"),
            Err(e) => tracing::warn!(source, kind, error = %e, "command not delivered"),
            Ok(_) => {}
        }
        result
    }

    /// Non-stored commands, through the adapter. One that entered here and cannot reach the
    /// other instances is not delivered at all: the caller queues it or refuses it, so that it
    /// reaches every instance or none.
    async fn apply_plain(&self, command: &Command, scope: Scope) -> Result<(), DeliveryError> {
        let result = match self.inner.sockets.apply(command, scope).await {
            Err(DeliveryError::Socket(e)) if scope == Scope::Cluster => {
                self.inner.metrics.inc("herald_cluster_fallbacks_total", &[]);
                Err(DeliveryError::Unavailable(e))
            }
            other => other,
        };
        result.map(|unreachable| self.note_unreachable(unreachable))
    }

    /// Non-stored commands with an idempotency key: remembered before they are applied.
    async fn claim(&self, key: Idempotency<'_>, nid: Option<StreamId>) -> StagedId {
        let value = nid.map(|n| n.to_string()).unwrap_or_default();
        match self.inner.store.claim_key(key.key, &value, key.window).await {
            Ok(None) => StagedId::Given(nid),
            Ok(Some(first)) => StagedId::Duplicate(first.parse().ok()),
            Err(e) => StagedId::Failed(e.to_string()),
        }
    }

    fn fanout(&self) -> Option<Arc<dyn Fanout>> {
        self.inner.fanout.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Counts sockets that missed a packet because they were closed or too slow. Stored
    /// notifications come back to them by replay when they reconnect.
    fn note_unreachable(&self, sockets: usize) {
        if sockets > 0 {
            self.inner.metrics.add("herald_unreachable_sockets_total", &[], sockets as u64);
            tracing::debug!(sockets, "sockets missed a packet (closed or buffer full)");
        }
    }

    /// Appends to the store. When the store is unavailable, a command every instance received
    /// (`Scope::Local`: Redis ingress) still goes out live with an id from this instance; one
    /// that entered here fails, for its caller to queue or refuse.
    async fn store_once(&self, namespace: &str, streams: &[String], emit: Stored<'_>, scope: Scope) -> StagedId {
        let relayed = emit.relay.is_some();
        match self.inner.store.append(namespace, streams, emit).await {
            Ok(appended) if !appended.fresh => {
                self.inner.metrics.inc("herald_stored_total", &[("outcome", "duplicate")]);
                StagedId::Duplicate(Some(appended.nid))
            }
            Ok(appended) => {
                self.inner.metrics.inc("herald_stored_total", &[("outcome", "stored")]);
                StagedId::Stored { nid: appended.nid, relayed }
            }
            Err(e) if scope == Scope::Cluster => {
                self.inner.metrics.inc("herald_stored_total", &[("outcome", "failed")]);
                StagedId::Failed(e.to_string())
            }
            Err(e) => {
                self.inner.metrics.inc("herald_stored_total", &[("outcome", "failed")]);
                tracing::warn!(error = %e, "notification not stored: delivering live only");
                StagedId::Given(Some(emit.nid.unwrap_or_else(|| self.local_id())))
            }
        }
    }

    /// Delivers a stored emit to this instance's sockets, with its id in the payload.
    pub async fn apply_stored_locally(&self, nid: StreamId, command: Command) -> Result<(), DeliveryError> {
        let Command::Emit { mut target, event, mut args } = command else {
            return self.inner.sockets.apply(&command, Scope::Local).await.map(|n| self.note_unreachable(n));
        };
        stamp_id(&mut args, nid);
        let _gate = self.inner.gate.read().await;
        {
            let mut recent = self.inner.recent.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((sids, _)) = recent.replayed.remove(&nid) {
                target.except.extend(sids);
            }
            let mut held = Vec::new();
            for (sid, replaying) in recent.replaying.iter_mut() {
                if replaying.is_reached_by(&target) {
                    replaying.held.push((nid, event.clone(), args.clone()));
                    held.push(sid.clone());
                }
            }
            target.except.extend(held);
            recent.forget_old();
        }
        let unreachable = self.inner.sockets.apply(&Command::Emit { target, event, args }, Scope::Local).await?;
        self.note_unreachable(unreachable);
        Ok(())
    }

    /// Sends one packet to one socket of this instance (a late replay).
    pub async fn emit_to_socket(&self, namespace: &str, sid: &str, event: &str, args: Args) {
        let command = Command::Emit { target: Target::rooms(namespace, vec![sid.to_string()]), event: event.to_string(), args };
        match self.inner.sockets.apply(&command, Scope::Local).await {
            Ok(unreachable) => self.note_unreachable(unreachable),
            Err(e) => tracing::debug!(error = %e, sid, "packet not sent"),
        }
    }

    /// A sortable id made on this instance, for notifications that are not (or could not be)
    /// stored: `<now ms>-<seq>`, increasing.
    pub fn local_id(&self) -> StreamId {
        let now = crate::notification::now_ms();
        let mut last = self.inner.last_local_id.lock().unwrap_or_else(|e| e.into_inner());
        *last = if now > last.ms { StreamId::new(now, 0) } else { StreamId::new(last.ms, last.seq + 1) };
        *last
    }

    pub(crate) fn gate(&self) -> &tokio::sync::RwLock<()> {
        &self.inner.gate
    }

    pub(crate) fn recent(&self) -> std::sync::MutexGuard<'_, Recent> {
        self.inner.recent.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub async fn close_all(&self) {
        self.inner.sockets.close().await
    }

    pub async fn cluster_connections(&self) -> Result<usize, String> {
        self.inner.sockets.cluster_connections().await
    }

    /// The ids of this instance's sockets of `namespace` in `room`, every transport.
    pub fn local_members(&self, namespace: &str, room: &str) -> Vec<String> {
        self.inner.sockets.local_members(namespace, room)
    }
}

/// The `outcome` label of a command's result in `/metrics`.
pub fn outcome<T>(result: &Result<T, DeliveryError>) -> &'static str {
    match result {
        Ok(_) => "delivered",
        Err(DeliveryError::UnknownNamespace(_)) => "unknown_namespace",
        Err(DeliveryError::Socket(_)) => "failed",
        Err(DeliveryError::Unavailable(_)) => "unavailable",
    }
}

/// Puts the notification id in the first argument when it is an object: as `id`, or as
/// `_herald_id` when the producer set its own `id`.
pub fn stamp_id(args: &mut Args, nid: StreamId) {
    if let Some(first @ Value::Object(_)) = args.0.first_mut() {
        let field = if first.get("id").is_some_and(|v| *v != Value::String(nid.to_string())) { "_herald_id" } else { "id" };
        first.insert(field, Value::String(nid.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_keeps_producer_ids() {
        let nid = StreamId::new(5, 1);
        let mut args = Args::one(Value::Object(vec![("id".into(), Value::Int(7))]));
        stamp_id(&mut args, nid);
        assert_eq!(args.0[0].get("id"), Some(&Value::Int(7)));
        assert_eq!(args.0[0].get("_herald_id"), Some(&Value::String("5-1".into())));
        let mut args = Args::one(Value::Object(vec![]));
        stamp_id(&mut args, nid);
        assert_eq!(args.0[0].get("id"), Some(&Value::String("5-1".into())));
        let mut args = Args::one(Value::String("plain".into()));
        stamp_id(&mut args, nid);
        assert_eq!(args.0[0], Value::String("plain".into()));
    }

    #[test]
    fn policy_stores_persisted_rooms_and_broadcasts_of_persisted_events() {
        let policy = PersistPolicy::new(&DeliverySettings::default());
        let rooms = vec!["user_1".to_string(), "team-updates".to_string()];
        assert_eq!(policy.streams("notification", &rooms), vec!["user_1".to_string()]);
        assert_eq!(policy.streams("notification", &[]), vec![BROADCAST_STREAM.to_string()]);
        assert!(policy.streams("chat", &rooms).is_empty());
    }
}
