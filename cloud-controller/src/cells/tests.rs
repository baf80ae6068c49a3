//! Convergence decisions on a made-up world: placement of missing instances, no double
//! starts, rolling replacement only once successors run, lost cells, the crash back-off, and
//! never stopping what a cell did not report.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use kiln_bus::cell::{CellState, InstanceState};

use super::converge::plan;
use super::desired::DesiredProcess;
use super::{backoff, HeardCell, Inner};

fn cell(id: &str) -> HeardCell {
    HeardCell {
        state: CellState {
            cell_id: id.into(),
            zone: "z".into(),
            stacks: vec!["tiny".into()],
            total_memory_mb: 4096,
            available_memory_mb: 4096,
            total_disk_mb: 8192,
            available_disk_mb: 8192,
            total_containers: 10,
            available_containers: 10,
            instances_per_app: Default::default(),
            starting: 0,
            evacuating: false,
        },
        at: Instant::now(),
    }
}

fn web(instances: u32, version: &str) -> HashMap<String, DesiredProcess> {
    let p = DesiredProcess {
        guid: "p".into(),
        kind: "web".into(),
        version: version.into(),
        instances,
        memory_mb: 256,
        disk_mb: 1024,
        health_check: "port".into(),
        health_check_endpoint: None,
        health_check_timeout: None,
        health_check_invocation_timeout: None,
        command: Ok("httpd".into()),
        app_guid: "a".into(),
        app_name: "app".into(),
        space_guid: "s".into(),
        env: Default::default(),
        droplet_guid: "d".into(),
        droplet_sha256: "00".into(),
        stack: "tiny".into(),
        stack_image: None,
        routes: vec!["app.example.com".into()],
        image: None,
    };
    HashMap::from([("p".to_string(), p)])
}

#[test]
fn an_image_droplet_runs_its_image_on_any_cell() {
    let mut inner = Inner::default();
    inner.cells.insert("c1".into(), cell("c1"));
    let mut desired = web(1, "v1");
    let p = desired.get_mut("p").unwrap();
    p.stack = kiln_bus::DOCKER_STACK.into();
    p.stack_image = None;
    let process = kiln_bus::cell::ImageProcess {
        command: vec!["httpd".into()],
        port: 5000,
        ..Default::default()
    };
    p.image = Some(("sha256:abc".into(), Ok(process.clone())));
    let a = plan(&mut inner, &desired, "http://cc", Instant::now());
    assert_eq!(a.starts.len(), 1, "placed though no cell has stack docker");
    let start = &a.starts[0].1;
    assert_eq!(start.image.as_ref(), Some(&process));
    let image = start.stack_image.as_ref().unwrap();
    assert_eq!(image.digest, "sha256:abc");
    assert_eq!(image.url, "http://cc/internal/v1/images/sha256:abc/archive");
    assert!(start.droplet_url.is_empty() && start.droplet_sha256.is_empty());

    // An image that cannot run says why, and nothing starts.
    let mut inner = Inner::default();
    inner.cells.insert("c1".into(), cell("c1"));
    let p = desired.get_mut("p").unwrap();
    p.image = Some(("sha256:abc".into(), Err("no command".into())));
    let a = plan(&mut inner, &desired, "http://cc", Instant::now());
    assert!(a.starts.is_empty());
    assert_eq!(
        inner.unplaceable.get("p").map(String::as_str),
        Some("no command")
    );
}

/// Marks every known instance as reported by its cell in `state`.
fn report(inner: &mut Inner, state: InstanceState) {
    for k in inner.instances.values_mut() {
        k.pending = false;
        k.actual.state = state;
    }
}

#[test]
fn missing_instances_start_once_spread_over_cells() {
    let mut inner = Inner::default();
    inner.cells.insert("c1".into(), cell("c1"));
    inner.cells.insert("c2".into(), cell("c2"));
    let desired = web(2, "v1");
    let a = plan(&mut inner, &desired, "http://cc", Instant::now());
    let cells: Vec<&str> = a.starts.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(cells, ["c1", "c2"]);
    assert_eq!(
        a.starts[0].1.droplet_url,
        "http://cc/internal/v1/droplets/d/download"
    );
    assert_eq!(a.starts[1].1.routes, ["app.example.com"]);
    // Pending starts are not started again.
    let again = plan(&mut inner, &desired, "http://cc", Instant::now());
    assert!(again.starts.is_empty() && again.stops.is_empty());
}

#[test]
fn a_new_version_replaces_each_instance_only_once_its_successor_runs() {
    let mut inner = Inner::default();
    inner.cells.insert("c1".into(), cell("c1"));
    plan(&mut inner, &web(2, "v1"), "u", Instant::now());
    report(&mut inner, InstanceState::Running);
    let old: Vec<String> = inner.instances.keys().cloned().collect();

    let a = plan(&mut inner, &web(2, "v2"), "u", Instant::now());
    assert_eq!(a.starts.len(), 2, "a successor per index");
    assert!(
        a.stops.is_empty(),
        "nothing stops before the successors run"
    );
    // Successors starting: still nothing stops.
    for k in inner.instances.values_mut() {
        if !old.contains(&k.actual.instance_guid) {
            k.pending = false;
        }
    }
    let a = plan(&mut inner, &web(2, "v2"), "u", Instant::now());
    assert!(a.starts.is_empty() && a.stops.is_empty());
    report(&mut inner, InstanceState::Running);
    let a = plan(&mut inner, &web(2, "v2"), "u", Instant::now());
    let mut stopped: Vec<String> = a
        .stops
        .iter()
        .map(|(_, s)| s.instance_guid.clone())
        .collect();
    stopped.sort();
    let mut old = old;
    old.sort();
    assert_eq!(stopped, old, "exactly the old instances stop");
}

#[test]
fn scaling_down_stops_the_highest_indexes_and_a_stopped_app_stops_all() {
    let mut inner = Inner::default();
    inner.cells.insert("c1".into(), cell("c1"));
    plan(&mut inner, &web(3, "v"), "u", Instant::now());
    report(&mut inner, InstanceState::Running);
    let a = plan(&mut inner, &web(1, "v"), "u", Instant::now());
    let indexes: Vec<u32> = a
        .stops
        .iter()
        .map(|(_, s)| inner.instances[&s.instance_guid].actual.index)
        .collect();
    assert_eq!(indexes.len(), 2);
    assert!(indexes.iter().all(|i| *i >= 1));
    let a = plan(&mut inner, &HashMap::new(), "u", Instant::now());
    assert_eq!(
        a.stops.len(),
        1,
        "the rest, once; the others are already stopping"
    );
}

#[test]
fn a_lost_cells_instances_start_elsewhere() {
    let mut inner = Inner::default();
    inner.cells.insert("c1".into(), cell("c1"));
    plan(&mut inner, &web(1, "v"), "u", Instant::now());
    report(&mut inner, InstanceState::Running);
    inner.cells.insert("c2".into(), cell("c2"));
    let later = Instant::now() + Duration::from_secs(11);
    inner.cells.get_mut("c2").unwrap().at = later;
    let a = plan(&mut inner, &web(1, "v"), "u", later);
    assert_eq!(a.starts.len(), 1);
    assert_eq!(a.starts[0].0, "c2");
    assert!(a.stops.is_empty(), "nothing is sent to a lost cell");
}

#[test]
fn crashes_wait_for_the_back_off_and_unreported_instances_are_never_stopped() {
    let mut inner = Inner::default();
    inner.cells.insert("c1".into(), cell("c1"));
    inner.crashes.insert(
        ("p".into(), 0),
        backoff::Crashes {
            count: 4,
            last: Instant::now(),
            description: "exited with status 3".into(),
        },
    );
    let a = plan(&mut inner, &web(1, "v"), "u", Instant::now());
    assert!(a.starts.is_empty(), "the 4th crash waits 30 s");
    let later = Instant::now() + Duration::from_secs(31);
    inner.cells.get_mut("c1").unwrap().at = later;
    let a = plan(&mut inner, &web(1, "v"), "u", later);
    assert_eq!(a.starts.len(), 1);
    // A pending start (not reported yet) is not stopped even when no longer wanted.
    let a = plan(&mut inner, &HashMap::new(), "u", later);
    assert!(a.stops.is_empty());
}

#[test]
fn an_evacuating_cells_instances_move_and_stop_only_once_their_successors_run() {
    let mut inner = Inner::default();
    inner.cells.insert("c1".into(), cell("c1"));
    inner.cells.insert("c2".into(), cell("c2"));
    plan(&mut inner, &web(2, "v"), "u", Instant::now());
    report(&mut inner, InstanceState::Running);
    let on_c2: Vec<String> = inner
        .instances
        .values()
        .filter(|k| k.actual.cell_id == "c2")
        .map(|k| k.actual.instance_guid.clone())
        .collect();
    assert_eq!(on_c2.len(), 1, "one instance per cell");

    inner.cells.get_mut("c2").unwrap().state.evacuating = true;
    let a = plan(&mut inner, &web(2, "v"), "u", Instant::now());
    assert_eq!(
        a.starts.len(),
        1,
        "a successor for the evacuating cell's instance"
    );
    assert_eq!(a.starts[0].0, "c1", "never on the evacuating cell");
    assert!(
        a.stops.is_empty(),
        "nothing stops before the successor runs"
    );
    let a = plan(&mut inner, &web(2, "v"), "u", Instant::now());
    assert!(a.starts.is_empty() && a.stops.is_empty());
    report(&mut inner, InstanceState::Running);
    let a = plan(&mut inner, &web(2, "v"), "u", Instant::now());
    assert!(a.starts.is_empty());
    let stops: Vec<(&str, &str)> = a
        .stops
        .iter()
        .map(|(c, s)| (c.as_str(), s.instance_guid.as_str()))
        .collect();
    assert_eq!(stops, [("c2", on_c2[0].as_str())]);
}
