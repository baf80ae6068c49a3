//! An instance's whole happy path on real runc, NATS and HTTP (test index 60): CELL lines,
//! STARTING then RUNNING, router.register with its port, the app answering on it, its output
//! tagged APP/PROC/WEB/0, capacity advertised, metrics, a second start of the same droplet
//! neither downloading nor unpacking again, and stop: unregister first, nothing left.
mod common;

use std::time::Duration;

use common::cell::Cell;
use common::*;
use kiln_bus::cell::{self, InstanceStop};
use kiln_bus::router;

const WEB: &str = "echo started on $PORT with $GREETING; echo to-stderr >&2; exec httpd -f -p $PORT -h /home/vcap/app";

#[test]
fn an_instance_runs_registers_logs_and_stops_cleanly() {
    let mut c = Cell::new(60);
    let tgz = droplet(&[("index.html", "hello from kiln\n")], WEB);
    let sha = sha256(&tgz);
    let url = c.droplets.add("d1", tgz);
    let wait = Duration::from_secs(30);
    c.block_on(async {
        let subject = cell::start_subject(&c.config.cell_id);
        c.send(subject.clone(), &start("app1", "inst-1", &url, &sha, WEB))
            .await;
        let (starting, _) = c.bus.state("inst-1", "STARTING", wait).await;
        let (running, state) = c.bus.state("inst-1", "RUNNING", wait).await;
        assert!(starting < running);
        let port = state["port"].as_u64().expect("port") as u16;
        assert_eq!(state["host"], "127.0.0.1");
        assert_eq!(state["cell_id"], "cell-60");
        let (registered, reg) = c
            .bus
            .wait(wait, "router.register", |s, v| {
                s == router::ROUTER_REGISTER && v["private_instance_id"] == "inst-1"
            })
            .await;
        assert!(registered > running);
        assert_eq!(reg["port"].as_u64(), Some(u64::from(port)));
        assert_eq!(reg["host"], "127.0.0.1");
        assert_eq!(reg["uris"], serde_json::json!(["app1.example.com"]));
        assert_eq!(reg["app"], "app1");
        assert_eq!(reg["private_instance_index"], "0");
        assert_eq!(reg["stale_threshold_in_seconds"], 120);

        let answer = http_get(port, "/index.html").await;
        assert!(
            answer.starts_with("HTTP/1.") && answer.contains("hello from kiln"),
            "{answer}"
        );

        let cell_lines: Vec<String> = c.bus.log("app1", "CELL").into_iter().map(|l| l.2).collect();
        assert!(
            cell_lines[0].contains("creating container for instance inst-1"),
            "{cell_lines:?}"
        );
        assert!(
            cell_lines.iter().any(|l| l == "Container became healthy"),
            "{cell_lines:?}"
        );
        c.bus
            .wait(wait, "app output", |s, v| {
                s == cell::app_log("app1") && v["message"] == "to-stderr"
            })
            .await;
        let app = c.bus.log("app1", "APP/PROC/WEB/0");
        assert!(
            app.iter()
                .any(|l| l.1 == "OUT" && l.2 == "started on 8080 with hi"),
            "{app:?}"
        );
        assert!(
            app.iter().any(|l| l.1 == "ERR" && l.2 == "to-stderr"),
            "{app:?}"
        );

        // Capacity goes down while it runs.
        let state = c.executor().cell_state();
        assert_eq!(state.available_memory_mb, 1024 - 64);
        assert_eq!(state.available_containers, 3);
        c.bus
            .wait(wait, "an advertisement with the instance", |s, v| {
                s == cell::CELL_ADVERTISE
                    && v["available_memory_mb"] == 960
                    && v["instances_per_app"]["app1"] == 1
            })
            .await;
        let (_, m) = c
            .bus
            .wait(wait, "metrics", |s, v| {
                s == cell::INSTANCE_METRICS && v["instance_guid"] == "inst-1"
            })
            .await;
        assert!(m["memory_bytes"].as_u64().unwrap_or(0) > 0, "{m}");
        assert_eq!(m["memory_quota_bytes"].as_u64(), Some(64 << 20));
        c.bus
            .wait(wait, "a listing", |s, v| {
                s == cell::CELL_INSTANCES && v["instances"][0]["state"] == "RUNNING"
            })
            .await;

        // The same droplet again: no download, no unpack.
        c.send(subject, &start("app1", "inst-2", &url, &sha, WEB))
            .await;
        c.bus.state("inst-2", "RUNNING", wait).await;
        assert_eq!(c.executor().droplets().downloads(), 1);
        assert_eq!(c.executor().droplets().unpacks(), 1);
        assert_eq!(
            c.droplets
                .downloads
                .load(std::sync::atomic::Ordering::SeqCst),
            1
        );

        // Stop: routes go before the container.
        c.send(
            cell::stop_subject(&c.config.cell_id),
            &InstanceStop {
                instance_guid: "inst-1".into(),
            },
        )
        .await;
        let (stopped, _) = c.bus.state("inst-1", "STOPPED", wait).await;
        let (unregistered, unreg) = c
            .bus
            .wait(wait, "router.unregister", |s, v| {
                s == router::ROUTER_UNREGISTER && v["private_instance_id"] == "inst-1"
            })
            .await;
        assert_eq!(unreg["port"].as_u64(), Some(u64::from(port)));
        let (destroying, _) = c
            .bus
            .wait(wait, "destroying line", |s, v| {
                s == cell::app_log("app1")
                    && v["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("destroying container for instance inst-1"))
            })
            .await;
        assert!(unregistered < destroying && destroying < stopped);
        assert!(c.backend().info("inst-1").is_err(), "the container is gone");
        assert!(c.backend().info("inst-2").is_ok());
    });
    // Graceful shutdown stops the other one too.
    c.shutdown();
    c.block_on(c.bus.state("inst-2", "STOPPED", Duration::from_secs(5)));
    assert!(c
        .bus
        .find(|s, v| s == router::ROUTER_UNREGISTER && v["private_instance_id"] == "inst-2")
        .is_some());
    assert_eq!(c.leftovers(), Vec::<String>::new());
}
