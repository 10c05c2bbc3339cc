//! The WebSocket transport: `GET /socket.io/?EIO=4&transport=websocket` from a chosen source
//! address, the token in the CONNECT packet (`40{"token":…}`), pings answered, every text frame
//! handed to the Socket.IO state machine.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use super::socketio::ConnState;
use super::Ready;
use crate::worker::Agg;

pub async fn ws_conn(
    addr: SocketAddr,
    host: String,
    ip: Ipv4Addr,
    token: String,
    join: Option<String>,
    agg: Arc<Mutex<Agg>>,
    ready: Ready,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut st = ConnState::new(join, ready);
    let sock = match tokio::net::TcpSocket::new_v4() {
        Ok(s) => s,
        Err(e) => return st.fail(format!("socket: {e}")),
    };
    if let Err(e) = sock.bind(SocketAddr::new(IpAddr::V4(ip), 0)) {
        return st.fail(format!("bind: {e}"));
    }
    let stream = match sock.connect(addr).await {
        Ok(s) => s,
        Err(e) => return st.fail(format!("tcp connect: {e}")),
    };
    let _ = stream.set_nodelay(true);
    let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
    let url = format!("ws://{host}/socket.io/?EIO=4&transport=websocket");
    let ws = match tokio_tungstenite::client_async_with_config(url, stream, Some(config)).await {
        Ok((ws, _)) => ws,
        Err(e) => return st.fail(format!("ws handshake: {e}")),
    };
    let (mut tx, mut rx) = ws.split();
    loop {
        let msg = tokio::select! {
            m = rx.next() => m,
            _ = shutdown.changed() => {
                let _ = tx.send(Message::Close(None)).await;
                break;
            }
        };
        let text = match msg {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Ping(p))) => {
                let _ = tx.send(Message::Pong(p)).await;
                continue;
            }
            Some(Ok(Message::Binary(_))) | Some(Ok(Message::Pong(_))) | Some(Ok(Message::Frame(_))) => continue,
            Some(Ok(Message::Close(_))) | None => {
                st.fail("closed by server".into());
                agg.lock().unwrap().disconnects += 1;
                break;
            }
            Some(Err(e)) => {
                st.fail(format!("ws: {e}"));
                agg.lock().unwrap().disconnects += 1;
                break;
            }
        };
        let text: &str = text.as_str();
        match text.as_bytes().first() {
            Some(b'0') => {
                let auth = json!({ "token": token }).to_string();
                if tx.send(Message::text(format!("40{auth}"))).await.is_err() {
                    break;
                }
            }
            Some(b'2') => {
                if tx.send(Message::text("3")).await.is_err() {
                    break;
                }
            }
            Some(b'4') => {
                let (reply, stop) = st.on_socketio(text, &agg);
                if let Some(reply) = reply {
                    if tx.send(Message::text(reply)).await.is_err() {
                        break;
                    }
                }
                if stop {
                    agg.lock().unwrap().disconnects += 1;
                    break;
                }
            }
            Some(b'1') => {
                st.fail("engine.io close".into());
                break;
            }
            _ => {}
        }
    }
}
