//! `fanout`: N sockets in one room (`room:join`) or `role_<r>`; M notifications through
//! `POST /api/v1/notify`, one at a time, each waited for on every socket. Reports the time until
//! the last socket has each one, every delivery's latency and server CPU per delivery.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::json;

use super::{connect_phase, http_client};
use crate::cli::Common;
use crate::procfs::{cpu_secs, sample};
use crate::report::emit_result;
use crate::stats::{hist_add_json, jnum, ms, new_hist, now_us, pct};

pub async fn run_fanout(common: Common, messages: u32, msg_timeout_secs: u64, gap_ms: u64) -> i32 {
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
