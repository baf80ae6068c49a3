//! `cell-loss`: how long an app takes to be whole again after its cell dies. A whole platform
//! (its own `nats-server`, the controller, a stager and the router in this process) with two
//! cells, each a `kiln-executor` process with the executor's default timings: the lost cell
//! alone at first, so that all 10 instances of a Procfile app on `tiny` run on it; then the
//! survivor. The lost cell is SIGKILLed (its containers keep running, as on a cell whose
//! agent died; the router keeps them until their registrations go stale), and the clock
//! runs until all 10 instances are RUNNING on the survivor and the router answered from
//! each of the 10 new instances.
//!
//! The time is split: detection (the SIGKILL → the first start command the controller sends
//! to the survivor; the controller forgets a cell it has not heard from in
//! `kiln_bus::cell::CELL_TTL_SECS`, a constant, so that the lost cell's last advertisement
//! before the kill is reported too), restart (→ the 10th instance RUNNING) and routing (→ the
//! 10th new instance answered through the router). The survivor has not run the app before:
//! it downloads and unpacks the droplet once.
//!
//! Test indexes 70 (the stager), 71 (the lost cell) and 72 (the survivor). Prints progress,
//! then one JSON line; everything is removed at the end, on failure and on SIGINT/SIGTERM
//! too (the lost cell's orphaned containers included).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use kiln_bus::cell::{CellState, InstanceStart, InstanceState, InstanceStateChange};
use kiln_e2e::platform::{
    backend_config, cell_config, port_range, Leftovers, Platform, Setup, ID_PROCFILE,
};
use serde_json::{json, Value};
use tokio::sync::mpsc;

const STAGER: u32 = 70;
const LOST: u32 = 71;
const SURVIVOR: u32 = 72;
const INSTANCES: u32 = 10;
const DOMAIN: &str = "apps.bench.test";
const APP: &str = "lossy";
const TARGET_MS: f64 = 5000.0;
/// Instances are this small (MiB), memory and disk.
const INSTANCE_MB: u64 = 64;

fn main() -> Result<()> {
    kiln_bench::require_root("cell-loss")?;
    let scratch = kiln_bench::Scratch::new("cell-loss")?;
    let (dir, nats) = (scratch.dir.path(), &scratch.nats.url);
    let cell = |index| kiln_executor::Config {
        max_containers: 16,
        timings: kiln_executor::Timings {
            stop_grace_secs: 2,
            ..kiln_executor::Timings::default()
        },
        ..cell_config(dir, index, nats)
    };
    let (lost, survivor) = (cell(LOST), cell(SURVIVOR));
    let mut leftovers = Leftovers::new(vec![
        backend_config(dir, STAGER),
        lost.backend_config(),
        survivor.backend_config(),
    ]);
    let result = kiln_bench::run(bench(
        dir,
        nats,
        &scratch.executor,
        &lost,
        &survivor,
        &mut leftovers,
    ));
    scratch.finish(result, &mut leftovers)
}

/// What the benchmark heard on the bus.
#[derive(Debug)]
enum Heard {
    /// A cell advertised itself.
    Advertised(String),
    /// The controller told the survivor to start an instance.
    Start(String),
    /// A cell reported an instance's state.
    State {
        cell: String,
        guid: String,
        state: InstanceState,
    },
}

async fn bench(
    dir: &Path,
    nats: &str,
    binary: &Path,
    lost: &kiln_executor::Config,
    survivor: &kiln_executor::Config,
    leftovers: &mut Leftovers,
) -> Result<Value> {
    eprintln!("starting NATS, the controller, a stager, the router and the cell to lose");
    let p = Platform::start(Setup {
        dir,
        nats_url: nats,
        name: "bench-cell-loss",
        domain: DOMAIN,
        stager: STAGER,
        stager_stacks: &["tiny"],
        cell_ttl_ms: Some(cell_ttl_ms()),
    })
    .await
    .map_err(anyhow::Error::msg)?;
    let msg = anyhow::Error::msg;
    kiln_bench::start_cell(dir, binary, lost, "lost", leftovers)?
        .logged("executor.started", Duration::from_secs(300))
        .await
        .map_err(msg)?;
    p.cells_until("the cell heard", Duration::from_secs(60), |c| {
        c.contains_key(&lost.cell_id)
    })
    .await
    .map_err(msg)?;

    eprintln!("staging the app, then {INSTANCES} instances on the one cell");
    let app = p.create_and_stage(APP, ID_PROCFILE).await.map_err(msg)?;
    p.set_limits(&app, INSTANCE_MB, INSTANCE_MB)
        .await
        .map_err(msg)?;
    p.scale(&app, INSTANCES).await.map_err(msg)?;
    p.app_action(&app, "start").await.map_err(msg)?;
    let before = p
        .running(
            &app,
            INSTANCES as usize,
            Some(LOST),
            Duration::from_secs(300),
        )
        .await
        .map_err(msg)?;
    let host = p.host(APP);
    p.wait_for_answers(&host, INSTANCES as usize, Duration::from_secs(60))
        .await
        .map_err(msg)?;

    eprintln!("starting the survivor");
    kiln_bench::start_cell(dir, binary, survivor, "survivor", leftovers)?
        .logged("executor.started", Duration::from_secs(300))
        .await
        .map_err(msg)?;
    p.cells_until("the survivor heard", Duration::from_secs(60), |c| {
        c.contains_key(&survivor.cell_id)
    })
    .await
    .map_err(msg)?;
    let mut heard = listen(nats, &survivor.cell_id).await?;
    // A few advertisements of the lost cell, for the time of its last one.
    tokio::time::sleep(Duration::from_secs(3)).await;

    eprintln!("SIGKILL to the cell holding all {INSTANCES} instances");
    let process = leftovers.cells.get_mut("lost").ok_or(anyhow!("no cell"))?;
    let pid = process.pid();
    process.kill();
    let killed = Instant::now();
    eprintln!("  killed pid {pid:?}");
    let mut last_advertised = None;
    let mut first_start = None;
    let mut starts = 0;
    let mut running = BTreeSet::new();
    let deadline = killed + Duration::from_secs(120);
    let all_running = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (at, h) = match tokio::time::timeout(left, heard.recv()).await {
            Ok(Some(h)) => h,
            Ok(None) => bail!("the bus listener ended"),
            Err(_) => bail!(
                "not {INSTANCES} instances RUNNING on the survivor after {:?}: {running:?}",
                killed.elapsed()
            ),
        };
        match h {
            Heard::Advertised(cell) if cell == lost.cell_id && at < killed => {
                last_advertised = Some(at);
            }
            Heard::Start(a) if a == app => {
                first_start.get_or_insert(at);
                starts += 1;
            }
            Heard::State { cell, guid, state }
                if cell == survivor.cell_id && state == InstanceState::Running =>
            {
                running.insert(guid);
                if running.len() == INSTANCES as usize {
                    break at;
                }
            }
            _ => {}
        }
    };
    eprintln!(
        "  all RUNNING on the survivor {:.1} s after the kill",
        secs(all_running - killed)
    );
    // Every new instance answers through the router; the lost cell's may answer too.
    let (mut new, mut stale, mut failed) = (BTreeSet::new(), 0u32, 0u32);
    let old: BTreeSet<&str> = before.iter().map(|(g, _)| g.as_str()).collect();
    let routable = loop {
        let (status, body) = p.through_router(&host, "/id.txt").await;
        let guid = body
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_string();
        match status {
            200 if running.contains(&guid) => {
                new.insert(guid);
            }
            200 if old.contains(guid.as_str()) => stale += 1,
            _ => failed += 1,
        }
        if new.len() == INSTANCES as usize {
            break Instant::now();
        }
        if Instant::now() > deadline {
            bail!(
                "only {} new instances answered through the router",
                new.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let after = p
        .running(
            &app,
            INSTANCES as usize,
            Some(SURVIVOR),
            Duration::from_secs(30),
        )
        .await
        .map_err(msg)?;
    if after
        .iter()
        .any(|(g, port)| !running.contains(g) || !port_range(SURVIVOR).contains(port))
    {
        bail!("the API lists other instances than the survivor's: {after:?}");
    }
    p.stop();

    let first_start = first_start.ok_or(anyhow!("no start command heard"))?;
    let total = routable - killed;
    Ok(json!({
        "bench": "cell-loss",
        "instances": INSTANCES,
        "stack": "tiny",
        "measured": "SIGKILL of the kiln-executor holding all instances -> all RUNNING on the other cell and the router answered from each new one",
        "total_ms": ms(total),
        "target_ms": TARGET_MS,
        "target_met": ms(total) <= TARGET_MS,
        "split_ms": {
            "detection": ms(first_start - killed),
            "restart": ms(all_running - first_start),
            "routing": ms(routable - all_running),
        },
        "without_detection_ms": ms(routable - first_start),
        "lost_cell_last_advertised_ms_before_kill": last_advertised.map(|t| ms(killed - t)),
        "lost_cell_ttl": {
            "ms": cell_ttl_ms(),
            "default_ms": kiln_bus::cell::CELL_TTL_SECS * 1000,
            "source": "the controller's --cell-ttl-ms (KILN_BENCH_CELL_TTL_MS here, default 3000)",
        },
        "cell_advertise_interval_ms": survivor.timings.advertise_interval_ms,
        "start_commands_to_survivor": starts,
        "survivor_had_droplet_cached": false,
        "router_answers_while_waiting": {
            "from_new_instances": new.len(), "from_lost_cells_containers": stale, "failed": failed,
        },
    }))
}

/// Subscribes to advertisements, the survivor's start commands and instance states.
async fn listen(
    nats_url: &str,
    survivor: &str,
) -> Result<mpsc::UnboundedReceiver<(Instant, Heard)>> {
    let subjects = vec![
        kiln_bus::cell::CELL_ADVERTISE.to_string(),
        kiln_bus::cell::start_subject(survivor),
        kiln_bus::cell::INSTANCE_STATE.to_string(),
    ];
    kiln_bench::listen(nats_url, subjects, |m| {
        let at = Instant::now();
        let heard = match m.subject.as_str() {
            kiln_bus::cell::CELL_ADVERTISE => {
                let s = kiln_bus::decode::<CellState>(&m.subject, &m.payload).ok()?;
                Heard::Advertised(s.cell_id)
            }
            kiln_bus::cell::INSTANCE_STATE => {
                let s = kiln_bus::decode::<InstanceStateChange>(&m.subject, &m.payload).ok()?;
                Heard::State {
                    cell: s.instance.cell_id,
                    guid: s.instance.instance_guid,
                    state: s.instance.state,
                }
            }
            _ => {
                let s = kiln_bus::decode::<InstanceStart>(&m.subject, &m.payload).ok()?;
                Heard::Start(s.app_guid)
            }
        };
        Some((at, heard))
    })
    .await
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 10.0).round() / 10.0
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// The controller's lost-cell timeout in this run: `KILN_BENCH_CELL_TTL_MS`, else 3 s (six
/// of the cells' 500 ms advertisements; the controller's default is 10 s for 2 s ones).
fn cell_ttl_ms() -> u64 {
    kiln_bench::env_or("KILN_BENCH_CELL_TTL_MS", 3000)
}
