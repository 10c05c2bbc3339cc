//! A real `redis-server` process per test, so that tests can kill and restart Redis on the same
//! port the way an outage or a deploy would, without touching any shared Redis.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A `redis-server` bound to 127.0.0.1 on a port of its own, without persistence.
/// The process is killed on drop.
pub struct RedisServer {
    port: u16,
    process: Option<Child>,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers.
    pub fn running() -> Self {
        let mut server = Self::stopped();
        server.start();
        server
    }

    /// Picks a free port but does not start the server yet (see [`RedisServer::start`]).
    pub fn stopped() -> Self {
        let port = TcpListener::bind("127.0.0.1:0").and_then(|listener| listener.local_addr()).expect("no free port").port();
        Self { port, process: None }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts (or restarts) the server on its port and waits until it answers `PING`.
    pub fn start(&mut self) {
        assert!(self.process.is_none(), "redis-server is already running");
        let process = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot run redis-server: is it installed?");
        self.process = Some(process);
        self.wait_until_ready();
    }

    /// `kill -9`: no shutdown, clients just see their connections drop.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            // `Child::kill` sends SIGKILL on Unix, which also ends a frozen process.
            process.kill().expect("cannot kill redis-server");
            process.wait().expect("cannot reap redis-server");
        }
    }

    /// `kill -STOP`: the server stops answering but its connections stay open, like a hung
    /// server or a network partition.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// `kill -CONT`: undoes [`RedisServer::freeze`].
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let process = self.process.as_ref().expect("redis-server is not running");
        let status = Command::new("kill").args([signal, &process.id().to_string()]).status().expect("cannot run kill");
        assert!(status.success(), "kill {signal} failed");
    }

    /// Runs a command with a fresh connection, e.g. `["CLIENT", "KILL", "TYPE", "pubsub"]`.
    pub fn command(&self, args: &[&str]) -> redis::Value {
        let client = redis::Client::open(self.url()).expect("valid url");
        let mut connection = client.get_connection().expect("redis-server is not running");
        redis::cmd(args[0]).arg(&args[1..]).query(&mut connection).expect("redis command failed")
    }

    fn wait_until_ready(&self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if self.answers_ping() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not start on port {}", self.port);
    }

    fn answers_ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        let mut reply = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok() && stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
