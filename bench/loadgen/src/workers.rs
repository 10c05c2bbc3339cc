//! The parent's side of the worker processes: spawns them (this same binary), splits the
//! connections between them, sends them one-word commands and gathers their JSON events.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use crate::cli::Common;
use crate::worker::WorkerSpec;

pub struct Workers {
    pub children: Vec<tokio::process::Child>,
    pub stdins: Vec<tokio::process::ChildStdin>,
    pub events: mpsc::UnboundedReceiver<Value>,
    pub count: usize,
}

impl Workers {
    pub async fn spawn(common: &Common, mode: &str) -> Result<Workers, String> {
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

    pub async fn tell(&mut self, word: &str) {
        for s in &mut self.stdins {
            let _ = s.write_all(format!("{word}\n").as_bytes()).await;
            let _ = s.flush().await;
        }
    }

    /// Waits for one event of kind `ev` from every worker (other events go to `other`).
    pub async fn gather(&mut self, ev: &str, timeout: Duration, other: &mut Vec<Value>) -> Vec<Value> {
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

    pub async fn finish(mut self) {
        self.tell("quit").await;
        for mut c in self.children.drain(..) {
            if tokio::time::timeout(Duration::from_secs(5), c.wait()).await.is_err() {
                let _ = c.kill().await;
            }
        }
    }
}

pub struct ReadyTotals {
    pub connected: usize,
    pub joined: usize,
    pub failed: usize,
    pub polling: usize,
    pub connect_secs: f64,
    pub errors: BTreeMap<String, u64>,
}

pub fn sum_ready(ready: &[Value]) -> ReadyTotals {
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
