//! `rootfs-swap`: how long moving an app's instances onto a new stack image takes, and how
//! many requests fail meanwhile. A whole platform (its own `nats-server`, the controller, a
//! stager and the router in this process) with three cells, each a `kiln-executor` process
//! with the executor's default timings. A Procfile app on `tiny` runs 20 instances
//! (`KILN_BENCH_INSTANCES`), spread over the cells; two images are imported into the
//! controller's image store (`POST /v3/images`): the machine's tiny (`tiny-v1`, what the cells
//! run already) and tiny plus a layer (`tiny-v2`). Then, under a steady request loop through
//! the router (several concurrent clients; every non-200 and every connection error counts as
//! failed), `stack.tiny.image` is set to `tiny-v2`, back to `tiny-v1`, to `tiny-v2`...
//! (`KILN_BENCH_ROUNDS`, 3), each swap timed from the `PUT /v3/admin/config/stack.tiny.image`
//! until the key's `rollout.done` and all instances report the image's `stack_digest` in
//! `/v3/processes/:guid/stats`.
//!
//! Split from the bus: the first successor's start command and the first successor RUNNING,
//! then the last one RUNNING and the last predecessor STOPPED; and from the cells' logs, each cell's download and import of the
//! image (its first start on the image → `stack-image.imported`; a cell fetches an image once,
//! so only the first swap to `tiny-v2` does; `tiny-v1` is the cells' own tiny).
//!
//! Test indexes 70 (the stager), 71, 72 and 73 (the cells: 16 containers and 20 host ports
//! each, so up to 48 containers for the 40 of a swap's peak). Prints progress, then one JSON
//! line; everything is removed at the end, on failure and on SIGINT/SIGTERM too.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Result};
use kiln_bus::cell::{InstanceStart, InstanceState, InstanceStateChange};
use kiln_e2e::platform::{
    self, backend_config, cell_config, send, Leftovers, Platform, Setup, ID_PROCFILE,
};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::sync::mpsc;

const STAGER: u32 = 70;
const CELLS: [u32; 3] = [71, 72, 73];
const DOMAIN: &str = "apps.bench.test";
const APP: &str = "swapped";
const TARGET_FAILED: usize = 0;
/// Instances are this small (MiB), memory and disk.
const INSTANCE_MB: u64 = 64;
/// Containers per cell: what a test index's address pool (/26, a /30 each) and uid range hold.
const CELL_CONTAINERS: u64 = 16;
/// How long one swap may take.
const SWAP_TIMEOUT: Duration = Duration::from_secs(300);

fn main() -> Result<()> {
    kiln_bench::require_root("rootfs-swap")?;
    let settings = Settings::from_env()?;
    let scratch = kiln_bench::Scratch::new("rootfs-swap")?;
    let (dir, nats) = (scratch.dir.path(), &scratch.nats.url);
    let cells: Vec<kiln_executor::Config> = CELLS
        .iter()
        .map(|&index| kiln_executor::Config {
            max_containers: CELL_CONTAINERS,
            timings: kiln_executor::Timings::default(),
            ..cell_config(dir, index, nats)
        })
        .collect();
    let mut backends = vec![backend_config(dir, STAGER)];
    backends.extend(cells.iter().map(kiln_executor::Config::backend_config));
    let mut leftovers = Leftovers::new(backends);
    let result = kiln_bench::run(bench(
        dir,
        nats,
        &scratch.executor,
        &cells,
        &settings,
        &mut leftovers,
    ));
    scratch.finish(result, &mut leftovers)
}

/// The run's settings, from the environment.
struct Settings {
    /// `KILN_BENCH_INSTANCES`, 20.
    instances: usize,
    /// `KILN_BENCH_ROUNDS`, 3: swaps to the new image, back, to the new one...
    rounds: usize,
    /// `KILN_BENCH_CLIENTS`, 4: concurrent clients of the request loop.
    clients: usize,
    /// `KILN_BENCH_REQUEST_INTERVAL_MS`, 5: each client's pause between two requests.
    interval_ms: u64,
}

impl Settings {
    fn from_env() -> Result<Settings> {
        fn var(name: &str, default: u64) -> Result<u64> {
            match std::env::var(name) {
                Ok(v) => v.parse().map_err(|e| anyhow!("{name}={v}: {e}")),
                Err(_) => Ok(default),
            }
        }
        let s = Settings {
            instances: usize::try_from(var("KILN_BENCH_INSTANCES", 20)?)?,
            rounds: usize::try_from(var("KILN_BENCH_ROUNDS", 3)?)?,
            clients: usize::try_from(var("KILN_BENCH_CLIENTS", 4)?)?,
            interval_ms: var("KILN_BENCH_REQUEST_INTERVAL_MS", 5)?,
        };
        // At a swap's peak every instance has its successor; one cell may get a container
        // more than its share.
        let room = CELLS.len() * usize::try_from(CELL_CONTAINERS)?;
        if s.instances == 0 || 2 * s.instances + CELLS.len() > room {
            bail!(
                "KILN_BENCH_INSTANCES={}: 1 to {} (the {} cells hold {room} containers, a swap needs twice the instances)",
                s.instances,
                (room - CELLS.len()) / 2,
                CELLS.len()
            );
        }
        if s.rounds == 0 || s.clients == 0 {
            bail!("KILN_BENCH_ROUNDS and KILN_BENCH_CLIENTS must be at least 1");
        }
        Ok(s)
    }
}

/// One swap's figures.
#[derive(Debug)]
struct Round {
    image: &'static str,
    total: Duration,
    first_start: Option<Duration>,
    first_running: Option<Duration>,
    all_running: Option<Duration>,
    /// The last predecessor STOPPED.
    old_stopped: Option<Duration>,
    /// Per cell: its first start on the image → the image imported (only when it fetched it).
    imports: BTreeMap<String, f64>,
    requests: usize,
    failed: usize,
    failures: Vec<String>,
    answered_by_successors: usize,
}

async fn bench(
    dir: &Path,
    nats: &str,
    binary: &Path,
    cells: &[kiln_executor::Config],
    settings: &Settings,
    leftovers: &mut Leftovers,
) -> Result<Value> {
    let msg = anyhow::Error::msg;
    let n = settings.instances;
    eprintln!(
        "starting NATS, the controller, a stager, the router and {} cells",
        cells.len()
    );
    let p = Platform::start(Setup {
        dir,
        nats_url: nats,
        name: "bench-rootfs-swap",
        domain: DOMAIN,
        stager: STAGER,
        stager_stacks: &["tiny"],
        cell_ttl_ms: None,
    })
    .await
    .map_err(msg)?;
    let names: Vec<String> = (1..=cells.len()).map(|i| format!("cell{i}")).collect();
    for (config, name) in cells.iter().zip(&names) {
        kiln_bench::start_cell(dir, binary, config, name, leftovers)?;
    }
    for name in &names {
        leftovers.cells[name]
            .logged("executor.started", Duration::from_secs(300))
            .await
            .map_err(msg)?;
    }
    let ids: Vec<String> = cells.iter().map(|c| c.cell_id.clone()).collect();
    p.cells_until("all cells heard", Duration::from_secs(60), |c| {
        ids.iter().all(|id| c.contains_key(id))
    })
    .await
    .map_err(msg)?;
    let logs: BTreeMap<String, PathBuf> = cells
        .iter()
        .zip(&names)
        .map(|(c, name)| (c.cell_id.clone(), dir.join(format!("{name}.log"))))
        .collect();

    eprintln!("staging the app, then {n} instances");
    let app = p.create_and_stage(APP, ID_PROCFILE).await.map_err(msg)?;
    p.set_limits(&app, INSTANCE_MB, INSTANCE_MB)
        .await
        .map_err(msg)?;
    p.scale(&app, u32::try_from(n)?).await.map_err(msg)?;
    p.app_action(&app, "start").await.map_err(msg)?;
    p.running(&app, n, None, Duration::from_secs(300))
        .await
        .map_err(msg)?;
    let host = p.host(APP);
    p.wait_for_answers(&host, n, Duration::from_secs(120))
        .await
        .map_err(msg)?;
    let spread_before = spread(&p, &app).await;
    eprintln!("  {n} instances answer through the router; per cell: {spread_before:?}");

    eprintln!("building and importing the images");
    let images = dir.join("images");
    let (original, swapped) =
        tokio::task::spawn_blocking(move || kiln_e2e::images::image_archives(&images))
            .await?
            .map_err(msg)?;
    let t = Instant::now();
    let v1 = import(&p, &original, "tiny-v1").await?;
    let v2 = import(&p, &swapped, "tiny-v2").await?;
    let import_secs = t.elapsed().as_secs_f64();
    let before = digests(&p, &app).await;
    eprintln!(
        "  tiny-v1 {v1}, tiny-v2 {v2} ({import_secs:.2} s); the instances run on {:?}",
        before.iter().collect::<BTreeSet<_>>()
    );

    let mut heard = listen(nats, &ids).await?;
    let mut rounds = Vec::new();
    for r in 0..settings.rounds {
        let (image, digest) = if r.is_multiple_of(2) {
            ("tiny-v2", v2.as_str())
        } else {
            ("tiny-v1", v1.as_str())
        };
        eprintln!("round {}: stack.tiny.image = {image}", r + 1);
        let round = swap(&p, &app, &host, image, digest, settings, &mut heard, &logs).await?;
        eprintln!(
            "  {:.2} s (first start {:.2} s, first RUNNING {:.2} s, all RUNNING {:.2} s, all predecessors STOPPED {:.2} s); image imports {:?}; {} requests, {} failed",
            secs(round.total),
            round.first_start.map_or(f64::NAN, secs),
            round.first_running.map_or(f64::NAN, secs),
            round.all_running.map_or(f64::NAN, secs),
            round.old_stopped.map_or(f64::NAN, secs),
            round.imports,
            round.requests,
            round.failed,
        );
        for f in &round.failures {
            eprintln!("    failed: {f}");
        }
        rounds.push(round);
        // The stopped instances' containers go before the next round.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let spread_after = spread(&p, &app).await;
    p.stop();

    let median_of = |image: &str, f: &dyn Fn(&Round) -> Option<Duration>| {
        median(
            rounds
                .iter()
                .filter(|r| r.image == image)
                .filter_map(f)
                .map(secs)
                .collect(),
        )
    };
    let split = |image: &str| {
        json!({
            "first_successor_start": median_of(image, &|r| r.first_start),
            "first_successor_running": median_of(image, &|r| r.first_running),
            "all_successors_running": median_of(image, &|r| r.all_running),
            "all_predecessors_stopped": median_of(image, &|r| r.old_stopped),
            "rollout_done": median_of(image, &|r| Some(r.total)),
        })
    };
    let requests: usize = rounds.iter().map(|r| r.requests).sum();
    let failed: usize = rounds.iter().map(|r| r.failed).sum();
    let imports: BTreeMap<String, f64> = rounds.iter().flat_map(|r| r.imports.clone()).collect();
    Ok(json!({
        "bench": "rootfs-swap",
        "instances": n,
        "cells": cells.len(),
        "stack": "tiny",
        "measured": "PUT /v3/admin/config/stack.tiny.image -> rollout.done and every instance's stack_digest the image's, under a request loop through the router",
        "rounds": settings.rounds,
        "swap_secs_median": median_of("tiny-v2", &|r| Some(r.total)),
        "rollback_secs": median_of("tiny-v1", &|r| Some(r.total)),
        "split_secs_median": { "swap": split("tiny-v2"), "rollback": split("tiny-v1") },
        "cell_image_download_import_secs": imports,
        "image_store_import_secs": round2(import_secs),
        "rounds_detail": rounds.iter().map(|r| json!({
            "image": r.image,
            "secs": round2(secs(r.total)),
            "first_successor_start_secs": r.first_start.map(|d| round2(secs(d))),
            "first_successor_running_secs": r.first_running.map(|d| round2(secs(d))),
            "all_successors_running_secs": r.all_running.map(|d| round2(secs(d))),
            "all_predecessors_stopped_secs": r.old_stopped.map(|d| round2(secs(d))),
            "cell_image_download_import_secs": r.imports,
            "requests": r.requests,
            "failed_requests": r.failed,
            "successors_answered": r.answered_by_successors,
        })).collect::<Vec<_>>(),
        "instances_per_cell": { "before": spread_before, "after": spread_after },
        "request_loop": {
            "clients": settings.clients,
            "pause_ms": settings.interval_ms,
            "failures_sample": rounds.iter().flat_map(|r| r.failures.clone()).take(10).collect::<Vec<_>>(),
        },
        "failed_requests": failed,
        "requests": requests,
        "target_failed_requests": TARGET_FAILED,
        "target_met": failed == TARGET_FAILED,
    }))
}

/// Sets `stack.tiny.image` to `image` under the request loop and waits until the rollout is
/// done and every instance runs on `digest`.
#[allow(clippy::too_many_arguments)]
async fn swap(
    p: &Platform,
    app: &str,
    host: &str,
    image: &'static str,
    digest: &str,
    settings: &Settings,
    heard: &mut mpsc::UnboundedReceiver<(Instant, SystemTime, Heard)>,
    logs: &BTreeMap<String, PathBuf>,
) -> Result<Round> {
    let n = settings.instances;
    let load = Load::start(&p.router, host, settings.clients, settings.interval_ms);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut old: BTreeSet<String> = p
        .stats(app)
        .await
        .iter()
        .filter_map(|s| Some(s["instance_guid"].as_str()?.to_string()))
        .collect();
    while heard.try_recv().is_ok() {}
    let started = Instant::now();
    let (status, body) = send(
        p.call(Method::PUT, "/v3/admin/config/stack.tiny.image")
            .json(&json!({ "value": image })),
    )
    .await;
    if status != 200 || body["value"] != digest {
        load.finish().await;
        bail!("setting stack.tiny.image={image}: {status} {body}");
    }
    let mut first_start = None;
    // Per cell, when its first start on the image was heard (wall clock, for its log).
    let mut cell_first_start: BTreeMap<String, SystemTime> = BTreeMap::new();
    let mut successors = BTreeSet::new();
    let mut running = BTreeSet::new();
    let (mut first_running, mut all_running, mut old_stopped) = (None, None, None);
    let mut poll = tokio::time::interval(Duration::from_millis(100));
    let deadline = started + SWAP_TIMEOUT;
    let total = loop {
        tokio::select! {
            h = heard.recv() => {
                let Some((at, wall, h)) = h else { bail!("the bus listener ended") };
                match h {
                    Heard::Start { cell, app: a, instance, image: Some(d) } if a == app && d == digest => {
                        first_start.get_or_insert(at - started);
                        cell_first_start.entry(cell).or_insert(wall);
                        successors.insert(instance);
                    }
                    Heard::State { guid, state: InstanceState::Running } if successors.contains(&guid) => {
                        first_running.get_or_insert(at - started);
                        running.insert(guid);
                        if running.len() == n {
                            all_running.get_or_insert(at - started);
                        }
                    }
                    Heard::State { guid, state: InstanceState::Stopped }
                        if old.remove(&guid) && old.is_empty() =>
                    {
                        old_stopped = Some(at - started);
                    }
                    _ => {}
                }
            }
            _ = poll.tick() => {
                let (_, config) = send(p.call(Method::GET, "/v3/admin/config/stack.tiny.image")).await;
                let stats = p.stats(app).await;
                let on_image = stats
                    .iter()
                    .filter(|s| s["state"] == "RUNNING" && s["stack_digest"] == digest)
                    .count();
                if config["rollout"]["done"] == true && stats.len() == n && on_image == n {
                    break started.elapsed();
                }
                if Instant::now() > deadline {
                    load.finish().await;
                    bail!(
                        "the rollout to {image} did not end within {SWAP_TIMEOUT:?}: {config}; {on_image} of {} instances on it",
                        stats.len()
                    );
                }
            }
        }
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (requests, failures, answered) = load.finish().await;
    let mut imports = BTreeMap::new();
    for (cell, since) in &cell_first_start {
        let Some(log) = logs.get(cell) else { continue };
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let imported = text
            .lines()
            .filter(|l| l.contains("stack-image.imported") && l.contains(digest))
            .filter_map(|l| parse_utc(l.split_whitespace().next()?))
            .find(|t| t >= since);
        if let Some(t) = imported {
            imports.insert(
                cell.clone(),
                round2(t.duration_since(*since).unwrap_or_default().as_secs_f64()),
            );
        }
    }
    Ok(Round {
        image,
        total,
        first_start,
        first_running,
        all_running,
        old_stopped,
        imports,
        requests,
        failed: failures.len(),
        answered_by_successors: answered.intersection(&successors).count(),
        failures: failures.into_iter().take(10).collect(),
    })
}

/// Uploads `archive` as image `name`; its digest.
async fn import(p: &Platform, archive: &Path, name: &str) -> Result<String> {
    let bytes = tokio::fs::read(archive).await?;
    let (status, body) = send(
        p.call(Method::POST, &format!("/v3/images?name={name}"))
            .body(bytes),
    )
    .await;
    match (status, body["digest"].as_str()) {
        (201, Some(digest)) => Ok(digest.to_string()),
        _ => bail!("importing {name}: {status} {body}"),
    }
}

/// The stack digest of each RUNNING instance of `app`.
async fn digests(p: &Platform, app: &str) -> Vec<String> {
    p.stats(app)
        .await
        .iter()
        .filter(|s| s["state"] == "RUNNING")
        .map(|s| s["stack_digest"].as_str().unwrap_or("?").to_string())
        .collect()
}

/// How many instances each cell runs, by the instances' host ports (each cell's range).
async fn spread(p: &Platform, app: &str) -> BTreeMap<u32, usize> {
    let mut per = BTreeMap::new();
    for s in p.stats(app).await {
        let port = s["instance_ports"][0]["external"].as_u64().unwrap_or(0);
        if let Some(&i) = CELLS
            .iter()
            .find(|&&i| platform::port_range(i).contains(&port))
        {
            *per.entry(i).or_default() += 1;
        }
    }
    per
}

/// Concurrent clients GETting `/id.txt` through the router, each pausing a little between
/// requests; every non-200 and every error is a failure.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<BTreeSet<String>>>,
}

impl Load {
    fn start(router: &str, host: &str, clients: usize, pause_ms: u64) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let began = Instant::now();
        let tasks = (0..clients)
            .map(|_| {
                let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
                let url = format!("{router}/id.txt");
                let host = host.to_string();
                tokio::spawn(async move {
                    let http = reqwest::Client::new();
                    let mut answered = BTreeSet::new();
                    while !stop.load(Ordering::SeqCst) {
                        let r = http
                            .get(&url)
                            .header("host", &host)
                            .timeout(Duration::from_secs(5))
                            .send()
                            .await;
                        let failure = match r {
                            Ok(r) if r.status() == 200 => match r.text().await {
                                Ok(body) => {
                                    if let Some(guid) = body.split_whitespace().nth(1) {
                                        answered.insert(guid.to_string());
                                    }
                                    ok.fetch_add(1, Ordering::SeqCst);
                                    None
                                }
                                Err(e) => Some(format!("reading the body: {e}")),
                            },
                            Ok(r) => {
                                let status = r.status();
                                Some(format!(
                                    "{status}: {}",
                                    r.text().await.unwrap_or_default().trim()
                                ))
                            }
                            Err(e) => Some(format!("{e:?}")),
                        };
                        if let Some(f) = failure {
                            let at = began.elapsed().as_secs_f64();
                            failures
                                .lock()
                                .expect("not poisoned")
                                .push(format!("at {at:.3} s of the loop: {f}"));
                        }
                        tokio::time::sleep(Duration::from_millis(pause_ms)).await;
                    }
                    answered
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failures,
            tasks,
        }
    }

    /// Stops it: (requests, the failures, the instance guids that answered).
    async fn finish(self) -> (usize, Vec<String>, BTreeSet<String>) {
        self.stop.store(true, Ordering::SeqCst);
        let mut answered = BTreeSet::new();
        for t in self.tasks {
            if let Ok(a) = t.await {
                answered.extend(a);
            }
        }
        let failures = std::mem::take(&mut *self.failures.lock().expect("not poisoned"));
        (
            self.ok.load(Ordering::SeqCst) + failures.len(),
            failures,
            answered,
        )
    }
}

/// What the benchmark heard on the bus.
#[derive(Debug)]
enum Heard {
    /// The controller told a cell to start an instance (on a stack image, if set).
    Start {
        cell: String,
        app: String,
        instance: String,
        image: Option<String>,
    },
    /// A cell reported an instance's state.
    State { guid: String, state: InstanceState },
}

/// Subscribes to the cells' start commands and to instance states.
async fn listen(
    nats_url: &str,
    cells: &[String],
) -> Result<mpsc::UnboundedReceiver<(Instant, SystemTime, Heard)>> {
    let mut subjects = vec![kiln_bus::cell::INSTANCE_STATE.to_string()];
    let mut by_subject = HashMap::new();
    for cell in cells {
        let subject = kiln_bus::cell::start_subject(cell);
        subjects.push(subject.clone());
        by_subject.insert(subject, cell.clone());
    }
    kiln_bench::listen(nats_url, subjects, move |m| {
        let (at, wall) = (Instant::now(), SystemTime::now());
        let heard = if m.subject.as_str() == kiln_bus::cell::INSTANCE_STATE {
            let s = kiln_bus::decode::<InstanceStateChange>(&m.subject, &m.payload).ok()?;
            Heard::State {
                guid: s.instance.instance_guid,
                state: s.instance.state,
            }
        } else {
            let s = kiln_bus::decode::<InstanceStart>(&m.subject, &m.payload).ok()?;
            Heard::Start {
                cell: by_subject
                    .get(m.subject.as_str())
                    .cloned()
                    .unwrap_or_default(),
                app: s.app_guid,
                instance: s.instance_guid,
                image: s.stack_image.map(|i| i.digest),
            }
        };
        Some((at, wall, heard))
    })
    .await
}

/// A log line's timestamp (`2026-01-02T03:04:05.678901Z`, UTC).
fn parse_utc(s: &str) -> Option<SystemTime> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|x| x.parse::<i64>());
    let (hh, mm, ss) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    let nanos: u32 = format!("{frac:0<9}").get(..9)?.parse().ok()?;
    // Days since 1970-01-01 (Howard Hinnant's days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::new(secs, nanos))
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    let x = if v.len().is_multiple_of(2) {
        (v[m - 1] + v[m]) / 2.0
    } else {
        v[m]
    };
    Some(round2(x))
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}
