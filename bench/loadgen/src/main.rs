//! herald-loadgen: an Engine.IO v4 / Socket.IO v5 load generator for Herald and for the Node
//! socket.io / python-socketio baselines in `bench/`.
//!
//! The parent process spawns `--workers K` worker processes (this same binary, hidden `worker`
//! subcommand) that each hold a share of the connections, and itself drives the HTTP API (or
//! Redis) and the server measurements (/proc/<pid>/status VmRSS, /proc/<pid>/stat CPU).
//! Workers speak to the parent in JSON lines on stdout; the parent talks to them with
//! one-word lines on stdin (`report`, `quit`). Every phase is bounded in time (`--max-secs`).
//!
//! Latency is measured end to end: the sender embeds its wall-clock time in microseconds
//! (`bsent`) in the notification's `data`; a worker subtracts it from its own clock on receipt
//! (same machine, same clock).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
#[command(name = "herald-loadgen", about = "Socket.IO v5 load generator (connect / fanout / targeted)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
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
struct Common {
    /// Server base URL (must be a loopback address).
    #[arg(long, default_value = "http://127.0.0.1:5000")]
    url: String,
    #[arg(long, default_value = "dev-secret-change-me")]
    secret: String,
    #[arg(long, default_value = "dev-key-change-me")]
    api_key: String,
    /// Sockets connect here instead of --url, worker i to the (i mod n)-th (a cluster of
    /// instances: the API calls still go to --url). Comma-separated.
    #[arg(long, value_delimiter = ',')]
    socket_urls: Vec<String>,
    /// Server process ids (comma-separated; several for a cluster), for RSS and CPU, summed.
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// Label for the results (herald, node, python, ...).
    #[arg(long, default_value = "herald")]
    server_name: String,
    /// Connections in total (over all workers).
    #[arg(long, default_value_t = 200)]
    conns: usize,
    /// Worker processes the connections are spread over (each holds at most 19,000).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Source addresses 127.0.0.1..=127.0.0.<src-ips>, round-robin (bind before connect).
    #[arg(long, default_value_t = 4)]
    src_ips: u8,
    /// Share of connections that use HTTP long-polling instead of WebSocket (0.0-1.0).
    #[arg(long, default_value_t = 0.0)]
    polling_share: f64,
    /// Handshakes in flight per worker.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// Join this room (`room:join` with ack) after connecting.
    #[arg(long)]
    join_room: Option<String>,
    /// `role` claim in every token (fanout without --join-room targets role_<role>).
    #[arg(long)]
    role: Option<String>,
    /// User ids are user_base + connection index (distinct per connection).
    #[arg(long, default_value_t = 100000)]
    user_base: u64,
    /// Append JSON result lines to this file.
    #[arg(long)]
    out: Option<String>,
    /// Hard limit on the whole run, seconds.
    #[arg(long, default_value_t = 300)]
    max_secs: u64,
    /// Seconds to wait after connecting before sampling RSS.
    #[arg(long, default_value_t = 2)]
    settle_secs: u64,
    /// Free-form label copied into every result line.
    #[arg(long, default_value = "")]
    tag: String,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
struct WorkerSpec {
    common: Common,
    mode: String,
    index: usize,
    first: usize,
    n: usize,
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_micros() as u64
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds")
}

fn hist_to_json(h: &Histogram<u64>) -> Value {
    Value::Array(h.iter_recorded().map(|v| json!([v.value_iterated_to(), v.count_at_value()])).collect())
}

fn hist_add_json(h: &mut Histogram<u64>, v: &Value) {
    if let Some(items) = v.as_array() {
        for item in items {
            let (Some(value), Some(count)) = (item[0].as_u64(), item[1].as_u64()) else { continue };
            h.saturating_record_n(value.max(1), count);
        }
    }
}

fn ms(us: u64) -> f64 {
    (us as f64 / 1000.0 * 1000.0).round() / 1000.0
}

fn raise_nofile() {
    // Each process may hold at most 20,000 open files: raise the soft limit up to that, no further.
    unsafe {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            let want = lim.rlim_max.min(20_000);
            if lim.rlim_cur < want {
                lim.rlim_cur = want;
                libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            }
        }
    }
}

fn server_addr(url: &str) -> anyhow_lite::Result<(SocketAddr, String)> {
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

fn source_ip(common: &Common, global_index: usize) -> Ipv4Addr {
    let n = common.src_ips.max(1) as usize;
    Ipv4Addr::new(127, 0, 0, 1 + (global_index % n) as u8)
}

fn mint(common: &Common, user: u64) -> String {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() + 6 * 3600;
    let mut claims = json!({ "user_id": user.to_string(), "exp": exp });
    if let Some(role) = &common.role {
        claims["role"] = json!(role);
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(common.secret.as_bytes()),
    )
    .expect("jwt encode")
}

// ---------------------------------------------------------------------------------------------
// /proc measurements of the server

#[derive(Clone, Copy, Debug, Default)]
struct ProcSample {
    rss_kb: u64,
    cpu_ticks: u64,
}

fn clk_tck() -> f64 {
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// RSS and CPU of the server processes, summed (`None` without pids or when one is gone).
fn sample(pids: &[u32]) -> Option<ProcSample> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().try_fold(ProcSample { rss_kb: 0, cpu_ticks: 0 }, |total, pid| {
        let one = sample_one(*pid)?;
        Some(ProcSample { rss_kb: total.rss_kb + one.rss_kb, cpu_ticks: total.cpu_ticks + one.cpu_ticks })
    })
}

fn sample_one(pid: u32) -> Option<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb = status.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok())?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // after "pid (comm) ": field 3 is index 0, so utime (14) is 11 and stime (15) is 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(ProcSample { rss_kb, cpu_ticks: utime + stime })
}

fn cpu_secs(a: Option<ProcSample>, b: Option<ProcSample>) -> Option<f64> {
    Some((b?.cpu_ticks.saturating_sub(a?.cpu_ticks)) as f64 / clk_tck())
}

// ---------------------------------------------------------------------------------------------
// Worker: holds connections and records what arrives

struct StepAgg {
    hist: Histogram<u64>,
    n: u64,
    first: u64,
    last: u64,
}

struct Agg {
    hist: Histogram<u64>,
    received: u64,
    welcome: u64,
    seq: BTreeMap<u32, (u32, u64)>,
    steps: BTreeMap<u32, StepAgg>,
    expect_per_seq: u32,
    index: usize,
    out: mpsc::UnboundedSender<String>,
    disconnects: u64,
}

fn find_u64(text: &str, key: &str) -> Option<u64> {
    let at = text.find(key)? + key.len();
    let rest = text[at..].trim_start();
    let end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
    rest[..end].parse().ok()
}

impl Agg {
    fn on_event(&mut self, text: &str) {
        let Some(sent) = find_u64(text, "\"bsent\":") else { return };
        let now = now_us();
        let lat = now.saturating_sub(sent).max(1);
        self.received += 1;
        self.hist.saturating_record(lat);
        if let Some(seq) = find_u64(text, "\"bseq\":") {
            let e = self.seq.entry(seq as u32).or_insert((0, 0));
            e.0 += 1;
            e.1 = e.1.max(lat);
            if self.expect_per_seq > 0 && e.0 == self.expect_per_seq {
                let _ = self.out.send(json!({"ev": "seq", "w": self.index, "seq": seq, "n": e.0, "max_us": e.1}).to_string());
            }
        }
        if let Some(step) = find_u64(text, "\"bstep\":") {
            let s = self.steps.entry(step as u32).or_insert_with(|| StepAgg { hist: new_hist(), n: 0, first: now, last: now });
            s.n += 1;
            s.last = now;
            s.hist.saturating_record(lat);
        }
    }

    fn report(&self) -> Value {
        let steps: serde_json::Map<String, Value> = self
            .steps
            .iter()
            .map(|(k, s)| (k.to_string(), json!({"n": s.n, "first": s.first, "last": s.last, "hist": hist_to_json(&s.hist)})))
            .collect();
        let seq: serde_json::Map<String, Value> = self.seq.iter().map(|(k, (n, m))| (k.to_string(), json!([n, m]))).collect();
        json!({"ev": "report", "w": self.index, "received": self.received, "welcome": self.welcome,
               "disconnects": self.disconnects, "hist": hist_to_json(&self.hist), "steps": steps, "seq": seq})
    }
}

type Ready = oneshot::Sender<Result<bool, String>>;

fn packet_kind(text: &str) -> &str {
    text.get(..2).unwrap_or(text)
}

enum Phase {
    Handshake,
    AwaitJoin,
    Running,
}

/// Per-connection Socket.IO state. The CONNECT ack (`40`) and the welcome `notification` may come
/// in either order (python-socketio sends what the connect handler emits before its CONNECT ack).
struct ConnState {
    phase: Phase,
    connected: bool,
    welcomed: bool,
    join: Option<String>,
    ready: Option<Ready>,
}

impl ConnState {
    /// Reports a failure to connect (once: later failures of a connected socket are not
    /// connect failures).
    fn fail(&mut self, e: String) {
        if let Some(r) = self.ready.take() {
            let _ = r.send(Err(e));
        }
    }

    fn new(join: Option<String>, ready: Ready) -> ConnState {
        ConnState { phase: Phase::Handshake, connected: false, welcomed: false, join, ready: Some(ready) }
    }

    fn after_handshake(&mut self) -> Option<String> {
        if !(self.connected && self.welcomed) {
            return None;
        }
        if let Some(room) = &self.join {
            self.phase = Phase::AwaitJoin;
            return Some(format!("421[\"room:join\",{}]", json!(room)));
        }
        self.phase = Phase::Running;
        if let Some(r) = self.ready.take() {
            let _ = r.send(Ok(false));
        }
        None
    }

    /// Handles one Engine.IO message packet (`4` + Socket.IO packet); returns a packet to send
    /// back and whether to stop.
    fn on_socketio(&mut self, pkt: &str, agg: &Mutex<Agg>) -> (Option<String>, bool) {
        match packet_kind(pkt) {
            "40" => {
                if matches!(self.phase, Phase::Handshake) && !self.connected {
                    self.connected = true;
                    return (self.after_handshake(), false);
                }
                (None, false)
            }
            "44" => {
                if let Some(r) = self.ready.take() {
                    let _ = r.send(Err(format!("connect_error {}", pkt.get(2..).unwrap_or(""))));
                }
                (None, true)
            }
            "41" => (None, true),
            "42" => {
                if matches!(self.phase, Phase::Handshake) && !self.welcomed && pkt.contains("\"welcome\"") {
                    agg.lock().unwrap().welcome += 1;
                    self.welcomed = true;
                    return (self.after_handshake(), false);
                }
                agg.lock().unwrap().on_event(pkt);
                (None, false)
            }
            "43" => {
                if matches!(self.phase, Phase::AwaitJoin) {
                    self.phase = Phase::Running;
                    let ok = pkt.contains("true") && !pkt.contains("false");
                    if let Some(r) = self.ready.take() {
                        let _ = r.send(if ok { Ok(true) } else { Err(format!("join refused {pkt}")) });
                    }
                }
                (None, false)
            }
            _ => (None, false),
        }
    }
}

async fn ws_conn(
    addr: SocketAddr,
    host: String,
    ip: Ipv4Addr,
    token: String,
    join: Option<String>,
    agg: Arc<Mutex<Agg>>,
    ready: Ready,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut st = ConnState::new(join, ready);
    let sock = match tokio::net::TcpSocket::new_v4() {
        Ok(s) => s,
        Err(e) => return st.fail(format!("socket: {e}")),
    };
    if let Err(e) = sock.bind(SocketAddr::new(IpAddr::V4(ip), 0)) {
        return st.fail(format!("bind: {e}"));
    }
    let stream = match sock.connect(addr).await {
        Ok(s) => s,
        Err(e) => return st.fail(format!("tcp connect: {e}")),
    };
    let _ = stream.set_nodelay(true);
    let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
    let url = format!("ws://{host}/socket.io/?EIO=4&transport=websocket");
    let ws = match tokio_tungstenite::client_async_with_config(url, stream, Some(config)).await {
        Ok((ws, _)) => ws,
        Err(e) => return st.fail(format!("ws handshake: {e}")),
    };
    let (mut tx, mut rx) = ws.split();
    loop {
        let msg = tokio::select! {
            m = rx.next() => m,
            _ = shutdown.changed() => {
                let _ = tx.send(Message::Close(None)).await;
                break;
            }
        };
        let text = match msg {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Ping(p))) => {
                let _ = tx.send(Message::Pong(p)).await;
                continue;
            }
            Some(Ok(Message::Binary(_))) | Some(Ok(Message::Pong(_))) | Some(Ok(Message::Frame(_))) => continue,
            Some(Ok(Message::Close(_))) | None => {
                st.fail("closed by server".into());
                agg.lock().unwrap().disconnects += 1;
                break;
            }
            Some(Err(e)) => {
                st.fail(format!("ws: {e}"));
                agg.lock().unwrap().disconnects += 1;
                break;
            }
        };
        let text: &str = text.as_str();
        match text.as_bytes().first() {
            Some(b'0') => {
                let auth = json!({ "token": token }).to_string();
                if tx.send(Message::text(format!("40{auth}"))).await.is_err() {
                    break;
                }
            }
            Some(b'2') => {
                if tx.send(Message::text("3")).await.is_err() {
                    break;
                }
            }
            Some(b'4') => {
                let (reply, stop) = st.on_socketio(text, &agg);
                if let Some(reply) = reply {
                    if tx.send(Message::text(reply)).await.is_err() {
                        break;
                    }
                }
                if stop {
                    agg.lock().unwrap().disconnects += 1;
                    break;
                }
            }
            Some(b'1') => {
                st.fail("engine.io close".into());
                break;
            }
            _ => {}
        }
    }
}

async fn polling_conn(
    client: reqwest::Client,
    base: String,
    token: String,
    join: Option<String>,
    agg: Arc<Mutex<Agg>>,
    ready: Ready,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut st = ConnState::new(join, ready);
    let open = match client.get(format!("{base}/socket.io/?EIO=4&transport=polling")).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(e) => return st.fail(format!("polling open: {e}")),
    };
    let Some(sid) = open
        .strip_prefix('0')
        .and_then(|j| serde_json::from_str::<Value>(j.split('\u{1e}').next().unwrap_or(j)).ok())
        .and_then(|v| v["sid"].as_str().map(String::from))
    else {
        return st.fail(format!("polling open: unexpected {open:.80}"));
    };
    let url = format!("{base}/socket.io/?EIO=4&transport=polling&sid={sid}");
    let post = |body: String| {
        let client = client.clone();
        let url = url.clone();
        async move { client.post(url).header("content-type", "text/plain;charset=UTF-8").body(body).send().await.map(|_| ()) }
    };
    if let Err(e) = post(format!("40{}", json!({ "token": token }))).await {
        return st.fail(format!("polling connect: {e}"));
    }
    loop {
        let resp = tokio::select! {
            r = client.get(&url).send() => r,
            _ = shutdown.changed() => {
                let _ = post("1".into()).await;
                break;
            }
        };
        let body = match resp {
            Ok(r) if r.status().is_success() => r.text().await.unwrap_or_default(),
            Ok(r) => {
                st.fail(format!("polling GET {}", r.status()));
                agg.lock().unwrap().disconnects += 1;
                break;
            }
            Err(e) => {
                st.fail(format!("polling GET: {e}"));
                agg.lock().unwrap().disconnects += 1;
                break;
            }
        };
        let mut stop = false;
        let mut replies = vec![];
        for pkt in body.split('\u{1e}') {
            match pkt.as_bytes().first() {
                Some(b'2') => replies.push("3".to_string()),
                Some(b'4') => {
                    let (reply, s) = st.on_socketio(pkt, &agg);
                    if let Some(r) = reply {
                        replies.push(r);
                    }
                    stop |= s;
                }
                Some(b'1') => stop = true,
                _ => {}
            }
        }
        if !replies.is_empty() && post(replies.join("\u{1e}")).await.is_err() {
            stop = true;
        }
        if stop {
            st.fail("polling closed".into());
            agg.lock().unwrap().disconnects += 1;
            break;
        }
    }
}

fn worker_main(spec: WorkerSpec) {
    raise_nofile();
    let max = Duration::from_secs(spec.common.max_secs + 30);
    std::thread::spawn(move || {
        std::thread::sleep(max);
        eprintln!("worker: --max-secs exceeded, exiting");
        std::process::exit(3);
    });
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(worker_run(spec));
}

async fn worker_run(spec: WorkerSpec) {
    let mut c = spec.common.clone();
    if !c.socket_urls.is_empty() {
        c.url = c.socket_urls[spec.index % c.socket_urls.len()].clone();
    }
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<String>();
    let writer = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        while let Some(line) = out_rx.recv().await {
            let _ = stdout.write_all(line.as_bytes()).await;
            let _ = stdout.write_all(b"\n").await;
            let _ = stdout.flush().await;
        }
    });
    let (addr, host) = match server_addr(&c.url) {
        Ok(a) => a,
        Err(e) => {
            let _ = out_tx.send(json!({"ev": "fatal", "w": spec.index, "error": e}).to_string());
            drop(out_tx);
            let _ = writer.await;
            return;
        }
    };
    let agg = Arc::new(Mutex::new(Agg {
        hist: new_hist(),
        received: 0,
        welcome: 0,
        seq: BTreeMap::new(),
        steps: BTreeMap::new(),
        expect_per_seq: 0,
        index: spec.index,
        out: out_tx.clone(),
        disconnects: 0,
    }));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let sem = Arc::new(Semaphore::new(c.connect_concurrency.max(1)));
    let started = Instant::now();
    let polling_every = if c.polling_share > 0.0 { (1.0 / c.polling_share).round().max(1.0) as usize } else { 0 };
    let mut polling_clients: HashMap<Ipv4Addr, reqwest::Client> = HashMap::new();
    let mut waits = Vec::with_capacity(spec.n);
    let mut polling = 0usize;
    for i in 0..spec.n {
        let gi = spec.first + i;
        let ip = source_ip(&c, gi);
        let token = mint(&c, c.user_base + gi as u64);
        let (rtx, rrx) = oneshot::channel();
        let (done_tx, done_rx) = oneshot::channel::<Result<bool, String>>();
        let permit = sem.clone().acquire_owned().await.expect("semaphore");
        // Relay the ready signal and release the handshake permit when it arrives.
        tokio::spawn(async move {
            let r = rrx.await.unwrap_or_else(|_| Err("task ended".into()));
            drop(permit);
            let _ = done_tx.send(r);
        });
        waits.push(done_rx);
        let (agg, sd, join) = (agg.clone(), shutdown_rx.clone(), c.join_room.clone());
        if polling_every > 0 && gi % polling_every == 0 {
            polling += 1;
            let client = polling_clients
                .entry(ip)
                .or_insert_with(|| {
                    reqwest::Client::builder()
                        .local_address(IpAddr::V4(ip))
                        .timeout(Duration::from_secs(90))
                        .pool_max_idle_per_host(1024)
                        .tcp_nodelay(true)
                        .build()
                        .expect("reqwest client")
                })
                .clone();
            tokio::spawn(polling_conn(client, c.url.trim_end_matches('/').to_string(), token, join, agg, rtx, sd));
        } else {
            tokio::spawn(ws_conn(addr, host.clone(), ip, token, join, agg, rtx, sd));
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(c.max_secs);
    let (mut connected, mut joined, mut failed) = (0usize, 0usize, 0usize);
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    for w in waits {
        match tokio::time::timeout_at(deadline, w).await {
            Ok(Ok(Ok(j))) => {
                connected += 1;
                joined += j as usize;
            }
            Ok(Ok(Err(e))) => {
                failed += 1;
                let key: String = e.chars().take(80).collect();
                *errors.entry(key).or_default() += 1;
            }
            _ => {
                failed += 1;
                *errors.entry("timeout".into()).or_default() += 1;
            }
        }
    }
    let connect_secs = started.elapsed().as_secs_f64();
    {
        let mut a = agg.lock().unwrap();
        if spec.mode == "fanout" {
            a.expect_per_seq = if c.join_room.is_some() { joined as u32 } else { connected as u32 };
        }
    }
    let _ = out_tx.send(
        json!({"ev": "ready", "w": spec.index, "n": spec.n, "connected": connected, "joined": joined,
               "failed": failed, "polling": polling, "connect_secs": connect_secs, "errors": errors})
        .to_string(),
    );
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    loop {
        let line = tokio::time::timeout_at(deadline + Duration::from_secs(20), stdin.next_line()).await;
        match line {
            Ok(Ok(Some(l))) if l.trim() == "report" => {
                let r = agg.lock().unwrap().report();
                let _ = out_tx.send(r.to_string());
            }
            Ok(Ok(Some(_))) => break, // quit
            _ => break,               // EOF, error or deadline
        }
    }
    let _ = shutdown_tx.send(true);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = out_tx.send(json!({"ev": "bye", "w": spec.index}).to_string());
    drop(out_tx);
    agg.lock().unwrap().out = mpsc::unbounded_channel().0;
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
}

// ---------------------------------------------------------------------------------------------
// Parent: spawns workers, drives the scenario, measures the server

struct Workers {
    children: Vec<tokio::process::Child>,
    stdins: Vec<tokio::process::ChildStdin>,
    events: mpsc::UnboundedReceiver<Value>,
    count: usize,
}

impl Workers {
    async fn spawn(common: &Common, mode: &str) -> Result<Workers, String> {
        let k = common.workers.max(1);
        if common.conns / k > 19_000 {
            return Err(format!("{} connections over {k} workers is over 19,000 per process: use more --workers", common.conns));
        }
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let (tx, rx) = mpsc::unbounded_channel();
        let (mut children, mut stdins) = (vec![], vec![]);
        let mut first = 0;
        for i in 0..k {
            let n = common.conns / k + usize::from(i < common.conns % k);
            let spec = WorkerSpec { common: common.clone(), mode: mode.into(), index: i, first, n };
            first += n;
            let mut child = tokio::process::Command::new(&exe)
                .arg("worker")
                .arg("--spec")
                .arg(serde_json::to_string(&spec).expect("spec"))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| format!("spawn worker: {e}"))?;
            stdins.push(child.stdin.take().expect("stdin"));
            let stdout = child.stdout.take().expect("stdout");
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Ok(v) = serde_json::from_str::<Value>(&line) {
                        let _ = tx.send(v);
                    }
                }
            });
            children.push(child);
        }
        Ok(Workers { children, stdins, events: rx, count: k })
    }

    async fn tell(&mut self, word: &str) {
        for s in &mut self.stdins {
            let _ = s.write_all(format!("{word}\n").as_bytes()).await;
            let _ = s.flush().await;
        }
    }

    /// Waits for one event of kind `ev` from every worker (other events go to `other`).
    async fn gather(&mut self, ev: &str, timeout: Duration, other: &mut Vec<Value>) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut got: Vec<Option<Value>> = vec![None; self.count];
        while got.iter().any(Option::is_none) {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(v)) => {
                    if v["ev"] == ev {
                        let w = v["w"].as_u64().unwrap_or(0) as usize;
                        if w < got.len() {
                            got[w] = Some(v);
                        }
                    } else if v["ev"] == "fatal" {
                        eprintln!("worker fatal: {}", v["error"]);
                        break;
                    } else {
                        other.push(v);
                    }
                }
                _ => break,
            }
        }
        got.into_iter().flatten().collect()
    }

    async fn finish(mut self) {
        self.tell("quit").await;
        for mut c in self.children.drain(..) {
            if tokio::time::timeout(Duration::from_secs(5), c.wait()).await.is_err() {
                let _ = c.kill().await;
            }
        }
    }
}

struct ReadyTotals {
    connected: usize,
    joined: usize,
    failed: usize,
    polling: usize,
    connect_secs: f64,
    errors: BTreeMap<String, u64>,
}

fn sum_ready(ready: &[Value]) -> ReadyTotals {
    let mut t = ReadyTotals { connected: 0, joined: 0, failed: 0, polling: 0, connect_secs: 0.0, errors: BTreeMap::new() };
    for r in ready {
        t.connected += r["connected"].as_u64().unwrap_or(0) as usize;
        t.joined += r["joined"].as_u64().unwrap_or(0) as usize;
        t.failed += r["failed"].as_u64().unwrap_or(0) as usize;
        t.polling += r["polling"].as_u64().unwrap_or(0) as usize;
        t.connect_secs = t.connect_secs.max(r["connect_secs"].as_f64().unwrap_or(0.0));
        if let Some(errs) = r["errors"].as_object() {
            for (k, v) in errs {
                *t.errors.entry(k.clone()).or_default() += v.as_u64().unwrap_or(0);
            }
        }
    }
    t
}

fn emit_result(common: &Common, mut v: Value) {
    v["server"] = json!(common.server_name);
    v["tag"] = json!(common.tag);
    v["time"] = json!(SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs());
    let line = v.to_string();
    println!("{line}");
    if let Some(path) = &common.out {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = writeln!(f, "{line}");
        }
    }
}

fn pct(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        return f64::NAN;
    }
    ms(h.value_at_quantile(q))
}

fn jnum(x: f64) -> Value {
    if x.is_finite() {
        json!((x * 1000.0).round() / 1000.0)
    } else {
        Value::Null
    }
}

async fn connect_phase(common: &Common, mode: &str) -> Result<(Workers, ReadyTotals, Option<ProcSample>, Option<ProcSample>), String> {
    let before = sample(&common.server_pid);
    let mut workers = Workers::spawn(common, mode).await?;
    let mut other = vec![];
    let ready = workers.gather("ready", Duration::from_secs(common.max_secs + 10), &mut other).await;
    if ready.len() < workers.count {
        workers.finish().await;
        return Err(format!("only {} of {} workers became ready", ready.len(), common.workers.max(1)));
    }
    let totals = sum_ready(&ready);
    eprintln!(
        "[{}] connected {}/{} ({} polling, {} joined) in {:.2}s = {:.0}/s; failed {} {:?}",
        common.server_name,
        totals.connected,
        common.conns,
        totals.polling,
        totals.joined,
        totals.connect_secs,
        totals.connected as f64 / totals.connect_secs.max(1e-9),
        totals.failed,
        totals.errors
    );
    tokio::time::sleep(Duration::from_secs(common.settle_secs)).await;
    let after = sample(&common.server_pid);
    Ok((workers, totals, before, after))
}

async fn run_connect(common: Common, hold_secs: u64) -> i32 {
    let (mut workers, t, before, after) = match connect_phase(&common, "connect").await {
        Ok(x) => x,
        Err(e) => {
            eprintln!("connect failed: {e}");
            return 2;
        }
    };
    tokio::time::sleep(Duration::from_secs(hold_secs.min(common.max_secs))).await;
    let held = sample(&common.server_pid);
    workers.tell("report").await;
    let mut other = vec![];
    let reports = workers.gather("report", Duration::from_secs(30), &mut other).await;
    let welcome: u64 = reports.iter().map(|r| r["welcome"].as_u64().unwrap_or(0)).sum();
    let disconnects: u64 = reports.iter().map(|r| r["disconnects"].as_u64().unwrap_or(0)).sum();
    workers.finish().await;
    let rss_delta = match (before, after) {
        (Some(b), Some(a)) => Some(a.rss_kb as f64 - b.rss_kb as f64),
        _ => None,
    };
    let per_conn_kb = rss_delta.map(|d| d / t.connected.max(1) as f64);
    let result = json!({
        "scenario": "connect", "conns": common.conns, "connected": t.connected, "failed": t.failed,
        "polling": t.polling, "joined": t.joined, "join_room": common.join_room, "welcome": welcome,
        "disconnects_during_hold": disconnects,
        "connect_secs": jnum(t.connect_secs), "connect_rate": jnum(t.connected as f64 / t.connect_secs.max(1e-9)),
        "rss_before_kb": before.map(|s| s.rss_kb), "rss_after_kb": after.map(|s| s.rss_kb),
        "rss_after_hold_kb": held.map(|s| s.rss_kb),
        "rss_per_conn_kb": per_conn_kb.map(jnum),
        "server_cpu_secs_connect": cpu_secs(before, after).map(jnum), "errors": t.errors, "workers": common.workers,
    });
    eprintln!(
        "[{}] connect: {} connected, {:.0}/s, RSS {:?} -> {:?} kB = {} kB/conn; welcome {}",
        common.server_name,
        t.connected,
        t.connected as f64 / t.connect_secs.max(1e-9),
        before.map(|s| s.rss_kb),
        after.map(|s| s.rss_kb),
        per_conn_kb.map(|x| format!("{x:.2}")).unwrap_or("n/a".into()),
        welcome
    );
    let ok = t.connected > 0 && t.failed == 0 && welcome as usize == t.connected;
    emit_result(&common, result);
    if ok {
        0
    } else {
        1
    }
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(30)).pool_max_idle_per_host(512).tcp_nodelay(true).build().expect("http client")
}

async fn run_fanout(common: Common, messages: u32, msg_timeout_secs: u64, gap_ms: u64) -> i32 {
    let mut common = common;
    if common.join_room.is_none() && common.role.is_none() {
        common.join_room = Some("team-updates".into());
    }
    let (to, room_label) = match (&common.join_room, &common.role) {
        (Some(room), _) => (json!({ "room": room }), room.clone()),
        (None, Some(role)) => (json!({ "role": role }), format!("role_{role}")),
        _ => unreachable!(),
    };
    let run_deadline = Instant::now() + Duration::from_secs(common.max_secs);
    let (mut workers, t, _, _) = match connect_phase(&common, "fanout").await {
        Ok(x) => x,
        Err(e) => {
            eprintln!("fanout connect failed: {e}");
            return 2;
        }
    };
    let members = if common.join_room.is_some() { t.joined } else { t.connected };
    // workers that expect nothing never report a seq as complete
    let mut other = vec![];
    let client = http_client();
    let url = format!("{}/api/v1/notify", common.url.trim_end_matches('/'));
    let cpu0 = sample(&common.server_pid);
    let started = Instant::now();
    let mut per_msg_max: Vec<u64> = vec![];
    let mut incomplete = 0u32;
    let mut http_hist = new_hist();
    let mut http_errors = 0u32;
    let mut done_by_seq: HashMap<u64, (usize, u64)> = HashMap::new();
    let expected_workers = workers.count; // every worker holds >0 members when conns >= workers
    let mut sent = 0u32;
    for seq in 0..messages {
        if Instant::now() > run_deadline {
            eprintln!("fanout: --max-secs reached after {seq} messages");
            break;
        }
        let body = json!({"to": to, "type": "bench", "message": "fanout",
                          "data": {"bseq": seq, "bsent": now_us()}});
        let t0 = Instant::now();
        match client.post(&url).bearer_auth(&common.api_key).json(&body).send().await {
            Ok(r) if r.status().as_u16() == 202 || r.status().is_success() => {
                http_hist.saturating_record(t0.elapsed().as_micros() as u64);
            }
            Ok(r) => {
                http_errors += 1;
                eprintln!("notify: HTTP {}", r.status());
            }
            Err(e) => {
                http_errors += 1;
                eprintln!("notify: {e}");
            }
        }
        sent += 1;
        // wait until every worker says it has this seq on all its members
        let deadline = tokio::time::Instant::now() + Duration::from_secs(msg_timeout_secs);
        loop {
            if done_by_seq.get(&(seq as u64)).map(|d| d.0) >= Some(expected_workers) {
                break;
            }
            match tokio::time::timeout_at(deadline, workers.events.recv()).await {
                Ok(Some(v)) if v["ev"] == "seq" => {
                    let s = v["seq"].as_u64().unwrap_or(u64::MAX);
                    let e = done_by_seq.entry(s).or_insert((0, 0));
                    e.0 += 1;
                    e.1 = e.1.max(v["max_us"].as_u64().unwrap_or(0));
                }
                Ok(Some(v)) => other.push(v),
                _ => break,
            }
        }
        match done_by_seq.get(&(seq as u64)) {
            Some(d) if d.0 >= expected_workers => per_msg_max.push(d.1),
            _ => incomplete += 1,
        }
        tokio::time::sleep(Duration::from_millis(gap_ms)).await;
    }
    let send_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cpu1 = sample(&common.server_pid);
    workers.tell("report").await;
    let reports = workers.gather("report", Duration::from_secs(30), &mut other).await;
    workers.finish().await;
    let mut all = new_hist();
    let mut received = 0u64;
    for r in &reports {
        hist_add_json(&mut all, &r["hist"]);
        received += r["received"].as_u64().unwrap_or(0);
    }
    let mut last = new_hist();
    for m in &per_msg_max {
        last.saturating_record((*m).max(1));
    }
    let cpu = cpu_secs(cpu0, cpu1);
    let expected = members as u64 * sent as u64;
    let result = json!({
        "scenario": "fanout", "conns": common.conns, "connected": t.connected, "members": members, "room": room_label,
        "polling": t.polling, "messages": sent, "complete_messages": per_msg_max.len(), "incomplete_messages": incomplete,
        "deliveries": received, "expected_deliveries": expected, "http_errors": http_errors,
        "last_socket_p50_ms": jnum(pct(&last, 0.5)), "last_socket_p99_ms": jnum(pct(&last, 0.99)),
        "last_socket_max_ms": jnum(if last.is_empty() { f64::NAN } else { ms(last.max()) }),
        "delivery_p50_ms": jnum(pct(&all, 0.5)), "delivery_p99_ms": jnum(pct(&all, 0.99)),
        "delivery_max_ms": jnum(if all.is_empty() { f64::NAN } else { ms(all.max()) }),
        "http_p50_ms": jnum(pct(&http_hist, 0.5)), "send_secs": jnum(send_secs),
        "server_cpu_secs": cpu.map(jnum),
        "server_cpu_ms_per_message": cpu.map(|c| jnum(c * 1000.0 / sent.max(1) as f64)),
        "cpu_secs_per_100k_deliveries": cpu.map(|c| jnum(c / received.max(1) as f64 * 100_000.0)),
        "deliveries_per_cpu_sec": cpu.map(|c| jnum(received as f64 / c.max(1e-9))),
        "connect_rate": jnum(t.connected as f64 / t.connect_secs.max(1e-9)), "errors": t.errors, "workers": common.workers,
    });
    eprintln!(
        "[{}] fanout to {} sockets x {} msgs: last-socket p50 {} ms p99 {} ms max {} ms; deliveries {}/{}; server CPU {:?} s",
        common.server_name,
        members,
        sent,
        result["last_socket_p50_ms"],
        result["last_socket_p99_ms"],
        result["last_socket_max_ms"],
        received,
        expected,
        cpu
    );
    let ok = members > 0 && received == expected && incomplete == 0 && http_errors == 0;
    emit_result(&common, result);
    if ok {
        0
    } else {
        1
    }
}

/// A Redis connection that pipelines PUBLISH commands and counts the replies.
struct RedisPub {
    tx: mpsc::Sender<(String, String)>,
}

async fn redis_pub(addr: &str, errors: Arc<Mutex<u64>>) -> Result<RedisPub, String> {
    let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("redis {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (rd, wr) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<(String, String)>(4096);
    tokio::spawn(async move {
        let mut wr = tokio::io::BufWriter::new(wr);
        while let Some((ch, payload)) = rx.recv().await {
            let cmd = format!("*3\r\n$7\r\nPUBLISH\r\n${}\r\n{}\r\n${}\r\n{}\r\n", ch.len(), ch, payload.len(), payload);
            if wr.write_all(cmd.as_bytes()).await.is_err() {
                break;
            }
            if rx.is_empty() && wr.flush().await.is_err() {
                break;
            }
        }
    });
    tokio::spawn(async move {
        let mut lines = BufReader::new(rd).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            if l.starts_with('-') {
                *errors.lock().unwrap() += 1;
            }
        }
    });
    Ok(RedisPub { tx })
}

#[allow(clippy::too_many_arguments)]
async fn run_targeted(
    common: Common,
    rates: String,
    step_secs: u64,
    batch: usize,
    http_concurrency: usize,
    ingress: String,
    redis_addr: String,
    break_p99_ms: f64,
    drain_secs: u64,
) -> i32 {
    let rates: Vec<u64> = rates.split(',').filter_map(|r| r.trim().parse().ok()).collect();
    let batch = batch.max(1);
    if ingress == "redis" {
        if let Ok(a) = redis_addr.to_socket_addrs().map(|mut a| a.next()) {
            if !a.map(|a| a.ip().is_loopback()).unwrap_or(false) {
                eprintln!("refusing non-loopback redis address");
                return 2;
            }
        }
    }
    let run_deadline = Instant::now() + Duration::from_secs(common.max_secs);
    let (mut workers, t, _, _) = match connect_phase(&common, "targeted").await {
        Ok(x) => x,
        Err(e) => {
            eprintln!("targeted connect failed: {e}");
            return 2;
        }
    };
    let users = common.conns as u64;
    let client = http_client();
    let url = Arc::new(format!("{}/api/v1/notify", common.url.trim_end_matches('/')));
    let redis_errors = Arc::new(Mutex::new(0u64));
    let mut redis = vec![];
    if ingress == "redis" {
        for _ in 0..http_concurrency.clamp(1, 8) {
            match redis_pub(&redis_addr, redis_errors.clone()).await {
                Ok(r) => redis.push(r),
                Err(e) => {
                    eprintln!("{e}");
                    workers.finish().await;
                    return 2;
                }
            }
        }
    }
    let mut cursor = 0u64;
    let mut exit = 0;
    let mut any_ok = false;
    for (step, &rate) in rates.iter().enumerate() {
        if Instant::now() + Duration::from_secs(step_secs + drain_secs + 5) > run_deadline {
            eprintln!("targeted: --max-secs reached, stopping before rate {rate}");
            break;
        }
        let step = step as u32;
        let per_sec = if ingress == "redis" { rate as f64 } else { rate as f64 / batch as f64 };
        let sem = Arc::new(Semaphore::new(http_concurrency.max(1)));
        let http_errors = Arc::new(Mutex::new(0u64));
        let cpu0 = sample(&common.server_pid);
        let start_us = now_us();
        let started = Instant::now();
        let mut requests = 0u64;
        let mut deliveries_sent = 0u64;
        let end = started + Duration::from_secs(step_secs);
        while Instant::now() < end {
            let due = (started.elapsed().as_secs_f64() * per_sec) as u64;
            while requests < due && Instant::now() < end {
                if ingress == "redis" {
                    let user = common.user_base + cursor % users;
                    cursor += 1;
                    let payload = json!({"type": "bench", "message": "targeted", "data": {"bstep": step, "bsent": now_us()}}).to_string();
                    let r = &redis[(requests % redis.len() as u64) as usize];
                    if r.tx.send((format!("notify:user:{user}"), payload)).await.is_err() {
                        *http_errors.lock().unwrap() += 1;
                    }
                    deliveries_sent += 1;
                } else {
                    let permit = sem.clone().acquire_owned().await.expect("sem");
                    let ids: Vec<String> = (0..batch)
                        .map(|_| {
                            let u = common.user_base + cursor % users;
                            cursor += 1;
                            u.to_string()
                        })
                        .collect();
                    let to = if batch == 1 { json!({"user": ids[0]}) } else { json!({"users": ids}) };
                    let body = json!({"to": to, "type": "bench", "message": "targeted", "data": {"bstep": step, "bsent": now_us()}});
                    let (client, url, key, errs) = (client.clone(), url.clone(), common.api_key.clone(), http_errors.clone());
                    tokio::spawn(async move {
                        let ok = match client.post(url.as_str()).bearer_auth(key).json(&body).send().await {
                            Ok(r) => r.status().is_success(),
                            Err(_) => false,
                        };
                        if !ok {
                            *errs.lock().unwrap() += 1;
                        }
                        drop(permit);
                    });
                    deliveries_sent += batch as u64;
                }
                requests += 1;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let send_secs = started.elapsed().as_secs_f64();
        // wait for in-flight requests, then stragglers
        let _ = tokio::time::timeout(Duration::from_secs(10), sem.acquire_many(http_concurrency.max(1) as u32)).await;
        tokio::time::sleep(Duration::from_secs(drain_secs)).await;
        let cpu1 = sample(&common.server_pid);
        workers.tell("report").await;
        let mut other = vec![];
        let reports = workers.gather("report", Duration::from_secs(30), &mut other).await;
        let mut h = new_hist();
        let (mut received, mut last) = (0u64, start_us);
        for r in &reports {
            let s = &r["steps"][step.to_string()];
            received += s["n"].as_u64().unwrap_or(0);
            last = last.max(s["last"].as_u64().unwrap_or(0));
            hist_add_json(&mut h, &s["hist"]);
        }
        let window = ((last.saturating_sub(start_us)) as f64 / 1e6).max(step_secs as f64);
        let delivered_per_sec = received as f64 / window;
        let cpu = cpu_secs(cpu0, cpu1);
        let errs = *http_errors.lock().unwrap() + *redis_errors.lock().unwrap();
        let p99 = pct(&h, 0.99);
        let send_rate = deliveries_sent as f64 / send_secs;
        let broke = received < deliveries_sent * 95 / 100 || !(p99 <= break_p99_ms) || send_rate < rate as f64 * 0.9;
        let result = json!({
            "scenario": "targeted", "ingress": ingress, "conns": common.conns, "connected": t.connected, "polling": t.polling,
            "batch": batch, "rate_target": rate, "step": step, "step_secs": step_secs,
            "sent": deliveries_sent, "send_rate": jnum(send_rate), "requests": requests, "errors": errs,
            "received": received, "delivered_per_sec": jnum(delivered_per_sec),
            "p50_ms": jnum(pct(&h, 0.5)), "p99_ms": jnum(p99), "max_ms": jnum(if h.is_empty() { f64::NAN } else { ms(h.max()) }),
            "server_cpu_secs": cpu.map(jnum),
            "cpu_secs_per_100k_deliveries": cpu.map(|c| jnum(c / received.max(1) as f64 * 100_000.0)),
            "deliveries_per_cpu_sec": cpu.map(|c| jnum(received as f64 / c.max(1e-9))),
            "broke": broke, "workers": common.workers,
        });
        eprintln!(
            "[{}] targeted/{} rate {}: sent {} ({:.0}/s), received {} ({:.0}/s), p50 {} ms p99 {} ms, errors {}, cpu {:?}s{}",
            common.server_name,
            ingress,
            rate,
            deliveries_sent,
            send_rate,
            received,
            delivered_per_sec,
            result["p50_ms"],
            result["p99_ms"],
            errs,
            cpu,
            if broke { "  <- breaks down" } else { "" }
        );
        emit_result(&common, result);
        if received > 0 {
            any_ok = true;
        }
        if broke {
            break;
        }
    }
    if !any_ok {
        exit = 1;
    }
    workers.finish().await;
    exit
}

fn main() {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Worker { spec } => {
            let spec: WorkerSpec = serde_json::from_str(&spec).expect("worker spec");
            worker_main(spec);
        }
        cmd => {
            raise_nofile();
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
            let code = rt.block_on(async move {
                let common = match &cmd {
                    Cmd::Connect { common, .. } | Cmd::Fanout { common, .. } | Cmd::Targeted { common, .. } => common.clone(),
                    Cmd::Worker { .. } => unreachable!(),
                };
                for url in std::iter::once(&common.url).chain(&common.socket_urls) {
                    if let Err(e) = server_addr(url) {
                        eprintln!("{e}");
                        return 2;
                    }
                }
                let limit = Duration::from_secs(common.max_secs + 60);
                let fut = async move {
                    match cmd {
                        Cmd::Connect { common, hold_secs } => run_connect(common, hold_secs).await,
                        Cmd::Fanout { common, messages, msg_timeout_secs, gap_ms } => {
                            run_fanout(common, messages, msg_timeout_secs, gap_ms).await
                        }
                        Cmd::Targeted {
                            common,
                            rates,
                            step_secs,
                            batch,
                            http_concurrency,
                            ingress,
                            redis_addr,
                            break_p99_ms,
                            drain_secs,
                        } => {
                            run_targeted(common, rates, step_secs, batch, http_concurrency, ingress, redis_addr, break_p99_ms, drain_secs)
                                .await
                        }
                        Cmd::Worker { .. } => unreachable!(),
                    }
                };
                match tokio::time::timeout(limit, fut).await {
                    Ok(code) => code,
                    Err(_) => {
                        eprintln!("run exceeded --max-secs, aborting");
                        4
                    }
                }
            });
            std::process::exit(code);
        }
    }
}
