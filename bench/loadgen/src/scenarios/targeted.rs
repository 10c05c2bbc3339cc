//! `targeted`: notifications to single users at stepped steady rates, round-robin over all
//! users, through the HTTP API (`to.user`, or `to.users` with `--batch` ids per request) or Redis
//! `PUBLISH notify:user:<id>`. Per step: sent/s, delivered/s, end-to-end p50/p99, server CPU;
//! stepping stops at the first step that breaks (p99, < 95 % delivered, sender behind).

use std::net::ToSocketAddrs;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::Semaphore;

use super::redis::redis_pub;
use super::{connect_phase, http_client};
use crate::cli::Common;
use crate::procfs::{cpu_secs, sample};
use crate::report::emit_result;
use crate::stats::{hist_add_json, jnum, ms, new_hist, now_us, pct};

#[allow(clippy::too_many_arguments)]
pub async fn run_targeted(
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
