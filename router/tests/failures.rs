//! Failing endpoints: 502s, dead endpoints leaving the table, and which requests are tried
//! again on another endpoint (dial failures; idempotent requests that got no response) and
//! which are not (a POST whose body was partly sent).

mod common;

use std::time::Duration;

use common::backend::Backend;
use common::{dead_addr, endpoint, eventually, Nats, Registrar, Router};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_backend_gets_502_and_leaves_the_table() {
    let nats = Nats::start();
    let router = Router::start(&nats.url).await;
    let registrar = Registrar::connect(&nats.url).await;
    registrar
        .register(&endpoint(dead_addr(), &["dead.example.com"], "dead"))
        .await;
    router.wait_endpoints("dead.example.com", 1).await;

    let response = router.get("dead.example.com", "/").send().await.unwrap();
    assert_eq!(response.status(), 502);
    assert_eq!(response.headers()["x-cf-routererror"], "endpoint_failure");
    let body = response.text().await.unwrap();
    assert!(body.contains("dead.example.com"), "{body}");
    assert_eq!(
        router.endpoints("dead.example.com").await,
        0,
        "removed at once"
    );
    let varz = router.status_json("/varz").await;
    assert_eq!(varz["dial_failures"], 1);
    assert_eq!(varz["bad_gateways"], 1);
    // With its only endpoint gone, the route itself is gone.
    let response = router.get("dead.example.com", "/").send().await.unwrap();
    assert_eq!(response.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_get_is_retried_on_another_endpoint_when_the_first_refuses() {
    let nats = Nats::start();
    let router = Router::start(&nats.url).await;
    let live = Backend::echo("live").await;
    let registrar = Registrar::connect(&nats.url).await;
    // Registered first, so that round-robin tries it first.
    registrar
        .register(&endpoint(dead_addr(), &["retry.example.com"], "dead"))
        .await;
    router.wait_endpoints("retry.example.com", 1).await;
    registrar
        .register(&endpoint(live.addr, &["retry.example.com"], "live"))
        .await;
    router.wait_endpoints("retry.example.com", 2).await;

    for _ in 0..4 {
        let response = router.get("retry.example.com", "/").send().await.unwrap();
        assert_eq!(response.status(), 200);
        let seen: Value = response.json().await.unwrap();
        assert_eq!(seen["backend"], "live");
    }
    assert_eq!(live.hits(), 4);
    assert_eq!(router.endpoints("retry.example.com").await, 1);
    let varz = router.status_json("/varz").await;
    assert_eq!(varz["dial_failures"], 1);
    assert_eq!(varz["retries"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_post_is_retried_after_a_failed_dial_with_its_whole_body() {
    let nats = Nats::start();
    let router = Router::start(&nats.url).await;
    let live = Backend::echo("live").await;
    let registrar = Registrar::connect(&nats.url).await;
    registrar
        .register(&endpoint(dead_addr(), &["post.example.com"], "dead"))
        .await;
    router.wait_endpoints("post.example.com", 1).await;
    registrar
        .register(&endpoint(live.addr, &["post.example.com"], "live"))
        .await;
    router.wait_endpoints("post.example.com", 2).await;

    let response = router
        .request(reqwest::Method::POST, "post.example.com", "/orders")
        .body("order=42")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen: Value = response.json().await.unwrap();
    assert_eq!(seen["backend"], "live");
    assert_eq!(seen["body"], "order=42");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_get_is_retried_when_an_endpoint_hangs_up_without_answering() {
    let nats = Nats::start();
    let router = Router::start(&nats.url).await;
    let rude = Backend::hangs_up(0).await;
    let live = Backend::echo("live").await;
    let registrar = Registrar::connect(&nats.url).await;
    registrar
        .register(&endpoint(rude.addr, &["rude.example.com"], "rude"))
        .await;
    router.wait_endpoints("rude.example.com", 1).await;
    registrar
        .register(&endpoint(live.addr, &["rude.example.com"], "live"))
        .await;
    router.wait_endpoints("rude.example.com", 2).await;

    let response = router.get("rude.example.com", "/").send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        rude.hits(),
        1,
        "the first attempt went to the rude endpoint"
    );
    assert_eq!(live.hits(), 1);
    // It accepted the connection: not a dial failure, so it stays in the table.
    assert_eq!(router.endpoints("rude.example.com").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_post_is_not_retried_when_the_backend_dies_mid_request() {
    let nats = Nats::start();
    let router = Router::start(&nats.url).await;
    let dying = Backend::hangs_up(1).await;
    let live = Backend::echo("live").await;
    let registrar = Registrar::connect(&nats.url).await;
    registrar
        .register(&endpoint(dying.addr, &["mid.example.com"], "dying"))
        .await;
    router.wait_endpoints("mid.example.com", 1).await;
    registrar
        .register(&endpoint(live.addr, &["mid.example.com"], "live"))
        .await;
    router.wait_endpoints("mid.example.com", 2).await;

    // A raw client: the head and a first chunk of a chunked body, then it waits for the
    // answer. (Chunked, so that a wrongly retried attempt would reach `live` as a whole,
    // if empty, POST.)
    let mut client = tokio::net::TcpStream::connect(router.addr).await.unwrap();
    let head =
        "POST /upload HTTP/1.1\r\nHost: mid.example.com\r\nTransfer-Encoding: chunked\r\n\r\n";
    client.write_all(head.as_bytes()).await.unwrap();
    client.write_all(b"1000\r\n").await.unwrap();
    client.write_all(&[b'x'; 4096]).await.unwrap();
    client.write_all(b"\r\n").await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(20), async {
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
            match client.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no answer to the interrupted POST");
    let answer = String::from_utf8_lossy(&answer).to_lowercase();
    assert!(answer.starts_with("http/1.1 502"), "{answer}");
    assert!(
        answer.contains("x-cf-routererror: endpoint_failure"),
        "{answer}"
    );
    assert!(dying.body_bytes.load(std::sync::atomic::Ordering::SeqCst) > 0);
    assert_eq!(live.hits(), 0, "the POST was sent again");
    eventually("the router counts one bad gateway", || async {
        router.status_json("/varz").await["bad_gateways"] == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_endpoint_slower_than_the_request_timeout_gets_504() {
    let nats = Nats::start();
    let router = Router::start_with(&nats.url, |c| {
        c.request_timeout = Duration::from_millis(300);
    })
    .await;
    let slow = Backend::slow("slow", Duration::from_secs(5)).await;
    let registrar = Registrar::connect(&nats.url).await;
    registrar
        .register(&endpoint(slow.addr, &["late.example.com"], "slow"))
        .await;
    router.wait_endpoints("late.example.com", 1).await;

    let started = std::time::Instant::now();
    let response = router.get("late.example.com", "/").send().await.unwrap();
    assert_eq!(response.status(), 504);
    assert_eq!(response.headers()["x-cf-routererror"], "endpoint_failure");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(slow.hits(), 1, "a timed-out request is not tried again");
}
