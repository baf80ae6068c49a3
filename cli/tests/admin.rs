//! `kiln admin cells` and `kiln admin cell drain` against a real controller and a real
//! `nats-server`. The cell here is this test speaking the cell's side of the bus contract
//! (advertisements on `kiln.cell.advertise`, the drain command on `kiln.cell.<id>.drain`);
//! the executor's own drain is tested in `executor/tests/evacuation.rs` and, whole, in
//! `e2e/tests/cells.rs`.

mod remote_common;

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use kiln_bus::cell::{drain_subject, CellState, CELL_ADVERTISE};
use remote_common::Platform;

fn cell(id: &str, instances: u64, evacuating: bool) -> CellState {
    CellState {
        cell_id: id.into(),
        zone: "z2".into(),
        stacks: vec!["tiny".into()],
        total_memory_mb: 4096,
        available_memory_mb: 4096 - 256 * instances,
        total_disk_mb: 8192,
        available_disk_mb: 8192,
        total_containers: 10,
        available_containers: 10 - instances,
        instances_per_app: BTreeMap::from([("app-guid".to_string(), instances)]),
        starting: 0,
        evacuating,
    }
}

async fn advertise(nats: &async_nats::Client, state: &CellState) {
    nats.publish(CELL_ADVERTISE, kiln_bus::encode(state).into())
        .await
        .unwrap();
    nats.flush().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn operators_list_cells_and_drain_one_waiting_until_it_is_empty() {
    let p = Platform::start().await;
    p.login().await;
    let none = p.kiln(&["admin", "cells"]).await.ok();
    assert!(none.stdout.contains("No cells"), "{}", none.stdout);

    let nats = async_nats::connect(&p.nats.url).await.unwrap();
    let mut drains = nats.subscribe(drain_subject("cell-7")).await.unwrap();
    advertise(&nats, &cell("cell-7", 2, false)).await;
    let mut listed = String::new();
    for _ in 0..50 {
        listed = p.kiln(&["admin", "cells"]).await.ok().stdout;
        if listed.contains("cell-7") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let row = listed
        .lines()
        .find(|l| l.contains("cell-7"))
        .unwrap_or_else(|| panic!("cell-7 not listed: {listed}"));
    for field in ["up", "z2", "tiny", "3584/4096 MB", "8/10"] {
        assert!(row.contains(field), "{field} missing in {row:?}");
    }
    let json = p.kiln(&["admin", "cells", "--json"]).await.ok().json();
    assert_eq!(json["resources"][0]["instances"], 2);

    let unknown = p.kiln(&["admin", "cell", "drain", "cell-9"]).await.failed();
    assert!(
        unknown.stderr.contains("no cell \"cell-9\"") && unknown.stderr.contains("admin cells"),
        "{}",
        unknown.stderr
    );

    // The cell's side: once asked, it evacuates, its instances leave one by one.
    let cell_side = async {
        tokio::time::timeout(Duration::from_secs(20), drains.next())
            .await
            .expect("the drain command reaches the cell")
            .expect("subscription open");
        for left in [2, 1, 0] {
            advertise(&nats, &cell("cell-7", left, true)).await;
            tokio::time::sleep(Duration::from_millis(800)).await;
        }
    };
    let (drained, ()) = tokio::join!(p.kiln(&["admin", "cell", "drain", "cell-7"]), cell_side);
    let drained = drained.ok();
    assert!(
        drained
            .stdout
            .contains("Draining cell cell-7 (2 instances to move)")
            && drained.stdout.contains("1 instances left")
            && drained.stdout.contains("Cell cell-7 is drained."),
        "{}",
        drained.stdout
    );
    let row = p.kiln(&["admin", "cells"]).await.ok().stdout;
    assert!(row.contains("draining"), "{row}");
}
