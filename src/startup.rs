//! Wiring: from [`Settings`] to a listening server, and its orderly shutdown.
//!
//! `Application::build` binds the listener (port 0 in tests picks a free port), builds the
//! Socket.IO layer and the shared state, and mounts the routes. `run_until_stopped` serves until
//! the given signal, then drains: `/ready` turns 503, new connections are refused, every socket is
//! told the server is closing (an Engine.IO close), and the process has `server.shutdown_grace_secs`
//! to finish in-flight requests.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderValue, Method};
use axum::serve::ListenerExt;
use axum::Router;
use socketioxide::SocketIo;
use tokio::net::TcpListener;
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};

use crate::auth::Verifier;
use crate::configuration::Settings;
use crate::delivery::{Delivery, PersistPolicy};
use crate::store::memory::MemoryStore;
use crate::store::redis::RedisStore;
use crate::store::Store;
use crate::metrics::Metrics;
use crate::state::AppState;
use crate::{routes, socket};

pub struct Application {
    listener: TcpListener,
    router: Router,
    state: Arc<AppState>,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        settings.validate().map_err(anyhow::Error::msg)?;
        let verifier = Verifier::new(&settings.auth)?;
        let listener = TcpListener::bind((settings.server.host.as_str(), settings.server.port))
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}:{}: {e}", settings.server.host, settings.server.port))?;

        let sio = &settings.socketio;
        let (socket_layer, io) = SocketIo::builder()
            .ping_interval(sio.ping_interval())
            .ping_timeout(sio.ping_timeout())
            .max_payload(sio.max_payload_bytes)
            .ws_max_message_size(sio.max_payload_bytes as usize)
            // Room for a full replay (plus its summary and the welcome) queued at once.
            .max_buffer_size(settings.delivery.max_replay + 128)
            .build_layer();

        let metrics = Arc::new(Metrics::default());
        let store = build_store(&settings)?;
        let delivery = Delivery::new(Arc::new(io.clone()), store, PersistPolicy::new(&settings.delivery), metrics.clone());
        let state = Arc::new(AppState::new(settings, verifier, delivery, metrics));
        socket::register(&io, state.clone());

        let router = routes::router(state.clone())
            .layer(socket_layer)
            .layer(cors_layer(&state.settings.server.cors_origins)?);
        Ok(Application { listener, router, state })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener has an address")
    }

    pub fn port(&self) -> u16 {
        self.local_addr().port()
    }

    pub fn state(&self) -> Arc<AppState> {
        self.state.clone()
    }

    /// Serves until `shutdown` completes, then drains within `server.shutdown_grace_secs`.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let Application { listener, router, state } = self;
        tracing::info!(addr = %listener.local_addr()?, node_id = %state.node_id, "herald listening");
        let listener = listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "TCP_NODELAY not set");
            }
        });
        let (stop_accepting, accepting_stopped) = tokio::sync::oneshot::channel::<()>();
        let seen_keeper = tokio::spawn(keep_seen_marks(state.clone()));
        let drain_state = state.clone();
        let drain = async move {
            shutdown.await;
            tracing::info!("shutting down: draining connections");
            drain_state.start_draining();
            drain_state.delivery.close_all().await;
            let _ = stop_accepting.send(());
        };
        let grace = Duration::from_secs(state.settings.server.shutdown_grace_secs);
        let serve = axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(async move {
                let _ = accepting_stopped.await;
            });
        let serve = tokio::spawn(async move { serve.await });
        drain.await;
        match tokio::time::timeout(grace, serve).await {
            Ok(result) => result??,
            Err(_) => tracing::warn!(grace_secs = grace.as_secs(), "grace period over: closing remaining connections"),
        }
        seen_keeper.abort();
        tracing::info!("stopped");
        Ok(())
    }
}

fn build_store(settings: &Settings) -> anyhow::Result<Arc<dyn Store>> {
    let delivery = &settings.delivery;
    let max_age = Duration::from_secs(delivery.stream_max_age_secs);
    Ok(if settings.redis.url.is_empty() {
        Arc::new(MemoryStore::new(delivery.stream_max_len, max_age))
    } else {
        Arc::new(RedisStore::new(&settings.redis.url, delivery.stream_max_len, max_age)?)
    })
}

/// How often the seen marks of connected users move forward.
const SEEN_INTERVAL: Duration = Duration::from_secs(30);

/// Moves the seen mark of every user connected here, so that if this instance dies without
/// running its disconnect handlers, replay elsewhere starts close to where the user stopped
/// rather than at their previous disconnect. The mark lags by a heartbeat (ping interval +
/// timeout): a socket may have been dead that long before anyone noticed.
async fn keep_seen_marks(state: Arc<AppState>) {
    let lag = state.settings.socketio.heartbeat_window();
    let mut ticker = tokio::time::interval(SEEN_INTERVAL);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let mark = crate::replay::lagging_now(lag.as_millis() as u64);
        for user in state.delivery.local_users() {
            if let Err(e) = state.delivery.store().advance_seen(&user, mark).await {
                tracing::debug!(error = %e, "seen marks not advanced");
                break;
            }
        }
    }
}

fn cors_layer(origins: &[String]) -> anyhow::Result<CorsLayer> {
    let allow_origin = if origins.iter().any(|o| o == "*") {
        AllowOrigin::mirror_request()
    } else {
        let list = origins
            .iter()
            .map(|o| HeaderValue::from_str(o).map_err(|_| anyhow::anyhow!("server.cors_origins: invalid origin {o:?}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        AllowOrigin::list(list)
    };
    Ok(CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers(AllowHeaders::mirror_request())
        .allow_credentials(true))
}
