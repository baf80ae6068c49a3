//! `instance-start`: how long a cell takes to start an instance of a droplet it already has,
//! from the start command to the router answering from the new instance. A whole platform
//! (its own `nats-server`, the controller, a stager and the router in this process, the cell
//! a `kiln-executor` process) runs a Procfile app on `tiny` (busybox `httpd`); a warm-up
//! start downloads and unpacks the droplet, then the app is stopped and started again
//! `KILN_BENCH_STARTS` times (20). Each start is timed from the `InstanceStart` the controller
//! publishes to the cell (heard on the bus) to the first 200 from the router naming the new
//! instance, with the split: the controller (API call → command), the container
//! (command → "successfully created container"), the process (→ "Starting health
//! monitoring"), the health check (→ RUNNING) and the route (RUNNING → the router answers).
//!
//! The baseline, measured in the same run and interleaved with the starts: the same
//! container started straight through `kiln-containers` (same stack, limits, droplet layer,
//! NetIn, the same start command through the droplet's launcher with the same environment)
//! until its port accepts a connection, polled every 2 ms: what is left once the bus, the
//! controller, the health check's interval and the router are taken away. `ratio` is the
//! p50 over the baseline's p50.
//!
//! The cell probes a starting instance at once, then every `starting_probe_interval_ms`;
//! the process is rarely listening by the first probe, so the interval shows in the figure.
//! The starts are measured once per interval in `KILN_BENCH_PROBE_INTERVALS_MS` ("500,50":
//! the executor's default first, which gives the headline figures, then a short one), the
//! cell restarted in between on the same data dir (the droplet stays cached).
//!
//! Test indexes 70 (the stager), 71 (the cell) and 72 (the baseline's backend). Prints
//! progress, then one JSON line; everything is removed at the end, on failure and on
//! SIGINT/SIGTERM too.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use kiln_bench::env_or;
use kiln_bus::cell::{AppLogLine, InstanceStart, InstanceState, InstanceStateChange};
use kiln_containers::Backend;
use kiln_e2e::platform::{
    backend_config, cell_config, CellProcess, Leftovers, Platform, Setup, ID_PROCFILE,
};
use serde_json::{json, Value};
use tokio::sync::mpsc;

const STAGER: u32 = 70;
const CELL: u32 = 71;
const BASELINE: u32 = 72;
const STARTS: usize = 20;
const PROBE_INTERVALS_MS: &str = "500,50";
const DOMAIN: &str = "apps.bench.test";
const APP: &str = "starter";
const TARGET_P50_MS: f64 = 150.0;
/// Instances are this small (MiB), memory and disk.
const INSTANCE_MB: u64 = 64;
/// Between the end of one measurement and the next, for the kernel to finish tearing down.
const SETTLE: Duration = Duration::from_millis(300);

fn main() -> Result<()> {
    kiln_bench::require_root("instance-start")?;
    let starts = env_or("KILN_BENCH_STARTS", STARTS).max(1);
    let intervals: Vec<u64> = std::env::var("KILN_BENCH_PROBE_INTERVALS_MS")
        .unwrap_or_else(|_| PROBE_INTERVALS_MS.into())
        .split(',')
        .map(|v| v.trim().parse().context("KILN_BENCH_PROBE_INTERVALS_MS"))
        .collect::<Result<_>>()?;
    let scratch = kiln_bench::Scratch::new("instance-start")?;
    let dir = scratch.dir.path();
    let cell = cell_config(dir, CELL, &scratch.nats.url);
    let mut leftovers = Leftovers::new(vec![
        backend_config(dir, STAGER),
        cell.backend_config(),
        backend_config(dir, BASELINE),
    ]);
    let run = Run {
        dir,
        nats: &scratch.nats.url,
        binary: &scratch.executor,
        cell,
        starts,
        intervals,
    };
    // The runtime first (the in-process components and backends with it), then the cell
    // process and whatever the backends still hold.
    let result = kiln_bench::run(run.bench(&mut leftovers));
    scratch.finish(result, &mut leftovers)
}

struct Run<'a> {
    dir: &'a Path,
    nats: &'a str,
    binary: &'a Path,
    cell: kiln_executor::Config,
    starts: usize,
    intervals: Vec<u64>,
}

/// What the benchmark heard on the bus.
#[derive(Debug)]
enum Heard {
    /// The controller told the cell to start an instance.
    Start(Box<InstanceStart>),
    /// The cell reported an instance's state.
    State {
        guid: String,
        state: InstanceState,
        description: Option<String>,
    },
    /// The cell's log line: the instance's container is created.
    Created(String),
    /// The cell's log line: the process runs and the health checks begin.
    Monitoring,
}

/// One start's instants.
#[derive(Debug, Clone, Copy)]
struct Sample {
    api: Instant,
    command: Instant,
    created: Instant,
    monitoring: Instant,
    running: Instant,
    routable: Instant,
}

/// One probe interval's figures.
struct Series {
    probe_interval_ms: u64,
    samples: Vec<Sample>,
    baseline: Vec<Duration>,
    downloads: usize,
}

impl Run<'_> {
    async fn bench(&self, leftovers: &mut Leftovers) -> Result<Value> {
        eprintln!("starting NATS, the controller, a stager and the router");
        let p = Platform::start(Setup {
            dir: self.dir,
            nats_url: self.nats,
            name: "bench-instance-start",
            domain: DOMAIN,
            stager: STAGER,
            stager_stacks: &["tiny"],
            cell_ttl_ms: None,
        })
        .await
        .map_err(anyhow::Error::msg)?;
        let baseline = Backend::new(backend_config(self.dir, BASELINE)).await?;
        kiln_executor::import_stack(&baseline, "tiny").await?;

        let mut series = Vec::new();
        let mut app = None;
        for (n, &interval) in self.intervals.iter().enumerate() {
            let mut config = self.cell.clone();
            config.timings = kiln_executor::Timings {
                starting_probe_interval_ms: interval,
                stop_grace_secs: 2,
                ..kiln_executor::Timings::default()
            };
            // A new process (the last one killed first) on the same data dir: the droplet
            // stays in its cache.
            let name = format!("cell-{n}");
            leftovers.cells.clear();
            kiln_bench::start_cell(self.dir, self.binary, &config, &name, leftovers)?
                // Started: subscribed to its commands (the first start imports the stack).
                .logged("executor.started", Duration::from_secs(300))
                .await
                .map_err(anyhow::Error::msg)?;
            let id = config.cell_id.clone();
            p.cells_until("the cell heard", Duration::from_secs(60), |c| {
                c.contains_key(&id)
            })
            .await
            .map_err(anyhow::Error::msg)?;

            let app = match &app {
                Some(app) => app,
                None => {
                    eprintln!("staging the app");
                    let guid = p
                        .create_and_stage(APP, ID_PROCFILE)
                        .await
                        .map_err(anyhow::Error::msg)?;
                    p.set_limits(&guid, INSTANCE_MB, INSTANCE_MB)
                        .await
                        .map_err(anyhow::Error::msg)?;
                    app.insert(guid)
                }
            };
            let mut heard = listen(self.nats, &id, app).await?;
            let host = p.host(APP);
            // Warm-up: the first start of the series (downloads and unpacks the droplet on
            // the first one).
            let (warm_up, _, start) = start_once(&p, app, &host, &mut heard).await?;
            stop_once(&p, app, &host, &warm_up, &mut heard).await?;
            let layer = config
                .data_dir
                .join("droplets/layers")
                .join(&start.droplet_sha256);
            let log_of = |leftovers: &Leftovers| {
                leftovers
                    .cells
                    .get(&name)
                    .map(CellProcess::log)
                    .unwrap_or_default()
            };
            let downloads_before = log_of(leftovers).matches("droplet.downloaded").count();
            eprintln!(
                "probe interval {interval} ms: {} starts, each after a baseline start",
                self.starts
            );
            let mut s = Series {
                probe_interval_ms: interval,
                samples: Vec::new(),
                baseline: Vec::new(),
                downloads: 0,
            };
            for i in 0..self.starts {
                tokio::time::sleep(SETTLE).await;
                let handle = format!("baseline-{n}-{i}");
                s.baseline
                    .push(baseline_start(&baseline, &handle, &layer, &start).await?);
                tokio::time::sleep(SETTLE).await;
                let (guid, sample, _) = start_once(&p, app, &host, &mut heard).await?;
                s.samples.push(sample);
                eprintln!(
                    "  {:>2}/{}: {:>6.1} ms (baseline {:.1} ms)",
                    i + 1,
                    self.starts,
                    ms(sample.routable - sample.command),
                    ms(*s.baseline.last().expect("a baseline")),
                );
                stop_once(&p, app, &host, &guid, &mut heard).await?;
            }
            s.downloads = log_of(leftovers)
                .matches("droplet.downloaded")
                .count()
                .saturating_sub(downloads_before);
            series.push(s);
        }
        let left = baseline.resources_on_machine();
        drop(baseline);
        p.stop();
        Ok(figures(self.starts, &series, left.len()))
    }
}

/// Subscribes to the cell's start commands, instance states and the app's log.
async fn listen(
    nats_url: &str,
    cell_id: &str,
    app: &str,
) -> Result<mpsc::UnboundedReceiver<(Instant, Heard)>> {
    let subjects = vec![
        kiln_bus::cell::start_subject(cell_id),
        kiln_bus::cell::INSTANCE_STATE.to_string(),
        kiln_bus::cell::app_log(app),
    ];
    kiln_bench::listen(nats_url, subjects, |m| {
        let at = Instant::now();
        let heard = if m.subject.as_str() == kiln_bus::cell::INSTANCE_STATE {
            let s = kiln_bus::decode::<InstanceStateChange>(&m.subject, &m.payload).ok()?;
            Heard::State {
                guid: s.instance.instance_guid,
                state: s.instance.state,
                description: s.description,
            }
        } else if m.subject.starts_with("kiln.logs.") {
            let line = kiln_bus::decode::<AppLogLine>(&m.subject, &m.payload).ok()?;
            if let Some(guid) = line
                .message
                .split_once("successfully created container for instance ")
                .map(|(_, g)| g.trim().to_string())
            {
                Heard::Created(guid)
            } else if line.message == "Starting health monitoring of container" {
                Heard::Monitoring
            } else {
                return None;
            }
        } else {
            let s = kiln_bus::decode::<InstanceStart>(&m.subject, &m.payload).ok()?;
            Heard::Start(Box::new(s))
        };
        Some((at, heard))
    })
    .await
}

async fn next(
    heard: &mut mpsc::UnboundedReceiver<(Instant, Heard)>,
    deadline: Instant,
    waiting_for: &str,
) -> Result<(Instant, Heard)> {
    let left = deadline.saturating_duration_since(Instant::now());
    match tokio::time::timeout(left, heard.recv()).await {
        Ok(Some(h)) => Ok(h),
        Ok(None) => bail!("the bus listener ended"),
        Err(_) => bail!("timed out waiting for {waiting_for}"),
    }
}

/// Starts the app (stopped, one instance) and times it: (the instance's guid, the sample)
/// and the start command it got.
async fn start_once(
    p: &Platform,
    app: &str,
    host: &str,
    heard: &mut mpsc::UnboundedReceiver<(Instant, Heard)>,
) -> Result<(String, Sample, InstanceStart)> {
    while heard.try_recv().is_ok() {}
    let api = Instant::now();
    p.app_action(app, "start")
        .await
        .map_err(anyhow::Error::msg)?;
    let deadline = api + Duration::from_secs(60);
    let (mut command, mut created, mut monitoring) = (None, None, None);
    let mut start = None;
    let running = loop {
        match next(heard, deadline, "RUNNING").await? {
            (at, Heard::Start(s)) if s.app_guid == app && start.is_none() => {
                command = Some(at);
                start = Some(*s);
            }
            (at, Heard::Created(g)) if start.as_ref().is_some_and(|s| s.instance_guid == g) => {
                created = Some(at);
            }
            (at, Heard::Monitoring) if created.is_some() && monitoring.is_none() => {
                monitoring = Some(at);
            }
            (at, Heard::State { guid, state, .. })
                if state == InstanceState::Running
                    && start.as_ref().is_some_and(|s| s.instance_guid == guid) =>
            {
                break at;
            }
            (
                _,
                Heard::State {
                    guid,
                    state: state @ (InstanceState::Crashed | InstanceState::Stopped),
                    description,
                },
            ) if start.as_ref().is_some_and(|s| s.instance_guid == guid) => {
                bail!("the instance went {state:?}: {description:?}");
            }
            _ => {}
        }
    };
    let start = start.ok_or_else(|| anyhow!("RUNNING before the start command"))?;
    let guid = start.instance_guid.clone();
    // RUNNING is published before the route: from here, the router is polled every 2 ms
    // until it answers from this instance.
    let routable = loop {
        let (status, body) = p.through_router(host, "/id.txt").await;
        if status == 200 && body.contains(&guid) {
            break Instant::now();
        }
        if Instant::now() > deadline {
            bail!("the router does not answer from {guid}: {status} {body}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let sample = Sample {
        api,
        command: command.ok_or_else(|| anyhow!("no start command heard"))?,
        created: created.ok_or_else(|| anyhow!("no 'created container' line heard"))?,
        monitoring: monitoring.ok_or_else(|| anyhow!("no 'health monitoring' line heard"))?,
        running,
        routable,
    };
    Ok((guid, sample, start))
}

/// Stops the app and waits until instance `guid` is STOPPED and its route gone.
async fn stop_once(
    p: &Platform,
    app: &str,
    host: &str,
    guid: &str,
    heard: &mut mpsc::UnboundedReceiver<(Instant, Heard)>,
) -> Result<()> {
    p.app_action(app, "stop")
        .await
        .map_err(anyhow::Error::msg)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let (_, Heard::State { guid: g, state, .. }) = next(heard, deadline, "STOPPED").await? {
            if g == guid && matches!(state, InstanceState::Stopped | InstanceState::Crashed) {
                break;
            }
        }
    }
    loop {
        let (status, _) = p.through_router(host, "/id.txt").await;
        if status != 200 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the router still answers for a stopped app");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The same container and process as the cell's, straight through the backend: create +
/// run until the port accepts (timed), then stop and destroy (not timed).
async fn baseline_start(
    backend: &Backend,
    handle: &str,
    layer: &Path,
    start: &InstanceStart,
) -> Result<Duration> {
    let t0 = Instant::now();
    let info = backend
        .create(kiln_bench::cell_container(handle, layer, start))
        .await?;
    let port = info
        .mapped_ports
        .first()
        .map(|m| m.host_port)
        .ok_or_else(|| anyhow!("no NetIn port"))?;
    let spec = kiln_bench::cell_process(handle, port, start, &start.start_command);
    let process = backend.run(handle, spec).await;
    let listening = async {
        let _process = process?;
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Ok::<_, anyhow::Error>(t0.elapsed());
            }
            if t0.elapsed() > Duration::from_secs(30) {
                bail!("the baseline's port {port} never accepted");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    .await;
    backend.stop(handle, Duration::ZERO).await?;
    backend.destroy(handle).await?;
    listening
}

fn figures(starts: usize, series: &[Series], baseline_left: usize) -> Value {
    let one = |s: &Series| {
        let total: Vec<Duration> = s.samples.iter().map(|x| x.routable - x.command).collect();
        let from_api: Vec<Duration> = s.samples.iter().map(|x| x.routable - x.api).collect();
        let split = |f: fn(&Sample) -> Duration| p50(&s.samples.iter().map(f).collect::<Vec<_>>());
        let (t50, b50) = (p50(&total), p50(&s.baseline));
        json!({
            "probe_interval_ms": s.probe_interval_ms,
            "p50_ms": t50, "p90_ms": p90(&total), "max_ms": max(&total),
            "from_api_p50_ms": p50(&from_api), "from_api_p90_ms": p90(&from_api),
            "from_api_max_ms": max(&from_api),
            "split_p50_ms": {
                "api_to_command": split(|x| x.command - x.api),
                "command_to_container_created": split(|x| x.created - x.command),
                "created_to_process_started": split(|x| x.monitoring - x.created),
                "process_to_healthy": split(|x| x.running - x.monitoring),
                "healthy_to_routable": split(|x| x.routable - x.running),
            },
            "baseline_p50_ms": b50, "baseline_p90_ms": p90(&s.baseline),
            "baseline_max_ms": max(&s.baseline),
            "ratio": round(t50 / b50),
            "droplet_downloads": s.downloads,
        })
    };
    let all: Vec<Value> = series.iter().map(one).collect();
    let head = all.first().cloned().unwrap_or(Value::Null);
    json!({
        "bench": "instance-start",
        "starts": starts,
        "stack": "tiny",
        "measured": "start command (InstanceStart heard on the bus) -> RUNNING -> the router answers 200 from the new instance; droplet cached on the cell",
        "p50_ms": head["p50_ms"], "p90_ms": head["p90_ms"], "max_ms": head["max_ms"],
        "probe_interval_ms": head["probe_interval_ms"],
        "baseline": "kiln-containers create (same stack, limits, droplet layer, NetIn) + the same start command until its port accepts, interleaved",
        "baseline_p50_ms": head["baseline_p50_ms"],
        "ratio": head["ratio"],
        "target_p50_ms": TARGET_P50_MS,
        "target_met": head["p50_ms"].as_f64().is_some_and(|v| v <= TARGET_P50_MS),
        "series": all,
        "baseline_resources_left": baseline_left,
    })
}

fn ms(d: Duration) -> f64 {
    round(d.as_secs_f64() * 1000.0)
}

fn quantile(samples: &[Duration], q: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort();
    match sorted.len() {
        0 => f64::NAN,
        n => ms(sorted[((n as f64 - 1.0) * q).round() as usize]),
    }
}

fn p50(samples: &[Duration]) -> f64 {
    quantile(samples, 0.5)
}

fn p90(samples: &[Duration]) -> f64 {
    quantile(samples, 0.9)
}

fn max(samples: &[Duration]) -> f64 {
    quantile(samples, 1.0)
}

fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
