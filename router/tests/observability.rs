//! What the router tells about the traffic: RTR lines in apps' logs on the bus, and the
//! Prometheus `/metrics` document on the status listener.

mod common;

use std::collections::VecDeque;
use std::time::Duration;

use common::backend::Backend;
use common::{endpoint, wait_routed, Nats, Registrar, Router};
use futures::StreamExt;
use kiln_bus::cell::{app_log, decode_app_log, AppLogLine, APP_LOG_ALL};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// App log lines heard on the bus, one at a time (the router sends an app's lines of a few
/// milliseconds in one message).
struct Heard {
    messages: async_nats::Subscriber,
    lines: VecDeque<AppLogLine>,
}

impl Heard {
    async fn on(watcher: &async_nats::Client, subject: String) -> Heard {
        Heard {
            messages: watcher.subscribe(subject).await.unwrap(),
            lines: VecDeque::new(),
        }
    }

    /// The next line.
    async fn next(&mut self) -> AppLogLine {
        loop {
            if let Some(line) = self.lines.pop_front() {
                return line;
            }
            let message = tokio::time::timeout(Duration::from_secs(20), self.messages.next())
                .await
                .expect("an app log line within 20 s")
                .expect("subscription open");
            let lines = decode_app_log(&message.subject, &message.payload).expect("app log lines");
            self.lines.extend(lines);
        }
    }

    /// The next line whose message has `needle`, skipping others (the probes of
    /// `wait_routed`).
    async fn with(&mut self, needle: &str) -> AppLogLine {
        loop {
            let line = self.next().await;
            if line.message.contains(needle) {
                return line;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_leaves_an_rtr_line_in_its_apps_log() {
    let nats = Nats::start();
    let router = Router::start(&nats.url).await;
    let backend = Backend::echo("web").await;
    let watcher = async_nats::connect(&nats.url).await.unwrap();
    let mut lines = Heard::on(&watcher, app_log("app-guid-7")).await;
    let mut all = Heard::on(&watcher, APP_LOG_ALL.into()).await;
    kiln_bus::round_trip(&watcher, kiln_bus::ROUND_TRIP_TIMEOUT)
        .await
        .unwrap();
    let registrar = Registrar::connect(&nats.url).await;
    let mut m = endpoint(backend.addr, &["rtr.example.com"], "app-guid-7");
    m.private_instance_index = "4".into();
    registrar.register(&m).await;
    wait_routed(&router, "rtr.example.com", "/").await;

    let response = router
        .request(reqwest::Method::POST, "rtr.example.com", "/orders/9?full=1")
        .header("user-agent", "rtr-test/1")
        .header("referer", "http://example.org/")
        .header("x-vcap-request-id", "req-rtr-1")
        .body("twelve bytes")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let received = response.bytes().await.unwrap().len();

    let line = lines.with("/orders/9").await;
    assert_eq!(line.app_guid, "app-guid-7");
    assert_eq!(line.source, "RTR");
    assert_eq!(line.stream, "OUT");
    let message = &line.message;
    assert!(message.starts_with("rtr.example.com - ["), "{message}");
    assert!(
        message.contains(&format!(
            "\"POST /orders/9?full=1 HTTP/1.1\" 200 12 {received} \"http://example.org/\" \"rtr-test/1\""
        )),
        "{message}"
    );
    assert!(
        message.contains(&format!("\"{}\"", backend.addr)),
        "{message}"
    );
    assert!(
        message.contains("x_forwarded_for:\"127.0.0.1\" x_forwarded_proto:\"http\""),
        "{message}"
    );
    assert!(
        message.contains("vcap_request_id:\"req-rtr-1\""),
        "{message}"
    );
    assert!(message.contains(" response_time:0."), "{message}");
    assert!(
        message.ends_with("app_id:\"app-guid-7\" app_index:\"4\""),
        "{message}"
    );
    assert!(line.timestamp_ns > 0);

    // No line for a host without a route: the next line after the 404 is the next request's.
    let response = router.get("nowhere.example.com", "/").send().await.unwrap();
    assert_eq!(response.status(), 404);
    let response = router
        .get("rtr.example.com", "/after")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    loop {
        let line = all.next().await;
        assert!(!line.message.contains("nowhere"), "{}", line.message);
        if line.message.contains("/after") {
            break;
        }
    }
    let varz = router.status_json("/varz").await;
    assert!(varz["rtr_lines"].as_u64().unwrap() >= 2, "{varz}");
    assert_eq!(varz["rtr_dropped"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_endpoint_is_logged_and_rtr_lines_can_be_turned_off() {
    let nats = Nats::start();
    let watcher = async_nats::connect(&nats.url).await.unwrap();
    let mut lines = Heard::on(&watcher, APP_LOG_ALL.into()).await;
    kiln_bus::round_trip(&watcher, kiln_bus::ROUND_TRIP_TIMEOUT)
        .await
        .unwrap();
    let router = Router::start(&nats.url).await;
    let quiet = Router::start_with(&nats.url, |c| c.rtr_lines = false).await;
    // Connected after the routers: with nats-server 2.9, a registration from a connection
    // made before the router subscribed is now and then not delivered to it.
    let registrar = Registrar::connect(&nats.url).await;

    // A dead endpoint: the 502 names it.
    let dead = common::dead_addr();
    registrar
        .register(&endpoint(dead, &["dead.example.com"], "dead-app"))
        .await;
    router.wait_endpoints("dead.example.com", 1).await;
    let response = router.get("dead.example.com", "/x").send().await.unwrap();
    assert_eq!(response.status(), 502);
    let line = lines.with("\"GET /x HTTP/1.1\" 502").await;
    assert_eq!(line.app_guid, "dead-app");
    assert!(
        line.message.contains(&format!("\"{dead}\"")),
        "{}",
        line.message
    );

    // Off: nothing on the bus.
    let backend = Backend::echo("web").await;
    registrar
        .register(&endpoint(backend.addr, &["quiet.example.com"], "quiet-app"))
        .await;
    wait_routed(&quiet, "quiet.example.com", "/").await;
    let response = quiet.get("quiet.example.com", "/").send().await.unwrap();
    assert_eq!(response.status(), 200);
    drop(router);
    while let Ok(line) = tokio::time::timeout(Duration::from_millis(500), lines.next()).await {
        assert_ne!(line.app_guid, "quiet-app", "{}", line.message);
    }
    assert_eq!(quiet.status_json("/varz").await["rtr_lines"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_apps_lines_of_one_moment_leave_in_messages_of_at_most_128_kib() {
    let nats = Nats::start();
    let router = Router::start(&nats.url).await;
    let backend = Backend::echo("web").await;
    let watcher = async_nats::connect(&nats.url).await.unwrap();
    let mut messages = watcher.subscribe(app_log("big-app")).await.unwrap();
    kiln_bus::round_trip(&watcher, kiln_bus::ROUND_TRIP_TIMEOUT)
        .await
        .unwrap();
    let registrar = Registrar::connect(&nats.url).await;
    registrar
        .register(&endpoint(backend.addr, &["big.example.com"], "big-app"))
        .await;
    wait_routed(&router, "big.example.com", "/").await;

    // Twelve requests at once whose lines are about 40 KiB each (their referers), so those
    // of one gathering outgrow a message; and one whose line is 200 KiB (its user agent),
    // alone in its message.
    let referer = format!("http://example.org/{}", "a".repeat(40 << 10));
    let user_agent = "b".repeat(200 << 10);
    let paths: Vec<String> = (0..12)
        .map(|i| format!("/big/{i}"))
        .chain(["/huge".to_string()])
        .collect();
    let answers = futures::future::join_all(paths.iter().map(|path| {
        let request = router.get("big.example.com", path);
        match path.as_str() {
            "/huge" => request.header("user-agent", &user_agent),
            _ => request.header("referer", &referer),
        }
        .send()
    }))
    .await;
    for answer in answers {
        assert_eq!(answer.unwrap().status(), 200);
    }

    let mut heard: Vec<String> = Vec::new();
    let mut most_in_one = 0;
    while heard.len() < paths.len() {
        let message = tokio::time::timeout(Duration::from_secs(20), messages.next())
            .await
            .expect("the lines within 20 s")
            .expect("subscription open");
        let lines = decode_app_log(&message.subject, &message.payload).expect("app log lines");
        let ours: Vec<_> = lines
            .iter()
            .filter_map(|l| {
                paths
                    .iter()
                    .find(|p| l.message.contains(&format!("GET {p} ")))
            })
            .cloned()
            .collect();
        if lines.len() > 1 {
            assert!(
                message.payload.len() <= 128 << 10,
                "{} lines in {} bytes",
                lines.len(),
                message.payload.len()
            );
        }
        most_in_one = most_in_one.max(ours.len());
        heard.extend(ours);
    }
    heard.sort();
    let mut sent = paths.clone();
    sent.sort();
    assert_eq!(heard, sent, "every line once");
    // Lines of one moment went together (so the limit above was put to the test).
    assert!(most_in_one >= 2, "each line alone in its message");
    assert_eq!(router.status_json("/varz").await["rtr_dropped"], 0);
}

/// The value of the sample named exactly `sample` (with its labels) in a `/metrics` text.
fn sample(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{sample} missing in\n{text}"))
        .parse()
        .expect("a number")
}

async fn scrape(router: &Router) -> String {
    let url = format!("http://{}/metrics", router.status);
    let response = router.http.get(url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let kind = response.headers()["content-type"].to_str().unwrap();
    assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
    response.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_counters_move_with_the_traffic() {
    let nats = Nats::start();
    let router = Router::start(&nats.url).await;
    let backend = Backend::echo("web").await;
    let registrar = Registrar::connect(&nats.url).await;
    registrar
        .register(&endpoint(backend.addr, &["m.example.com"], "m-app"))
        .await;
    wait_routed(&router, "m.example.com", "/").await;

    let before = scrape(&router).await;
    assert!(
        before.contains("# TYPE kiln_router_requests_total counter"),
        "{before}"
    );
    assert_eq!(sample(&before, "kiln_router_routes"), 1.0);
    assert_eq!(sample(&before, "kiln_router_endpoints"), 1.0);
    assert!(sample(&before, "kiln_router_registrations_total") >= 1.0);

    for _ in 0..5 {
        let response = router.get("m.example.com", "/").send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
    for _ in 0..2 {
        let response = router.get("none.example.com", "/").send().await.unwrap();
        assert_eq!(response.status(), 404);
    }
    // 101 headers: over the count limit, answered 431 by the HTTP layer.
    let mut client = TcpStream::connect(router.addr).await.unwrap();
    let mut request = String::from("GET / HTTP/1.1\r\nHost: m.example.com\r\n");
    for i in 0..101 {
        request.push_str(&format!("x-h-{i}: v\r\n"));
    }
    request.push_str("\r\n");
    client.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut head)).await;
    assert!(head.starts_with(b"HTTP/1.1 431"), "{head:?}");
    // hyper counts its own 431 once the connection's end reaches the router, which may be
    // after the client saw it.
    let too_large =
        |text: &str| sample(text, "kiln_router_errors_total{kind=\"headers_too_large\"}");
    common::eventually("the 431 is counted", || async {
        too_large(&scrape(&router).await) > too_large(&before)
    })
    .await;

    let after = scrape(&router).await;
    let moved = |name: &str| sample(&after, name) - sample(&before, name);
    assert_eq!(moved("kiln_router_requests_total"), 7.0);
    assert_eq!(
        moved("kiln_router_responses_total{status_class=\"2xx\"}"),
        5.0
    );
    assert_eq!(
        moved("kiln_router_responses_total{status_class=\"4xx\"}"),
        3.0
    );
    assert_eq!(
        moved("kiln_router_errors_total{kind=\"unknown_route\"}"),
        2.0
    );
    assert_eq!(
        moved("kiln_router_errors_total{kind=\"headers_too_large\"}"),
        1.0
    );
    assert_eq!(moved("kiln_router_request_duration_seconds_count"), 7.0);
    assert_eq!(
        moved("kiln_router_request_duration_seconds_bucket{le=\"+Inf\"}"),
        7.0
    );
    assert!(moved("kiln_router_request_duration_seconds_sum") > 0.0);
    assert_eq!(sample(&after, "kiln_router_rtr_lines_dropped_total"), 0.0);
    assert_eq!(sample(&after, "kiln_router_bus_connected"), 1.0);
    let published = |text: &str| sample(text, "kiln_router_rtr_lines_total");
    common::eventually("the RTR lines are published", || async {
        published(&scrape(&router).await) - published(&before) >= 5.0
    })
    .await;

    // The JSON document is still there, with the same counts.
    let varz = router.status_json("/varz").await;
    assert_eq!(varz["headers_too_large"], 1);
    assert_eq!(
        varz["requests"].as_f64().unwrap(),
        sample(&after, "kiln_router_requests_total")
    );

    // Unregistering shows too.
    registrar
        .unregister(&endpoint(backend.addr, &["m.example.com"], "m-app"))
        .await;
    router.wait_endpoints("m.example.com", 0).await;
    let gone = scrape(&router).await;
    assert_eq!(sample(&gone, "kiln_router_unregistrations_total"), 1.0);
    assert_eq!(sample(&gone, "kiln_router_routes"), 0.0);
    assert_eq!(sample(&gone, "kiln_router_endpoints"), 0.0);
}
