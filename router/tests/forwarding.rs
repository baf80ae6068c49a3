//! The forwarding path on the wire: responses keep their own framing (chunked with trailers,
//! close-delimited, bodiless answers to HEAD), informational heads are passed over, pipelined
//! requests are answered in order, a connection whose request the path leaves to hyper (a
//! chunked upload) goes on being served there, and a client that goes away ends its request
//! (logged 499).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::backend::Backend;
use common::{endpoint, wait_routed, Nats, Registrar, Router};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const CHUNKED_BODY: &str = "5\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n";

/// An endpoint written at the byte level: each path answers with a fixed response.
struct RawBackend {
    addr: SocketAddr,
    stop: CancellationToken,
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The answer to `method` `path` (with `body`, or `(chunked)`), and whether to close after it.
fn scripted(method: &str, path: &str, body: &str) -> (String, bool) {
    match path {
        "/chunked" => (
            format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nKeep-Alive: timeout=5\r\n\r\n{CHUNKED_BODY}"),
            false,
        ),
        "/early" => (
            "HTTP/1.1 103 Early Hints\r\nLink: </style.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".into(),
            false,
        ),
        "/head" if method == "HEAD" => (
            "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n".into(),
            false,
        ),
        "/close" => ("HTTP/1.1 200 OK\r\n\r\nuntil the end".into(), true),
        // Names its header in mixed case: the forwarding path passes it on as it is, hyper
        // in lowercase.
        _ => {
            let text = format!("{method} {path} {body}");
            (
                format!(
                    "HTTP/1.1 200 OK\r\nX-Seen-By: raw\r\nContent-Length: {}\r\n\r\n{text}",
                    text.len()
                ),
                false,
            )
        }
    }
}

impl RawBackend {
    async fn start() -> RawBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(async move {
            loop {
                let (mut conn, _) = tokio::select! {
                    accepted = listener.accept() => accepted.unwrap(),
                    () = stopped.cancelled() => return,
                };
                tokio::spawn(async move {
                    let mut read = Vec::new();
                    let mut buf = [0u8; 4096];
                    loop {
                        while let Some((head, body)) = take_request(&mut read) {
                            let mut words = head.split(' ');
                            let method = words.next().unwrap_or_default();
                            let path = words.next().unwrap_or_default();
                            let (response, close) = scripted(method, path, &body);
                            if conn.write_all(response.as_bytes()).await.is_err() || close {
                                return;
                            }
                        }
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => read.extend_from_slice(&buf[..n]),
                        }
                    }
                });
            }
        });
        RawBackend { addr, stop }
    }
}

/// A whole request from the start of `read` (its head, and its body, or `(chunked)`), taken
/// off it.
fn take_request(read: &mut Vec<u8>) -> Option<(String, String)> {
    let end = find(read, b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&read[..end]).to_lowercase();
    let (len, body) = if head.contains("transfer-encoding: chunked") {
        (
            find(&read[end..], b"0\r\n\r\n")? + 5,
            "(chunked)".to_string(),
        )
    } else {
        let len = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        let body = read.get(end..end + len)?;
        (len, String::from_utf8_lossy(body).to_string())
    };
    let head = String::from_utf8_lossy(&read[..end]).to_string();
    read.drain(..end + len);
    Some((head, body))
}

/// A [`RawBackend`] registered for `host` (app `host`), once the router routes to it.
async fn raw_route(nats: &Nats, router: &Router, host: &str) -> RawBackend {
    let backend = RawBackend::start().await;
    let registrar = Registrar::connect(&nats.url).await;
    registrar
        .register(&endpoint(backend.addr, &[host], host))
        .await;
    wait_routed(router, host, "/").await;
    backend
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Reads everything until the router closes the connection (or 10 s pass).
async fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut all))
        .await
        .expect("the router closed the connection")
        .unwrap();
    String::from_utf8_lossy(&all).to_string()
}

/// One response, with a `Content-Length` or a chunked body: its head and (decoded) body.
async fn read_response(stream: &mut TcpStream, pending: &mut Vec<u8>) -> (String, String) {
    let mut buf = [0u8; 4096];
    let mut more = async |pending: &mut Vec<u8>| {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("a response in time")
            .unwrap();
        assert!(
            n > 0,
            "closed in a response: {:?}",
            String::from_utf8_lossy(pending)
        );
        pending.extend_from_slice(&buf[..n]);
    };
    let end = loop {
        if let Some(end) = find(pending, b"\r\n\r\n") {
            break end + 4;
        }
        more(pending).await;
    };
    let head = String::from_utf8_lossy(&pending[..end]).to_string();
    let lower = head.to_lowercase();
    if lower.contains("transfer-encoding: chunked") {
        let last = loop {
            if let Some(at) = find(&pending[end..], b"\r\n0\r\n\r\n") {
                break end + at + 7;
            }
            more(pending).await;
        };
        let mut body = String::new();
        let mut chunks = String::from_utf8_lossy(&pending[end..last]).to_string();
        while let Some((size, rest)) = chunks.split_once("\r\n") {
            let size = usize::from_str_radix(size, 16).unwrap();
            body.push_str(&rest[..size]);
            chunks = rest[size..].trim_start_matches("\r\n").to_string();
        }
        pending.drain(..last);
        return (head, body);
    }
    let length: usize = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or_else(|| panic!("no length: {head}"));
    while pending.len() < end + length {
        more(pending).await;
    }
    let body = String::from_utf8_lossy(&pending[end..end + length]).to_string();
    pending.drain(..end + length);
    (head, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn responses_keep_their_framing_and_pipelined_requests_are_answered_in_order() {
    let nats = Nats::start();
    let router = Router::start(&nats.url).await;
    let _backend = raw_route(&nats, &router, "raw.example.com").await;

    let mut client = TcpStream::connect(router.addr).await.unwrap();
    let host = "Host: raw.example.com\r\n";
    let pipelined = format!(
        "GET /chunked HTTP/1.1\r\n{host}\r\nHEAD /head HTTP/1.1\r\n{host}\r\nGET /early HTTP/1.1\r\n{host}\r\nGET /close HTTP/1.1\r\n{host}\r\n"
    );
    client.write_all(pipelined.as_bytes()).await.unwrap();
    let all = read_until_closed(&mut client).await;

    let responses: Vec<&str> = all.split("HTTP/1.1 ").skip(1).collect();
    assert_eq!(responses.len(), 4, "four responses, in order: {all:?}");
    let chunked = responses[0].to_lowercase();
    assert!(chunked.starts_with("200 ok"), "{all:?}");
    assert!(chunked.contains("transfer-encoding: chunked"), "{all:?}");
    assert!(
        !chunked.contains("keep-alive"),
        "a hop-by-hop header passed: {all:?}"
    );
    assert!(
        responses[0].ends_with(&format!("\r\n\r\n{CHUNKED_BODY}")),
        "the chunks and trailer pass as sent: {all:?}"
    );
    assert!(
        responses[1].to_lowercase().contains("content-length: 100"),
        "{all:?}"
    );
    assert!(
        responses[1].ends_with("\r\n\r\n"),
        "a HEAD answer has no body: {all:?}"
    );
    assert!(
        !all.contains("103 Early"),
        "the informational head is passed over: {all:?}"
    );
    assert!(responses[2].ends_with("\r\n\r\nok"), "{all:?}");
    let last = responses[3].to_lowercase();
    assert!(last.contains("connection: close"), "{all:?}");
    assert!(last.ends_with("\r\n\r\nuntil the end"), "{all:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_connection_goes_on_with_hyper_after_a_request_the_forwarding_path_leaves() {
    let nats = Nats::start();
    let router = Router::start(&nats.url).await;
    let _backend = raw_route(&nats, &router, "mixed.example.com").await;

    let mut client = TcpStream::connect(router.addr).await.unwrap();
    let mut pending = Vec::new();
    let requests = [
        "POST /small HTTP/1.1\r\nHost: mixed.example.com\r\nContent-Length: 5\r\n\r\nhello",
        "POST /upload HTTP/1.1\r\nHost: mixed.example.com\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        "GET /after HTTP/1.1\r\nHost: mixed.example.com\r\nConnection: close\r\n\r\n",
    ];
    let mut seen = Vec::new();
    for request in requests {
        client.write_all(request.as_bytes()).await.unwrap();
        let (head, body) = read_response(&mut client, &mut pending).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let case = if head.contains("\r\nX-Seen-By: raw\r\n") {
            "forwarded"
        } else if head.contains("\r\nx-seen-by: raw\r\n") {
            "hyper"
        } else {
            panic!("no X-Seen-By: {head}")
        };
        seen.push((body, case));
    }
    assert_eq!(
        seen,
        [
            ("POST /small hello".to_string(), "forwarded"),
            ("POST /upload (chunked)".to_string(), "hyper"),
            ("GET /after ".to_string(), "hyper"),
        ],
        "the first request takes the forwarding path, the chunked upload and what follows it \
         on the same connection hyper's"
    );
    let rest = read_until_closed(&mut client).await;
    assert!(rest.is_empty(), "nothing after the last response: {rest:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_goes_away_ends_its_request() {
    let nats = Nats::start();
    let router = Router::start(&nats.url).await;
    let watcher = async_nats::connect(&nats.url).await.unwrap();
    let mut lines = watcher
        .subscribe(kiln_bus::cell::app_log("held"))
        .await
        .unwrap();
    kiln_bus::round_trip(&watcher, kiln_bus::ROUND_TRIP_TIMEOUT)
        .await
        .unwrap();
    let release = CancellationToken::new();
    let backend = Backend::held("held", release.clone()).await;
    let registrar = Registrar::connect(&nats.url).await;
    registrar
        .register(&endpoint(backend.addr, &["held.example.com"], "held"))
        .await;
    let waited = Backend::echo("probe").await;
    registrar
        .register(&endpoint(waited.addr, &["probe.example.com"], "probe"))
        .await;
    wait_routed(&router, "probe.example.com", "/").await;
    let in_flight = || async { router.status_json("/varz").await["in_flight"].as_u64() };

    let mut client = TcpStream::connect(router.addr).await.unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: held.example.com\r\n\r\n")
        .await
        .unwrap();
    common::eventually("the request reaches the held backend", || async {
        backend.hits() >= 1
    })
    .await;
    assert_eq!(in_flight().await, Some(1));
    drop(client);
    // Without noticing, the router would wait for the endpoint up to its request timeout.
    common::eventually("the request ends with its client", || async {
        in_flight().await == Some(0)
    })
    .await;
    release.cancel();
    // Its RTR line says so, with nginx's and gorouter's 499.
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next())
        .await
        .expect("an RTR line in time")
        .expect("the subscription is open");
    let lines = kiln_bus::cell::decode_app_log(&line.subject, &line.payload).unwrap();
    let [line] = &lines[..] else {
        panic!("one line: {lines:?}")
    };
    assert!(
        line.message.contains("\"GET / HTTP/1.1\" 499 0 0 "),
        "{}",
        line.message
    );
}
