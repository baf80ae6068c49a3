//! Evacuation on real runc and NATS (test index 64), the test playing the controller: a drain
//! command makes the cell advertise itself evacuating at once and refuse new starts (STOPPED:
//! no crash, placed elsewhere) while its instance keeps running and routed; the evacuation
//! completes as soon as the "controller" stops that instance, well before its timeout. A second executor on the same backend (the
//! first, shut down, answers no more commands) whose instance nobody stops evacuates until
//! its timeout, then unregisters and stops it itself.
mod common;

use std::time::{Duration, Instant};

use common::cell::Cell;
use common::*;
use kiln_bus::cell::{self, CellDrain, InstanceStop};
use kiln_bus::router;
use kiln_executor::Evacuation;

const WEB: &str = "exec httpd -f -p $PORT -h /home/vcap/app";

#[test]
fn a_drained_cell_keeps_its_instances_until_they_are_moved_then_stops() {
    let mut c = Cell::new(64);
    let tgz = droplet(&[("index.html", "still here\n")], WEB);
    let sha = sha256(&tgz);
    let url = c.droplets.add("d1", tgz);
    let wait = Duration::from_secs(30);
    let starts = cell::start_subject(&c.config.cell_id);
    let executor = c.executor.take().expect("executor");
    c.block_on(async {
        c.send(starts.clone(), &start("app1", "inst-1", &url, &sha, WEB))
            .await;
        let (_, running) = c.bus.state("inst-1", "RUNNING", wait).await;
        let port = running["port"].as_u64().expect("port") as u16;

        // The drain command: evacuating at once, on the bus and for the owner.
        let asked = c.bus.seen.lock().expect("lock").len();
        c.send(cell::drain_subject(&c.config.cell_id), &CellDrain {})
            .await;
        tokio::time::timeout(Duration::from_secs(5), executor.drain_requested())
            .await
            .expect("the drain command reaches the owner");
        let (advertised, _) = c
            .bus
            .wait(
                Duration::from_secs(2),
                "an evacuating advertisement",
                |s, v| s == cell::CELL_ADVERTISE && v["evacuating"] == true,
            )
            .await;
        assert!(advertised >= asked);
        assert!(executor.cell_state().evacuating);

        // New starts are refused; the instance still runs and stays routed.
        c.send(starts.clone(), &start("app1", "inst-2", &url, &sha, WEB))
            .await;
        let (_, refused) = c.bus.state("inst-2", "STOPPED", wait).await;
        assert_eq!(refused["description"], "the cell is evacuating");
        assert!(refused.get("crash_reason").is_none(), "{refused}");
        let evacuating = tokio::spawn(executor.evacuate_and_stop(Duration::from_secs(60)));
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(http_get(port, "/index.html").await.contains("still here"));
        assert!(c
            .bus
            .find(|s, v| s == router::ROUTER_UNREGISTER && v["private_instance_id"] == "inst-1")
            .is_none());
        assert!(!evacuating.is_finished());

        // The controller stops it (its replacement runs elsewhere): evacuation is complete.
        let stopped_at = Instant::now();
        c.send(
            cell::stop_subject(&c.config.cell_id),
            &InstanceStop {
                instance_guid: "inst-1".into(),
            },
        )
        .await;
        let outcome = tokio::time::timeout(Duration::from_secs(20), evacuating)
            .await
            .expect("evacuation ends once the cell is empty")
            .expect("task");
        assert_eq!(outcome, Evacuation::Complete);
        assert!(stopped_at.elapsed() < Duration::from_secs(15));
        let (unregistered, _) = c
            .bus
            .wait(wait, "unregister", |s, v| {
                s == router::ROUTER_UNREGISTER && v["private_instance_id"] == "inst-1"
            })
            .await;
        let (stopped, _) = c.bus.state("inst-1", "STOPPED", wait).await;
        assert!(unregistered < stopped);
    });
    assert_eq!(c.leftovers(), Vec::<String>::new());

    // Nobody moves the next one: the timeout ends the evacuation and the cell stops it.
    c.start_executor();
    let executor = c.executor.take().expect("executor");
    c.block_on(async {
        c.send(starts.clone(), &start("app1", "inst-3", &url, &sha, WEB))
            .await;
        c.bus.state("inst-3", "RUNNING", wait).await;
        let began = Instant::now();
        let outcome = executor.evacuate_and_stop(Duration::from_secs(2)).await;
        assert_eq!(outcome, Evacuation::TimedOut { left: 1 });
        assert!(began.elapsed() >= Duration::from_secs(2));
        let (unregistered, _) = c
            .bus
            .wait(wait, "unregister", |s, v| {
                s == router::ROUTER_UNREGISTER && v["private_instance_id"] == "inst-3"
            })
            .await;
        // (The first executor, shut down, answers no more commands: its "shutting down"
        // refusal would come first.)
        let (stopped, state) = c.bus.state("inst-3", "STOPPED", wait).await;
        assert_eq!(state["description"], "stopped as requested");
        assert!(unregistered < stopped);
    });
    assert_eq!(c.leftovers(), Vec::<String>::new());
}
