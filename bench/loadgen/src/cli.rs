//! The command line: the three scenarios (`connect`, `fanout`, `targeted`), the hidden `worker`
//! subcommand, and the options every scenario shares (`Common`). `Common` is also what the
//! parent hands each worker process (serialised in its `--spec`), so a worker sees exactly the
//! options the run was started with. `server_addr` keeps every run on loopback.

use std::net::{SocketAddr, ToSocketAddrs};

use clap::{Args, Parser, Subcommand};
use serde::{Deserialize, Serialize};

#[derive(Parser)]
#[command(name = "herald-loadgen", about = "Socket.IO v5 load generator (connect / fanout / targeted)")]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Hold N authenticated connections; report connect rate and server RSS per connection.
    Connect {
        #[command(flatten)]
        common: Common,
        /// Seconds to hold the connections after the RSS sample.
        #[arg(long, default_value_t = 3)]
        hold_secs: u64,
    },
    /// N sockets in one room, M sends via the HTTP API; time until the last socket has each.
    Fanout {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 100)]
        messages: u32,
        /// Give up waiting for one message after this long.
        #[arg(long, default_value_t = 10)]
        msg_timeout_secs: u64,
        /// Pause between one message being fully delivered and the next send.
        #[arg(long, default_value_t = 20)]
        gap_ms: u64,
    },
    /// Notifications to individual users at stepped steady rates (HTTP API or Redis PUBLISH).
    Targeted {
        #[command(flatten)]
        common: Common,
        /// Target deliveries per second, one step each.
        #[arg(long, default_value = "1000,2000,5000")]
        rates: String,
        #[arg(long, default_value_t = 5)]
        step_secs: u64,
        /// Users per HTTP request (`to.users`); 1 uses `to.user`.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Concurrent HTTP requests (or Redis connections for --ingress redis).
        #[arg(long, default_value_t = 32)]
        http_concurrency: usize,
        /// http | redis (PUBLISH notify:user:<id> {json})
        #[arg(long, default_value = "http")]
        ingress: String,
        #[arg(long, default_value = "127.0.0.1:6379")]
        redis_addr: String,
        /// Stop stepping once p99 exceeds this (ms), or deliveries fall behind.
        #[arg(long, default_value_t = 1000.0)]
        break_p99_ms: f64,
        /// Wait after each step for stragglers.
        #[arg(long, default_value_t = 2)]
        drain_secs: u64,
    },
    #[command(hide = true)]
    Worker {
        #[arg(long)]
        spec: String,
    },
}

#[derive(Args, Clone, Debug, Serialize, Deserialize)]
pub struct Common {
    /// Server base URL (must be a loopback address).
    #[arg(long, default_value = "http://127.0.0.1:5000")]
    pub url: String,
    #[arg(long, default_value = "dev-secret-change-me")]
    pub secret: String,
    #[arg(long, default_value = "dev-key-change-me")]
    pub api_key: String,
    /// Sockets connect here instead of --url, worker i to the (i mod n)-th (a cluster of
    /// instances: the API calls still go to --url). Comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub socket_urls: Vec<String>,
    /// Server process ids (comma-separated; several for a cluster), for RSS and CPU, summed.
    #[arg(long, value_delimiter = ',')]
    pub server_pid: Vec<u32>,
    /// Label for the results (herald, node, python, ...).
    #[arg(long, default_value = "herald")]
    pub server_name: String,
    /// Connections in total (over all workers).
    #[arg(long, default_value_t = 200)]
    pub conns: usize,
    /// Worker processes the connections are spread over (each holds at most 19,000).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Source addresses 127.0.0.1..=127.0.0.<src-ips>, round-robin (bind before connect).
    #[arg(long, default_value_t = 4)]
    pub src_ips: u8,
    /// Share of connections that use HTTP long-polling instead of WebSocket (0.0-1.0).
    #[arg(long, default_value_t = 0.0)]
    pub polling_share: f64,
    /// Handshakes in flight per worker.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// Join this room (`room:join` with ack) after connecting.
    #[arg(long)]
    pub join_room: Option<String>,
    /// `role` claim in every token (fanout without --join-room targets role_<role>).
    #[arg(long)]
    pub role: Option<String>,
    /// User ids are user_base + connection index (distinct per connection).
    #[arg(long, default_value_t = 100000)]
    pub user_base: u64,
    /// Append JSON result lines to this file.
    #[arg(long)]
    pub out: Option<String>,
    /// Hard limit on the whole run, seconds.
    #[arg(long, default_value_t = 300)]
    pub max_secs: u64,
    /// Seconds to wait after connecting before sampling RSS.
    #[arg(long, default_value_t = 2)]
    pub settle_secs: u64,
    /// Free-form label copied into every result line.
    #[arg(long, default_value = "")]
    pub tag: String,
}

pub fn server_addr(url: &str) -> anyhow_lite::Result<(SocketAddr, String)> {
    let rest = url.strip_prefix("http://").ok_or_else(|| anyhow_lite::err("--url must start with http://"))?;
    let hostport = rest.split('/').next().unwrap_or(rest).to_string();
    let addr = hostport
        .to_socket_addrs()
        .map_err(|e| anyhow_lite::err(format!("cannot resolve {hostport}: {e}")))?
        .find(|a| a.is_ipv4())
        .ok_or_else(|| anyhow_lite::err("no IPv4 address"))?;
    if !addr.ip().is_loopback() {
        return Err(anyhow_lite::err(format!("refusing non-loopback target {addr}: load only targets 127.0.0.0/8")));
    }
    Ok((addr, hostport))
}

mod anyhow_lite {
    pub type Result<T> = std::result::Result<T, String>;
    pub fn err(s: impl Into<String>) -> String {
        s.into()
    }
}
