//! RTR lines: gorouter's access log line for every request to a route whose registration
//! names an app, published as a [`kiln_bus::cell::AppLogLine`] (source `RTR`, stream `OUT`) on the app's log
//! subject ([`kiln_bus::cell::app_log`]), where the controller collects it with the app's
//! other lines.
//!
//! A request hands its head over to a [`Record`] once it needs it no more (nothing is copied
//! or formatted on its way) and offers it to a bounded queue; one task formats and publishes. When the queue is full the line is dropped and counted
//! (`rtr_dropped`), so a slow or absent bus never slows requests down.
//!
//! That task runs on a thread of its own with a bus connection of its own, scheduled as a
//! batch thread (`SCHED_BATCH`): it gets its share of the CPU like any other thread, but its
//! wake-ups do not preempt the proxy threads, so a burst of lines (at 20 000 requests a second,
//! 100 lines each 5 ms) never runs in front of a request. On the router's main runtime, with
//! the shared connection, those bursts put Kiln's p99 under load above a direct connection's
//! (`bench/router`).

use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::{Client, Subject};
use hyper::header::{HeaderMap, HeaderName, HeaderValue, HOST, REFERER, USER_AGENT};
use hyper::http::request::Parts;
use hyper::{Method, Uri, Version};
use kiln_bus::cell::app_log;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::debug;

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
    /// The forwarding path: the head as sent to the endpoint (read when the line is written).
    Forwarded(Vec<u8>),
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

/// What a line needs of a request head.
#[derive(Default)]
struct Told<'a> {
    host: &'a str,
    method: &'a str,
    path: &'a str,
    version: &'a str,
    referer: Option<&'a [u8]>,
    user_agent: Option<&'a [u8]>,
    forwarded_for: Option<&'a [u8]>,
    forwarded_proto: Option<&'a [u8]>,
    request_id: Option<&'a [u8]>,
}

impl Seen {
    /// Reads what the line tells out of the head; `headers` is room to parse a forwarded one.
    fn told<'a>(&'a self, headers: &'a mut [httparse::Header<'a>]) -> Told<'a> {
        match self {
            Seen::Parts {
                method,
                uri,
                version,
                headers: map,
            } => {
                let get = |name: &HeaderName| map.get(name).map(HeaderValue::as_bytes);
                Told {
                    host: map
                        .get(HOST)
                        .and_then(|h| h.to_str().ok())
                        .or_else(|| uri.host())
                        .unwrap_or("-"),
                    method: method.as_str(),
                    path: uri.path_and_query().map_or("/", |p| p.as_str()),
                    version: match *version {
                        Version::HTTP_09 => "HTTP/0.9",
                        Version::HTTP_10 => "HTTP/1.0",
                        Version::HTTP_2 => "HTTP/2.0",
                        Version::HTTP_3 => "HTTP/3.0",
                        _ => "HTTP/1.1",
                    },
                    referer: get(&REFERER),
                    user_agent: get(&USER_AGENT),
                    forwarded_for: get(&HeaderName::from_static("x-forwarded-for")),
                    forwarded_proto: get(&HeaderName::from_static("x-forwarded-proto")),
                    request_id: get(&crate::proxy::REQUEST_ID),
                }
            }
            Seen::Forwarded(head) => {
                let mut request = httparse::Request::new(headers);
                if request.parse(head).is_err() {
                    return Told::default();
                }
                let get = |name: &str| {
                    request
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .map(|h| h.value)
                };
                Told {
                    host: get("host")
                        .and_then(|h| std::str::from_utf8(h).ok())
                        .unwrap_or("-"),
                    method: request.method.unwrap_or("-"),
                    path: request.path.unwrap_or("/"),
                    version: "HTTP/1.1",
                    referer: get("referer"),
                    user_agent: get("user-agent"),
                    forwarded_for: get("x-forwarded-for"),
                    forwarded_proto: get("x-forwarded-proto"),
                    request_id: get("x-vcap-request-id"),
                }
            }
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

impl Record {
    /// gorouter's access log line:
    /// `<host> - [<time>] "<METHOD> <path> HTTP/1.1" <status> <request bytes> <response bytes>
    /// "<referer>" "<user agent>" "<client>" "<backend>" x_forwarded_for:"…"
    /// x_forwarded_proto:"…" vcap_request_id:"…" response_time:<secs> app_id:"…"
    /// app_index:"…"`; absent values are `-`.
    #[cfg(test)]
    pub(crate) fn message(&self) -> String {
        let mut m = String::new();
        let _ = self.write_message(&mut m);
        m
    }

    fn write_message(&self, m: &mut impl Write) -> std::fmt::Result {
        let mut headers = [httparse::EMPTY_HEADER; crate::forward::MAX_FORWARDED_HEADERS];
        let request = self.request.told(&mut headers);
        let Told {
            host,
            path,
            version,
            ..
        } = request;
        let e = &self.endpoint;
        write!(
            m,
            "{} - [{}] \"{} {} {version}\" {} {} {} \"{}\" \"{}\" \"{}\" \"{}\" x_forwarded_for:\"{}\" x_forwarded_proto:\"{}\" vcap_request_id:\"{}\" response_time:{}.{:06} app_id:\"{}\" app_index:\"{}\"",
            Quoted(host),
            Rfc3339(self.started),
            request.method,
            Quoted(path),
            self.status,
            self.request_bytes,
            self.response_bytes,
            Value(request.referer),
            Value(request.user_agent),
            self.client,
            Backend(e),
            Value(request.forwarded_for),
            Value(request.forwarded_proto),
            Value(request.request_id),
            self.response_time.as_secs(),
            self.response_time.subsec_micros(),
            Quoted(&e.app),
            Quoted(&e.instance_index),
        )
    }

    /// The subject of the app's log, and the line as JSON (an [`AppLogLine`]), written in
    /// one pass: the message goes straight into the JSON string, escaped on the way.
    pub(crate) fn into_line(self) -> (Subject, Vec<u8>) {
        let finished = self.started + self.response_time;
        let timestamp_ns = finished
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let mut json = String::with_capacity(512);
        json.push_str("{\"app_guid\":\"");
        let _ = JsonEscaped(&mut json).write_str(&self.endpoint.app);
        json.push_str("\",\"source\":\"");
        json.push_str(RTR_SOURCE);
        json.push_str("\",\"stream\":\"OUT\",\"message\":\"");
        let _ = self.write_message(&mut JsonEscaped(&mut json));
        let _ = write!(json, "\",\"timestamp_ns\":{timestamp_ns}}}");
        let subject = self
            .endpoint
            .prepared
            .log_subject
            .clone()
            .unwrap_or_else(|| Subject::from(app_log(&self.endpoint.app)));
        (subject, json.into_bytes())
    }
}

/// Writes into a JSON string's contents: quotes, backslashes and control characters escaped.
struct JsonEscaped<'a>(&'a mut String);

impl Write for JsonEscaped<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let mut rest = s;
        // The characters to escape are ASCII: a byte scan finds them.
        while let Some(i) = rest
            .bytes()
            .position(|b| b == b'"' || b == b'\\' || b < b' ')
        {
            self.0.push_str(&rest[..i]);
            match rest.as_bytes()[i] {
                b'"' => self.0.push_str("\\\""),
                b'\\' => self.0.push_str("\\\\"),
                b => write!(self.0, "\\u{:04x}", u32::from(b))?,
            }
            rest = &rest[i + 1..];
        }
        self.0.push_str(rest);
        Ok(())
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
    let to = url.clone();
    let thread = std::thread::Builder::new()
        .name(PUBLISHER_THREAD.into())
        .spawn(move || {
            batch_policy();
            runtime.block_on(async move {
                let options = async_nats::ConnectOptions::new().name(name);
                match options.connect(to.as_str()).await {
                    Ok(client) => {
                        let _ = connected.send(Ok(()));
                        publish(client, queue, metrics, stop).await;
                    }
                    Err(e) => {
                        let _ = connected.send(Err(e));
                    }
                }
            });
        })
        .map_err(thread_failed)?;
    match connecting.await {
        Ok(Ok(())) => Ok(thread),
        Ok(Err(source)) => Err(StartError::Connect { url, source }),
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

async fn send(client: &Client, batch: &mut Vec<Record>, metrics: &Metrics) {
    for record in batch.drain(..) {
        let (subject, line) = record.into_line();
        match client.publish(subject, line.into()).await {
            Ok(()) => bump(&metrics.rtr_lines),
            Err(e) => debug!(error = %e, "publishing an RTR line"),
        }
    }
}

/// A text between double quotes in the line: `-` when empty, quotes and backslashes escaped.
struct Quoted<'a>(&'a str);

impl std::fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("-");
        }
        let mut rest = self.0;
        while let Some(i) = rest.find(|c: char| c == '"' || c == '\\' || c.is_control()) {
            f.write_str(&rest[..i])?;
            let c = rest[i..].chars().next().unwrap_or_default();
            match c {
                '"' | '\\' => write!(f, "\\{c}")?,
                _ => f.write_char('?')?,
            }
            rest = &rest[i + c.len_utf8()..];
        }
        f.write_str(rest)
    }
}

/// An endpoint's `host:port` (IPv6 literals bracketed), without making a string of it.
struct Backend<'a>(&'a Endpoint);

impl std::fmt::Display for Backend<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Endpoint { host, port, .. } = self.0;
        if host.contains(':') && !host.starts_with('[') {
            write!(f, "[{}]:{port}", Quoted(host))
        } else {
            write!(f, "{}:{port}", Quoted(host))
        }
    }
}

/// A header value in the line (`-` when absent).
struct Value<'a>(Option<&'a [u8]>);

impl std::fmt::Display for Value<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = self.0.map(String::from_utf8_lossy);
        Quoted(text.as_deref().unwrap_or_default()).fmt(f)
    }
}

/// A time as RFC 3339 in UTC with milliseconds: `2026-11-23T10:04:05.123Z`.
struct Rfc3339(SystemTime);

impl std::fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let since = self.0.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = since.as_secs();
        let days = i64::try_from(secs / 86_400).unwrap_or_default();
        let of_day = secs % 86_400;
        let (year, month, day) = civil_from_days(days);
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
            of_day / 3600,
            of_day / 60 % 60,
            of_day % 60,
            since.subsec_millis()
        )
    }
}

/// Year, month and day of a count of days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month as u32, day as u32)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn times_are_rfc3339_utc_with_milliseconds() {
        let at = |secs, ms| UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(ms);
        assert_eq!(Rfc3339(at(0, 0)).to_string(), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            Rfc3339(at(951_827_696, 7)).to_string(),
            "2000-02-29T12:34:56.007Z"
        );
        assert_eq!(
            Rfc3339(at(1_795_000_000, 999)).to_string(),
            "2026-11-18T11:06:40.999Z"
        );
    }

    #[test]
    fn the_line_reads_like_gorouters() {
        let request = hyper::Request::builder()
            .method("POST")
            .uri("/api/x?y=1")
            .header("host", "app.example.com")
            .header("user-agent", "curl/8 \"quoted\"")
            .header("x-forwarded-for", "192.0.2.7, 127.0.0.1")
            .header("x-forwarded-proto", "http")
            .header(crate::proxy::REQUEST_ID, "req-1")
            .body(())
            .unwrap();
        let (parts, ()) = request.into_parts();
        let endpoint = Arc::new(Endpoint::new(
            "10.0.0.5".into(),
            61001,
            "app-guid".into(),
            "inst".into(),
            "2".into(),
            BTreeMap::new(),
        ));
        let arrival = Arrival {
            at: Instant::now(),
            wall: UNIX_EPOCH + Duration::from_millis(951_827_696_007),
        };
        let read = Arc::new(AtomicU64::new(12));
        let pending = Pending::new(
            Seen::take(parts),
            "127.0.0.1:40000".parse().unwrap(),
            &endpoint,
            201,
            arrival,
            Some(read),
        );
        let mut record = pending.finish(345);
        record.response_time = Duration::from_micros(1500);
        assert_eq!(
            record.message(),
            "app.example.com - [2000-02-29T12:34:56.007Z] \"POST /api/x?y=1 HTTP/1.1\" 201 12 345 \
             \"-\" \"curl/8 \\\"quoted\\\"\" \"127.0.0.1:40000\" \"10.0.0.5:61001\" \
             x_forwarded_for:\"192.0.2.7, 127.0.0.1\" x_forwarded_proto:\"http\" \
             vcap_request_id:\"req-1\" response_time:0.001500 app_id:\"app-guid\" app_index:\"2\""
        );
        let message = record.message();
        let (subject, json) = record.into_line();
        assert_eq!(subject.as_str(), "kiln.logs.app.app-guid");
        let line: kiln_bus::cell::AppLogLine = kiln_bus::decode("test", &json).unwrap();
        assert_eq!(line.source, "RTR");
        assert_eq!(line.stream, "OUT");
        assert_eq!(line.app_guid, "app-guid");
        assert_eq!(line.message, message);
        assert_eq!(line.timestamp_ns, 951_827_696_007_000_000_u128 + 1_500_000);
    }

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
