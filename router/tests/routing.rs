//! Routing through a real router, NATS and backends: registration, headers, path prefixes,
//! unknown hosts, balancing, and keep-alive connections to endpoints.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::backend::Backend;
use common::{endpoint, eventually, wait_routed, Nats, Registrar, Router};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_registered_route_reaches_its_backend_with_the_forwarding_headers() {
    let nats = Nats::start();
    let router = Router::start(&nats.url).await;
    let backend = Backend::echo("web").await;
    let registrar = Registrar::connect(&nats.url).await;
    let mut m = endpoint(backend.addr, &["app.example.com"], "app-guid-1");
    m.private_instance_index = "3".into();
    registrar.register(&m).await;
    wait_routed(&router, "app.example.com", "/").await;

    // Any case and a port in Host: same route.
    let response = router
        .get("App.Example.COM:8081", "/hello?x=1")
        .header("x-forwarded-for", "192.0.2.7")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen: Value = response.json().await.unwrap();
    let h = &seen["headers"];
    assert_eq!(seen["backend"], "web");
    assert_eq!(seen["path"], "/hello");
    assert_eq!(h["host"], "App.Example.COM:8081", "Host passes through");
    assert_eq!(h["x-forwarded-for"], "192.0.2.7, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-cf-applicationid"], "app-guid-1");
    assert_eq!(h["x-cf-instanceid"], m.private_instance_id.as_str());
    assert_eq!(h["x-cf-instanceindex"], "3");
    let id = h["x-vcap-request-id"].as_str().unwrap();
    assert!(uuid::Uuid::parse_str(id).is_ok(), "request id {id}");
    assert!(h["x-request-start"]
        .as_str()
        .unwrap()
        .parse::<u64>()
        .is_ok());

    // A request id the client sends is kept.
    let seen: Value = router
        .get("app.example.com", "/")
        .header("x-vcap-request-id", "abc-123")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(seen["headers"]["x-vcap-request-id"], "abc-123");

    let varz = router.status_json("/varz").await;
    assert_eq!(varz["id"], router.id.as_str());
    assert!(varz["registrations"].as_u64().unwrap() >= 1);
    assert!(varz["responses"]["2xx"].as_u64().unwrap() >= 2);
    assert_eq!(varz["routes"], 1);
    assert_eq!(varz["endpoints"], 1);
    assert_eq!(varz["bus_connected"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_to_an_endpoint_are_kept_alive_and_reused() {
    let nats = Nats::start();
    let router = Router::start(&nats.url).await;
    let backend = Backend::echo("web").await;
    let registrar = Registrar::connect(&nats.url).await;
    registrar
        .register(&endpoint(backend.addr, &["ka.example.com"], "web"))
        .await;
    wait_routed(&router, "ka.example.com", "/").await;
    for _ in 0..20 {
        let response = router.get("ka.example.com", "/").send().await.unwrap();
        assert_eq!(response.status(), 200);
        response.bytes().await.unwrap();
    }
    assert_eq!(backend.hits(), 21);
    // Each proxy thread (one per core) keeps its own pool of endpoint connections.
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    assert!(
        (1..=threads).contains(&backend.connections()),
        "{} connections for 21 requests: pooled connections serve them all (one per proxy \
         thread at most, {threads})",
        backend.connections()
    );
}

/// Raw HTTP/1.1 on loopback: answers one request per connection (keep-alive, as far as the
/// router can tell) and closes the connection `linger` later.
async fn one_shot_backend(linger: Duration) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                tokio::time::sleep(linger).await;
            });
        }
    });
    (addr, connections)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pooled_connections_the_endpoint_closed_are_not_used() {
    let nats = Nats::start();
    let router = Router::start(&nats.url).await;
    let (addr, connections) = one_shot_backend(Duration::from_millis(50)).await;
    let registrar = Registrar::connect(&nats.url).await;
    registrar
        .register(&endpoint(addr, &["closing.example.com"], "closing"))
        .await;
    wait_routed(&router, "closing.example.com", "/").await;
    for method in [
        reqwest::Method::GET,
        reqwest::Method::POST,
        reqwest::Method::GET,
    ] {
        // The endpoint has closed the connection the router keeps for it by now.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let response = router
            .request(method.clone(), "closing.example.com", "/")
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{method}");
        assert_eq!(response.text().await.unwrap(), "ok");
    }
    assert_eq!(connections.load(Ordering::SeqCst), 4);
    assert_eq!(router.status_json("/varz").await["bad_gateways"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_longest_matching_path_prefix_wins() {
    let nats = Nats::start();
    let router = Router::start(&nats.url).await;
    let (root, api, v2) = (
        Backend::echo("root").await,
        Backend::echo("api").await,
        Backend::echo("v2").await,
    );
    let registrar = Registrar::connect(&nats.url).await;
    registrar
        .register(&endpoint(root.addr, &["shop.example.com"], "root"))
        .await;
    registrar
        .register(&endpoint(api.addr, &["shop.example.com/api"], "api"))
        .await;
    registrar
        .register(&endpoint(v2.addr, &["shop.example.com/api/v2/"], "v2"))
        .await;
    router.wait_endpoints("shop.example.com/api/v2", 1).await;
    router.wait_endpoints("shop.example.com/api", 1).await;
    router.wait_endpoints("shop.example.com", 1).await;

    for (path, expected) in [
        ("/", "root"),
        ("/apis", "root"),
        ("/api", "api"),
        ("/api/users/1", "api"),
        ("/api/v2", "v2"),
        ("/api/v2/items?page=2", "v2"),
    ] {
        let seen: Value = router
            .get("shop.example.com", path)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(seen["backend"], expected, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unknown_host_gets_404_naming_it() {
    let nats = Nats::start();
    let router = Router::start(&nats.url).await;
    let response = router.get("nowhere.example.com", "/").send().await.unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(response.headers()["x-cf-routererror"], "unknown_route");
    assert!(response.headers().contains_key("x-vcap-request-id"));
    let body = response.text().await.unwrap();
    assert!(body.contains("nowhere.example.com"), "{body}");
    assert_eq!(router.status_json("/varz").await["unknown_routes"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn round_robin_spreads_requests_over_three_endpoints() {
    let nats = Nats::start();
    let router = Router::start(&nats.url).await;
    let backends = [
        Backend::echo("a").await,
        Backend::echo("b").await,
        Backend::echo("c").await,
    ];
    let registrar = Registrar::connect(&nats.url).await;
    for (i, b) in backends.iter().enumerate() {
        registrar
            .register(&endpoint(b.addr, &["rr.example.com"], &format!("app{i}")))
            .await;
    }
    router.wait_endpoints("rr.example.com", 3).await;
    for _ in 0..30 {
        let response = router.get("rr.example.com", "/").send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
    let hits: Vec<usize> = backends.iter().map(Backend::hits).collect();
    assert_eq!(hits, [10, 10, 10]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn least_connections_keeps_away_from_a_busy_endpoint() {
    let nats = Nats::start();
    let router = Router::start_with(&nats.url, |c| {
        c.balancing = kiln_router::Balancing::LeastConnections;
    })
    .await;
    let release = CancellationToken::new();
    let busy = Backend::held("busy", release.clone()).await;
    let idle = Backend::echo("idle").await;
    let registrar = Registrar::connect(&nats.url).await;
    registrar
        .register(&endpoint(busy.addr, &["lc.example.com"], "busy"))
        .await;
    registrar
        .register(&endpoint(idle.addr, &["lc.example.com"], "idle"))
        .await;
    router.wait_endpoints("lc.example.com", 2).await;

    // Requests one after the other: the first to reach `busy` stays there, and then every
    // other request should go to `idle` (round-robin would send every other one to `busy`).
    let mut pending = Vec::new();
    for i in 0..8 {
        let request = router.get("lc.example.com", "/").send();
        let task = tokio::spawn(request);
        let (before, held) = (idle.hits(), pending.len());
        eventually(&format!("request {i} reached a backend"), || {
            let reached = task.is_finished() || busy.hits() > held || idle.hits() > before;
            async move { reached }
        })
        .await;
        if !task.is_finished() && busy.hits() > held {
            pending.push(task);
        } else {
            let response = task.await.unwrap().unwrap();
            assert_eq!(response.status(), 200);
        }
    }
    assert_eq!(
        busy.hits(),
        1,
        "least connections sent more than one request to busy"
    );
    assert_eq!(idle.hits(), 7);
    release.cancel();
    for task in pending {
        assert_eq!(task.await.unwrap().unwrap().status(), 200);
    }
}
