//! Redis as managed services run it: TLS only (a private CA) and an ACL user with a password.
//! A real `redis-server --tls-port` with a certificate this test makes with `openssl`; three real
//! Herald processes. Also the two mistakes operators make: a wrong password, a CA that did not
//! sign the server's certificate — a clear reason on `/ready`, never a panic.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::herald_process::{HeraldProcess, welcomed_client as client};
use serde_json::{json, Value};

/// A TLS-only `redis-server` (no plain port) with one ACL user, `herald` / `s3cret`.
struct TlsRedis {
    port: u16,
    dir: PathBuf,
    process: Child,
}

fn openssl(dir: &Path, args: &[&str]) {
    let status = Command::new("openssl").args(args).current_dir(dir).stdout(Stdio::null()).stderr(Stdio::null()).status().expect("openssl runs");
    assert!(status.success(), "openssl {args:?}");
}

impl TlsRedis {
    fn start() -> TlsRedis {
        let dir = std::env::temp_dir().join(format!("herald-tls-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, subject) in [("ca", "/CN=herald-test-ca"), ("other-ca", "/CN=some-other-ca")] {
            openssl(&dir, &["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", &format!("{name}.key"), "-out", &format!("{name}.crt"), "-days", "2", "-subj", subject]);
        }
        openssl(&dir, &["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"]);
        std::fs::write(dir.join("ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
        openssl(&dir, &["x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "ext"]);
        std::fs::write(dir.join("users.acl"), "user default off\nuser herald on >s3cret ~* &* +@all\n").unwrap();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let process = Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--tls-cert-file", "server.crt", "--tls-key-file", "server.key", "--tls-ca-cert-file", "ca.crt", "--tls-auth-clients", "no"])
            .args(["--aclfile", "users.acl", "--save", "", "--appendonly", "no"])
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "TLS redis-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        TlsRedis { port, dir, process }
    }

    fn url(&self, password: &str) -> String {
        format!("rediss://herald:{password}@127.0.0.1:{}/0", self.port)
    }

    fn file(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}


async fn ready(instance: &HeraldProcess) -> (u16, Value) {
    let response = reqwest::get(instance.url("/ready")).await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn three_instances_over_tls_with_an_acl_user_deliver_store_and_replay() {
    let redis = TlsRedis::start();
    let ca = redis.file("ca.crt");
    let settings = [("HERALD__REDIS__TLS_CA_FILE", ca.as_str())];
    let url = redis.url("s3cret");
    let (a, b, c) = tokio::join!(
        HeraldProcess::start_with("tls-a", &url, &settings),
        HeraldProcess::start_with("tls-b", &url, &settings),
        HeraldProcess::start_with("tls-c", &url, &settings),
    );
    for instance in [&a, &b, &c] {
        instance.wait_health("redis up over TLS", |h| h["redis"] == "up").await;
    }
    let (mut on_b, mut on_c) = (client(&b, "70", None).await, client(&c, "70", None).await);
    let (status, sent) = a.post("/api/v1/notify", json!({ "to": { "user": 70 }, "type": "t", "message": "over tls" })).await;
    assert_eq!(status, 202, "{sent}");
    for tab in [&mut on_b, &mut on_c] {
        let n = tab.next_notification().await.expect("delivered across instances");
        assert_eq!((n["message"].clone(), n["id"].clone()), (json!("over tls"), sent["id"].clone()));
    }
    // Stored in the TLS Redis: a device resuming after the first id gets the next one.
    let (_, next) = b.post("/api/v1/notify", json!({ "to": { "user": 70 }, "type": "t", "message": "stored" })).await;
    let mut device = client(&a, "70", sent["id"].as_str()).await;
    assert_eq!(device.next_notification().await.expect("replayed")["id"], next["id"]);
}

#[tokio::test]
async fn a_wrong_password_or_an_unknown_ca_is_a_clear_reason_on_ready() {
    let redis = TlsRedis::start();
    let ca = redis.file("ca.crt");
    let other = redis.file("other-ca.crt");
    let wrong_password = HeraldProcess::start_with("tls-wrong", &redis.url("nope"), &[("HERALD__REDIS__TLS_CA_FILE", ca.as_str())]).await;
    let wrong_ca = HeraldProcess::start_with("tls-ca", &redis.url("s3cret"), &[("HERALD__REDIS__TLS_CA_FILE", other.as_str())]).await;
    for (instance, expected) in [(&wrong_password, "auth"), (&wrong_ca, "certificate")] {
        let deadline = Instant::now() + Duration::from_secs(10);
        let body = loop {
            let (status, body) = ready(instance).await;
            assert_eq!(status, 503, "{body}");
            if body["error"].is_string() {
                break body;
            }
            assert!(Instant::now() < deadline, "no reason on /ready: {body}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let reason = body["error"].as_str().unwrap().to_lowercase();
        assert!(reason.contains(expected), "{expected}: {reason}");
        assert!(!reason.contains("s3cret") && !reason.contains("nope"), "no password in {reason}");
        assert!(instance.health().await.is_some(), "still serving its own sockets");
    }
}
