//! The proxy listener: HTTP/1.1 connections with keep-alive, a header size limit (431) and a
//! header read timeout, and the drain: on shutdown stop accepting, let every connection
//! finish its request (and every WebSocket its traffic) up to the drain timeout, then cut
//! what is left.
//!
//! A connection's plain requests are served by the forwarding path ([`crate::forward`]); the
//! first request it leaves to hyper makes hyper serve the rest of the connection.
//!
//! Connections are served the way nginx's workers serve them: one proxy thread per core, each
//! an event loop of its own (a current-thread runtime) that serves its connections whole,
//! client and endpoint sides, with a pool of endpoint connections of its own. The listener
//! hands each accepted connection to the next thread in turn. Without work stealing between
//! threads a request costs about a fifth less CPU than on a shared multi-thread runtime
//! (`bench/router`: 14.3 against 17.6 µs, 80 k against 67 k requests/s).

use std::future::Future;
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

use crate::forward::{self, Rewind, Served};
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
    let here = Context {
        http: builder(&shared),
        proxy: Arc::new(Proxy::new(shared.clone(), drain.clone())),
        shared: shared.clone(),
        shutdown: shutdown.clone(),
        drain: drain.clone(),
    };
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let mut handoffs = Vec::with_capacity(threads);
    let mut workers = Vec::with_capacity(threads);
    for n in 0..threads {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        match proxy_thread(n, rx, here.clone()) {
            Ok(worker) => {
                handoffs.push(tx);
                workers.push(worker);
            }
            // No thread to be had: the listener's runtime serves (any thread started first
            // still serves its share).
            Err(e) => warn!(error = %e, "starting a proxy thread"),
        }
    }
    let mut next = 0usize;
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
        let left = if handoffs.is_empty() {
            Some(stream)
        } else {
            next = next.wrapping_add(1);
            hand_over(&handoffs[next % handoffs.len()], stream, peer)
        };
        if let Some(stream) = left {
            drain.tracker.spawn(here.connection(stream, peer));
        }
    }
    drop(listener);
    // The proxy threads serve what they have and end once it is done (or cut).
    drop(handoffs);
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
    for worker in workers {
        let _ = tokio::task::spawn_blocking(move || worker.join()).await;
    }
    drained
}

/// What a connection is served with.
#[derive(Clone)]
struct Context {
    http: http1::Builder,
    proxy: Arc<Proxy>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    drain: Drain,
}

impl Context {
    /// Serving `stream` until it ends.
    fn connection(&self, stream: TcpStream, peer: SocketAddr) -> impl Future<Output = ()> {
        connection(
            self.http.clone(),
            stream,
            peer,
            self.proxy.clone(),
            self.shared.clone(),
            self.shutdown.clone(),
            self.drain.cut.clone(),
        )
    }
}

/// Gives an accepted connection to a proxy thread; gives it back to be served here if that
/// thread is gone.
fn hand_over(
    to: &tokio::sync::mpsc::UnboundedSender<(std::net::TcpStream, SocketAddr)>,
    stream: TcpStream,
    peer: SocketAddr,
) -> Option<TcpStream> {
    let std_stream = match stream.into_std() {
        Ok(s) => s,
        Err(e) => {
            warn!(%peer, error = %e, "handing a connection over; dropped");
            return None;
        }
    };
    let (std_stream, _) = to.send((std_stream, peer)).err()?.0;
    match TcpStream::from_std(std_stream) {
        Ok(stream) => Some(stream),
        Err(e) => {
            warn!(%peer, error = %e, "taking a connection back; dropped");
            None
        }
    }
}

/// The `n`th proxy thread: serves the connections it is handed until the listener stops
/// handing them and they have all ended.
fn proxy_thread(
    n: usize,
    mut handed: tokio::sync::mpsc::UnboundedReceiver<(std::net::TcpStream, SocketAddr)>,
    context: Context,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("kiln-router".into())
        .spawn(move || {
            crate::upstream::set_pool(n);
            runtime.block_on(async move {
                let mut served = tokio::task::JoinSet::new();
                while let Some((stream, peer)) = handed.recv().await {
                    let stream = match TcpStream::from_std(stream) {
                        Ok(s) => s,
                        Err(e) => {
                            warn!(%peer, error = %e, "taking over a connection");
                            continue;
                        }
                    };
                    let serving = context.connection(stream, peer);
                    served.spawn(context.drain.tracker.track_future(serving));
                    // Reap the finished ones as they go.
                    while served.try_join_next().is_some() {}
                }
                if !context.shutdown.is_cancelled() {
                    // The listener went away without a shutdown (its runtime ended): this
                    // thread's connections end with this runtime.
                    return;
                }
                while served.join_next().await.is_some() {}
                // Tunnels and other tasks this thread started end with the drain.
                context.drain.tracker.wait().await;
            });
        })
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
    mut stream: TcpStream,
    peer: SocketAddr,
    proxy: Arc<Proxy>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    cut: CancellationToken,
) {
    let served = tokio::select! {
        served = forward::serve(&mut stream, peer, &shared, &shutdown) => served,
        () = cut.cancelled() => return,
    };
    let Served::Hyper(read) = served else {
        return;
    };
    // Handed over while draining: hyper answers the request it was handed, then closes
    // (a graceful shutdown now would find the connection idle and close it unanswered).
    let draining = shutdown.is_cancelled();
    let mut http = http;
    if draining {
        http.keep_alive(false);
    }
    let service = service_fn(move |request| proxy.clone().handle(request, peer));
    let conn = http
        .serve_connection(TokioIo::new(Rewind::new(read, stream)), service)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = cut.cancelled(), if draining => Ok(()),
        () = shutdown.cancelled(), if !draining => {
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
