//! Redis Cluster: three masters and three replicas (real `redis-server --cluster-enabled yes`,
//! joined by `redis-cli --cluster create`), three Herald instances given `redis+cluster://` with
//! the seeds. Herald's keys share the hash tag `{herald}`; a backend publishes on whichever node
//! it is connected to. The master that serves Herald's slot is killed -9; the cluster promotes
//! its replica; Herald finds it by itself and delivery and storage resume, with what was stored
//! before still there (Redis replicates asynchronously: what the replica had received).

mod common;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::herald_process::{HeraldProcess, welcomed_client as client, free_port, wait_for};
use serde_json::json;


/// The cluster's nodes, killed and their directories removed when the test ends.
struct Nodes {
    dir: PathBuf,
    children: Vec<(u16, Child)>,
    /// TLS only: the nodes talk TLS to clients, to each other and to their replicas.
    tls: bool,
}

fn openssl(dir: &std::path::Path, args: &[&str]) {
    let status = Command::new("openssl").args(args).current_dir(dir).stdout(Stdio::null()).stderr(Stdio::null()).status().expect("openssl runs");
    assert!(status.success(), "openssl {args:?}");
}

impl Nodes {
    fn start(count: usize) -> Nodes {
        Nodes::start_with(count, false)
    }

    /// The same cluster, TLS only, with a private CA (`ca.crt` in [`Nodes::dir`]).
    fn start_tls(count: usize) -> Nodes {
        Nodes::start_with(count, true)
    }

    fn start_with(count: usize, tls: bool) -> Nodes {
        let dir = std::env::temp_dir().join(format!("herald-rcluster-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        if tls {
            openssl(&dir, &["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=herald-test-ca"]);
            openssl(&dir, &["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"]);
            std::fs::write(dir.join("ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
            openssl(&dir, &["x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "ext"]);
        }
        let mut nodes = Nodes { dir, children: vec![], tls };
        for _ in 0..count {
            // The cluster bus listens on port + 10000: both must be free.
            let port = loop {
                let port = free_port();
                if port < 55000 && TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
                    break port;
                }
            };
            let dir = nodes.dir.join(port.to_string());
            std::fs::create_dir_all(&dir).unwrap();
            let mut command = Command::new("redis-server");
            if tls {
                let file = |name: &str| nodes.dir.join(name).display().to_string();
                command.args(["--port", "0", "--tls-port", &port.to_string(), "--tls-cluster", "yes", "--tls-replication", "yes"]);
                command.args(["--tls-cert-file", &file("server.crt"), "--tls-key-file", &file("server.key"), "--tls-ca-cert-file", &file("ca.crt")]);
                command.args(["--tls-auth-clients", "no"]);
            } else {
                command.args(["--port", &port.to_string()]);
            }
            let child = command
                .args(["--bind", "127.0.0.1", "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"])
                .args(["--cluster-node-timeout", "2000", "--save", "", "--appendonly", "no"])
                // A replica that has not synced for a while still takes over (tests are quick).
                .args(["--cluster-replica-validity-factor", "0"])
                .current_dir(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server runs");
            nodes.children.push((port, child));
        }
        for port in nodes.ports() {
            wait_for("a node", Duration::from_secs(10), || nodes.cli(port, &["PING"]) == "PONG");
        }
        let addresses: Vec<String> = nodes.ports().iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = nodes
            .cli_command()
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli runs");
        assert!(out.status.success(), "cluster create: {}", String::from_utf8_lossy(&out.stdout));
        for port in nodes.ports() {
            wait_for("the cluster to be ok", Duration::from_secs(20), || nodes.cli(port, &["CLUSTER", "INFO"]).contains("cluster_state:ok"));
            wait_for("every replica in sync", Duration::from_secs(20), || {
                let info = nodes.cli(port, &["INFO", "replication"]);
                info.contains("role:master") || info.contains("master_link_status:up")
            });
        }
        nodes
    }

    /// `redis-cli`, with the TLS options when the nodes are TLS only.
    fn cli_command(&self) -> Command {
        let mut command = Command::new("redis-cli");
        if self.tls {
            command.args(["--tls", "--cacert", &self.dir.join("ca.crt").display().to_string()]);
        }
        command
    }

    fn cli(&self, port: u16, args: &[&str]) -> String {
        let out = self.cli_command().arg("-p").arg(port.to_string()).args(args).output().expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn ports(&self) -> Vec<u16> {
        self.children.iter().map(|(p, _)| *p).collect()
    }

    fn kill(&mut self, port: u16) {
        if let Some(i) = self.children.iter().position(|(p, _)| *p == port) {
            let (_, mut child) = self.children.remove(i);
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The replica of the master on `master`.
    fn replica_of(&self, master: u16) -> Option<u16> {
        let id = self.cli(master, &["CLUSTER", "MYID"]);
        self.ports().into_iter().find(|p| self.cli(*p, &["CLUSTER", "NODES"]).lines().any(|l| l.contains("myself") && l.contains(&format!("slave {id}"))))
    }

    /// Waits until the replica of `master` has received everything `master` has written
    /// (replication is asynchronous: what a master acknowledged and did not send before dying is
    /// gone, as the README says).
    fn wait_replicated(&self, master: u16) {
        let replica = self.replica_of(master).expect("the master has a replica");
        let offset = |port: u16, key: &str| {
            self.cli(port, &["INFO", "replication"]).lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.trim().parse::<u64>().ok())
        };
        wait_for("the replica to have every write", Duration::from_secs(10), || {
            offset(replica, "slave_repl_offset:").zip(offset(master, "master_repl_offset:")).is_some_and(|(r, m)| r >= m)
        });
    }

    /// The master serving the slot of Herald's keys, as the node on `port` sees it.
    fn herald_master(&self, port: u16) -> Option<u16> {
        let slot: u16 = self.cli(port, &["CLUSTER", "KEYSLOT", "{herald}:x"]).parse().ok()?;
        let nodes = self.cli(port, &["CLUSTER", "NODES"]);
        nodes.lines().find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let is_live_master = fields.get(2)?.contains("master") && !fields[2].contains("fail");
            let serves = fields.iter().skip(8).any(|range| match range.split_once('-') {
                Some((a, b)) => a.parse::<u16>().is_ok_and(|a| a <= slot) && b.parse::<u16>().is_ok_and(|b| slot <= b),
                None => range.parse::<u16>().ok() == Some(slot),
            });
            (is_live_master && serves).then(|| fields[1].split([':', '@']).nth(1)?.parse().ok()).flatten()
        })
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}



#[tokio::test]
async fn on_a_redis_cluster_delivery_and_storage_work_and_survive_a_master_failover() {
    let mut nodes = Nodes::start(6);
    let ports = nodes.ports();
    let url = format!("redis+cluster://127.0.0.1:{},127.0.0.1:{},127.0.0.1:{}", ports[0], ports[1], ports[2]);
    let (a, b, c) = tokio::join!(HeraldProcess::start("rc-a", &url), HeraldProcess::start("rc-b", &url), HeraldProcess::start("rc-c", &url));
    for instance in [&a, &b, &c] {
        instance.wait_health("redis up through the cluster", |h| h["redis"] == "up").await;
    }
    let master = nodes.herald_master(ports[0]).expect("a master serves Herald's slot");
    // Every key Herald wrote is in that master's slot (a cluster would refuse any other).
    let other = *ports.iter().find(|p| **p != master && nodes.herald_master(**p) == Some(master)).unwrap();

    // Across instances, from the HTTP API and from a backend publishing on another node.
    let mut on_b = client(&b, "70", None).await;
    let (_, before) = a.post("/api/v1/notify", json!({ "to": { "user": 70 }, "type": "t", "message": "before" })).await;
    assert_eq!(on_b.next_notification().await.expect("delivered across instances")["id"], before["id"]);
    // A command that is not stored goes through the adapter, on sharded pub/sub (SSUBSCRIBE):
    // its channels are spread over the shards, not copied to every node.
    let (status, _) = a.post("/api/v1/emit", json!({ "event": "ping", "args": [{ "n": 1 }], "rooms": ["user_70"] })).await;
    assert_eq!(status, 202);
    assert_eq!(on_b.next_event("ping").await.expect("a non-stored emit across instances")[0]["n"], 1);
    let sharded: Vec<String> = ports.iter().flat_map(|p| nodes.cli(*p, &["PUBSUB", "SHARDCHANNELS", "herald-*"]).lines().map(String::from).collect::<Vec<_>>()).collect();
    assert!(sharded.iter().any(|c| c.starts_with("herald-request#")), "the adapter subscribes with SSUBSCRIBE: {sharded:?}");
    nodes.cli(other, &["PUBLISH", "notify:user:70", r#"{"type":"t","message":"from a backend"}"#]);
    let published = on_b.next_notification().await.expect("a backend's PUBLISH on another node arrives");
    assert_eq!(published["message"], "from a backend");
    // Stored once (three instances received the publish) and replayed on a third instance.
    let mut on_c = client(&c, "70", before["id"].as_str()).await;
    assert_eq!(on_c.next_notification().await.expect("replayed")["id"], published["id"]);
    let history = c.get("/api/v1/users/70/notifications").await;
    let messages: Vec<&str> = history["items"].as_array().unwrap().iter().filter_map(|n| n["message"].as_str()).collect();
    assert_eq!(messages.iter().filter(|m| **m == "from a backend").count(), 1, "stored once: {history}");
    // Presence and read state live in Herald's slot too.
    let presence = a.get("/api/v1/presence/users/70").await;
    assert_eq!(presence["online"], true, "{presence}");
    let (status, read) = c.post("/api/v1/users/70/notifications/read", json!({ "up_to": published["id"] })).await;
    assert_eq!((status, read["unread"].clone()), (200, json!(0)), "{read}");
    assert_eq!(b.get("/api/v1/users/70/notifications").await["unread"], 0);
    drop(on_c);
    let (_, kept) = a.post("/api/v1/notify", json!({ "to": { "user": 70 }, "type": "t", "message": "kept" })).await;
    assert_eq!(on_b.next_notification().await.expect("delivered")["id"], kept["id"]);
    nodes.wait_replicated(master);

    let killed = Instant::now();
    nodes.kill(master);
    let mut resumed = None;
    let (mut refused, mut sent) = (0, 0);
    for n in 0..600 {
        let (status, body) = a.post("/api/v1/notify", json!({ "to": { "user": 70 }, "type": "t", "message": format!("during {n}") })).await;
        assert!(status == 202 || status == 503, "{status} {body}");
        sent += 1;
        if status == 503 {
            refused += 1;
        }
        if status == 202 && body["id"].is_string() {
            resumed = Some(body);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let resumed = resumed.expect("storage resumed within a minute");
    let seconds = killed.elapsed().as_secs_f64();
    let promoted = nodes.herald_master(other).expect("a new master serves Herald's slot");
    assert_ne!(promoted, master);
    // Everything accepted meanwhile (queued in the outbox, sent once the slot was served again)
    // arrives once, in order, the resumed one last.
    let mut got = vec![];
    loop {
        let n = on_b.next_notification().await.expect("the notifications of the failover arrive");
        got.push(n["message"].as_str().unwrap().to_string());
        if n["id"] == resumed["id"] {
            break;
        }
    }
    let accepted: Vec<String> = (0..got.len()).map(|n| format!("during {n}")).collect();
    println!(
        "cluster: stored through the promoted master {seconds:.1} s after kill -9 of Herald's master; {sent} sent, {refused} refused with 503, {} accepted and delivered, 0 lost",
        got.len()
    );
    assert_eq!(got, accepted, "nothing lost, nothing twice, in order (got {} of {sent})", got.len());
    // Cross-instance delivery of a backend's publish works again, and what was stored before is there.
    let survivor = *ports.iter().find(|p| **p != master && **p != promoted).unwrap();
    nodes.cli(survivor, &["PUBLISH", "notify:user:70", r#"{"type":"t","message":"after"}"#]);
    assert_eq!(on_b.next_notification().await.expect("a backend's publish after the failover")["message"], "after");
    let (status, _) = c.post("/api/v1/emit", json!({ "event": "ping", "args": [{ "n": 2 }], "rooms": ["user_70"] })).await;
    assert_eq!(status, 202);
    assert_eq!(on_b.next_event("ping").await.expect("a non-stored emit after the failover")[0]["n"], 2);
    let mut device = client(&c, "70", before["id"].as_str()).await;
    let replayed = device.next_notification().await.expect("replayed from the promoted master");
    assert_eq!(replayed["message"], "from a backend");
}

#[tokio::test]
async fn on_a_tls_only_redis_cluster_delivery_storage_and_sharded_pub_sub_work() {
    let nodes = Nodes::start_tls(6);
    let ports = nodes.ports();
    let url = format!("rediss+cluster://127.0.0.1:{},127.0.0.1:{}", ports[0], ports[1]);
    let ca = nodes.dir.join("ca.crt").display().to_string();
    let settings = [("HERALD__REDIS__TLS_CA_FILE", ca.as_str())];
    let (a, b) = tokio::join!(HeraldProcess::start_with("rt-a", &url, &settings), HeraldProcess::start_with("rt-b", &url, &settings));
    for instance in [&a, &b] {
        instance.wait_health("redis up through the TLS cluster", |h| h["redis"] == "up").await;
    }
    let mut on_b = client(&b, "71", None).await;
    let (_, first) = a.post("/api/v1/notify", json!({ "to": { "user": 71 }, "type": "t", "message": "over tls" })).await;
    assert_eq!(on_b.next_notification().await.expect("delivered across instances")["id"], first["id"]);
    let (status, _) = a.post("/api/v1/emit", json!({ "event": "ping", "args": [{ "n": 1 }], "rooms": ["user_71"] })).await;
    assert_eq!(status, 202);
    assert_eq!(on_b.next_event("ping").await.expect("sharded pub/sub over TLS")[0]["n"], 1);
    nodes.cli(ports[2], &["PUBLISH", "notify:user:71", r#"{"type":"t","message":"from a backend"}"#]);
    let published = on_b.next_notification().await.expect("a backend's PUBLISH");
    let mut device = client(&a, "71", first["id"].as_str()).await;
    assert_eq!(device.next_notification().await.expect("replayed")["id"], published["id"]);
}

#[tokio::test]
async fn a_failover_that_keeps_the_old_master_alive_is_followed_too() {
    // `CLUSTER FAILOVER` on the replica (what a rolling upgrade or a managed service's
    // maintenance does): the old master lives on as a replica, Herald's connections to it stay
    // open and would answer MOVED forever if Herald did not notice.
    let nodes = Nodes::start(6);
    let ports = nodes.ports();
    let url = format!("redis+cluster://127.0.0.1:{},127.0.0.1:{},127.0.0.1:{}", ports[0], ports[1], ports[2]);
    let (a, b) = tokio::join!(HeraldProcess::start("rm-a", &url), HeraldProcess::start("rm-b", &url));
    for instance in [&a, &b] {
        instance.wait_health("redis up through the cluster", |h| h["redis"] == "up").await;
    }
    let master = nodes.herald_master(ports[0]).unwrap();
    let replica = nodes.replica_of(master).expect("Herald's master has a replica");
    let mut on_b = client(&b, "72", None).await;
    let (_, before) = a.post("/api/v1/notify", json!({ "to": { "user": 72 }, "type": "t", "message": "before" })).await;
    assert_eq!(on_b.next_notification().await.unwrap()["id"], before["id"]);

    let started = Instant::now();
    assert_eq!(nodes.cli(replica, &["CLUSTER", "FAILOVER"]), "OK");
    wait_for("the replica promoted", Duration::from_secs(20), || nodes.herald_master(ports[0]) == Some(replica));
    let mut sent = vec![];
    let last = loop {
        let n = sent.len();
        let (status, body) = a.post("/api/v1/notify", json!({ "to": { "user": 72 }, "type": "t", "message": format!("after {n}") })).await;
        assert!(status == 202 || status == 503, "{status} {body}");
        if status == 202 {
            sent.push(format!("after {n}"));
            if body["id"].is_string() && started.elapsed() > Duration::from_secs(1) {
                break body;
            }
        }
        assert!(started.elapsed() < Duration::from_secs(40), "storage never resumed after the failover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut got = vec![];
    loop {
        let n = on_b.next_notification().await.expect("the notifications of the failover arrive");
        got.push(n["message"].as_str().unwrap().to_string());
        if n["id"] == last["id"] {
            break;
        }
    }
    println!("cluster: CLUSTER FAILOVER followed, storing through the new master {:.1} s after it started", started.elapsed().as_secs_f64());
    assert_eq!(got, sent, "nothing lost, nothing twice, in order");
    // And the old master, now a replica, is not where Herald writes.
    let (_, after) = a.post("/api/v1/notify", json!({ "to": { "user": 72 }, "type": "t", "message": "settled" })).await;
    assert!(after["id"].is_string(), "{after}");
    assert_eq!(on_b.next_notification().await.unwrap()["id"], after["id"]);
}
