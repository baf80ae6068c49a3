//! The forwarding path: how the router serves plain HTTP/1.1 requests, the way nginx proxies
//! them. The client's head is parsed in place and copied to the endpoint with the router's
//! edits (no header map is built, nothing is re-encoded); the response head is copied back
//! the same way and its body passed on byte for byte, with its own framing, to its end. Both
//! sides run in the client connection's task; endpoint connections are kept alive in the
//! endpoint's pool.
//!
//! A request the path does not take as it is (see [`head`]) goes to hyper's path
//! ([`crate::proxy`]) with the bytes read so far, and hyper serves the rest of that
//! connection. Both paths answer alike: the same headers for the app, the same retries
//! (another endpoint after a failed dial, or after any failure of an idempotent request
//! without a response; a small request body is read whole first, so it is sent whole or not
//! at all), the same errors (`X-Cf-Routererror`), metrics and RTR lines.

mod endpoint;
mod framing;
mod head;
mod rewind;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Sleep;
use tokio_util::sync::WaitForCancellationFuture;
use tracing::{debug, info, info_span, warn, Instrument};

pub(crate) use endpoint::EndpointConn;
pub(crate) use rewind::Rewind;

use crate::metrics::{bump, drop_one};
use crate::proxy::RouterError;
use crate::rtr::{Arrival, Pending, Seen};
use crate::table::{Endpoint, Lease, Pick};
use crate::upstream::{DialError, IDLE_TIMEOUT};
use crate::Shared;
use endpoint::{ExchangeError, READ_SIZE};
use framing::{Framing, Taken};
use head::{Answer, Parsed, Plan};

/// Attempts per request, over different endpoints.
const MAX_ATTEMPTS: usize = 3;

/// How long a kept-alive client connection may wait for its next request.
const KEEP_ALIVE: Duration = IDLE_TIMEOUT;

/// How a client connection left the forwarding path.
pub(crate) enum Served {
    /// It is done (closed, or to be closed).
    Closed,
    /// hyper serves the rest of it, starting with these bytes already read.
    Hyper(Bytes),
}

/// What a connection is served with.
struct Conn<'a, 't> {
    client: &'a mut TcpStream,
    peer: SocketAddr,
    shared: &'a Shared,
    /// Read from the client, not yet forwarded.
    buf: BytesMut,
    /// The header read timeout, then the request timeout (one timer per connection).
    timer: Pin<&'a mut Sleep>,
    /// Ready once the router shuts down.
    shutdown: Pin<&'a mut WaitForCancellationFuture<'t>>,
}

/// Serves `client`'s requests until it closes, the router shuts down, or a request is one
/// for hyper.
pub(crate) async fn serve(
    client: &mut TcpStream,
    peer: SocketAddr,
    shared: &Shared,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Served {
    let timer = std::pin::pin!(tokio::time::sleep(shared.config.header_read_timeout));
    let cancelled = std::pin::pin!(shutdown.cancelled());
    let mut conn = Conn {
        client,
        peer,
        shared,
        buf: BytesMut::with_capacity(READ_SIZE),
        timer,
        shutdown: cancelled,
    };
    let mut first = true;
    loop {
        let plan = match conn.next_request(first).await {
            Next::Request(plan) => plan,
            Next::Hyper => return Served::Hyper(conn.buf.freeze()),
            Next::Closed => return Served::Closed,
        };
        first = false;
        if !conn.forward(plan).await || conn.draining() {
            return Served::Closed;
        }
    }
}

#[expect(
    clippy::large_enum_variant,
    reason = "one per request, moved on at once (as `Parsed`)"
)]
enum Next {
    Request(Plan),
    Hyper,
    Closed,
}

/// Counts a request in flight until dropped.
struct InFlight<'a>(&'a AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        drop_one(self.0);
    }
}

/// How the attempts on a request's endpoints ended.
enum Outcome {
    Answered {
        lease: Lease,
        conn: EndpointConn,
        answer: Answer,
    },
    Failed(RouterError, Option<Arc<Endpoint>>),
    /// The client closed its connection before the response head.
    ClientGone(Option<Arc<Endpoint>>),
}

/// How one attempt on an endpoint ended, short of a response.
enum Failure {
    Dial(DialError),
    Exchange(ExchangeError),
    Timeout,
    ClientGone,
}

/// Status logged for a request whose client closed its connection first (nginx's and
/// gorouter's).
const CLIENT_CLOSED: u16 = 499;

/// Pipelined request bytes kept while a request is in flight; past this the client is not
/// read until the response is done.
const MAX_PIPELINED: usize = 64 << 10;

/// Resolves once the client closed its connection (or it failed). What the client sends
/// meanwhile (the next requests, pipelined) is kept in `buf`, up to [`MAX_PIPELINED`].
async fn client_gone(client: &mut TcpStream, buf: &mut BytesMut) {
    while buf.len() < MAX_PIPELINED {
        buf.reserve(READ_SIZE);
        match client.read_buf(buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
    std::future::pending().await
}

impl Conn<'_, '_> {
    /// The router is draining: no request after the one in flight (a relaxed load, where
    /// the token's state is behind a lock).
    fn draining(&self) -> bool {
        self.shared
            .draining
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Reads the next request head within the header read timeout (and its body, each read
    /// within that timeout of the one before); waits up to [`KEEP_ALIVE`] for it to begin,
    /// unless the router shuts down meanwhile.
    async fn next_request(&mut self, first: bool) -> Next {
        let config = &self.shared.config;
        let mut waiting = !first && self.buf.is_empty();
        let wait = if waiting {
            KEEP_ALIVE
        } else {
            config.header_read_timeout
        };
        let deadline = tokio::time::Instant::now() + wait;
        self.timer.as_mut().reset(deadline);
        let mut plan = None;
        loop {
            if plan.is_none() && !self.buf.is_empty() {
                match head::parse_request(&self.buf, self.peer.ip(), self.shared) {
                    Parsed::Request(p) => plan = Some(p),
                    Parsed::Hyper => return Next::Hyper,
                    Parsed::Partial => {}
                }
            }
            if let Some(p) = plan.take_if(|p| self.buf.len() >= p.head_len + p.body_len) {
                return Next::Request(p);
            }
            self.buf.reserve(READ_SIZE);
            let idle = self.buf.is_empty();
            let read = tokio::select! {
                biased;
                read = self.client.read_buf(&mut self.buf) => read,
                () = self.timer.as_mut() => {
                    if !waiting && plan.is_none() {
                        bump(&self.shared.metrics.header_timeouts);
                    }
                    debug!(peer = %self.peer, "no whole request in time; closing");
                    return Next::Closed;
                }
                () = self.shutdown.as_mut(), if idle => return Next::Closed,
            };
            match read {
                Ok(0) | Err(_) => return Next::Closed,
                // The head's time starts with its first byte; a body's with each read.
                Ok(_) if waiting || plan.is_some() => {
                    waiting = false;
                    let deadline = tokio::time::Instant::now() + config.header_read_timeout;
                    self.timer.as_mut().reset(deadline);
                }
                Ok(_) => {}
            }
        }
    }

    /// Forwards one request and its response; says whether the connection stays open.
    async fn forward(&mut self, mut plan: Plan) -> bool {
        let shared = self.shared;
        let metrics = &shared.metrics;
        bump(&metrics.requests);
        bump(&metrics.in_flight);
        let _in_flight = InFlight(&metrics.in_flight);
        let arrival = Arrival {
            at: Instant::now(),
            wall: SystemTime::now(),
        };
        let span = info_span!(
            "request",
            request_id = plan.request_id.to_str().unwrap_or_default(),
            host = plan.host.as_str(),
        );
        // The request, off the buffer: what the client sends meanwhile is read in behind it.
        let request = self.buf.split_to(plan.head_len + plan.body_len);
        let body = &request[plan.head_len..];
        let (status, endpoint, keep) = self
            .proxy(&mut plan, body, arrival)
            .instrument(span.clone())
            .await;
        span.in_scope(|| {
            info!(
                target: "kiln_router::access",
                method = %plan.method(&request), path = plan.path(&request), status,
                endpoint = endpoint.as_deref().map(Endpoint::address).unwrap_or_default(),
                ms = arrival.at.elapsed().as_millis() as u64,
                "request"
            )
        });
        keep
    }

    /// Sends the request to an endpoint and its answer (or the router's) to the client;
    /// says with what status, from which endpoint, and whether the connection stays open.
    async fn proxy(
        &mut self,
        plan: &mut Plan,
        body: &[u8],
        arrival: Arrival,
    ) -> (u16, Option<Arc<Endpoint>>, bool) {
        let shared = self.shared;
        let metrics = &shared.metrics;
        let mut head = std::mem::take(&mut plan.head);
        let outcome = self.attempts(plan, &mut head, body).await;
        let close = plan.close || self.draining();
        let (status, endpoint, keep, sent) = match outcome {
            Outcome::ClientGone(endpoint) => {
                debug!("the client closed its connection before the response");
                metrics.response(CLIENT_CLOSED);
                (CLIENT_CLOSED, endpoint, false, 0)
            }
            Outcome::Answered {
                lease,
                conn,
                answer,
            } => {
                let status = answer.status;
                metrics.response(status);
                metrics.latency.observe(arrival.at.elapsed());
                let (keep, sent) = self.respond(answer, conn, &lease, close).await;
                (status, Some(lease.endpoint().clone()), keep, sent)
            }
            Outcome::Failed(error, endpoint) => {
                let status = error.status().as_u16();
                metrics.response(status);
                metrics.latency.observe(arrival.at.elapsed());
                let (answer, sent) = error.raw(&plan.host, &plan.request_id, plan.head_only, close);
                let keep = self.client.write_all(&answer).await.is_ok() && !close;
                (status, endpoint, keep, sent)
            }
        };
        // The RTR line tells the request as the endpoint got it (without the endpoint's own
        // headers); the router's own answers name the last endpoint tried.
        let logged = endpoint.as_ref().filter(|e| !e.app.is_empty());
        if let (Some(to), true) = (logged, shared.rtr.enabled()) {
            let seen = Seen::Forwarded {
                head,
                marks: std::mem::take(&mut plan.marks),
            };
            let pending = Pending::new(seen, self.peer, to, status, arrival, None)
                .with_request_bytes(plan.body_len as u64);
            shared.rtr.offer(pending.finish(sent), metrics);
        }
        (status, endpoint, keep)
    }

    /// Tries up to [`MAX_ATTEMPTS`] endpoints of the route until one answers.
    async fn attempts(&mut self, plan: &Plan, head: &mut Vec<u8>, body: &[u8]) -> Outcome {
        let shared = self.shared;
        let metrics = &shared.metrics;
        let common = head.len();
        let deadline = tokio::time::Instant::now() + shared.config.request_timeout;
        self.timer.as_mut().reset(deadline);
        let mut tried = Vec::new();
        for attempt in 1..=MAX_ATTEMPTS {
            let lease = match shared.table.pick(&plan.route, &tried) {
                Pick::Endpoint(lease) => lease,
                Pick::Exhausted => break,
            };
            if attempt > 1 {
                bump(&metrics.retries);
            }
            let endpoint = lease.endpoint().clone();
            head.truncate(common);
            head::finish_request(head, &endpoint);
            head.extend_from_slice(body);
            let waits = Waits {
                timer: self.timer.as_mut(),
                client: self.client,
                pipelined: &mut self.buf,
            };
            let failure = match exchange(&endpoint, head, plan, waits, shared).await {
                Ok((conn, answer)) => {
                    return Outcome::Answered {
                        lease,
                        conn,
                        answer,
                    }
                }
                Err(failure) => failure,
            };
            let address = endpoint.address();
            let retry = match failure {
                Failure::ClientGone => return Outcome::ClientGone(Some(endpoint)),
                Failure::Timeout => {
                    bump(&metrics.bad_gateways);
                    bump(&metrics.endpoint_timeouts);
                    warn!(endpoint = %address, "endpoint timed out");
                    return Outcome::Failed(RouterError::EndpointTimeout, Some(endpoint));
                }
                Failure::Dial(error) => {
                    bump(&metrics.dial_failures);
                    shared.table.remove_endpoint(&endpoint.host, endpoint.port);
                    warn!(endpoint = %address, error = %error, attempt, "dial failed; endpoint removed");
                    true
                }
                Failure::Exchange(error) => {
                    warn!(endpoint = %address, error = %error, attempt, "endpoint failed");
                    plan.idempotent && error.unanswered()
                }
            };
            tried.push(endpoint);
            if !retry {
                break;
            }
        }
        bump(&metrics.bad_gateways);
        bump(&metrics.endpoint_failures);
        Outcome::Failed(RouterError::EndpointFailure, tried.pop())
    }

    /// Passes the response on: its head, then its body to the end of its framing. Says
    /// whether the client connection stays open, and how many bytes of content were sent
    /// (chunk framing not counted).
    async fn respond(
        &mut self,
        answer: Answer,
        mut conn: EndpointConn,
        lease: &Lease,
        close: bool,
    ) -> (bool, u64) {
        let Answer {
            len,
            mut framing,
            reusable,
            head: mut out,
            ..
        } = answer;
        let close = close || framing == Framing::UntilClose;
        if close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        conn.buf.advance(len);
        let mut sent = 0u64;
        let mut ended = false;
        // The head goes out with the body bytes that came with it; later parts go out as
        // they are read.
        let mut head = Some(out);
        loop {
            let Taken {
                bytes: n,
                content,
                done,
            } = match framing.take(&conn.buf) {
                Ok(taken) => taken,
                Err(e) => {
                    debug!(error = %e, "endpoint response cut off");
                    break;
                }
            };
            let written = match head.take() {
                Some(mut head) => {
                    head.extend_from_slice(&conn.buf[..n]);
                    self.client.write_all(&head).await
                }
                None => self.client.write_all(&conn.buf[..n]).await,
            };
            if let Err(e) = written {
                debug!(error = %e, "client went away during the response");
                return (false, sent);
            }
            conn.buf.advance(n);
            sent += content as u64;
            if done {
                ended = true;
                break;
            }
            let read = tokio::select! {
                biased;
                read = conn.read_more() => read,
                () = client_gone(self.client, &mut self.buf) => {
                    debug!("the client closed its connection during the response");
                    return (false, sent);
                }
            };
            match read {
                Ok(0) if framing == Framing::UntilClose => {
                    ended = true;
                    break;
                }
                Ok(0) => {
                    debug!("endpoint closed before the end of its response");
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    debug!(error = %e, "reading the endpoint's response");
                    break;
                }
            }
        }
        // (The pool refuses a connection with bytes read past the response.)
        if ended && reusable {
            let max = self.shared.config.max_idle_per_endpoint;
            lease.endpoint().streams.checkin(conn, max);
        }
        // A response cut off short of its end cannot be told from a whole one but by the
        // connection closing.
        (ended && !close, sent)
    }
}

/// What an attempt waits for besides its response head.
struct Waits<'a> {
    /// The request timeout.
    timer: Pin<&'a mut Sleep>,
    /// The client closing its connection (what it sends meanwhile goes to `pipelined`).
    client: &'a mut TcpStream,
    pipelined: &'a mut BytesMut,
}

/// One attempt on `endpoint`: a pooled connection (or a new one), the request, and its
/// response head before the request timeout, unless the client goes away first.
async fn exchange(
    endpoint: &Endpoint,
    request: &[u8],
    plan: &Plan,
    mut waits: Waits<'_>,
    shared: &Shared,
) -> Result<(EndpointConn, Answer), Failure> {
    let mut pooled = endpoint.streams.checkout(Instant::now());
    loop {
        let mut conn = match pooled.take() {
            Some(conn) => conn,
            None => EndpointConn::dial(endpoint, shared.config.dial_timeout)
                .await
                .map_err(Failure::Dial)?,
        };
        tokio::select! {
            biased;
            answered = conn.round_trip(request, plan.head_only) => match answered {
                Ok(answer) => return Ok((conn, answer)),
                // A pooled connection the endpoint closed meanwhile: the request again on a
                // new one, if it can be sent again.
                Err(e) if conn.kept.reused && plan.idempotent && e.unanswered() => {
                    debug!(error = %e, "pooled connection was closed; dialling");
                }
                Err(e) => return Err(Failure::Exchange(e)),
            },
            () = waits.timer.as_mut() => return Err(Failure::Timeout),
            () = client_gone(waits.client, waits.pipelined) => return Err(Failure::ClientGone),
        }
    }
}
