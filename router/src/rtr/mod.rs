//! RTR lines: gorouter's access log line for every request to a route whose registration
//! names an app, published as [`kiln_bus::cell::AppLogLine`]s (source `RTR`, stream `OUT`) on
//! the app's log subject ([`kiln_bus::cell::app_log`]), where the controller collects them
//! with the app's other lines.
//!
//! A request hands its head over to a [`Record`] once it needs it no more (nothing is copied
//! or formatted on its way) and offers it to a bounded queue; one task writes the lines
//! ([`line`]) and publishes them, an app's lines of one wake-up together in one message (a
//! JSON array). When the queue is full the line is dropped and counted (`rtr_dropped`), so a
//! slow or absent bus never slows requests down.
//!
//! That task runs on a thread of its own with a bus connection of its own, scheduled as a
//! batch thread (`SCHED_BATCH`): it gets its share of the CPU like any other thread, but its
//! wake-ups do not preempt the proxy threads, so a burst of lines (at 20 000 requests a second,
//! 100 lines each 5 ms) never runs in front of a request. On the router's main runtime, with
//! the shared connection, those bursts put Kiln's p99 under load above a direct connection's
//! (`bench/router`).

mod line;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_nats::{Client, Subject};
use hyper::header::HeaderMap;
use hyper::http::request::Parts;
use hyper::{Method, Uri, Version};
use kiln_bus::cell::app_log;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::debug;

pub(crate) use self::line::Marks;
use crate::error::StartError;
use crate::metrics::{bump, Metrics};
use crate::table::Endpoint;
use crate::Shared;

/// The `source` of router lines in an app's log.
pub const RTR_SOURCE: &str = "RTR";

/// Lines published per wake-up of the publishing task, at most.
const BATCH: usize = 1024;

/// How long the publishing task lets lines gather after publishing some, so that the bus
/// connection writes many lines at once rather than one write per line (at 10 000 requests
/// a second, one write per line costs the router a third more write calls).
const GATHER: Duration = Duration::from_millis(5);

/// How long lines still queued at the stop (and the last flush) may take to reach the bus,
/// which may be down; what is not out by then is dropped.
const LAST_LINES: Duration = Duration::from_secs(2);

/// An app's lines of one wake-up go out in messages of this size at most (the bus takes up to
/// 1 MiB by default).
const MESSAGE_BYTES: usize = 128 << 10;

/// The requests' side of the queue; `None` when RTR lines are off.
#[derive(Debug)]
pub(crate) struct Lines(Option<mpsc::Sender<Record>>);

impl Lines {
    /// The queue (and its receiving end for [`publish`]) if `enabled`.
    pub(crate) fn new(enabled: bool, capacity: usize) -> (Lines, Option<mpsc::Receiver<Record>>) {
        if !enabled {
            return (Lines(None), None);
        }
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (Lines(Some(tx)), Some(rx))
    }

    /// Whether requests should gather records.
    pub(crate) fn enabled(&self) -> bool {
        self.0.is_some()
    }

    /// Queues a line, or drops and counts it when the queue is full.
    pub(crate) fn offer(&self, record: Record, metrics: &Metrics) {
        if let Some(tx) = &self.0 {
            if tx.try_send(record).is_err() {
                bump(&metrics.rtr_dropped);
            }
        }
    }
}

/// One request, as its RTR line tells it.
#[derive(Debug)]
pub(crate) struct Record {
    /// When the request arrived (wall clock).
    pub(crate) started: SystemTime,
    /// The request as forwarded to the app (`X-Forwarded-For` with the client appended).
    pub(crate) request: Seen,
    pub(crate) client: SocketAddr,
    pub(crate) endpoint: Arc<Endpoint>,
    pub(crate) status: u16,
    /// Request body bytes read from the client.
    pub(crate) request_bytes: u64,
    /// Response body bytes sent to the client.
    pub(crate) response_bytes: u64,
    /// From the request's arrival to the end of its response.
    pub(crate) response_time: Duration,
}

/// The request head an RTR line tells of.
#[derive(Debug)]
pub(crate) enum Seen {
    /// hyper's path: the parsed head.
    Parts {
        method: Method,
        uri: Uri,
        version: Version,
        headers: HeaderMap,
    },
    /// The forwarding path: the head as sent to the endpoint, and where the line's parts are
    /// in it.
    Forwarded { head: Vec<u8>, marks: Marks },
}

impl Seen {
    /// The head, taken over (once the request needs it no more).
    pub(crate) fn take(parts: Parts) -> Seen {
        Seen::Parts {
            method: parts.method,
            uri: parts.uri,
            version: parts.version,
            headers: parts.headers,
        }
    }

    /// A copy of the head.
    pub(crate) fn copy(parts: &Parts) -> Seen {
        Seen::Parts {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers: parts.headers.clone(),
        }
    }
}

/// A record waiting for the end of its response (the byte count and response time).
#[derive(Debug)]
pub(crate) struct Pending {
    record: Record,
    started: Instant,
    request_read: Option<Arc<AtomicU64>>,
}

/// When a request arrived, by both clocks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Arrival {
    pub(crate) at: Instant,
    pub(crate) wall: SystemTime,
}

impl Pending {
    /// Starts the line of a request about to be answered with `status` by (or for)
    /// `endpoint`.
    pub(crate) fn new(
        request: Seen,
        client: SocketAddr,
        endpoint: &Arc<Endpoint>,
        status: u16,
        arrival: Arrival,
        request_read: Option<Arc<AtomicU64>>,
    ) -> Pending {
        Pending {
            record: Record {
                started: arrival.wall,
                request,
                client,
                endpoint: endpoint.clone(),
                status,
                request_bytes: 0,
                response_bytes: 0,
                response_time: Duration::ZERO,
            },
            started: arrival.at,
            request_read,
        }
    }

    /// Counts `n` request body bytes (read whole before the request was sent).
    pub(crate) fn with_request_bytes(mut self, n: u64) -> Pending {
        self.record.request_bytes = n;
        self
    }

    /// The record, once `response_bytes` were sent.
    pub(crate) fn finish(self, response_bytes: u64) -> Record {
        let Pending {
            mut record,
            started,
            request_read,
        } = self;
        record.response_bytes = response_bytes;
        if let Some(read) = request_read {
            record.request_bytes = read.load(Ordering::Relaxed);
        }
        record.response_time = started.elapsed();
        record
    }
}

/// The publishing thread, once its bus connection is up: publishes until `stop`, then what is
/// still queued, and ends.
pub(crate) async fn start_publisher(
    shared: Arc<Shared>,
    queue: mpsc::Receiver<Record>,
    stop: CancellationToken,
) -> Result<std::thread::JoinHandle<()>, StartError> {
    let url = shared.config.nats_url.clone();
    let name = format!("kiln-router {} rtr", shared.id);
    // Not the whole of `shared`, which holds the queue's sending end: once the router is gone
    // (stopped, or dropped with its runtime), the queue closes and this thread ends.
    let metrics = shared.metrics.clone();
    drop(shared);
    let thread_failed = |source| StartError::Thread {
        what: "the RTR publishing thread",
        source,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(thread_failed)?;
    let (connected, connecting) = oneshot::channel();
    let thread = std::thread::Builder::new()
        .name(PUBLISHER_THREAD.into())
        .spawn(move || {
            batch_policy();
            runtime.block_on(async move {
                let options = async_nats::ConnectOptions::new().name(name);
                match options.connect(url.as_str()).await {
                    Ok(client) => {
                        let _ = connected.send(Ok(()));
                        publish(client, queue, metrics, stop).await;
                    }
                    Err(source) => {
                        let _ = connected.send(Err(StartError::Connect { url, source }));
                    }
                }
            });
        })
        .map_err(thread_failed)?;
    match connecting.await {
        Ok(Ok(())) => Ok(thread),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(thread_failed(std::io::Error::other(
            "it ended before connecting",
        ))),
    }
}

/// The publishing thread's name (the proxy threads are `kiln-router`).
pub(crate) const PUBLISHER_THREAD: &str = "kiln-router-rtr";

/// Puts the calling thread on the batch policy; it stays on the normal one if refused.
fn batch_policy() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler(2) on the calling thread (pid 0) with a valid parameter
    // (priority 0, as SCHED_BATCH requires); it reads `param` only during the call.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) } != 0 {
        debug!(error = %std::io::Error::last_os_error(), "the RTR thread stays on the normal policy");
    }
}

/// Publishes queued lines until `stop` (then what is still queued, for at most
/// [`LAST_LINES`]) or until the queue closes.
async fn publish(
    client: Client,
    mut queue: mpsc::Receiver<Record>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let lines = async {
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            tokio::select! {
                n = queue.recv_many(&mut batch, BATCH) => if n == 0 {
                    break;
                },
                () = stop.cancelled() => {
                    while let Ok(record) = queue.try_recv() {
                        batch.push(record);
                    }
                    send(&client, &mut batch, &metrics).await;
                    break;
                }
            }
            send(&client, &mut batch, &metrics).await;
            tokio::select! {
                () = tokio::time::sleep(GATHER) => {}
                () = stop.cancelled() => {}
            }
        }
        let _ = tokio::time::timeout(LAST_LINES, client.flush()).await;
    };
    let cut = async {
        stop.cancelled().await;
        tokio::time::sleep(LAST_LINES).await;
    };
    tokio::select! {
        () = lines => {}
        () = cut => debug!("RTR lines still queued at the stop are dropped: the bus is not taking them"),
    }
}

/// Publishes `batch`, emptied: the lines of each app (in the order they came) in messages of
/// at most [`MESSAGE_BYTES`] (or what the bus takes, if less), each a JSON array of lines. A
/// line too big for any message is dropped and counted.
async fn send(client: &Client, batch: &mut Vec<Record>, metrics: &Metrics) {
    // Stable: an app's lines keep their order.
    batch.sort_by(|a, b| a.endpoint.app.cmp(&b.endpoint.app));
    let most = MESSAGE_BYTES.min(client.server_info().max_payload.max(1));
    let mut message = Gathered::default();
    let mut line = Vec::with_capacity(1024);
    for record in batch.drain(..) {
        line.clear();
        record.write_json(&mut line);
        let subject = record.subject();
        // With the line: `[` or `,` before it, and the closing `]`.
        let full = message.body.len() + line.len() + 2 > most;
        if message.subject.as_ref().is_some_and(|s| *s != subject) || full {
            message.publish(client, metrics).await;
        }
        message.add(subject, &line);
    }
    message.publish(client, metrics).await;
}

/// An app's lines gathered into one message.
#[derive(Default)]
struct Gathered {
    subject: Option<Subject>,
    /// `[` and the lines, `,` between them.
    body: Vec<u8>,
    lines: u64,
}

impl Gathered {
    fn add(&mut self, subject: Subject, line: &[u8]) {
        self.body.push(if self.lines == 0 { b'[' } else { b',' });
        self.body.extend_from_slice(line);
        self.lines += 1;
        self.subject = Some(subject);
    }

    /// Publishes what is gathered (if anything) and starts again.
    async fn publish(&mut self, client: &Client, metrics: &Metrics) {
        let (Some(subject), lines) = (self.subject.take(), std::mem::take(&mut self.lines)) else {
            return;
        };
        self.body.push(b']');
        let message = bytes::Bytes::copy_from_slice(&self.body);
        self.body.clear();
        if let Err(e) = client.publish(subject, message).await {
            debug!(error = %e, lines, "publishing RTR lines");
            metrics.rtr_dropped.fetch_add(lines, Ordering::Relaxed);
        } else {
            metrics.rtr_lines.fetch_add(lines, Ordering::Relaxed);
        }
    }
}

impl Record {
    /// The subject of the app's log.
    fn subject(&self) -> Subject {
        self.endpoint
            .prepared
            .log_subject
            .clone()
            .unwrap_or_else(|| Subject::from(app_log(&self.endpoint.app)))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn a_full_queue_drops_and_counts() {
        let (lines, queue) = Lines::new(true, 1);
        let _queue = queue.unwrap();
        let metrics = Metrics::default();
        let record = || {
            let (parts, ()) = hyper::Request::new(()).into_parts();
            let endpoint = Arc::new(Endpoint::new(
                "127.0.0.1".into(),
                1,
                "a".into(),
                String::new(),
                String::new(),
                BTreeMap::new(),
            ));
            let arrival = Arrival {
                at: Instant::now(),
                wall: SystemTime::now(),
            };
            Pending::new(
                Seen::take(parts),
                "127.0.0.1:2".parse().unwrap(),
                &endpoint,
                200,
                arrival,
                None,
            )
            .finish(0)
        };
        lines.offer(record(), &metrics);
        lines.offer(record(), &metrics);
        assert_eq!(metrics.rtr_dropped.load(Ordering::Relaxed), 1);
        let (off, none) = Lines::new(false, 1);
        assert!(none.is_none() && !off.enabled());
        off.offer(record(), &metrics);
        assert_eq!(metrics.rtr_dropped.load(Ordering::Relaxed), 1);
    }
}
