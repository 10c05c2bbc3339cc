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
//!
//! Modules: `cli` (options), `client` (one simulated Socket.IO client: framing, WebSocket and
//! long-polling transports), `worker` (a worker process and what it records), `workers` (the
//! parent's handle on them), `scenarios` (connect, fanout, targeted, the Redis publisher),
//! `stats`, `report` (result lines), `procfs` (server RSS/CPU, the open-file limit).

mod cli;
mod client;
mod procfs;
mod report;
mod scenarios;
mod stats;
mod worker;
mod workers;

use std::time::Duration;

use clap::Parser;

use cli::{server_addr, Cli, Cmd};
use procfs::raise_nofile;
use scenarios::{connect::run_connect, fanout::run_fanout, targeted::run_targeted};
use worker::{worker_main, WorkerSpec};

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
