//! The proxy listener: HTTP/1.1 connections with keep-alive, a header size limit (431) and a
//! header read timeout, and the drain: on shutdown stop accepting, let every connection
//! finish its request (and every WebSocket its traffic) up to the drain timeout, then cut
//! what is left.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::metrics::bump;
use crate::proxy::Proxy;
use crate::Shared;

/// What in-flight work the drain waits for, and how it cuts the rest.
#[derive(Debug, Clone)]
pub(crate) struct Drain {
    /// Connections and tunnels.
    pub(crate) tracker: TaskTracker,
    /// Cancelled when the drain timeout is over.
    pub(crate) cut: CancellationToken,
}

/// Serves until `shutdown`, then drains; says whether everything finished in time.
pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) -> bool {
    let drain = Drain {
        tracker: TaskTracker::new(),
        cut: CancellationToken::new(),
    };
    let proxy = Arc::new(Proxy::new(shared.clone(), drain.clone()));
    let http = builder(&shared);
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little and go on.
                    warn!(error = %e, "accepting a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        drain.tracker.spawn(connection(
            http.clone(),
            stream,
            peer,
            proxy.clone(),
            shared.clone(),
            shutdown.clone(),
            drain.cut.clone(),
        ));
    }
    drop(listener);
    shared.draining.store(true, Ordering::Relaxed);
    info!(
        event = "router.draining",
        timeout_secs = shared.config.drain_timeout.as_secs_f64(),
        "stopped accepting; draining"
    );
    drain.tracker.close();
    let drained = tokio::time::timeout(shared.config.drain_timeout, drain.tracker.wait())
        .await
        .is_ok();
    if !drained {
        warn!(
            event = "router.drain_timeout",
            left = drain.tracker.len(),
            "cutting what is still in flight"
        );
        drain.cut.cancel();
        drain.tracker.wait().await;
    }
    drained
}

fn builder(shared: &Shared) -> http1::Builder {
    let config = &shared.config;
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(config.header_read_timeout)
        .max_header_size(config.max_header_bytes)
        // Room for a whole head at the limit, so that the limit (not the buffer) decides.
        .max_buf_size(config.max_header_bytes.saturating_add(64 << 10))
        .max_headers(config.max_header_count);
    http
}

async fn connection(
    http: http1::Builder,
    stream: TcpStream,
    peer: SocketAddr,
    proxy: Arc<Proxy>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    cut: CancellationToken,
) {
    let service = service_fn(move |request| proxy.clone().handle(request, peer));
    let conn = http
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = shutdown.cancelled() => {
            // Finish the request in flight (if any), then close.
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                result = conn.as_mut() => result,
                () = cut.cancelled() => Ok(()),
            }
        }
    };
    if let Err(e) = result {
        let metrics = &shared.metrics;
        if e.is_parse_too_large() {
            // hyper answered 431 itself.
            bump(&metrics.headers_too_large);
            metrics.response(431);
        } else if e.is_timeout() {
            bump(&metrics.header_timeouts);
        }
        debug!(%peer, error = %e, "connection ended with an error");
    }
}
