//! The Redis ingress of `targeted --ingress redis`: raw RESP `PUBLISH` commands pipelined on a
//! few connections (no client library: the sender must not be the bottleneck), error replies
//! counted.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

/// A Redis connection that pipelines PUBLISH commands and counts the replies.
pub struct RedisPub {
    pub tx: mpsc::Sender<(String, String)>,
}

pub async fn redis_pub(addr: &str, errors: Arc<Mutex<u64>>) -> Result<RedisPub, String> {
    let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("redis {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (rd, wr) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<(String, String)>(4096);
    tokio::spawn(async move {
        let mut wr = tokio::io::BufWriter::new(wr);
        while let Some((ch, payload)) = rx.recv().await {
            let cmd = format!("*3\r\n$7\r\nPUBLISH\r\n${}\r\n{}\r\n${}\r\n{}\r\n", ch.len(), ch, payload.len(), payload);
            if wr.write_all(cmd.as_bytes()).await.is_err() {
                break;
            }
            if rx.is_empty() && wr.flush().await.is_err() {
                break;
            }
        }
    });
    tokio::spawn(async move {
        let mut lines = BufReader::new(rd).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            if l.starts_with('-') {
                *errors.lock().unwrap() += 1;
            }
        }
    });
    Ok(RedisPub { tx })
}
