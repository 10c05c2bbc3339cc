//! The optional Redis ingress (`REDIS_URL`): `PSUBSCRIBE notify:*` on one plain TCP connection
//! (RESP by hand, no client library), and every message delivered as the HTTP API would deliver
//! it: `notify:user:<id>` → `user_<id>`, `notify:role:<r>` → `role_<r>`, `notify:project:<p>` →
//! `project_<p>`, `notify:room:<name>` → `<name>`, `notify:global` → everyone. The payload is
//! Herald's (`{"type","message","data","priority"}`); the floor adds `timestamp`, `channel`
//! and `id` and stores nothing. Reconnects every second while Redis is away.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::notification::{iso_now, Body};
use crate::rooms::ALL;
use crate::State;

pub async fn ingress(url: String, state: Arc<State>) {
    loop {
        if let Err(e) = subscribe(&url, &state).await {
            eprintln!("redis ingress ({url}): {e}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn subscribe(url: &str, state: &State) -> std::io::Result<()> {
    let addr = url.strip_prefix("redis://").unwrap_or(url);
    let addr = addr.split('/').next().unwrap_or(addr);
    let mut conn = TcpStream::connect(addr).await?;
    conn.write_all(b"*2\r\n$10\r\nPSUBSCRIBE\r\n$8\r\nnotify:*\r\n").await?;
    let mut reader = BufReader::new(conn);
    eprintln!("redis ingress on {url}");
    loop {
        let items = read_array(&mut reader).await?;
        if let [kind, _pattern, channel, payload] = items.as_slice() {
            if kind.as_slice() == b"pmessage" {
                deliver(state, &String::from_utf8_lossy(channel), payload);
            }
        }
    }
}

fn deliver(state: &State, channel: &str, payload: &[u8]) {
    let Ok(json) = serde_json::from_slice::<Value>(payload) else { return };
    let Some(body) = Body::from_json(&json) else { return };
    let mut parts = channel.splitn(3, ':');
    let (room, channel) = match (parts.next(), parts.next(), parts.next()) {
        (Some("notify"), Some("global"), None) => (ALL.to_string(), "broadcast".to_string()),
        (Some("notify"), Some("user"), Some(id)) => (format!("user_{id}"), format!("user_{id}")),
        (Some("notify"), Some("role"), Some(r)) => (format!("role_{r}"), format!("role_{r}")),
        (Some("notify"), Some("project"), Some(p)) => (format!("project_{p}"), format!("project_{p}")),
        (Some("notify"), Some("room"), Some(name)) => (name.to_string(), name.to_string()),
        _ => return,
    };
    state.rooms.emit(&room, body.frame(&iso_now(), &channel, &state.ids.next()));
}

/// One RESP array of bulk strings and integers (what (P)SUBSCRIBE pushes are made of).
async fn read_array<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> std::io::Result<Vec<Vec<u8>>> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("redis: unexpected {what}"));
    let header = read_line(r).await?;
    let n: usize = header.strip_prefix('*').and_then(|n| n.parse().ok()).ok_or_else(|| bad(&header))?;
    let mut items = Vec::with_capacity(n);
    for _ in 0..n {
        let line = read_line(r).await?;
        if let Some(len) = line.strip_prefix('$') {
            let len: usize = len.parse().map_err(|_| bad(&line))?;
            let mut buf = vec![0; len + 2];
            r.read_exact(&mut buf).await?;
            buf.truncate(len);
            items.push(buf);
        } else if let Some(int) = line.strip_prefix(':') {
            items.push(int.as_bytes().to_vec());
        } else {
            return Err(bad(&line));
        }
    }
    Ok(items)
}

async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> std::io::Result<String> {
    let mut line = String::new();
    if r.read_line(&mut line).await? == 0 {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "redis closed the connection"));
    }
    Ok(line.trim_end().to_string())
}
