//! The forwarding path on the wire: responses keep their own framing (chunked with trailers,
//! close-delimited, bodiless answers to HEAD), informational heads are passed over, pipelined
//! requests are answered in order, and a connection whose request the path leaves to hyper
//! (a chunked upload) goes on being served there.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::backend::Backend;
use common::{endpoint, wait_routed, Nats, Registrar, Router};
use serde_json::Value;
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

fn scripted(method: &str, path: &str) -> (String, bool) {
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
        _ => (
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".into(),
            false,
        ),
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
                        while let Some(end) = find(&read, b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&read[..end]).to_string();
                            read.drain(..end + 4);
                            let mut words = head.split(' ');
                            let method = words.next().unwrap_or_default();
                            let path = words.next().unwrap_or_default();
                            let (response, close) = scripted(method, path);
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

/// One response with a `Content-Length` body: its head (lowercased) and body.
async fn read_response(stream: &mut TcpStream, pending: &mut Vec<u8>) -> (String, String) {
    let mut buf = [0u8; 4096];
    let end = loop {
        if let Some(end) = find(pending, b"\r\n\r\n") {
            break end + 4;
        }
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("a response in time")
            .unwrap();
        assert!(
            n > 0,
            "closed before a response: {:?}",
            String::from_utf8_lossy(pending)
        );
        pending.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&pending[..end]).to_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .expect("a content-length");
    while pending.len() < end + length {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed in a body");
        pending.extend_from_slice(&buf[..n]);
    }
    let body = String::from_utf8_lossy(&pending[end..end + length]).to_string();
    pending.drain(..end + length);
    (head, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn responses_keep_their_framing_and_pipelined_requests_are_answered_in_order() {
    let nats = Nats::start();
    let router = Router::start(&nats.url).await;
    let backend = RawBackend::start().await;
    let registrar = Registrar::connect(&nats.url).await;
    registrar
        .register(&endpoint(backend.addr, &["raw.example.com"], "raw"))
        .await;
    wait_routed(&router, "raw.example.com", "/chunked").await;

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
    let backend = Backend::echo("web").await;
    let registrar = Registrar::connect(&nats.url).await;
    registrar
        .register(&endpoint(backend.addr, &["mixed.example.com"], "mixed"))
        .await;
    wait_routed(&router, "mixed.example.com", "/").await;

    let mut client = TcpStream::connect(router.addr).await.unwrap();
    let mut pending = Vec::new();
    let requests = [
        "POST /small HTTP/1.1\r\nHost: mixed.example.com\r\nContent-Length: 5\r\n\r\nhello",
        "POST /chunked HTTP/1.1\r\nHost: mixed.example.com\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        "GET /after HTTP/1.1\r\nHost: mixed.example.com\r\nConnection: close\r\n\r\n",
    ];
    let mut seen = Vec::new();
    for request in requests {
        client.write_all(request.as_bytes()).await.unwrap();
        let (head, body) = read_response(&mut client, &mut pending).await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
        let echo: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(echo["headers"]["x-cf-applicationid"], "mixed", "{body}");
        assert_eq!(echo["headers"]["x-forwarded-for"], "127.0.0.1", "{body}");
        seen.push((echo["path"].clone(), echo["body"].clone()));
    }
    assert_eq!(
        seen,
        [
            ("/small".into(), "hello".into()),
            ("/chunked".into(), "abcde".into()),
            ("/after".into(), "".into()),
        ]
    );
    let rest = read_until_closed(&mut client).await;
    assert!(rest.is_empty(), "nothing after the last response: {rest:?}");
}
