//! A worker process (hidden `worker` subcommand): holds its share of the connections and records
//! what arrives (`Agg`: latency histograms, per-message and per-step counts). It talks to the
//! parent in JSON lines on stdout (`ready`, `seq`, `report`, `bye`) and listens for one-word
//! lines on stdin (`report`, `quit`). Spreading the sockets over processes keeps each under the
//! open-file bound and lets the load use both cores.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};

use crate::cli::{server_addr, Common};
use crate::client::polling::polling_conn;
use crate::client::websocket::ws_conn;
use crate::client::{mint, source_ip};
use crate::procfs::raise_nofile;
use crate::stats::{hist_to_json, new_hist, now_us};

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct WorkerSpec {
    pub common: Common,
    pub mode: String,
    pub index: usize,
    pub first: usize,
    pub n: usize,
}

pub struct StepAgg {
    pub hist: Histogram<u64>,
    pub n: u64,
    pub first: u64,
    pub last: u64,
}

pub struct Agg {
    pub hist: Histogram<u64>,
    pub received: u64,
    pub welcome: u64,
    pub seq: BTreeMap<u32, (u32, u64)>,
    pub steps: BTreeMap<u32, StepAgg>,
    pub expect_per_seq: u32,
    pub index: usize,
    pub out: mpsc::UnboundedSender<String>,
    pub disconnects: u64,
}

pub fn find_u64(text: &str, key: &str) -> Option<u64> {
    let at = text.find(key)? + key.len();
    let rest = text[at..].trim_start();
    let end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
    rest[..end].parse().ok()
}

impl Agg {
    pub fn on_event(&mut self, text: &str) {
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

    pub fn report(&self) -> Value {
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

pub fn worker_main(spec: WorkerSpec) {
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

pub async fn worker_run(spec: WorkerSpec) {
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
