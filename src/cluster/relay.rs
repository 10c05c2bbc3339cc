//! Stored notifications between instances.
//!
//! A stored emit that enters on one instance (the HTTP API) is published on
//! [`RELAY_CHANNEL`]; every instance, the sender included, applies it to its own sockets
//! through [`Delivery::apply_stored_locally`]. Going through each instance's delivery path
//! (rather than the adapter's broadcast) is what lets replay on every instance know exactly
//! which stored notifications its sockets already received live.

use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use serde_json::json;
use socketioxide_redis::drivers::Driver;

use super::driver::ResilientDriver;
use crate::delivery::{Command, Delivery, Fanout, Target};
use crate::payload::stored;
use crate::store::StreamId;

pub const RELAY_CHANNEL: &str = "herald:deliver";

/// Publishes stored emits for every instance.
pub struct RedisRelay {
    pub driver: ResilientDriver,
}

impl Fanout for RedisRelay {
    fn publish<'a>(&'a self, nid: StreamId, command: &'a Command) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let Command::Emit { target, event, args } = command else {
                return Err("only emits are relayed".into());
            };
            let message = json!({
                "nid": nid.to_string(),
                "ns": target.namespace,
                "rooms": target.rooms,
                "except": target.except,
                "event": event,
                "args": stored::encode(args),
            });
            self.driver.publish(RELAY_CHANNEL.into(), message.to_string().into_bytes()).await.map_err(|e| e.to_string())
        })
    }
}

/// Applies relayed stored emits to this instance's sockets until the subscription ends.
pub async fn run(driver: ResilientDriver, delivery: Delivery) {
    let mut subscription = match driver.subscribe_stream(vec![RELAY_CHANNEL.into()], vec![]).await {
        Ok(subscription) => subscription,
        Err(e) => {
            tracing::error!(error = %e, "relay not subscribed: stored notifications from other instances will not arrive");
            return;
        }
    };
    while let Some((_, payload)) = subscription.next().await {
        match decode(&payload) {
            Ok((nid, command)) => {
                let _ = delivery.apply_stored_locally(nid, command).await;
            }
            Err(e) => {
                delivery.metrics().inc("herald_ingress_messages_total", &[("source", "relay"), ("outcome", "malformed")]);
                tracing::warn!(error = %e, "malformed relay message skipped");
            }
        }
    }
}

fn decode(payload: &[u8]) -> Result<(StreamId, Command), String> {
    let message: serde_json::Value = serde_json::from_slice(payload).map_err(|e| e.to_string())?;
    let text = |key: &str| message[key].as_str().map(String::from).ok_or_else(|| format!("{key} missing"));
    let list = |key: &str| -> Result<Vec<String>, String> {
        message[key]
            .as_array()
            .ok_or_else(|| format!("{key} missing"))?
            .iter()
            .map(|r| r.as_str().map(String::from).ok_or_else(|| format!("{key} must hold strings")))
            .collect()
    };
    let nid: StreamId = text("nid")?.parse()?;
    let target = Target { namespace: text("ns")?, rooms: list("rooms")?, except: list("except")? };
    let args = stored::decode(&text("args")?).map_err(|e| e.to_string())?;
    Ok((nid, Command::Emit { target, event: text("event")?, args }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_relay_messages_are_errors() {
        for bad in [
            &b"garbage"[..],
            b"{}",
            br#"{"nid":"x","ns":"/","rooms":[],"except":[],"event":"e","args":"[]"}"#,
            br#"{"nid":"1-0","ns":"/","rooms":[1],"except":[],"event":"e","args":"[]"}"#,
        ] {
            assert!(decode(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let good = br#"{"nid":"1-0","ns":"/","rooms":["user_1"],"except":[],"event":"notification","args":"[{\"a\":1}]"}"#;
        let (nid, command) = decode(good).unwrap();
        assert_eq!(nid, StreamId::new(1, 0));
        assert!(matches!(command, Command::Emit { ref event, .. } if event == "notification"));
    }
}
