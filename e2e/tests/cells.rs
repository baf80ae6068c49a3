//! Two cells end to end: a controller, NATS, a stager, the router, cell A (an executor in this
//! process) and cell B (the `kiln-executor` binary, a process of its own). A Procfile app on
//! tiny scaled to two runs one instance per cell. Cell B is drained through `POST
//! /v3/cells/{id}/actions/drain` under a steady request loop through the router: its instance
//! is started on A and stopped on B without a failed request, and the binary exits by itself
//! once it has nothing left. B is started again, takes a third instance, and is SIGKILLed:
//! once the controller no longer hears it the instance runs on A and answers through the
//! router. Test indexes 50 (the stager's backend: 10.244.50.0/26, ports 41000-41019), 51
//! (cell A: 10.244.51.0/26, ports 41020-41039) and 52 (cell B: 10.244.52.0/26, ports
//! 41040-41059), each with its own data dir and uid range. Whatever the outcome, the cell
//! process is killed (by its pid) and every backend destroys what it holds.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use kiln_e2e::platform::{
    self, backend_config, cell_config, port_range, send, CellProcess, Leftovers, Platform,
    RequestLoop, Setup, ID_PROCFILE,
};
use kiln_testkit::Nats;
use reqwest::Method;
use serde_json::json;

const DOMAIN: &str = "apps.cells.test";
const STAGER: u32 = 50;
const CELL_A: u32 = 51;
const CELL_B: u32 = 52;
/// Cell B's name among the leftovers.
const B: &str = "cell B";

#[test]
fn instances_spread_a_drained_cell_hands_over_without_a_failed_request_a_lost_one_is_replaced() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "the end-to-end tests need root (containers)");
    let binary = platform::executor_binary().unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start();
    let (a, b) = (
        cell_config(dir.path(), CELL_A, &nats.url),
        cell_config(dir.path(), CELL_B, &nats.url),
    );
    let mut leftovers = Leftovers::new(vec![
        backend_config(dir.path(), STAGER),
        a.backend_config(),
        b.backend_config(),
    ]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let result = rt.block_on(scenario(dir.path(), &nats, &binary, &a, &b, &mut leftovers));
    // The runtime first (every task with it: cell A, the stager), then cell B's process and
    // what the backends still hold.
    drop(rt);
    if result.is_err() {
        if let Some(p) = leftovers.cells.get(B) {
            eprintln!("--- cell B's log ---\n{}", p.log());
        }
    }
    drop(leftovers);
    result.unwrap_or_else(|e| panic!("{e}"));
}

async fn scenario(
    dir: &Path,
    nats: &Nats,
    binary: &Path,
    a: &kiln_executor::Config,
    b: &kiln_executor::Config,
    leftovers: &mut Leftovers,
) -> Result<(), String> {
    let p = Platform::start(Setup {
        dir,
        nats_url: &nats.url,
        name: "e2e-cells",
        domain: DOMAIN,
        stager: STAGER,
        stager_stacks: &["tiny"],
        cell_ttl_ms: None,
    })
    .await?;

    // Cell A in this process; cell B as the binary with a TOML configuration.
    let executor_a = platform::start_executor(a).await?;
    let b_file = dir.join("cell-b.toml");
    platform::write_cell_config(&b_file, b)?;
    leftovers.cells.insert(
        B.into(),
        CellProcess::start(binary, &b_file, dir.join("cell-b-1.log"))?,
    );

    let (id_a, id_b) = (a.cell_id.clone(), b.cell_id.clone());

    // Both cells are heard, with what they offer.
    let cells = p
        .cells_until("both cells heard", Duration::from_secs(60), |c| {
            c.contains_key(&id_a) && c.contains_key(&id_b)
        })
        .await?;
    let cb = &cells[&id_b];
    if cb["stacks"] != json!(["tiny"])
        || cb["evacuating"] != false
        || cb["memory_mb"]["total"] != 2048
        || cb["containers"]["total"] != 6
        || cb["instances"] != 0
        || cb["last_heard_ms_ago"]
            .as_u64()
            .is_none_or(|ms| ms > 10_000)
    {
        return Err(format!("cell B as listed: {cb:#}"));
    }
    let (status, body) = send(p.call(Method::GET, &format!("/v3/cells/{id_b}"))).await;
    if status != 200 || body["id"] != id_b.as_str() || body["zone"] != "z1" {
        return Err(format!("GET cell B: {status} {body}"));
    }
    let (status, body) = send(p.call(Method::GET, "/v3/cells/no-such-cell")).await;
    if status != 404 {
        return Err(format!("an unknown cell: {status} {body}"));
    }
    let (status, body) = send(p.call(Method::POST, "/v3/cells/no-such-cell/actions/drain")).await;
    if status != 404 {
        return Err(format!("draining an unknown cell: {status} {body}"));
    }
    let (status, _) = send(p.http.get(format!("{}/v3/cells", p.cc_url))).await;
    if status != 401 {
        return Err(format!("listing cells without a token: {status}"));
    }

    // Two instances: one on each cell.
    let app = p.push("spread", ID_PROCFILE).await?;
    let host = format!("spread.{DOMAIN}");
    p.running(&app, 1, None, Duration::from_secs(60)).await?;
    p.scale(&app, 2).await?;
    let two = p.running(&app, 2, None, Duration::from_secs(60)).await?;
    let on_cells: BTreeSet<u32> = two
        .iter()
        .filter_map(|(_, port)| {
            [CELL_A, CELL_B]
                .into_iter()
                .find(|i| port_range(*i).contains(port))
        })
        .collect();
    if on_cells != BTreeSet::from([CELL_A, CELL_B]) {
        return Err(format!("two instances not spread over both cells: {two:?}"));
    }
    p.cells_until(
        "one instance of the app on each cell",
        Duration::from_secs(10),
        |c| {
            [&id_a, &id_b].iter().all(|id| {
                c.get(*id)
                    .is_some_and(|c| c["instances_per_app"][&app] == 1)
            })
        },
    )
    .await?;
    p.wait_for_answers(&host, 2, Duration::from_secs(30))
        .await?;

    // Drain B under a steady request loop: its instance starts on A, then stops on B; the
    // binary exits once it has nothing left; not one request fails.
    let requests = RequestLoop::start(&p.router, &host);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, body) =
        send(p.call(Method::POST, &format!("/v3/cells/{id_b}/actions/drain"))).await;
    if status != 202 || body["id"] != id_b.as_str() {
        return Err(format!("drain: {status} {body}"));
    }
    let drained_at = Instant::now();
    p.cells_until("B evacuating", Duration::from_secs(5), |c| {
        c.get(&id_b).is_some_and(|c| c["evacuating"] == true)
    })
    .await?;
    let moved = p
        .running(&app, 2, Some(CELL_A), Duration::from_secs(60))
        .await?;
    let process = leftovers.cells.get_mut(B).ok_or("no cell B")?;
    let status = process.exited(Duration::from_secs(30)).await?;
    let evacuation = drained_at.elapsed();
    let log = process.log();
    if !status.success() || !log.contains("executor.evacuated") || log.contains("timed-out") {
        return Err(format!(
            "cell B did not evacuate and exit cleanly ({status}):\n{log}"
        ));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (ok, failures) = requests.finish().await?;
    if !failures.is_empty() || ok < 20 {
        return Err(format!(
            "during the drain: {ok} ok, {} failed: {failures:?}",
            failures.len()
        ));
    }
    let (_, events) = send(p.call(Method::GET, "/v3/audit_events?types=audit.cell.drain")).await;
    if events["resources"][0]["target"]["guid"] != id_b.as_str() {
        return Err(format!("no audit event of the drain: {events}"));
    }
    let evacuation_lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("evacuat") || l.contains("drain") || l.contains("stopped"))
        .collect();
    eprintln!(
        "drain: B exited {:.1} s after the drain request; {ok} requests, none failed; now on A: {moved:?}; B's log:\n{}",
        evacuation.as_secs_f64(),
        evacuation_lines.join("\n")
    );

    // B again, a third instance on it (A has two), then B is lost (SIGKILL).
    leftovers.cells.insert(
        B.into(),
        CellProcess::start(binary, &b_file, dir.join("cell-b-2.log"))?,
    );
    p.cells_until("B back", Duration::from_secs(60), |c| {
        c.get(&id_b).is_some_and(|c| c["evacuating"] == false)
    })
    .await?;
    p.scale(&app, 3).await?;
    let three = p.running(&app, 3, None, Duration::from_secs(60)).await?;
    let on_b: Vec<&(String, u64)> = three
        .iter()
        .filter(|(_, port)| port_range(CELL_B).contains(port))
        .collect();
    let [(lost, _)] = on_b[..] else {
        return Err(format!("not one instance on B: {three:?}"));
    };
    let lost = lost.clone();
    leftovers.cells.get_mut(B).ok_or("no cell B")?.kill();
    let killed = Instant::now();
    let after = p
        .running(&app, 3, Some(CELL_A), Duration::from_secs(30))
        .await?;
    let replaced = killed.elapsed();
    let index_2: Vec<&String> = after
        .iter()
        .map(|(g, _)| g)
        .filter(|g| !moved.iter().any(|(m, _)| m == *g))
        .collect();
    let [new] = index_2[..] else {
        return Err(format!("not one replacement: {after:?} (before {moved:?})"));
    };
    if *new == lost {
        return Err("the lost instance is still counted".into());
    }
    // The replacement answers through the router (the lost cell's container may still
    // answer too: a SIGKILLed cell leaves its containers running until they are cleaned).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = p.through_router(&host, "/id.txt").await;
        if status == 200 && body.trim() == format!("2 {new}") {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the replacement of the lost instance does not answer: {status} {body}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let answered = killed.elapsed();
    eprintln!(
        "cell loss: the instance RUNNING on A {:.1} s after the SIGKILL, answering through the router after {:.1} s",
        replaced.as_secs_f64(),
        answered.as_secs_f64()
    );
    if replaced > Duration::from_secs(20) {
        return Err(format!("the lost instance came back after {replaced:?}"));
    }

    p.stop();
    executor_a.shutdown().await;
    Ok(())
}
