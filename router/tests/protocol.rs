//! HTTP at the edges: WebSocket-style upgrades through the router, the header size limit
//! (431), the header read timeout against slow clients, and the graceful drain.

mod common;

use std::time::{Duration, Instant};

use common::backend::Backend;
use common::{endpoint, eventually, wait_routed, Nats, Registrar, Router};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads a response head (up to the blank line) from a raw connection.
async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(0) | Err(_) => break,
            Ok(_) => head.push(byte[0]),
        }
    }
    String::from_utf8_lossy(&head).to_lowercase()
}

async fn routed(nats: &Nats, router: &Router, backend: &Backend, host: &str) {
    let registrar = Registrar::connect(&nats.url).await;
    registrar
        .register(&endpoint(backend.addr, &[host], "app"))
        .await;
    wait_routed(router, host, "/").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upgraded_connection_echoes_through_the_router() {
    let nats = Nats::start();
    let router = Router::start(&nats.url).await;
    let backend = Backend::upgrade_echo().await;
    routed(&nats, &router, &backend, "ws.example.com").await;

    let mut client = TcpStream::connect(router.addr).await.unwrap();
    let request = "GET /socket HTTP/1.1\r\nHost: ws.example.com\r\nConnection: Upgrade\r\n\
                   Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n";
    client.write_all(request.as_bytes()).await.unwrap();
    let head = tokio::time::timeout(Duration::from_secs(10), read_head(&mut client))
        .await
        .unwrap();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    for message in ["hello", "through the router", "and back again"] {
        client.write_all(message.as_bytes()).await.unwrap();
        let mut echoed = vec![0u8; message.len()];
        tokio::time::timeout(Duration::from_secs(10), client.read_exact(&mut echoed))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(echoed, message.as_bytes());
    }
    assert_eq!(router.status_json("/varz").await["tunnels"], 1);
    drop(client);
    eventually("the tunnel closes", || async {
        router.status_json("/varz").await["tunnels"] == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn request_headers_over_the_limit_get_431() {
    let nats = Nats::start();
    let router = Router::start(&nats.url).await;
    let backend = Backend::echo("web").await;
    routed(&nats, &router, &backend, "big.example.com").await;

    // 600 kB of headers pass (the default limit is 1 MiB, above hyper's own ~400 kB) ...
    let response = router
        .get("big.example.com", "/")
        .header("x-padding", "p".repeat(600_000))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    // ... 1.5 MB do not.
    let hits = backend.hits();
    let mut client = TcpStream::connect(router.addr).await.unwrap();
    let padding = "p".repeat(8000);
    let mut request = String::from("GET / HTTP/1.1\r\nHost: big.example.com\r\n");
    for i in 0..190 {
        request.push_str(&format!("x-pad-{i}: {padding}\r\n"));
    }
    request.push_str("\r\n");
    let (mut reader, mut writer) = client.split();
    let (_, head) = tokio::join!(
        // The router may stop reading (and close) before the client has written it all.
        async { writer.write_all(request.as_bytes()).await.ok() },
        async {
            let mut head = Vec::new();
            let _ =
                tokio::time::timeout(Duration::from_secs(10), reader.read_to_end(&mut head)).await;
            String::from_utf8_lossy(&head).to_lowercase()
        }
    );
    assert!(head.starts_with("http/1.1 431"), "{head}");
    assert_eq!(
        backend.hits(),
        hits,
        "the oversized request reached the backend"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_too_slow_with_its_headers_is_cut_off() {
    let nats = Nats::start();
    let router = Router::start_with(&nats.url, |c| {
        c.header_read_timeout = Duration::from_millis(500);
    })
    .await;
    let mut client = TcpStream::connect(router.addr).await.unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: slow.example.com\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the connection stayed open");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(400),
        "closed too early: {waited:?}"
    );
    assert!(!String::from_utf8_lossy(&rest).contains(" 200 "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_lets_a_request_in_flight_finish() {
    let nats = Nats::start();
    let mut router = Router::start(&nats.url).await;
    let backend = Backend::slow("slow", Duration::from_millis(1500)).await;
    routed(&nats, &router, &backend, "slow.example.com").await;

    let in_flight = tokio::spawn(router.get("slow.example.com", "/").send());
    eventually("the slow request reaches the backend", || async {
        backend.hits() >= 2
    })
    .await;
    let health = format!("http://{}/health", router.status);
    assert_eq!(router.http.get(&health).send().await.unwrap().status(), 200);
    router.started().shutdown();
    eventually("/health reports the drain", || async {
        match router.http.get(&health).send().await {
            Ok(r) => r.status() == 503,
            Err(_) => false,
        }
    })
    .await;
    // No new connections while draining.
    assert!(
        TcpStream::connect(router.addr).await.is_err(),
        "still accepting"
    );

    let response = in_flight.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    let seen: serde_json::Value = response.json().await.unwrap();
    assert_eq!(seen["backend"], "slow");
    let stopped = router.stop().await;
    assert!(stopped.drained);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_drain_timeout_cuts_what_does_not_finish() {
    let nats = Nats::start();
    let mut router = Router::start_with(&nats.url, |c| {
        c.drain_timeout = Duration::from_millis(300);
    })
    .await;
    let backend = Backend::slow("stuck", Duration::from_secs(60)).await;
    let registrar = Registrar::connect(&nats.url).await;
    registrar
        .register(&endpoint(backend.addr, &["stuck.example.com"], "app"))
        .await;
    router.wait_endpoints("stuck.example.com", 1).await;

    let in_flight = tokio::spawn(router.get("stuck.example.com", "/").send());
    eventually("the request reaches the backend", || async {
        backend.hits() >= 1
    })
    .await;
    let started = Instant::now();
    let stopped = router.stop().await;
    assert!(!stopped.drained);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(
        in_flight.await.unwrap().is_err(),
        "the cut request got an answer"
    );
}
