//! One simulated client: what every connection needs whatever its transport (its source
//! address, its JWT, the channel that tells the worker it is ready), the Socket.IO state machine
//! both transports share (`socketio`), and the two transports (`websocket`, `polling`).

pub mod polling;
pub mod socketio;
pub mod websocket;

use std::net::Ipv4Addr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;
use tokio::sync::oneshot;

use crate::cli::Common;

pub fn source_ip(common: &Common, global_index: usize) -> Ipv4Addr {
    let n = common.src_ips.max(1) as usize;
    Ipv4Addr::new(127, 0, 0, 1 + (global_index % n) as u8)
}

pub fn mint(common: &Common, user: u64) -> String {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() + 6 * 3600;
    let mut claims = json!({ "user_id": user.to_string(), "exp": exp });
    if let Some(role) = &common.role {
        claims["role"] = json!(role);
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(common.secret.as_bytes()),
    )
    .expect("jwt encode")
}

pub type Ready = oneshot::Sender<Result<bool, String>>;
