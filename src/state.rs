//! What every handler shares: settings, the token verifier, the room policy, the delivery path
//! and the counters. Built once in [`startup`](crate::startup) and passed around as `Arc<AppState>`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::auth::Verifier;
use crate::cluster::driver::ResilientDriver;
use crate::cluster::gated::Gated;
use crate::configuration::Settings;
use crate::delivery::Delivery;
use crate::ingress::listener::IngressStatus;
use crate::limits::{ConnectRate, ConnectionCounts};
use crate::metrics::Metrics;
use crate::outbox::Outbox;
use crate::presence::memory::MemoryPresence;
use crate::presence::redis::RedisPresence;
use crate::presence::{Backend, Presence};
use crate::rooms::RoomPolicy;
use crate::seen::SeenMarks;
use crate::webhooks::Webhooks;

pub struct AppState {
    pub settings: Settings,
    pub node_id: String,
    /// This run of the instance (see [`crate::configuration::ServerSettings::instance_id`]).
    pub instance_id: String,
    pub verifier: Verifier,
    pub room_policy: RoomPolicy,
    pub delivery: Delivery,
    pub metrics: Arc<Metrics>,
    pub connections: ConnectionCounts,
    /// Where each user stopped, for replay to clients that send no `last_id`.
    pub seen: Arc<SeenMarks>,
    /// Cluster mode: HTTP commands waiting on disk for Redis to return.
    pub outbox: Option<Arc<Outbox>>,
    pub connect_rate: ConnectRate,
    pub trusted_proxies: Vec<std::net::IpAddr>,
    pub started_at: Instant,
    /// The Redis connection of cluster mode (`None` in the embedded default).
    pub redis: Option<ResilientDriver>,
    /// Who is online, cluster-wide (in memory in the embedded default).
    pub presence: Arc<Presence>,
    /// Redis for Herald's own bookkeeping (cluster mode): presence, webhooks, dashboard stats.
    pub bookkeeping: Option<Gated>,
    /// Calls to the backend's webhooks (`None` without `webhooks.urls`).
    pub webhooks: Option<Arc<Webhooks>>,
    pub ingress: Arc<IngressStatus>,
    /// This instance's plain WebSocket sockets (the delivery path applies commands to them too).
    pub plain: Arc<crate::plain::Registry>,
    /// When each Socket.IO socket's token expires (one schedule, run by `socket::run_expiries`).
    pub expiries: crate::expiry::Expiries,
    redis_reached: AtomicBool,
    draining: AtomicBool,
}

impl AppState {
    pub fn new(
        settings: Settings,
        verifier: Verifier,
        delivery: Delivery,
        metrics: Arc<Metrics>,
        redis: Option<ResilientDriver>,
        outbox: Option<Arc<Outbox>>,
        plain: Arc<crate::plain::Registry>,
    ) -> anyhow::Result<AppState> {
        let node_id = settings.server.node_id();
        let instance_id = settings.server.instance_id();
        let grace = settings.presence.grace();
        // One connection for Herald's own bookkeeping (presence, webhooks, dashboard stats).
        let bookkeeping = redis.as_ref().map(|driver| Gated::new(driver.endpoint().clone(), driver.watch_state()));
        let backend: Arc<dyn Backend> = match &bookkeeping {
            None => Arc::new(MemoryPresence::new(grace)),
            Some(gated) => {
                let timeout = std::time::Duration::from_secs(settings.presence.instance_timeout_secs);
                Arc::new(RedisPresence::new(gated.clone(), &instance_id, grace, timeout))
            }
        };
        let presence = Arc::new(Presence::new(backend, &settings.presence));
        let webhooks = match settings.webhooks.urls.is_empty() {
            true => None,
            false => {
                let pending: Arc<dyn crate::webhooks::pending::Pending> = match &bookkeeping {
                    None => Arc::new(crate::webhooks::pending::MemoryPending::default()),
                    Some(gated) => Arc::new(crate::webhooks::pending::RedisPending::new(gated.clone())),
                };
                let hooks = Webhooks::new(&settings.webhooks, pending, presence.clone(), delivery.store().clone(), metrics.clone())?;
                Some(Arc::new(hooks))
            }
        };
        let seen = Arc::new(SeenMarks::new(
            delivery.store().clone(),
            &instance_id,
            settings.socketio.heartbeat_window(),
            redis.as_ref().map(|r| Arc::new(r.clone()) as Arc<dyn crate::seen::Subscriptions>),
        ));
        Ok(AppState {
            node_id,
            instance_id,
            room_policy: RoomPolicy::new(&settings.rooms.joinable, settings.rooms.max_name_bytes),
            connections: ConnectionCounts::default(),
            seen,
            outbox,
            connect_rate: ConnectRate::new(settings.limits.connects_per_ip_per_minute),
            trusted_proxies: settings.server.trusted_proxies.iter().filter_map(|p| p.parse().ok()).collect(),
            settings,
            verifier,
            delivery,
            metrics,
            started_at: Instant::now(),
            presence,
            bookkeeping,
            webhooks,
            redis,
            ingress: Arc::default(),
            plain,
            expiries: Default::default(),
            redis_reached: AtomicBool::new(false),
            draining: AtomicBool::new(false),
        })
    }

    /// True once shutdown has begun: `/ready` answers 503 and new connections are refused.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Ready to take traffic: not draining, and a configured Redis was reached at least once
    /// (a later outage does not make the instance unready: it serves its own sockets).
    pub fn is_ready(&self) -> bool {
        !self.is_draining() && (self.redis.is_none() || self.redis_reached.load(Ordering::Relaxed))
    }

    pub fn mark_redis_reached(&self) {
        self.redis_reached.store(true, Ordering::Relaxed);
    }

    /// `up`, `down` or `disabled` (embedded default).
    pub fn redis_status(&self) -> &'static str {
        match self.redis.as_ref().map(|r| r.state()) {
            None => "disabled",
            Some(crate::cluster::redis_state::RedisState::Up) => "up",
            Some(crate::cluster::redis_state::RedisState::Down) => "down",
        }
    }
}
