//! What an instance reports about itself for the dashboard: connections by transport, uptime,
//! Redis and ingress state, activity counters, queue depths, its busiest rooms, its last
//! problems. With Redis each instance writes its snapshot every second (`herald:stats:<inst>`,
//! expiring after 5 s), so any instance can show the whole cluster; dead instances drop out.
//!
//! Nothing in a snapshot is a token, a secret or a payload: counts, names of rooms, and log
//! lines (which Herald never fills with those).

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cluster::gated::Gated;
use crate::cluster::keys::redis_key;
use crate::notification::now_ms;
use crate::state::AppState;

/// How many rooms a snapshot lists.
pub const TOP_ROOMS: usize = 10;
const PUBLISH_EVERY: Duration = Duration::from_secs(1);
const EXPIRES_SECS: u64 = 5;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    pub instance: String,
    pub node: String,
    pub at_ms: u64,
    pub uptime_secs: u64,
    pub connections: Transports,
    /// `up`, `down` or `disabled` (embedded default).
    pub redis: String,
    /// Seconds since the Redis ingress last received a message (with Redis).
    pub ingress_last_message_secs: Option<f64>,
    pub outbox: Option<usize>,
    pub webhook_queue: Option<usize>,
    /// Counters since start; the dashboard turns them into rates.
    pub counters: Counters,
    pub rooms: Vec<RoomCount>,
    pub problems: Vec<crate::telemetry::Problem>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Transports {
    /// Socket.IO over WebSocket, Socket.IO over long-polling, plain WebSocket clients.
    pub websocket: usize,
    pub polling: usize,
    #[serde(default)]
    pub plain: usize,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Counters {
    pub connects: u64,
    pub disconnects: u64,
    pub refusals: u64,
    /// Emits sent to sockets (notifications and other events).
    pub events_out: u64,
    pub stored: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RoomCount {
    pub room: String,
    pub sockets: usize,
}

/// This instance, now.
pub fn snapshot(state: &AppState) -> Snapshot {
    let census = state.delivery.census(TOP_ROOMS);
    let metrics = &state.metrics;
    Snapshot {
        instance: state.instance_id.clone(),
        node: state.node_id.clone(),
        at_ms: now_ms(),
        uptime_secs: state.started_at.elapsed().as_secs(),
        connections: Transports { websocket: census.websocket, polling: census.polling, plain: census.plain },
        redis: state.redis_status().to_string(),
        ingress_last_message_secs: state.redis.as_ref().and(state.ingress.last_message_age()).map(|a| a.as_secs_f64()),
        outbox: state.outbox.as_ref().map(|o| o.len()),
        webhook_queue: state.webhooks.as_ref().map(|w| w.queue_depth()),
        counters: Counters {
            connects: metrics.total("herald_connects_total"),
            disconnects: metrics.total("herald_disconnects_total"),
            refusals: metrics.total("herald_refusals_total"),
            events_out: metrics.total("herald_events_out_total"),
            stored: metrics.total("herald_stored_total"),
        },
        rooms: census.rooms.into_iter().map(|(room, sockets)| RoomCount { room, sockets }).collect(),
        problems: crate::telemetry::recent_problems(),
    }
}

fn key(instance: &str) -> String {
    redis_key!("stats:{instance}")
}

/// Every live instance, this one first (only this one in the embedded default).
pub async fn cluster(state: &AppState, redis: Option<&Gated>) -> Vec<Snapshot> {
    let mine = snapshot(state);
    let mut all = Vec::new();
    let conn = match redis {
        Some(redis) => redis.get().await.ok(),
        None => None,
    };
    if let Some(mut conn) = conn {
        let instances: Vec<String> = redis::cmd("HKEYS").arg(redis_key!("instances")).query_async(&mut conn).await.unwrap_or_default();
        let others: Vec<String> = instances.into_iter().filter(|i| *i != mine.instance).map(|i| key(&i)).collect();
        if !others.is_empty() {
            let found: Vec<Option<String>> = redis::cmd("MGET").arg(&others).query_async(&mut conn).await.unwrap_or_default();
            all.extend(found.into_iter().flatten().filter_map(|json| serde_json::from_str::<Snapshot>(&json).ok()));
        }
    }
    all.sort_by(|a, b| a.node.cmp(&b.node));
    all.insert(0, mine);
    all
}

/// Writes this instance's snapshot every second, for as long as the server runs (cluster mode).
pub async fn publish(state: Arc<AppState>, redis: Gated) {
    let mut ticker = tokio::time::interval(PUBLISH_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Ok(mut conn) = redis.get().await else { continue };
        let Ok(json) = serde_json::to_string(&snapshot(&state)) else { continue };
        let result: redis::RedisResult<()> =
            redis::cmd("SET").arg(key(&state.instance_id)).arg(json).arg("EX").arg(EXPIRES_SECS).query_async(&mut conn).await;
        if let Err(e) = result {
            tracing::debug!(error = %e, "dashboard stats not written");
        }
    }
}
