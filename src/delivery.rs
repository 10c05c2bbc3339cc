//! The one delivery path: every way of emitting (HTTP API, and later Redis ingress and replay)
//! turns into a [`Command`] and goes through [`Delivery::apply`].
//!
//! Keeping one path means one place decides how a command reaches sockets: which namespace,
//! which rooms minus which exceptions, whether the emit crosses instances (`Scope::Cluster`, for
//! commands that entered on this instance only) or stays on this instance (`Scope::Local`, for
//! commands every instance receives anyway, such as Redis pub/sub ingress), and what is counted.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use socketioxide::adapter::Adapter;
use socketioxide::SocketIo;

use crate::metrics::Metrics;
use crate::payload::Args;

/// Which sockets a command acts on: those of `namespace` in any of `rooms` (all of the namespace
/// when `rooms` is empty) and in none of `except`.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub namespace: String,
    pub rooms: Vec<String>,
    pub except: Vec<String>,
}

impl Target {
    pub fn rooms(namespace: &str, rooms: Vec<String>) -> Target {
        Target { namespace: namespace.to_string(), rooms, except: vec![] }
    }
}

/// What a backend can ask of the sockets.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Emit { target: Target, event: String, args: Args },
    Join { target: Target, rooms: Vec<String> },
    Leave { target: Target, rooms: Vec<String> },
    Disconnect { target: Target },
}

impl Command {
    pub fn target(&self) -> &Target {
        match self {
            Command::Emit { target, .. }
            | Command::Join { target, .. }
            | Command::Leave { target, .. }
            | Command::Disconnect { target } => target,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Command::Emit { .. } => "emit",
            Command::Join { .. } => "join",
            Command::Leave { .. } => "leave",
            Command::Disconnect { .. } => "disconnect",
        }
    }
}

/// Whether a command should reach other instances too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Entered on this instance only (HTTP API): fan out through the adapter to every instance.
    Cluster,
    /// Every instance receives it on its own (Redis ingress): act on this instance's sockets.
    Local,
}

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("namespace {0} is not served")]
    UnknownNamespace(String),
    #[error("{0}")]
    Socket(String),
}

/// What the delivery path needs from the Socket.IO layer, whatever its adapter.
pub trait Sockets: Send + Sync + 'static {
    fn apply<'a>(&'a self, command: &'a Command, scope: Scope) -> BoxFuture<'a, Result<(), DeliveryError>>;
    /// Sockets connected to this instance, over every namespace.
    fn local_connections(&self) -> usize;
    /// Disconnects every socket of this instance (graceful shutdown).
    fn close(&self) -> BoxFuture<'_, ()>;
}

impl<A: Adapter> Sockets for SocketIo<A> {
    fn apply<'a>(&'a self, command: &'a Command, scope: Scope) -> BoxFuture<'a, Result<(), DeliveryError>> {
        Box::pin(async move {
            let target = command.target();
            let ns = self
                .of(&target.namespace)
                .ok_or_else(|| DeliveryError::UnknownNamespace(target.namespace.clone()))?;
            let mut ops = ns.to(target.rooms.clone()).except(target.except.clone());
            if scope == Scope::Local {
                ops = ops.local();
            }
            let result = match command {
                Command::Emit { event, args, .. } => ops.emit(event, args).await.map_err(|e| e.to_string()),
                Command::Join { rooms, .. } => ops.join(rooms.clone()).await.map_err(|e| e.to_string()),
                Command::Leave { rooms, .. } => ops.leave(rooms.clone()).await.map_err(|e| e.to_string()),
                Command::Disconnect { .. } => ops.disconnect().await.map_err(|e| e.to_string()),
            };
            result.map_err(DeliveryError::Socket)
        })
    }

    fn local_connections(&self) -> usize {
        self.nsps().into_iter().map(|ns| ns.local().sockets().len()).sum()
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(SocketIo::close(self))
    }
}

/// The shared delivery path. Cheap to clone.
#[derive(Clone)]
pub struct Delivery {
    sockets: Arc<dyn Sockets>,
    metrics: Arc<Metrics>,
}

impl Delivery {
    pub fn new(sockets: Arc<dyn Sockets>, metrics: Arc<Metrics>) -> Delivery {
        Delivery { sockets, metrics }
    }

    /// Applies `command`; `source` names the ingress for `/metrics` (`http`, `python`, ...).
    pub async fn apply(&self, command: Command, scope: Scope, source: &'static str) -> Result<(), DeliveryError> {
        let kind = command.kind();
        let result = self.sockets.apply(&command, scope).await;
        let outcome = match &result {
            Ok(()) => "delivered",
            Err(DeliveryError::UnknownNamespace(_)) => "unknown_namespace",
            Err(DeliveryError::Socket(_)) => "failed",
        };
        self.metrics.inc("herald_commands_total", &[("source", source), ("kind", kind), ("outcome", outcome)]);
        if let Err(e) = &result {
            tracing::warn!(source, kind, error = %e, "command not delivered");
        }
        result
    }

    pub fn local_connections(&self) -> usize {
        self.sockets.local_connections()
    }

    pub async fn close_all(&self) {
        self.sockets.close().await
    }
}
