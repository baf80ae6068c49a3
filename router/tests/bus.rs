//! The router on the bus: `router.start` and `router.greet`, unregistering, pruning stale
//! registrations, and a NATS outage (table kept, `router.start` again on reconnect).

mod common;

use std::time::Duration;

use common::backend::Backend;
use common::gate::Gate;
use common::{endpoint, eventually, wait_routed, Nats, Registrar, Router};
use futures::StreamExt;
use kiln_bus::router::{RouterStart, ROUTER_GREET, ROUTER_START};
use serde_json::Value;

async fn next_start(starts: &mut async_nats::Subscriber) -> RouterStart {
    let message = tokio::time::timeout(Duration::from_secs(20), starts.next())
        .await
        .expect("router.start within 20 s")
        .expect("subscription open");
    kiln_bus::decode(ROUTER_START, &message.payload).expect("a RouterStart")
}

async fn status(router: &Router, host: &str) -> u16 {
    let response = router.get(host, "/").send().await.expect("router answers");
    response.status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn router_start_is_published_at_start_and_router_greet_is_answered() {
    let nats = Nats::start();
    let watcher = async_nats::connect(&nats.url).await.unwrap();
    let mut starts = watcher.subscribe(ROUTER_START).await.unwrap();
    kiln_bus::round_trip(&watcher, kiln_bus::ROUND_TRIP_TIMEOUT)
        .await
        .unwrap();
    let router = Router::start(&nats.url).await;

    let hello = next_start(&mut starts).await;
    assert_eq!(hello.id, router.id);
    assert_eq!(hello.hosts, ["127.0.0.1"]);
    assert_eq!(hello.minimum_register_interval_in_seconds, 20);
    assert_eq!(hello.prune_threshold_in_seconds, 120);

    let reply = watcher.request(ROUTER_GREET, "".into()).await.unwrap();
    let greeting: RouterStart = kiln_bus::decode(ROUTER_GREET, &reply.payload).unwrap();
    assert_eq!(greeting, hello);
    let raw: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(raw["minimumRegisterIntervalInSeconds"], 20, "{raw}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unregister_removes_only_the_endpoint_it_names() {
    let nats = Nats::start();
    let router = Router::start(&nats.url).await;
    let (a, b) = (Backend::echo("a").await, Backend::echo("b").await);
    let registrar = Registrar::connect(&nats.url).await;
    let ma = endpoint(a.addr, &["un.example.com", "also.example.com"], "a");
    let mb = endpoint(b.addr, &["un.example.com"], "b");
    registrar.register(&ma).await;
    registrar.register(&mb).await;
    router.wait_endpoints("un.example.com", 2).await;

    // Another port, or another uri, matches nothing.
    let mut wrong_port = ma.clone();
    wrong_port.port = wrong_port.port.wrapping_add(1);
    registrar.unregister(&wrong_port).await;
    registrar
        .unregister(&endpoint(a.addr, &["elsewhere.example.com"], "a"))
        .await;
    let mut only_un = ma.clone();
    only_un.uris = vec!["un.example.com".into()];
    registrar.unregister(&only_un).await;
    router.wait_endpoints("un.example.com", 1).await;
    for _ in 0..4 {
        let seen: Value = router
            .get("un.example.com", "/")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(seen["backend"], "b");
    }
    assert_eq!(router.endpoints("also.example.com").await, 1);

    registrar.unregister(&mb).await;
    eventually("un.example.com is gone", || async {
        status(&router, "un.example.com").await == 404
    })
    .await;
    assert_eq!(status(&router, "also.example.com").await, 200);
    assert!(
        router.status_json("/varz").await["unregistrations"]
            .as_u64()
            .unwrap()
            >= 4
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_registration_not_repeated_within_its_threshold_is_pruned() {
    let nats = Nats::start();
    let router = Router::start_with(&nats.url, |c| {
        c.prune_interval = Duration::from_millis(100);
    })
    .await;
    let (stale, fresh) = (Backend::echo("stale").await, Backend::echo("fresh").await);
    let registrar = Registrar::connect(&nats.url).await;
    let mut ms = endpoint(stale.addr, &["stale.example.com"], "stale");
    ms.stale_threshold_in_seconds = 1;
    let mut mf = endpoint(fresh.addr, &["fresh.example.com"], "fresh");
    mf.stale_threshold_in_seconds = 1;
    registrar.register(&ms).await;
    registrar.register(&mf).await;
    wait_routed(&router, "stale.example.com", "/").await;
    wait_routed(&router, "fresh.example.com", "/").await;

    // `fresh` is registered again every 300 ms, `stale` never.
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_millis(2500) {
        registrar.register(&mf).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(status(&router, "stale.example.com").await, 404);
    assert_eq!(status(&router, "fresh.example.com").await, 200);
    assert!(
        router.status_json("/varz").await["pruned"]
            .as_u64()
            .unwrap()
            >= 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_table_outlives_a_nats_outage_and_router_start_follows_the_reconnect() {
    let nats = Nats::start();
    let port = nats.port();
    let gate = Gate::start(port).await;
    let router = Router::start_with(&gate.url, |c| {
        c.prune_interval = Duration::from_millis(100);
    })
    .await;
    let backend = Backend::echo("web").await;
    let registrar = Registrar::connect(&nats.url).await;
    let mut m = endpoint(backend.addr, &["outage.example.com"], "web");
    m.stale_threshold_in_seconds = 2;
    registrar.register(&m).await;
    wait_routed(&router, "outage.example.com", "/").await;
    drop(registrar);

    gate.close();
    drop(nats);
    eventually("the router notices the outage", || async {
        router.status_json("/varz").await["bus_connected"] == false
    })
    .await;
    // Well past the stale threshold, with pruning every 100 ms: the route is still served.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    assert_eq!(status(&router, "outage.example.com").await, 200);

    // A new NATS on the same port; the router may reconnect once we listen there.
    let restarted = Nats::start_on(port);
    let watcher = async_nats::connect(&restarted.url).await.unwrap();
    let mut starts = watcher.subscribe(ROUTER_START).await.unwrap();
    kiln_bus::round_trip(&watcher, kiln_bus::ROUND_TRIP_TIMEOUT)
        .await
        .unwrap();
    gate.open();
    let hello = next_start(&mut starts).await;
    assert_eq!(hello.id, router.id);
    // Back on the bus, every endpoint counts as just registered ...
    assert_eq!(status(&router, "outage.example.com").await, 200);
    let varz = router.status_json("/varz").await;
    assert_eq!(varz["bus_connected"], true);
    assert_eq!(varz["bus_reconnects"], 1);
    // ... and pruning is back: nobody registers it again, so it goes.
    eventually(
        "the unrefreshed route is pruned after the outage",
        || async { status(&router, "outage.example.com").await == 404 },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prune_on_bus_outage_prunes_while_nats_is_down() {
    let nats = Nats::start();
    let gate = Gate::start(nats.port()).await;
    let router = Router::start_with(&gate.url, |c| {
        c.prune_interval = Duration::from_millis(100);
        c.prune_on_bus_outage = true;
    })
    .await;
    let backend = Backend::echo("web").await;
    let registrar = Registrar::connect(&nats.url).await;
    let mut m = endpoint(backend.addr, &["gone.example.com"], "web");
    m.stale_threshold_in_seconds = 1;
    registrar.register(&m).await;
    wait_routed(&router, "gone.example.com", "/").await;
    gate.close();
    drop(nats);
    eventually("the route is pruned during the outage", || async {
        status(&router, "gone.example.com").await == 404
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn start_fails_clearly_without_nats() {
    let url = format!("nats://127.0.0.1:{}", common::free_port());
    let error = kiln_router::start(common::test_config(&url))
        .await
        .unwrap_err();
    assert!(
        matches!(error, kiln_router::StartError::Connect { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains(&url), "{error}");
}
