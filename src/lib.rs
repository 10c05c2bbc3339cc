//! Herald: a real-time notification server that speaks Socket.IO and replaces a Flask-SocketIO
//! notification service without changing its clients or backends. See ARCHITECTURE.md for the
//! map of modules and the path a notification takes.

pub mod auth;
pub mod cluster;
pub mod configuration;
pub mod connection;
pub mod delivery;
pub mod expiry;
pub mod ingress;
pub mod limits;
pub mod metrics;
pub mod notification;
pub mod outbox;
pub mod payload;
pub mod plain;
pub mod presence;
pub mod replay;
pub mod rooms;
pub mod routes;
pub mod seen;
pub mod socket;
pub mod startup;
pub mod stats;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod webhooks;
