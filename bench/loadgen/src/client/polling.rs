//! The HTTP long-polling transport (Engine.IO v4 `transport=polling`): the open, the CONNECT
//! packet posted, then one long GET after another; packets in a body are separated by `\x1e`.
//! A configurable share of the connections uses it (`--polling-share`).

use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::sync::watch;

use super::socketio::ConnState;
use super::Ready;
use crate::worker::Agg;

pub async fn polling_conn(
    client: reqwest::Client,
    base: String,
    token: String,
    join: Option<String>,
    agg: Arc<Mutex<Agg>>,
    ready: Ready,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut st = ConnState::new(join, ready);
    let open = match client.get(format!("{base}/socket.io/?EIO=4&transport=polling")).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(e) => return st.fail(format!("polling open: {e}")),
    };
    let Some(sid) = open
        .strip_prefix('0')
        .and_then(|j| serde_json::from_str::<Value>(j.split('\u{1e}').next().unwrap_or(j)).ok())
        .and_then(|v| v["sid"].as_str().map(String::from))
    else {
        return st.fail(format!("polling open: unexpected {open:.80}"));
    };
    let url = format!("{base}/socket.io/?EIO=4&transport=polling&sid={sid}");
    let post = |body: String| {
        let client = client.clone();
        let url = url.clone();
        async move { client.post(url).header("content-type", "text/plain;charset=UTF-8").body(body).send().await.map(|_| ()) }
    };
    if let Err(e) = post(format!("40{}", json!({ "token": token }))).await {
        return st.fail(format!("polling connect: {e}"));
    }
    loop {
        let resp = tokio::select! {
            r = client.get(&url).send() => r,
            _ = shutdown.changed() => {
                let _ = post("1".into()).await;
                break;
            }
        };
        let body = match resp {
            Ok(r) if r.status().is_success() => r.text().await.unwrap_or_default(),
            Ok(r) => {
                st.fail(format!("polling GET {}", r.status()));
                agg.lock().unwrap().disconnects += 1;
                break;
            }
            Err(e) => {
                st.fail(format!("polling GET: {e}"));
                agg.lock().unwrap().disconnects += 1;
                break;
            }
        };
        let mut stop = false;
        let mut replies = vec![];
        for pkt in body.split('\u{1e}') {
            match pkt.as_bytes().first() {
                Some(b'2') => replies.push("3".to_string()),
                Some(b'4') => {
                    let (reply, s) = st.on_socketio(pkt, &agg);
                    if let Some(r) = reply {
                        replies.push(r);
                    }
                    stop |= s;
                }
                Some(b'1') => stop = true,
                _ => {}
            }
        }
        if !replies.is_empty() && post(replies.join("\u{1e}")).await.is_err() {
            stop = true;
        }
        if stop {
            st.fail("polling closed".into());
            agg.lock().unwrap().disconnects += 1;
            break;
        }
    }
}
