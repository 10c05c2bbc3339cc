//! `connect`: hold N authenticated connections; connects/s, the server's RSS before and after
//! (RSS per connection), CPU spent connecting, disconnects while held.

use std::time::Duration;

use serde_json::json;

use super::connect_phase;
use crate::cli::Common;
use crate::procfs::{cpu_secs, sample};
use crate::report::emit_result;
use crate::stats::jnum;

pub async fn run_connect(common: Common, hold_secs: u64) -> i32 {
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
