//! The RTR publishing thread (`kiln-router-rtr`) ends with its router, also when the bus is
//! gone and lines are still queued; alone in its binary so that the threads counted are this
//! router's.

mod common;

use std::time::Duration;

use common::backend::Backend;
use common::{endpoint, wait_routed, Nats, Registrar, Router};

/// Threads of this process named `kiln-router-rtr`.
fn rtr_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .is_ok_and(|c| c.trim_end() == "kiln-router-rtr")
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_rtr_thread_ends_with_its_router_even_with_the_bus_gone() {
    let nats = Nats::start();
    let mut router = Router::start(&nats.url).await;
    let backend = Backend::echo("web").await;
    Registrar::connect(&nats.url)
        .await
        .register(&endpoint(backend.addr, &["gone.example.com"], "app-gone"))
        .await;
    wait_routed(&router, "gone.example.com", "/").await;
    assert_eq!(rtr_threads(), 1, "one RTR thread per router");

    // The bus goes away; requests go on and their lines queue up.
    drop(nats);
    for _ in 0..50 {
        let response = router.get("gone.example.com", "/").send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
    let stopped = tokio::time::timeout(Duration::from_secs(20), router.stop())
        .await
        .expect("the router stops within 20 s with its bus gone");
    assert!(stopped.drained);
    assert_eq!(rtr_threads(), 0, "the RTR thread outlived its router");
}
