//! Redis Sentinel: a master, a replica and three sentinels (real `redis-server`, the sentinels
//! with `--sentinel`), two Herald instances given `redis+sentinel://`. The master is killed -9;
//! the sentinels promote the replica; Herald finds the new master by itself and delivery between
//! instances resumes, with what was stored before the failover still there (Redis replicates
//! asynchronously: what the replica had received).

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::herald_process::{HeraldProcess, welcomed_client as client, free_port, wait_for};
use serde_json::json;


struct Processes {
    dir: PathBuf,
    children: Vec<(String, Child)>,
}

impl Processes {
    fn spawn(&mut self, name: &str, args: &[String]) {
        let child = Command::new("redis-server").args(args).current_dir(&self.dir).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("redis-server runs");
        self.children.push((name.to_string(), child));
    }

    fn kill(&mut self, name: &str) {
        if let Some(i) = self.children.iter().position(|(n, _)| n == name) {
            let (_, mut child) = self.children.remove(i);
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli").arg("-p").arg(port.to_string()).args(args).output().expect("redis-cli runs");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}



#[tokio::test]
async fn after_a_master_failover_delivery_resumes_by_itself_and_stored_notifications_remain() {
    let dir = std::env::temp_dir().join(format!("herald-sentinel-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut redis = Processes { dir: dir.clone(), children: vec![] };
    let (master, replica) = (free_port(), free_port());
    let base = |port: u16| vec!["--port".to_string(), port.to_string(), "--bind".into(), "127.0.0.1".into(), "--save".into(), "".into(), "--appendonly".into(), "no".into()];
    redis.spawn("master", &base(master));
    let mut replica_args = base(replica);
    replica_args.extend(["--replicaof".to_string(), "127.0.0.1".into(), master.to_string()]);
    redis.spawn("replica", &replica_args);
    wait_for("the replica in sync", Duration::from_secs(10), || cli(replica, &["INFO", "replication"]).contains("master_link_status:up"));
    let sentinels: Vec<u16> = (0..3).map(|_| free_port()).collect();
    for (i, port) in sentinels.iter().enumerate() {
        let conf = dir.join(format!("sentinel-{i}.conf"));
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\nsentinel monitor herald-master 127.0.0.1 {master} 2\nsentinel down-after-milliseconds herald-master 1000\nsentinel failover-timeout herald-master 5000\nsentinel parallel-syncs herald-master 1\n"
            ),
        )
        .unwrap();
        redis.spawn(&format!("sentinel-{i}"), &[conf.display().to_string(), "--sentinel".into()]);
    }
    for port in &sentinels {
        wait_for("the sentinels", Duration::from_secs(10), || cli(*port, &["SENTINEL", "get-master-addr-by-name", "herald-master"]).contains(&master.to_string()));
    }
    let list: Vec<String> = sentinels.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let url = format!("redis+sentinel://{}/herald-master", list.join(","));
    let (a, b) = tokio::join!(HeraldProcess::start("sn-a", &url), HeraldProcess::start("sn-b", &url));
    for instance in [&a, &b] {
        instance.wait_health("redis up through sentinel", |h| h["redis"] == "up").await;
    }
    let mut on_b = client(&b, "90", None).await;
    let (_, before) = a.post("/api/v1/notify", json!({ "to": { "user": 90 }, "type": "t", "message": "before" })).await;
    assert_eq!(on_b.next_notification().await.expect("delivered")["id"], before["id"]);
    let (_, kept) = a.post("/api/v1/notify", json!({ "to": { "user": 90 }, "type": "t", "message": "kept" })).await;
    assert_eq!(on_b.next_notification().await.expect("delivered")["id"], kept["id"]);
    wait_for("the replica to have it", Duration::from_secs(5), || {
        let info = cli(replica, &["INFO", "replication"]);
        let offset = |text: &str, key: &str| text.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.trim().parse::<u64>().ok());
        offset(&info, "slave_repl_offset:").zip(offset(&cli(master, &["INFO", "replication"]), "master_repl_offset:")).is_some_and(|(r, m)| r >= m)
    });

    let killed = Instant::now();
    redis.kill("master");
    // Keep sending until one goes through Redis again (queued ones are sent later, in order).
    let mut resumed = None;
    for n in 0..600 {
        let (status, body) = a.post("/api/v1/notify", json!({ "to": { "user": 90 }, "type": "t", "message": format!("during {n}") })).await;
        assert!(status == 202 || status == 503, "{status} {body}");
        if status == 202 && body["id"].is_string() {
            resumed = Some(body);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let resumed = resumed.expect("delivery resumed within a minute");
    let seconds = killed.elapsed().as_secs_f64();
    println!("sentinel: a notification was stored through the new master {seconds:.1} s after kill -9 of the old one");
    let new_master = cli(sentinels[0], &["SENTINEL", "get-master-addr-by-name", "herald-master"]);
    assert!(new_master.contains(&replica.to_string()), "the replica was promoted: {new_master}");
    // Every notification sent meanwhile arrives once, in order, the resumed one last.
    let mut got = vec![];
    loop {
        let n = on_b.next_notification().await.expect("the notifications of the failover arrive");
        got.push(n["message"].as_str().unwrap().to_string());
        if n["id"] == resumed["id"] {
            break;
        }
    }
    let expected: Vec<String> = (0..got.len()).map(|n| format!("during {n}")).collect();
    assert_eq!(got, expected, "nothing lost, nothing twice, in order");
    // What was stored before the failover is still there (the replica had it).
    let mut device = client(&b, "90", before["id"].as_str()).await;
    assert_eq!(device.next_notification().await.expect("replayed from the new master")["id"], kept["id"]);
}
