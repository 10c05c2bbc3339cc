//! What every handler shares: settings, the token verifier, the room policy, the delivery path
//! and the counters. Built once in [`startup`](crate::startup) and passed around as `Arc<AppState>`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::auth::Verifier;
use crate::configuration::Settings;
use crate::delivery::Delivery;
use crate::limits::{ConnectRate, ConnectionCounts};
use crate::metrics::Metrics;
use crate::rooms::RoomPolicy;

pub struct AppState {
    pub settings: Settings,
    pub node_id: String,
    pub verifier: Verifier,
    pub room_policy: RoomPolicy,
    pub delivery: Delivery,
    pub metrics: Arc<Metrics>,
    pub connections: ConnectionCounts,
    pub connect_rate: ConnectRate,
    pub trusted_proxies: Vec<std::net::IpAddr>,
    pub started_at: Instant,
    draining: AtomicBool,
}

impl AppState {
    pub fn new(settings: Settings, verifier: Verifier, delivery: Delivery, metrics: Arc<Metrics>) -> AppState {
        AppState {
            node_id: settings.server.node_id(),
            room_policy: RoomPolicy::new(&settings.rooms.joinable, settings.rooms.max_name_bytes),
            connections: ConnectionCounts::default(),
            connect_rate: ConnectRate::new(settings.limits.connects_per_ip_per_minute),
            trusted_proxies: settings.server.trusted_proxies.iter().filter_map(|p| p.parse().ok()).collect(),
            settings,
            verifier,
            delivery,
            metrics,
            started_at: Instant::now(),
            draining: AtomicBool::new(false),
        }
    }

    /// True once shutdown has begun: `/ready` answers 503 and new connections are refused.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }
}
