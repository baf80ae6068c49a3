//! Kiln's HTTP router, in the line of Cloud Foundry's gorouter: app instances register their
//! routes on NATS (`router.register`, gorouter's wire format, see [`kiln_bus::router`]), and
//! the router proxies each request to one of the endpoints of the route its `Host` and path
//! name, with retries over endpoints, WebSocket pass-through and a graceful drain.
//!
//! Layout:
//! - [`config`]: the settings, from a TOML file and flags;
//! - [`table`]: the route table (host + path prefix → endpoints, pruning, balancing);
//! - `bus`: the NATS side (register/unregister, `router.start`, `router.greet`, pruning);
//! - `forward`: the forwarding path for plain HTTP/1.1 requests (heads copied with the
//!   router's edits, bodies passed through), which leaves the rest to `proxy`;
//! - `proxy`: one request on hyper: route lookup, forwarding headers, attempts, upgrades;
//! - `upstream`: connections to endpoints, pooled per endpoint, driven by the requests;
//! - `server`: the proxy listener, connections and the drain;
//! - `rtr`: the RTR access log lines, queued by requests and published to apps' logs;
//! - `status`: `/health`, `/varz`, `/metrics` and `/routes` on a separate listener;
//! - [`metrics`]: the counters `/varz` and `/metrics` show.
//!
//! [`start`] binds, connects and serves in the background; [`Started`] stops it.

pub mod config;
pub mod error;
pub mod metrics;
pub mod table;

mod bus;
mod forward;
mod proxy;
mod rtr;
mod server;
mod status;
mod upstream;

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use kiln_bus::router::RouterStart;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use config::{Balancing, Config};
pub use error::{ConfigError, StartError};

/// What every part of a running router shares.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The router's id (in `router.start` and `/varz`).
    pub(crate) id: String,
    pub(crate) config: Config,
    pub(crate) table: table::Table,
    /// Shared with the RTR publishing thread, which holds nothing else of the router's.
    pub(crate) metrics: Arc<metrics::Metrics>,
    /// The `router.start` / `router.greet` body.
    pub(crate) greeting: RouterStart,
    /// Set when the drain begins: `/health` then answers 503.
    pub(crate) draining: AtomicBool,
    /// Where requests leave their RTR lines.
    pub(crate) rtr: rtr::Lines,
}

/// A running router.
#[derive(Debug)]
pub struct Started {
    /// Where the proxy listens.
    pub addr: SocketAddr,
    /// Where the status listener listens.
    pub status_addr: SocketAddr,
    /// The router's id.
    pub id: String,
    shutdown: CancellationToken,
    done: tokio::task::JoinHandle<Stopped>,
}

/// How a router stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped {
    /// Whether every in-flight request finished within the drain timeout.
    pub drained: bool,
}

impl Started {
    /// Cancelling this token begins the shutdown (stop accepting, drain, stop).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Begins the shutdown.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Waits until the router has stopped (after a shutdown).
    pub async fn stopped(self) -> Stopped {
        self.done.await.unwrap_or(Stopped { drained: false })
    }
}

/// Binds both listeners, connects to NATS (subscribed before `router.start` is sent), and
/// serves in the background until [`Started::shutdown`].
pub async fn start(config: Config) -> Result<Started, StartError> {
    config.validate()?;
    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })
    };
    let listener = bind(config.listen).await?;
    let status_listener = bind(config.status_listen).await?;
    let local = |l: &TcpListener, addr| {
        l.local_addr()
            .map_err(|source| StartError::Bind { addr, source })
    };
    let addr = local(&listener, config.listen)?;
    let status_addr = local(&status_listener, config.status_listen)?;
    let id = config
        .id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let hosts = if !config.hosts.is_empty() {
        config.hosts.clone()
    } else if addr.ip().is_unspecified() {
        Vec::new()
    } else {
        vec![addr.ip().to_string()]
    };
    let greeting = RouterStart {
        id: id.clone(),
        hosts,
        minimum_register_interval_in_seconds: config.register_interval_secs,
        prune_threshold_in_seconds: config.stale_threshold.as_secs(),
    };
    let (rtr, rtr_queue) = rtr::Lines::new(config.rtr_lines, config.rtr_queue);
    let shared = Arc::new(Shared {
        id: id.clone(),
        table: table::Table::new(config.balancing, config.stale_threshold),
        metrics: Arc::default(),
        greeting,
        draining: AtomicBool::new(false),
        rtr,
        config,
    });
    let bus = bus::connect(&shared).await?;
    let shutdown = CancellationToken::new();
    // Stopped after the drain: the bus, RTR lines, pruning and the status listener.
    let background = CancellationToken::new();
    let publisher = match rtr_queue {
        Some(queue) => Some(rtr::start_publisher(shared.clone(), queue, background.clone()).await?),
        None => None,
    };
    tokio::spawn(bus::serve(bus, shared.clone(), background.clone()));
    tokio::spawn(bus::prune(shared.clone(), background.clone()));
    let status = tokio::spawn(status::serve(
        status_listener,
        shared.clone(),
        background.clone(),
    ));
    let proxy = server::serve(listener, shared.clone(), shutdown.clone());
    info!(event = "router.started", %addr, %status_addr, %id, "router serving");
    let done = tokio::spawn(async move {
        let drained = proxy.await;
        background.cancel();
        let _ = status.await;
        if let Some(publisher) = publisher {
            // It publishes what is still queued, then ends.
            let _ = tokio::task::spawn_blocking(move || publisher.join()).await;
        }
        info!(event = "router.stopped", drained, "router stopped");
        Stopped { drained }
    });
    Ok(Started {
        addr,
        status_addr,
        id,
        shutdown,
        done,
    })
}
