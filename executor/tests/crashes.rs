//! Instances that do not make it, on real runc (test indexes 61, 62 and 93): a failing http
//! health check, an app that stops listening on its port, an app exiting 3, a droplet whose
//! sha256 is not the one named. Each ends CRASHED with its reason, its container destroyed,
//! its capacity given back, nothing left.
mod common;

use std::time::Duration;

use common::cell::Cell;
use common::*;
use kiln_bus::cell::{self, HealthCheck, HealthCheckType};
use kiln_bus::router;

const WEB: &str = "exec httpd -f -p $PORT -h /home/vcap/app";

#[test]
fn a_failing_http_health_check_crashes_the_instance() {
    let mut c = Cell::new(61);
    let tgz = droplet(&[("index.html", "up\n")], WEB);
    let sha = sha256(&tgz);
    let url = c.droplets.add("d1", tgz);
    c.block_on(async {
        let mut s = start("app2", "inst-h", &url, &sha, WEB);
        s.health_check = HealthCheck {
            kind: HealthCheckType::Http,
            endpoint: Some("/health".into()),
            timeout_secs: Some(3),
            invocation_timeout_secs: None,
        };
        c.send(cell::start_subject(&c.config.cell_id), &s).await;
        let (_, crashed) = c
            .bus
            .state("inst-h", "CRASHED", Duration::from_secs(30))
            .await;
        assert_eq!(crashed["crash_reason"], "health_check", "{crashed}");
        assert_eq!(
            crashed["description"],
            "Instance never healthy after 3s: failed health check"
        );
        assert!(c
            .bus
            .find(|st, v| st == kiln_bus::cell::INSTANCE_STATE
                && v["instance_guid"] == "inst-h"
                && v["state"] == "RUNNING")
            .is_none());
        assert!(c.bus.find(|st, _| st == router::ROUTER_REGISTER).is_none());
        assert!(
            c.backend().info("inst-h").is_err(),
            "the crashed container is destroyed"
        );
        assert_eq!(c.executor().cell_state().available_memory_mb, 1024);

        // The same app with an endpoint that answers 200 runs.
        s.instance_guid = "inst-ok".into();
        s.health_check.endpoint = Some("/index.html".into());
        c.send(cell::start_subject(&c.config.cell_id), &s).await;
        c.bus
            .state("inst-ok", "RUNNING", Duration::from_secs(30))
            .await;
    });
    c.shutdown();
    assert_eq!(c.leftovers(), Vec::<String>::new());
}

#[test]
fn an_app_that_stops_listening_fails_its_port_check() {
    // Probed every second once running (test index 93).
    let mut c = Cell::with(93, |config| config.timings.running_probe_interval_secs = 1);
    // httpd listens for a while and goes; the shell (the instance's process) stays.
    let goes = "httpd -f -p $PORT -h /home/vcap/app & sleep 2; kill $!; exec sleep 600";
    let tgz = droplet(&[("index.html", "up\n")], goes);
    let sha = sha256(&tgz);
    let url = c.droplets.add("d1", tgz);
    c.block_on(async {
        let s = start("app3", "inst-p", &url, &sha, goes);
        c.send(cell::start_subject(&c.config.cell_id), &s).await;
        let wait = Duration::from_secs(30);
        c.bus.state("inst-p", "RUNNING", wait).await;
        let (_, crashed) = c.bus.state("inst-p", "CRASHED", wait).await;
        assert_eq!(crashed["crash_reason"], "health_check", "{crashed}");
        assert!(
            c.backend().info("inst-p").is_err(),
            "the crashed container is destroyed"
        );
    });
    c.shutdown();
    assert_eq!(c.leftovers(), Vec::<String>::new());
}

#[test]
fn an_exit_and_a_bad_droplet_crash_with_their_reasons() {
    let mut c = Cell::new(62);
    let quits = "echo about to quit; exit 3";
    let tgz = droplet(&[("run.sh", "")], quits);
    let sha = sha256(&tgz);
    let url = c.droplets.add("d1", tgz);
    let wait = Duration::from_secs(30);
    c.block_on(async {
        let subject = cell::start_subject(&c.config.cell_id);
        c.send(subject.clone(), &start("app3", "inst-x", &url, &sha, quits))
            .await;
        let (crashed_at, crashed) = c.bus.state("inst-x", "CRASHED", wait).await;
        assert_eq!(crashed["crash_reason"], "exit", "{crashed}");
        assert_eq!(crashed["exit_status"], 3);
        assert_eq!(
            crashed["description"],
            "APP/PROC/WEB/0 exited with status 3"
        );
        let out = c.bus.log("app3", "APP/PROC/WEB/0");
        assert!(
            out.iter()
                .any(|l| l.2 == "about to quit" && l.0 < crashed_at),
            "{out:?}"
        );
        assert!(c.backend().info("inst-x").is_err());

        // A droplet that is not what the controller named never runs.
        let other = droplet(&[("x", "y")], quits);
        let bad_url = c.droplets.add("d2", other);
        let wrong = sha256(b"something else");
        c.send(subject, &start("app3", "inst-bad", &bad_url, &wrong, quits))
            .await;
        let (_, crashed) = c.bus.state("inst-bad", "CRASHED", wait).await;
        assert_eq!(crashed["crash_reason"], "start_failed", "{crashed}");
        let why = crashed["description"].as_str().unwrap_or_default();
        assert!(
            why.contains("droplet checksum mismatch") && why.contains(&wrong),
            "{why}"
        );
        let lines = c.bus.log("app3", "CELL");
        assert!(
            lines.iter().any(|l| l
                .2
                .contains("failed to create container for instance inst-bad")),
            "{lines:?}"
        );
        assert!(c.backend().info("inst-bad").is_err());
        let cache = c.config.data_dir.join("droplets");
        assert!(!cache.join("layers").join(&wrong).exists());
        assert!(!cache.join("blobs").join(format!("{wrong}.tgz")).exists());
        assert_eq!(
            std::fs::read_dir(cache.join("tmp"))
                .map(|d| d.count())
                .unwrap_or(0),
            0
        );
        assert_eq!(c.executor().cell_state().available_containers, 4);
    });
    c.shutdown();
    assert_eq!(c.leftovers(), Vec::<String>::new());
}
