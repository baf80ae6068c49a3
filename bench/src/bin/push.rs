//! `push`: how long `kiln push` takes until the app answers through the router. A whole
//! platform (its own `nats-server`, the controller, a stager on `tiny` and `bookworm` and the
//! router in this process, the cell a `kiln-executor` process with the executor's default
//! timings) and the real `kiln` CLI (release build, logged in as admin). Each push is timed
//! from the moment `kiln push` is started to the first 200 through the router with the app's
//! page, the router asked with the app's `Host` header every 10 ms from the start.
//!
//! Two examples, `examples/staticfile` on `tiny` and `examples/python` on `bookworm`, each
//! pushed cold (a fresh app name: no build cache, no route, the cell's droplet cache emptied;
//! the controller's resource pool is shared by all apps, as in Cloud Foundry, so only the
//! first round uploads files, later ones match them) and warm (the same app again with
//! unchanged bits: every file matched, the previous build cache; staging makes a new droplet,
//! which the cell downloads), `KILN_BENCH_ROUNDS` rounds (5), medians reported. The
//! app is stopped (not timed, until the router no longer answers for it) before the warm push,
//! so that the first 200 is the new droplet's: re-pushing a running app restarts it rolling,
//! and the old instance would answer throughout. Between rounds the app is deleted.
//!
//! The time is split into phases that add up to the total, from what the benchmark hears on
//! the bus (timestamped as it arrives) and the cell's log: upload (→ the staging request),
//! staging (→ the staging result), scheduling (→ the start command to the cell), droplet
//! transfer (→ the droplet downloaded and unpacked on the cell), start (→ RUNNING) and route
//! (→ the first 200). The controller's own timestamps (builds, droplets, audit events) have
//! whole seconds only.
//!
//! The baseline, measured in the same run and interleaved with the pushes (the order
//! alternating by round): the same work without the platform. The example staged straight
//! through `kiln-stager`'s library on the stager's backend (warm: with the previous baseline
//! staging's cache), its droplet unpacked by the cell's `DropletCache`, and run in a container
//! through `kiln-containers` (the same stack, limits, start command and environment as the
//! cell's) until its port answers 200, polled every 10 ms. What the push adds on top is the
//! CLI and the API, uploading the bits, the bus, moving the droplet through the controller's
//! blobstore, the cell's health check and the router; `ratio` is the push's median over the
//! baseline's.
//!
//! Test indexes 76 (the stager, and the baseline on its backend) and 77 (the cell). Prints
//! progress, then one JSON line; everything is removed at the end, on failure and on
//! SIGINT/SIGTERM too.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use kiln_bus::cell::{AppLogLine, InstanceStart, InstanceState, InstanceStateChange};
use kiln_bus::router::RegistryMessage;
use kiln_containers::Backend;
use kiln_e2e::platform::{
    self, backend_config, cell_config, CellProcess, Leftovers, Platform, Setup,
};
use kiln_executor::DropletCache;
use kiln_stager::{Stager, StagingRequest};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::sync::mpsc;

const STAGER: u32 = 76;
const CELL: u32 = 77;
const ROUNDS: usize = 5;
const DOMAIN: &str = "apps.bench.test";
const CELL_NAME: &str = "cell";
/// How often the router (and the baseline's port) is asked while a push (a start) runs.
const POLL: Duration = Duration::from_millis(10);
/// Between the end of one measurement and the next, for the machine to settle.
const SETTLE: Duration = Duration::from_millis(300);
/// The longest a push may take.
const PUSH_TIMEOUT: Duration = Duration::from_secs(300);
/// The cell's droplet cache (the harness's 64 MiB is for tiny's droplets).
const DROPLET_CACHE_MB: u64 = 512;

/// One example app and the stack it is pushed to.
struct Example {
    /// Its figures' key in the JSON.
    key: &'static str,
    /// `examples/<dir>`.
    dir: &'static str,
    stack: &'static str,
    /// Its apps are `<prefix>-<round>`.
    prefix: &'static str,
    /// What its page says: a 200 without it is not the app's.
    hello: &'static str,
    /// Targets (ms), cold and warm.
    target_cold_ms: Option<f64>,
    target_warm_ms: Option<f64>,
}

const EXAMPLES: [Example; 2] = [
    Example {
        key: "staticfile_tiny",
        dir: "staticfile",
        stack: "tiny",
        prefix: "site",
        hello: "Hello from staticfile",
        target_cold_ms: Some(2000.0),
        target_warm_ms: Some(2000.0),
    },
    Example {
        key: "python_bookworm",
        dir: "python",
        stack: "bookworm",
        prefix: "py",
        hello: "Hello from python",
        target_cold_ms: None,
        target_warm_ms: Some(5000.0),
    },
];

/// The phases of a push, in order; their durations add up to the total.
const PHASES: [(&str, &str); 6] = [
    (
        "upload",
        "kiln push started -> the staging request heard on the bus: the CLI finds or creates the app and its route, matches, zips and uploads the bits, the controller checks the package, the build is created",
    ),
    (
        "staging",
        "staging request -> staging result on the bus: the stager downloads the package (and cache), stages in a container, uploads droplet and cache to the controller",
    ),
    (
        "scheduling",
        "staging result -> the start command to the cell on the bus: the CLI sees the build STAGED (it polls every 300 ms), sets the droplet, starts the app; the controller places the instance",
    ),
    (
        "droplet_transfer",
        "start command -> the cell's `instance.droplet-downloaded` log line (its timestamp): the droplet downloaded from the controller and unpacked; 0 when the cell had it",
    ),
    (
        "start",
        "droplet ready -> RUNNING on the bus: container created, process started, health check passed",
    ),
    (
        "route",
        "RUNNING -> the first 200 with the app's page through the router (polled every 10 ms)",
    ),
];

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Cold,
    Warm,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Cold => "cold",
            Mode::Warm => "warm",
        }
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn main() -> Result<()> {
    kiln_bench::require_root("push")?;
    let rounds = kiln_bench::env_or("KILN_BENCH_ROUNDS", ROUNDS).max(1);
    let cli = std::env::current_exe()?.with_file_name("kiln");
    if !cli.exists() {
        bail!("no {}: run bench/push, which builds the CLI", cli.display());
    }
    let scratch = kiln_bench::Scratch::new("push")?;
    let dir = scratch.dir.path();
    let cell = kiln_executor::Config {
        stacks: EXAMPLES.iter().map(|e| e.stack.to_string()).collect(),
        droplet_cache_mb: DROPLET_CACHE_MB,
        timings: kiln_executor::Timings {
            stop_grace_secs: 2,
            ..kiln_executor::Timings::default()
        },
        ..cell_config(dir, CELL, &scratch.nats.url)
    };
    let mut leftovers = Leftovers::new(vec![backend_config(dir, STAGER), cell.backend_config()]);
    let run = Run {
        dir,
        nats: &scratch.nats.url,
        binary: &scratch.executor,
        cli: &cli,
        home: dir.join("kiln-home"),
        cell,
        rounds,
    };
    // The runtime first (the in-process components, the CLI processes and the backends with
    // it), then the cell process and whatever the backends still hold.
    let result = kiln_bench::run(run.bench(&mut leftovers));
    scratch.finish(result, &mut leftovers)
}

struct Run<'a> {
    dir: &'a Path,
    nats: &'a str,
    binary: &'a Path,
    /// The `kiln` CLI.
    cli: &'a Path,
    /// Its `KILN_HOME`.
    home: PathBuf,
    cell: kiln_executor::Config,
    rounds: usize,
}

/// What the benchmark heard on the bus.
#[derive(Debug)]
enum Heard {
    /// The controller asked for a staging.
    StagingRequest { app: String, build: String },
    /// A stager finished one.
    StagingResult { build: String, staged: bool },
    /// The controller told the cell to start an instance.
    Start(Box<InstanceStart>),
    /// The cell reported an instance's state.
    State { guid: String, state: InstanceState },
    /// A line of an app's log (the cell's lifecycle lines among them).
    Log { app: String, message: String },
    /// The cell registered an instance's routes with the router.
    Registered { instance: String, uris: Vec<String> },
}

type Bus = mpsc::UnboundedReceiver<(SystemTime, Heard)>;

/// One push's instants.
#[derive(Debug, Clone)]
struct Pushed {
    /// The start command the cell got (its limits and environment serve the baseline).
    start: InstanceStart,
    began: SystemTime,
    /// The CLI printed the upload's outcome (the package is READY).
    bits_uploaded: Option<SystemTime>,
    requested: SystemTime,
    staged: SystemTime,
    commanded: SystemTime,
    /// The droplet was downloaded and unpacked (none: the cell had it).
    downloaded: Option<SystemTime>,
    created: Option<SystemTime>,
    running: SystemTime,
    registered: Option<SystemTime>,
    answered: SystemTime,
    cli_exited: SystemTime,
    files_uploaded: Option<u64>,
}

impl Pushed {
    fn total(&self) -> Duration {
        between(self.began, self.answered)
    }

    /// The durations of [`PHASES`], in order.
    fn phases(&self) -> [Duration; 6] {
        let ready = self.downloaded.unwrap_or(self.commanded);
        [
            between(self.began, self.requested),
            between(self.requested, self.staged),
            between(self.staged, self.commanded),
            between(self.commanded, ready),
            between(ready, self.running),
            between(self.running, self.answered),
        ]
    }
}

/// One baseline's durations.
#[derive(Debug, Clone, Copy)]
struct Baseline {
    stage: Duration,
    unpack: Duration,
    run: Duration,
}

impl Baseline {
    fn total(&self) -> Duration {
        self.stage + self.unpack + self.run
    }
}

/// The pushes and baselines of one example and mode.
#[derive(Default)]
struct Series {
    pushes: Vec<Pushed>,
    baselines: Vec<Baseline>,
}

impl Run<'_> {
    async fn bench(&self, leftovers: &mut Leftovers) -> Result<Value> {
        let msg = anyhow::Error::msg;
        let stacks: Vec<&str> = EXAMPLES.iter().map(|e| e.stack).collect();
        eprintln!("starting NATS, the controller, a stager on {stacks:?} and the router");
        let p = Platform::start(Setup {
            dir: self.dir,
            nats_url: self.nats,
            name: "bench-push",
            domain: DOMAIN,
            stager: STAGER,
            stager_stacks: &stacks,
            cell_ttl_ms: None,
        })
        .await
        .map_err(msg)?;
        eprintln!("starting the cell");
        kiln_bench::start_cell(self.dir, self.binary, &self.cell, CELL_NAME, leftovers)?
            .logged("executor.started", Duration::from_secs(600))
            .await
            .map_err(msg)?;
        let id = self.cell.cell_id.clone();
        p.cells_until("the cell heard", Duration::from_secs(60), |c| {
            c.contains_key(&id)
        })
        .await
        .map_err(msg)?;
        self.stacks_known(&p, &stacks).await?;
        let password = std::fs::read_to_string(self.dir.join("cc/admin-password"))?;
        let login = self
            .kiln()
            .args(["login", "-a", &p.cc_url, "-u", "admin"])
            .env("KILN_PASSWORD", password.trim())
            .output()
            .await?;
        if !login.status.success() {
            bail!("kiln login: {}", String::from_utf8_lossy(&login.stderr));
        }

        let cell_log = || {
            leftovers
                .cells
                .get(CELL_NAME)
                .map(CellProcess::log)
                .unwrap_or_default()
        };
        let mut heard = listen(self.nats, &id).await?;
        let mut series: BTreeMap<(&str, &str), Series> = BTreeMap::new();
        let mut last_start: BTreeMap<&str, InstanceStart> = BTreeMap::new();
        eprintln!(
            "{} rounds of: each example pushed cold, then warm, each next to its baseline",
            self.rounds
        );
        for round in 0..self.rounds {
            for ex in &EXAMPLES {
                let name = format!("{}-{round}", ex.prefix);
                let cache = self.dir.join(format!("baseline-{}-cache.tgz", ex.dir));
                let mut app: Option<(String, String)> = None;
                for mode in [Mode::Cold, Mode::Warm] {
                    if let Some((app, instance)) = &app {
                        self.kiln_ok(&["stop", &name]).await?;
                        gone(&p, &mut heard, app, instance, &name).await?;
                    } else {
                        // Nothing of the example's on the cell: its droplets go.
                        empty_droplet_cache(&self.cell.data_dir.join("droplets"))?;
                    }
                    let s = series.entry((ex.key, mode.name())).or_default();
                    let push_first = round % 2 == 0 || !last_start.contains_key(ex.key);
                    let mut baseline = None;
                    for pushing in [push_first, !push_first] {
                        tokio::time::sleep(SETTLE).await;
                        if pushing {
                            let pushed = self.push(&p, ex, &name, &mut heard, &cell_log).await?;
                            app = Some((
                                pushed.start.app_guid.clone(),
                                pushed.start.instance_guid.clone(),
                            ));
                            last_start.insert(ex.key, pushed.start.clone());
                            s.pushes.push(pushed);
                        } else {
                            let start = last_start.get(ex.key).ok_or(anyhow!("no start"))?;
                            let b = self
                                .baseline(&p.stager_backend, ex, &name, mode, &cache, start)
                                .await?;
                            baseline = Some(b);
                            s.baselines.push(b);
                        }
                    }
                    let pushed = s.pushes.last().ok_or(anyhow!("no push"))?;
                    eprintln!(
                        "  {}/{} {name} {}: {:>6.0} ms (baseline {:.0} ms)",
                        round + 1,
                        self.rounds,
                        mode.name(),
                        ms(pushed.total()),
                        baseline.map_or(f64::NAN, |b| ms(b.total())),
                    );
                }
                let (app, instance) = app.ok_or(anyhow!("no app"))?;
                self.kiln_ok(&["delete", &name, "-r", "-f"]).await?;
                gone(&p, &mut heard, &app, &instance, &name).await?;
            }
        }
        let left = p.stager_backend.resources_on_machine();
        p.stop();
        Ok(figures(self.rounds, &series, left))
    }

    /// The CLI, with its own `KILN_HOME`; killed if the benchmark stops waiting for it.
    fn kiln(&self) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(self.cli);
        c.env("KILN_HOME", &self.home)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        c
    }

    /// Runs `kiln <args>`, which must succeed.
    async fn kiln_ok(&self, args: &[&str]) -> Result<()> {
        let out = self.kiln().args(args).output().await?;
        if !out.status.success() {
            bail!(
                "kiln {}: {}\n{}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Waits until the controller lists every stack (the stager and the cell advertised).
    async fn stacks_known(&self, p: &Platform, stacks: &[&str]) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (_, body) = platform::send(p.call(reqwest::Method::GET, "/v3/stacks")).await;
            let known: Vec<&str> = body["resources"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s["name"].as_str())
                .collect();
            if stacks.iter().all(|s| known.contains(s)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the controller knows stacks {known:?}, not all of {stacks:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `kiln push <name>` of `ex`, timed to the first 200 through the router, with the
    /// instants of its phases.
    async fn push(
        &self,
        p: &Platform,
        ex: &Example,
        name: &str,
        heard: &mut Bus,
        cell_log: &impl Fn() -> String,
    ) -> Result<Pushed> {
        while heard.try_recv().is_ok() {}
        let host = p.host(name);
        let app_dir = repo().join("examples").join(ex.dir);
        let mut command = self.kiln();
        command
            .args(["push", name, "-s", ex.stack, "-p"])
            .arg(&app_dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let began = SystemTime::now();
        let cli = async {
            let mut child = command.spawn().context("starting kiln push")?;
            let stdout = child.stdout.take().ok_or(anyhow!("no stdout"))?;
            let mut stderr = child.stderr.take().ok_or(anyhow!("no stderr"))?;
            let lines = async {
                let mut lines = BufReader::new(stdout).lines();
                let mut seen = Vec::new();
                while let Some(line) = lines.next_line().await? {
                    seen.push((SystemTime::now(), line));
                }
                Ok::<_, std::io::Error>(seen)
            };
            let errors = async {
                let mut text = String::new();
                stderr.read_to_string(&mut text).await?;
                Ok::<_, std::io::Error>(text)
            };
            let (lines, errors) = tokio::try_join!(lines, errors)?;
            let status = child.wait().await?;
            let exited = SystemTime::now();
            if !status.success() {
                let out: Vec<&str> = lines.iter().map(|(_, l)| l.as_str()).collect();
                bail!("kiln push {name}: {status}\n{}\n{errors}", out.join("\n"));
            }
            Ok((lines, exited))
        };
        let answered = async {
            let mut every = tokio::time::interval(POLL);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let (status, body) = p.through_router(&host, "/").await;
                if status == 200 && body.contains(ex.hello) {
                    return Ok::<_, anyhow::Error>(SystemTime::now());
                }
            }
        };
        let ((lines, cli_exited), answered) =
            tokio::time::timeout(PUSH_TIMEOUT, async { tokio::try_join!(cli, answered) })
                .await
                .map_err(|_| anyhow!("kiln push {name}: no answer within {PUSH_TIMEOUT:?}"))??;

        let mut events = Vec::new();
        while let Ok(e) = heard.try_recv() {
            events.push(e);
        }
        let (requested, app, build) = events
            .iter()
            .find_map(|(at, h)| match h {
                Heard::StagingRequest { app, build } => Some((*at, app.clone(), build.clone())),
                _ => None,
            })
            .ok_or(anyhow!("no staging request heard"))?;
        let staged = events
            .iter()
            .find_map(|(at, h)| match h {
                Heard::StagingResult { build: b, staged } if *b == build => Some((*at, *staged)),
                _ => None,
            })
            .ok_or(anyhow!("no staging result heard"))?;
        if !staged.1 {
            bail!("the build failed");
        }
        let (commanded, start) = events
            .iter()
            .find_map(|(at, h)| match h {
                Heard::Start(s) if s.app_guid == app => Some((*at, (**s).clone())),
                _ => None,
            })
            .ok_or(anyhow!("no start command heard"))?;
        let guid = &start.instance_guid;
        let created_line = format!("successfully created container for instance {guid}");
        let created = events.iter().find_map(|(at, h)| match h {
            Heard::Log { app: a, message } if *a == app && message.contains(&created_line) => {
                Some(*at)
            }
            _ => None,
        });
        let running = events
            .iter()
            .find_map(|(at, h)| match h {
                Heard::State { guid: g, state }
                    if g == guid && *state == InstanceState::Running =>
                {
                    Some(*at)
                }
                _ => None,
            })
            .ok_or(anyhow!("no RUNNING heard"))?;
        let registered = events.iter().find_map(|(at, h)| match h {
            Heard::Registered { instance, uris } if instance == guid && uris.contains(&host) => {
                Some(*at)
            }
            _ => None,
        });
        let downloaded = cell_log()
            .lines()
            .find(|l| l.contains("instance.droplet-downloaded") && l.contains(guid.as_str()))
            .map(|l| logged_at(l).ok_or(anyhow!("no time in the cell's line {l:?}")))
            .transpose()?;
        let uploaded = lines.iter().find(|(_, l)| l.contains(" files matched, "));
        Ok(Pushed {
            began,
            bits_uploaded: uploaded.map(|(at, _)| *at),
            requested,
            staged: staged.0,
            commanded,
            downloaded,
            created,
            running,
            registered,
            answered,
            cli_exited,
            files_uploaded: uploaded.and_then(|(_, l)| {
                l.split(", ")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            }),
            start,
        })
    }

    /// The same work without the platform: `ex` staged through the stager's library on
    /// `backend` (warm: with the previous baseline's cache), unpacked by a `DropletCache` of
    /// the baseline's own (emptied when cold), and run as the cell runs it until its port
    /// answers 200.
    async fn baseline(
        &self,
        backend: &Backend,
        ex: &Example,
        name: &str,
        mode: Mode,
        cache: &Path,
        start: &InstanceStart,
    ) -> Result<Baseline> {
        let droplets = self.dir.join(format!("baseline-droplets-{}", ex.dir));
        if mode == Mode::Cold {
            for old in [droplets.as_path(), cache] {
                if old.is_dir() {
                    std::fs::remove_dir_all(old)?;
                } else if old.exists() {
                    std::fs::remove_file(old)?;
                }
            }
        }
        let droplets = DropletCache::open(&droplets, DROPLET_CACHE_MB << 20, None)?;
        let id = format!("baseline-{name}-{}", mode.name());
        let out = self.dir.join(format!("{id}.tgz"));
        let mut request =
            StagingRequest::new(&id, repo().join("examples").join(ex.dir), ex.stack, &out);
        request.cache_in = (mode == Mode::Warm).then(|| cache.to_path_buf());
        request.cache_out = Some(cache.to_path_buf());
        let t0 = Instant::now();
        let staged = Stager::new(backend, repo().join("buildpacks"))
            .stage(request, kiln_stager::log::discard())
            .await
            .with_context(|| format!("staging {} straight", ex.dir))?;
        let t1 = Instant::now();
        // Into the cache's blobs, as if downloaded: acquiring it only unpacks it.
        let blob = self
            .dir
            .join(format!("baseline-droplets-{}/blobs", ex.dir))
            .join(format!("{}.tgz", staged.droplet_sha256));
        std::fs::rename(&out, &blob)?;
        let layer = droplets
            .acquire("http://127.0.0.1:9/not-downloaded", &staged.droplet_sha256)
            .await?;
        let t2 = Instant::now();
        let run = run_until_answered(
            backend,
            &id,
            &layer.path,
            start,
            &staged.start_command,
            ex.hello,
        )
        .await;
        droplets.release(&layer);
        Ok(Baseline {
            stage: t1 - t0,
            unpack: t2 - t1,
            run: run?,
        })
    }
}

/// Empties the cell's droplet cache (blobs and unpacked layers) while none is in use.
fn empty_droplet_cache(root: &Path) -> Result<()> {
    for dir in [root.join("blobs"), root.join("layers")] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries {
            let path = e?.path();
            if path.is_dir() {
                std::fs::remove_dir_all(&path)?;
            } else {
                std::fs::remove_file(&path)?;
            }
        }
    }
    Ok(())
}

/// Waits until the cell destroyed instance `instance` of app `app` and the router no longer
/// answers for `name`.
async fn gone(p: &Platform, heard: &mut Bus, app: &str, instance: &str, name: &str) -> Result<()> {
    let destroyed = format!("successfully destroyed container for instance {instance}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, heard.recv()).await {
            Ok(Some((_, Heard::Log { app: a, message })))
                if a == app && message.contains(&destroyed) =>
            {
                break;
            }
            Ok(Some(_)) => {}
            Ok(None) => bail!("the bus listener ended"),
            Err(_) => bail!("instance {instance} of {name} was not destroyed"),
        }
    }
    let host = p.host(name);
    loop {
        let (status, _) = p.through_router(&host, "/").await;
        if status != 200 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the router still answers for {name}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Subscribes to staging requests and results, the cell's start commands, instance states,
/// app logs and route registrations.
async fn listen(nats_url: &str, cell_id: &str) -> Result<Bus> {
    let subjects = vec![
        kiln_bus::STAGING_REQUEST.to_string(),
        kiln_bus::STAGING_RESULT.to_string(),
        kiln_bus::cell::start_subject(cell_id),
        kiln_bus::cell::INSTANCE_STATE.to_string(),
        kiln_bus::cell::APP_LOG_ALL.to_string(),
        kiln_bus::router::ROUTER_REGISTER.to_string(),
    ];
    kiln_bench::listen(nats_url, subjects, |m| {
        let at = SystemTime::now();
        let (subject, body) = (m.subject.as_str(), &m.payload);
        let heard = match subject {
            kiln_bus::STAGING_REQUEST => {
                let r = kiln_bus::decode::<kiln_bus::StagingRequest>(subject, body).ok()?;
                Heard::StagingRequest {
                    app: r.app_guid,
                    build: r.build_guid,
                }
            }
            kiln_bus::STAGING_RESULT => {
                let r = kiln_bus::decode::<kiln_bus::StagingResult>(subject, body).ok()?;
                Heard::StagingResult {
                    build: r.build_guid,
                    staged: matches!(r.outcome, kiln_bus::StagingOutcome::Staged(_)),
                }
            }
            kiln_bus::cell::INSTANCE_STATE => {
                let s = kiln_bus::decode::<InstanceStateChange>(subject, body).ok()?;
                Heard::State {
                    guid: s.instance.instance_guid,
                    state: s.instance.state,
                }
            }
            kiln_bus::router::ROUTER_REGISTER => {
                let r = kiln_bus::decode::<RegistryMessage>(subject, body).ok()?;
                Heard::Registered {
                    instance: r.private_instance_id,
                    uris: r.uris,
                }
            }
            s if s.starts_with("kiln.logs.") => {
                let line = kiln_bus::decode::<AppLogLine>(subject, body).ok()?;
                Heard::Log {
                    app: line.app_guid,
                    message: line.message,
                }
            }
            _ => {
                let s = kiln_bus::decode::<InstanceStart>(subject, body).ok()?;
                Heard::Start(Box::new(s))
            }
        };
        Some((at, heard))
    })
    .await
}

/// The droplet `layer` run as the cell runs it (same stack, limits, NetIn, the start command
/// through the droplet's launcher with the same environment) straight through the backend,
/// until its port answers 200 with `hello` (timed); then stopped and destroyed (not timed).
async fn run_until_answered(
    backend: &Backend,
    handle: &str,
    layer: &Path,
    start: &InstanceStart,
    start_command: &str,
    hello: &str,
) -> Result<Duration> {
    let t0 = Instant::now();
    let info = backend
        .create(kiln_bench::cell_container(handle, layer, start))
        .await?;
    let answered = async {
        let port = info
            .mapped_ports
            .first()
            .map(|m| m.host_port)
            .ok_or_else(|| anyhow!("no NetIn port"))?;
        let spec = kiln_bench::cell_process(handle, port, start, start_command);
        let _process = backend.run(handle, spec).await?;
        let http = reqwest::Client::new();
        let url = format!("http://127.0.0.1:{port}/");
        let mut every = tokio::time::interval(POLL);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let r = http.get(&url).timeout(Duration::from_secs(5)).send().await;
            if let Ok(r) = r {
                if r.status() == 200 && r.text().await.unwrap_or_default().contains(hello) {
                    return Ok::<_, anyhow::Error>(t0.elapsed());
                }
            }
            if t0.elapsed() > Duration::from_secs(60) {
                bail!("the baseline's port {port} never answered");
            }
        }
    }
    .await;
    backend.stop(handle, Duration::ZERO).await?;
    backend.destroy(handle).await?;
    answered
}

fn figures(
    rounds: usize,
    series: &BTreeMap<(&str, &str), Series>,
    stager_left: Vec<String>,
) -> Value {
    let mut examples = serde_json::Map::new();
    let mut targets = serde_json::Map::new();
    let mut all_met = true;
    for ex in &EXAMPLES {
        let mut modes = serde_json::Map::new();
        for (mode, target) in [("cold", ex.target_cold_ms), ("warm", ex.target_warm_ms)] {
            let Some(s) = series.get(&(ex.key, mode)) else {
                continue;
            };
            let mut v = series_figures(s);
            if let Some(t) = target {
                let met = v["p50_ms"].as_f64().is_some_and(|p| p <= t);
                all_met &= met;
                targets.insert(format!("{}_{mode}_ms", ex.key), json!(t));
                v["target_ms"] = json!(t);
                v["target_met"] = json!(met);
            }
            modes.insert(mode.into(), v);
        }
        examples.insert(ex.key.into(), Value::Object(modes));
    }
    let phases: serde_json::Map<String, Value> = PHASES
        .iter()
        .map(|(name, how)| (name.to_string(), json!(how)))
        .collect();
    json!({
        "bench": "push",
        "rounds": rounds,
        "measured": "`kiln push NAME -p examples/<app> -s <stack>` (the release CLI) started -> the first 200 with the app's page through the router (Host header, polled every 10 ms from the start); medians",
        "cold": "a fresh app name: no build cache, a new route, the cell's droplet cache emptied; the controller's resource pool is shared by all apps (as in Cloud Foundry), so files an earlier round uploaded are matched, not uploaded again (files_uploaded, per round)",
        "warm": "the same app pushed again with unchanged bits (all files matched, the previous build cache); it is stopped first, not timed, so that the first 200 is the new droplet's",
        "phases": phases,
        "phases_note": "from bus messages timestamped on arrival and the cell's log; medians per phase, so they need not add up to the median total",
        "baseline": "the same example staged straight through kiln-stager's library on the stager's backend (warm: with the previous baseline staging's cache), unpacked by the cell's DropletCache and run through kiln-containers as the cell runs it until its port answers 200 (polled every 10 ms): staging and start without the CLI, the API, the bits upload, the bus, the blobstore, the droplet download, the health check and the router; interleaved with the pushes, the order alternating by round",
        "examples": examples,
        "targets": targets,
        "target_met": all_met,
        "stager_backend_resources_left": stager_left,
    })
}

fn series_figures(s: &Series) -> Value {
    let totals: Vec<Duration> = s.pushes.iter().map(Pushed::total).collect();
    let mut phases = serde_json::Map::new();
    for (i, (name, _)) in PHASES.iter().enumerate() {
        let d: Vec<Duration> = s.pushes.iter().map(|x| x.phases()[i]).collect();
        phases.insert(name.to_string(), json!(p50(&d)));
    }
    let detail = |f: &dyn Fn(&Pushed) -> Option<Duration>| {
        let d: Vec<Duration> = s.pushes.iter().filter_map(f).collect();
        (!d.is_empty()).then(|| p50(&d))
    };
    let baseline: Vec<Duration> = s.baselines.iter().map(Baseline::total).collect();
    let base = |f: fn(&Baseline) -> Duration| p50(&s.baselines.iter().map(f).collect::<Vec<_>>());
    let (t50, b50) = (p50(&totals), p50(&baseline));
    json!({
        "p50_ms": t50,
        "min_ms": quantile(&totals, 0.0),
        "max_ms": quantile(&totals, 1.0),
        "samples_ms": totals.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
        "phases_p50_ms": phases,
        "details_p50_ms": {
            "bits_uploaded": detail(&|x| x.bits_uploaded.map(|t| between(x.began, t))),
            "container_created": detail(&|x| x.created.map(|t| between(x.downloaded.unwrap_or(x.commanded), t))),
            "running_to_registered": detail(&|x| x.registered.map(|t| between(x.running, t))),
            "cli_exited": detail(&|x| Some(between(x.began, x.cli_exited))),
        },
        "files_uploaded": s.pushes.iter().map(|x| x.files_uploaded).collect::<Vec<_>>(),
        "droplet_downloads": s.pushes.iter().filter(|x| x.downloaded.is_some()).count(),
        "baseline_p50_ms": b50,
        "baseline_split_p50_ms": {
            "stage": base(|b| b.stage),
            "unpack": base(|b| b.unpack),
            "run_until_200": base(|b| b.run),
        },
        "ratio": round(t50 / b50),
        "overhead_p50_ms": round(t50 - b50),
    })
}

/// The time of a line of the cell's log (`2025-01-02T03:04:05.123456Z  INFO ...`, UTC).
fn logged_at(line: &str) -> Option<SystemTime> {
    let stamp = line.split_whitespace().next()?.strip_suffix('Z')?;
    let (date, time) = stamp.split_once('T')?;
    let mut date = date.split('-').map(str::parse::<i64>);
    let (y, m, d) = (date.next()?.ok()?, date.next()?.ok()?, date.next()?.ok()?);
    let (hms, fraction) = time.split_once('.').unwrap_or((time, "0"));
    let mut hms = hms.split(':').map(str::parse::<i64>);
    let (h, min, s) = (hms.next()?.ok()?, hms.next()?.ok()?, hms.next()?.ok()?);
    let nanos: u32 = format!("{fraction:0<9}").get(..9)?.parse().ok()?;
    let secs = days_from_civil(y, m, d) * 86_400 + h * 3600 + min * 60 + s;
    Some(UNIX_EPOCH + Duration::new(u64::try_from(secs).ok()?, nanos))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `b - a`, 0 when `b` is earlier.
fn between(a: SystemTime, b: SystemTime) -> Duration {
    b.duration_since(a).unwrap_or_default()
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

fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_time_of_a_log_line() {
        let at = logged_at("2024-11-23T17:59:21.123456Z  INFO kiln_executor: x").expect("a time");
        let d = at.duration_since(UNIX_EPOCH).expect("after 1970");
        assert_eq!(d.as_secs(), 1_732_384_761);
        assert_eq!(d.subsec_micros(), 123_456);
        assert_eq!(logged_at("INFO no time"), None);
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
    }
}
