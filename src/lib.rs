//! Herald: a real-time notification server that speaks Socket.IO and replaces a Flask-SocketIO
//! notification service without changing its clients or backends. See ARCHITECTURE.md for the
//! map of modules and the path a notification takes.

pub mod auth;
pub mod configuration;
pub mod delivery;
pub mod ingress;
pub mod metrics;
pub mod notification;
pub mod payload;
pub mod rooms;
pub mod routes;
pub mod socket;
pub mod startup;
pub mod state;
pub mod telemetry;
