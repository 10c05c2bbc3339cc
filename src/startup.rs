//! Wiring: from [`Settings`] to a listening server, and its orderly shutdown.
//!
//! `Application::build` binds the listener (port 0 in tests picks a free port), builds the
//! Socket.IO layer (the local adapter in the embedded default; socketioxide-redis over
//! [`ResilientDriver`] when `redis.url` is set), the store, the shared state and the routes,
//! and starts the background tasks. `run_until_stopped` serves until the given signal, then
//! drains: `/ready` turns 503, new connections are refused, every socket is told the server is
//! closing (an Engine.IO close), and the process has `server.shutdown_grace_secs` to finish.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::http::{HeaderValue, Method};
use axum::middleware::from_fn;
use axum::serve::ListenerExt;
use axum::{Router, ServiceExt};
use socketioxide::adapter::Adapter;
use socketioxide::layer::SocketIoLayer;
use socketioxide::{SocketIo, SocketIoBuilder};
use socketioxide_core::adapter::DefinedAdapter;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tower::Layer;
use tower_http::cors::{AllowCredentials, AllowHeaders, AllowOrigin, CorsLayer};

use crate::auth::Verifier;
use crate::cluster::driver::ResilientDriver;
use crate::cluster::relay::{self, RedisRelay};
use crate::cluster::{adapter_state, ResilientAdapter};
use crate::configuration::Settings;
use crate::delivery::{Delivery, PersistPolicy, Transports};
use crate::ingress::decode::Limits;
use crate::ingress::listener;
use crate::metrics::Metrics;
use crate::outbox::{self, Outbox};
use crate::state::AppState;
use crate::store::redis::RedisStore;
use crate::store::sqlite::SqliteStore;
use crate::store::Store;
use crate::{routes, socket};

pub struct Application {
    listener: TcpListener,
    router: Router,
    state: Arc<AppState>,
    /// Background work that lives as long as the server (relay, seen marks, ...).
    tasks: Vec<JoinHandle<()>>,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        settings.validate().map_err(anyhow::Error::msg)?;
        let verifier = Verifier::new(&settings.auth)?;
        let listener = TcpListener::bind((settings.server.host.as_str(), settings.server.port))
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}:{}: {e}", settings.server.host, settings.server.port))?;

        let sio = &settings.socketio;
        let builder = SocketIo::builder()
            .ping_interval(sio.ping_interval())
            .ping_timeout(sio.ping_timeout())
            .max_payload(sio.max_payload_bytes)
            .ws_max_message_size(sio.max_payload_bytes as usize)
            // Clients send small packets; 1 KiB per connection instead of 4 (BENCHMARKS.md).
            .ws_read_buffer_size(1024)
            // Room for a full replay (plus its summary and the welcome) queued at once.
            .max_buffer_size(settings.delivery.max_replay + 128);
        let redis = (!settings.redis.url.is_empty())
            .then(|| {
                let endpoint = crate::cluster::endpoint::Endpoint::from_settings(&settings.redis).map_err(anyhow::Error::msg)?;
                if endpoint.is_cluster() {
                    crate::cluster::keys::use_cluster_form();
                }
                ResilientDriver::with_endpoint(Arc::new(endpoint)).map_err(anyhow::Error::from)
            })
            .transpose()
            .map_err(|e| anyhow::anyhow!("redis.url: {e}"))?;
        let (router, state, mut tasks) = match &redis {
            None => assemble(builder, settings, verifier, None)?,
            Some(driver) => {
                let builder = builder.with_adapter::<ResilientAdapter<_>>(adapter_state(driver.clone()));
                assemble(builder, settings, verifier, Some(driver.clone()))?
            }
        };
        if let Some(driver) = redis {
            state.delivery.set_fanout(Arc::new(RedisRelay));
            tasks.push(tokio::spawn(relay::run(driver.clone(), state.delivery.clone(), state.plain.clone(), state.instance_id.clone())));
            if let Some(outbox) = &state.outbox {
                let window = state.settings.api.idempotency_window();
                tasks.push(tokio::spawn(outbox::run(outbox.clone(), state.delivery.clone(), driver.watch_state(), window)));
            }
            let limits = Limits { max_bytes: state.settings.socketio.max_payload_bytes as usize, ..Limits::default() };
            let channels = state.settings.redis.python_channels.clone();
            tasks.push(tokio::spawn(listener::run(driver, state.delivery.clone(), channels, limits, state.ingress.clone())));
        }
        tasks.push(tokio::spawn(crate::seen::keep_marks(state.seen.clone(), state.delivery.clone())));
        let hooks = state.webhooks.clone().map(|w| w as Arc<dyn crate::presence::Listener>);
        tasks.push(tokio::spawn(crate::presence::run(state.presence.clone(), state.delivery.clone(), hooks)));
        if let Some(gated) = &state.bookkeeping {
            tasks.push(tokio::spawn(crate::stats::publish(state.clone(), gated.clone())));
        }
        if let Some(webhooks) = &state.webhooks {
            state.delivery.set_stored_listener(webhooks.clone());
            tasks.push(tokio::spawn(webhooks.clone().run()));
        }
        Ok(Application { listener, router, state, tasks })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener has an address")
    }

    /// Serves until `shutdown` completes, then drains within `server.shutdown_grace_secs`.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let Application { listener, router, state, tasks } = self;
        tracing::info!(addr = %listener.local_addr()?, node_id = %state.node_id, "herald listening");
        let listener = listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "TCP_NODELAY not set");
            }
        });
        let (stop_accepting, accepting_stopped) = tokio::sync::oneshot::channel::<()>();
        let drain_state = state.clone();
        let drain = async move {
            shutdown.await;
            tracing::info!("shutting down: draining connections");
            drain_state.start_draining();
            drain_state.delivery.close_all().await;
            // The session ends of the sockets just closed (seen marks), before the process exits.
            if let Err(e) = drain_state.seen.write_queue().await {
                tracing::warn!(error = %e, "seen marks not written at shutdown");
            }
            let _ = stop_accepting.send(());
        };
        let grace = Duration::from_secs(state.settings.server.shutdown_grace_secs);
        // Outside the router, so that it runs before routing (see `routes::request_head`).
        let app = from_fn(routes::request_head::own_request_head).layer(router);
        let app = ServiceExt::<Request>::into_make_service_with_connect_info::<SocketAddr>(app);
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = accepting_stopped.await;
        });
        let serve = tokio::spawn(async move { serve.await });
        drain.await;
        let result = match tokio::time::timeout(grace, serve).await {
            Ok(result) => result.map_err(anyhow::Error::from).and_then(|r| r.map_err(anyhow::Error::from)),
            Err(_) => {
                tracing::warn!(grace_secs = grace.as_secs(), "grace period over: closing remaining connections");
                Ok(())
            }
        };
        for task in tasks {
            task.abort();
        }
        if let Some(driver) = &state.redis {
            driver.shutdown();
        }
        tracing::info!("stopped");
        result
    }
}

type Assembled = (Router, Arc<AppState>, Vec<JoinHandle<()>>);

/// Everything that does not depend on which adapter carries emits between instances.
fn assemble<A: Adapter + DefinedAdapter>(
    builder: SocketIoBuilder<A>,
    settings: Settings,
    verifier: Verifier,
    redis: Option<ResilientDriver>,
) -> anyhow::Result<Assembled> {
    let (socket_layer, io): (SocketIoLayer<A>, SocketIo<A>) = builder.build_layer();
    let metrics = Arc::new(Metrics::default());
    let store = build_store(&settings, redis.as_ref())?;
    let outbox = match &redis {
        Some(_) => {
            Outbox::open(&data_dir(&settings)?.join("outbox.db"), settings.outbox.max_entries).map_err(anyhow::Error::msg)?.map(Arc::new)
        }
        None => None,
    };
    let plain = Arc::new(crate::plain::Registry::default());
    let peers = redis
        .as_ref()
        .map(|driver| Arc::new(relay::PlainRelay::new(driver.clone(), settings.server.instance_id())) as Arc<dyn crate::plain::Peers>);
    let sockets = Transports { io: io.clone(), plain: plain.clone(), peers };
    let delivery = Delivery::new(Arc::new(sockets), store, PersistPolicy::new(&settings.delivery), metrics.clone());
    let state = Arc::new(AppState::new(settings, verifier, delivery, metrics, redis, outbox, plain)?);
    socket::register(&io, state.clone());
    let router = routes::router(state.clone())
        .layer(socket_layer)
        .layer(axum::middleware::from_fn_with_state(state.clone(), routes::origin::enforce_origin))
        .layer(cors_layer(&state.settings.server.cors_origins)?);
    let tasks = vec![tokio::spawn(watch_redis(state.clone())), tokio::spawn(socket::run_expiries(io, state.clone()))];
    Ok((router, state, tasks))
}

/// `storage.data_dir`, created when missing.
fn data_dir(settings: &Settings) -> anyhow::Result<std::path::PathBuf> {
    let dir = std::path::PathBuf::from(&settings.storage.data_dir);
    std::fs::create_dir_all(&dir).map_err(|e| anyhow::anyhow!("storage.data_dir {}: cannot create it: {e}", dir.display()))?;
    Ok(dir)
}

fn build_store(settings: &Settings, redis: Option<&ResilientDriver>) -> anyhow::Result<Arc<dyn Store>> {
    let delivery = &settings.delivery;
    let max_age = Duration::from_secs(delivery.stream_max_age_secs);
    let node_id = settings.server.instance_id();
    Ok(match redis {
        None if settings.storage.in_memory => Arc::new(SqliteStore::open(None, &node_id, delivery.stream_max_len, max_age)?),
        None => {
            let path = data_dir(settings)?.join("herald.db");
            let store = SqliteStore::open(Some(&path), &node_id, delivery.stream_max_len, max_age)
                .map_err(|e| anyhow::anyhow!("storage {}: {e}", path.display()))?;
            tracing::info!(path = %path.display(), "embedded store");
            Arc::new(store)
        }
        Some(driver) => Arc::new(RedisStore::new(driver.endpoint().clone(), &node_id, driver.watch_state(), delivery.stream_max_len, max_age)?),
    })
}

/// Notes the first time Redis is reached (`/ready` waits for it) and counts outages.
async fn watch_redis(state: Arc<AppState>) {
    let Some(driver) = state.redis.clone() else { return };
    let mut states = driver.watch_state();
    loop {
        if *states.borrow_and_update() == crate::cluster::redis_state::RedisState::Up {
            state.mark_redis_reached();
        }
        if states.changed().await.is_err() {
            return;
        }
    }
}

/// CORS for browsers (Socket.IO polling, and any page calling the HTTP endpoints).
///
/// - `"*"` alone: any origin, without credentials (`Access-Control-Allow-Origin: *`, no
///   `Access-Control-Allow-Credentials`), as Node socket.io's `cors: {origin: "*"}` answers.
///   A page on any site can read responses, but never with the user's cookies or HTTP auth.
/// - Listed origins: that origin echoed, with `Access-Control-Allow-Credentials: true`.
/// - `"*"` plus listed origins: every origin echoed, credentials for the listed ones only.
/// - Any other origin: no CORS headers (the browser refuses to hand over the response).
///
/// Origins are checked by `Settings::validate` (`scheme://host[:port]`).
fn cors_layer(origins: &[String]) -> anyhow::Result<CorsLayer> {
    let listed = origins
        .iter()
        .filter(|o| o.as_str() != "*")
        .map(|o| HeaderValue::from_str(o).map_err(|_| anyhow::anyhow!("server.cors_origins: invalid origin {o:?}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let any = origins.iter().any(|o| o == "*");
    let layer = CorsLayer::new().allow_methods([Method::GET, Method::POST, Method::OPTIONS]).allow_headers(AllowHeaders::mirror_request());
    if any && listed.is_empty() {
        return Ok(layer.allow_origin(AllowOrigin::any()));
    }
    let credentialed = listed.clone();
    let credentials = AllowCredentials::predicate(move |origin, _| credentialed.iter().any(|l| l == origin));
    let allow_origin = if any { AllowOrigin::mirror_request() } else { AllowOrigin::list(listed) };
    Ok(layer.allow_origin(allow_origin).allow_credentials(credentials))
}
