//! Connections to endpoints: HTTP/1.1 with keep-alive and a pool of idle ones per endpoint
//! ([`Idle`], kept in the table's [`Endpoint`]).
//!
//! A connection has no task of its own. The request that holds it drives it from the
//! request's own task: while it waits for the response head ([`Upstream::send`]), then while
//! its response body is read (the proxy's response body polls it). So a request costs no
//! hand-over between tasks and no extra wake-up, the way nginx serves both sides of a request
//! from one event loop. When the response ended cleanly the connection goes back to its
//! endpoint's pool; anything else closes it.
//!
//! An idle connection is not polled by anyone; a checkout polls it once, which costs nothing
//! unless its socket saw an event (the endpoint closed it), and then it is dropped. Idle
//! connections older than [`IDLE_TIMEOUT`] are dropped at checkout and by [`Idle::sweep`].

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::client::conn::TrySendError;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::debug;

use crate::proxy::AttemptBody;
use crate::table::Endpoint;

/// Idle connections older than this are closed (hyper's pool default).
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// hyper's client state machine for one connection (with upgrade support; its type cannot
/// be named).
type Connection = dyn Future<Output = hyper::Result<()>> + Send;

/// One connection to an endpoint.
pub(crate) struct Upstream {
    sender: http1::SendRequest<AttemptBody>,
    /// The connection's I/O, boxed so that it can move between the request that drives it
    /// and the pool without being copied.
    conn: Pin<Box<Connection>>,
    /// The connection ended (closed, failed, or handed over after a `101`): never poll again.
    done: bool,
    /// Its life in the pool.
    pub(crate) kept: Kept,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("done", &self.done)
            .field("reused", &self.kept.reused)
            .finish_non_exhaustive()
    }
}

/// Why a dial failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DialError {
    #[error("resolving {host}: {source}")]
    Resolve {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting: {0}")]
    Connect(#[source] std::io::Error),
    #[error("no answer to the connection within {0:?}")]
    Timeout(Duration),
    #[error("setting up HTTP/1.1: {0}")]
    Handshake(#[source] hyper::Error),
}

/// A TCP connection to `endpoint` (TCP_NODELAY on), within `timeout`.
pub(crate) async fn connect(
    endpoint: &Endpoint,
    timeout: Duration,
) -> Result<TcpStream, DialError> {
    let connect = async {
        let host = endpoint.host.trim_start_matches('[').trim_end_matches(']');
        let addr = match host.parse::<IpAddr>() {
            Ok(ip) => SocketAddr::new(ip, endpoint.port),
            Err(_) => tokio::net::lookup_host((host, endpoint.port))
                .await
                .and_then(|mut addrs| {
                    addrs
                        .next()
                        .ok_or_else(|| std::io::Error::other("no address"))
                })
                .map_err(|source| DialError::Resolve {
                    host: host.to_string(),
                    source,
                })?,
        };
        TcpStream::connect(addr).await.map_err(DialError::Connect)
    };
    let stream = tokio::time::timeout(timeout, connect)
        .await
        .map_err(|_| DialError::Timeout(timeout))??;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

impl Upstream {
    /// Connects to `endpoint` and sets up HTTP/1.1 on the connection, within `timeout`.
    pub(crate) async fn dial(
        endpoint: &Endpoint,
        timeout: Duration,
    ) -> Result<Upstream, DialError> {
        let stream = connect(endpoint, timeout).await?;
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(DialError::Handshake)?;
        Ok(Upstream {
            sender,
            conn: Box::pin(conn.with_upgrades()),
            done: false,
            kept: Kept::new(),
        })
    }

    /// Makes progress on the connection's I/O; ready once it ended.
    pub(crate) fn poll_conn(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.done {
            return Poll::Ready(());
        }
        match self.conn.as_mut().poll(cx) {
            Poll::Ready(result) => {
                self.done = true;
                if let Err(e) = result {
                    debug!(error = %e, "endpoint connection ended");
                }
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// Sends `request` and drives the connection until the response head. An error gives
    /// the request back when it was not sent at all.
    pub(crate) async fn send(
        &mut self,
        request: Request<AttemptBody>,
    ) -> Result<Response<Incoming>, TrySendError<Request<AttemptBody>>> {
        let response = std::pin::pin!(self.sender.try_send_request(request));
        Exchange {
            upstream: self,
            response,
        }
        .await
    }

    /// Hands the connection to a task of its own until it ends (after a `101`, when it has
    /// to finish the switch while the tunnel waits for it).
    pub(crate) fn detach(mut self) {
        if !self.done {
            tokio::spawn(async move {
                std::future::poll_fn(|cx| self.poll_conn(cx)).await;
            });
        }
    }
}

/// A request on its way: drives the connection while waiting for the response head.
struct Exchange<'a, F> {
    upstream: &'a mut Upstream,
    response: F,
}

impl<F: Future + Unpin> Future for Exchange<'_, F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // Writing the request and reading the response happen here; if the connection ends,
        // the response future resolves with its error.
        let _ = self.upstream.poll_conn(cx);
        Pin::new(&mut self.response).poll(cx)
    }
}

/// A connection an endpoint's pool can keep while it is idle.
pub(crate) trait Pooled {
    /// Looks at the connection without waiting; says whether it can take a request (the
    /// endpoint did not close it meanwhile).
    fn settle(&mut self) -> bool;
    /// Whether it ended and cannot go back to the pool.
    fn ended(&self) -> bool;
    /// Its life in the pool.
    fn kept(&mut self) -> &mut Kept;
}

/// A pooled connection's life in the pool.
#[derive(Debug)]
pub(crate) struct Kept {
    /// Taken from the pool rather than dialled for this request.
    pub(crate) reused: bool,
    /// When it went back to the pool.
    idle_since: Instant,
}

impl Kept {
    /// A new connection's.
    pub(crate) fn new() -> Kept {
        Kept {
            reused: false,
            idle_since: Instant::now(),
        }
    }

    /// Whether it was idle for less than [`IDLE_TIMEOUT`] at `now`.
    fn fresh(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.idle_since) < IDLE_TIMEOUT
    }
}

impl Pooled for Upstream {
    fn settle(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        self.poll_conn(&mut cx).is_pending() && self.sender.is_ready()
    }

    fn ended(&self) -> bool {
        self.done
    }

    fn kept(&mut self) -> &mut Kept {
        &mut self.kept
    }
}

/// How many pools an endpoint's idle connections are split into: one per proxy thread (up to
/// this many), so that a thread reuses the connections its own event loop drives.
const POOLS: usize = 8;

thread_local! {
    /// The pool of this thread's connections (set on each proxy thread).
    static POOL: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Makes this thread the `n`th proxy thread: it checks out and in connections of its own pool.
pub(crate) fn set_pool(n: usize) {
    POOL.with(|p| p.set(n % POOLS));
}

/// An endpoint's idle connections of one kind, a pool per proxy thread.
#[derive(Debug)]
pub(crate) struct Idle<C>([Mutex<Vec<C>>; POOLS]);

impl<C> Default for Idle<C> {
    fn default() -> Self {
        Idle(std::array::from_fn(|_| Mutex::new(Vec::new())))
    }
}

impl<C: Pooled> Idle<C> {
    /// This thread's pool.
    fn lock(&self) -> MutexGuard<'_, Vec<C>> {
        let pool = &self.0[POOL.with(std::cell::Cell::get)];
        pool.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently used idle connection that is still open and ready, if any.
    pub(crate) fn checkout(&self, now: Instant) -> Option<C> {
        loop {
            let mut conn = self.lock().pop()?;
            if conn.kept().fresh(now) && conn.settle() {
                conn.kept().reused = true;
                return Some(conn);
            }
        }
    }

    /// Takes a connection back after a response that ended cleanly, if the pool has room
    /// for it (whether it can serve another request is seen at checkout).
    pub(crate) fn checkin(&self, mut conn: C, max: usize) {
        if conn.ended() {
            return;
        }
        conn.kept().idle_since = Instant::now();
        let mut idle = self.lock();
        if idle.len() < max {
            idle.push(conn);
        }
    }

    /// Closes connections idle for too long or closed by the endpoint, in every pool; says how
    /// many are left.
    pub(crate) fn sweep(&self, now: Instant) -> usize {
        self.0
            .iter()
            .map(|pool| {
                let mut idle = pool.lock().unwrap_or_else(PoisonError::into_inner);
                idle.retain_mut(|c| c.kept().fresh(now) && c.settle());
                idle.len()
            })
            .sum()
    }
}
