//! `router`: HTTP throughput and tail latency of Kiln's router next to nginx. One backend (a
//! hyper server on a runtime of its own, answering a small fixed body) is loaded by `wrk`
//! three ways: directly, through Kiln's router (in-process, with its own `nats-server`, the
//! route registered over the bus as a cell would, RTR lines on as by default), and through
//! nginx (the Debian package, started here with a generated config in a temp dir: a reverse
//! proxy with upstream keepalive and its access log on, as by default). Same `wrk` threads,
//! connections and duration for each, in interleaved rounds whose order rotates; the figures
//! are the medians over the rounds. Prints progress, then one JSON line: `ratio_vs_nginx`
//! (Kiln req/s over nginx req/s, target ≥ 1.0) and `added_p99_ms` (Kiln p99 − direct p99,
//! target ≤ 0.3). Each proxy's CPU time per request is read from `/proc` (the router's runtime
//! threads, nginx's workers, and apart the nats-server carrying the RTR lines). Then, as each
//! saturated run's p99 is mostly queueing for the CPU, a phase with one connection (one
//! request at a time) measures the latency each proxy adds (`one_connection`).
//!
//! Settings (environment): `KILN_BENCH_ROUNDS` (5), `KILN_BENCH_DURATION_SECS` (6),
//! `KILN_BENCH_THREADS` (2), `KILN_BENCH_CONNECTIONS` (32), `KILN_BENCH_LATENCY_SECS` (3; 0
//! skips that phase), `KILN_BENCH_RTR_LINES` (true), `KILN_BENCH_ONLY` (`direct`, `kiln` or
//! `nginx`: load that one alone, for profiling).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use kiln_bench::env_or;
use kiln_bus::router::{RegistryMessage, ROUTER_REGISTER};
use kiln_testkit::{free_port, Nats};
use serde_json::{json, Value};

const THREADS: u32 = 2;
const CONNECTIONS: u32 = 32;
const DURATION_SECS: u64 = 6;
const ROUNDS: usize = 5;
const WARMUP_SECS: u64 = 3;
/// Each run of the one-connection latency phase.
const LATENCY_SECS: u64 = 3;
/// What the backend answers.
const BODY: &[u8] = b"hello from the backend\n";
/// The route's host, sent as `Host` to all three.
const HOST: &str = "bench.kiln.local";
const TARGET_RATIO: f64 = 1.0;
/// The router's threads, by their name's start: its runtime's, its proxy threads and its RTR
/// publishing thread (`kiln-router-rtr`); their CPU time is read from their `schedstat`.
const ROUTER_THREADS: &str = "kiln-router";
const TARGET_ADDED_P99_MS: f64 = 0.3;

/// The allocator `kiln-router` runs with, so that the router here costs what it costs there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<()> {
    // The backend has threads of its own, like a process of its own would, so that the
    // router's runtime (the main one, two workers as on these machines) is the router's.
    let backend_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("backend")
        .enable_all()
        .build()?;
    let backend = backend_runtime.block_on(serve_backend())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name(ROUTER_THREADS)
        .enable_all()
        .build()?;
    // Interrupted, the bench is dropped on the way out: its nginx and nats-server with it.
    let figures = runtime.block_on(async {
        tokio::select! {
            figures = bench(backend) => figures,
            signal = kiln_e2e::platform::interrupted() => Err(anyhow::anyhow!("interrupted ({signal})")),
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(5));
    backend_runtime.shutdown_timeout(Duration::from_secs(5));
    println!("{}", figures?);
    Ok(())
}

/// The backend: HTTP/1.1 with keep-alive, the same small body for every request.
async fn serve_backend() -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = service_fn(|_request: Request<hyper::body::Incoming>| async {
                    let mut response = Response::new(Full::new(Bytes::from_static(BODY)));
                    response
                        .headers_mut()
                        .insert("content-type", "text/plain".parse().expect("a header"));
                    Ok::<_, Infallible>(response)
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Direct,
    Kiln,
    Nginx,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Kiln => "kiln",
            Target::Nginx => "nginx",
        }
    }
}

/// One `wrk --latency` run.
#[derive(Debug, Clone, Copy)]
struct Run {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Requests completed.
    requests: u64,
    /// Non-2xx/3xx responses and socket errors.
    errors: u64,
    /// CPU time the proxy spent per request, µs (0 for the direct runs).
    cpu_us: f64,
    /// For Kiln: the nats-server's CPU per request (carrying the RTR lines), µs.
    bus_cpu_us: f64,
}

struct Load {
    threads: u32,
    connections: u32,
}

async fn bench(backend: SocketAddr) -> Result<Value> {
    let duration = env_or("KILN_BENCH_DURATION_SECS", DURATION_SECS);
    let rounds = env_or("KILN_BENCH_ROUNDS", ROUNDS);
    let load = Load {
        threads: env_or("KILN_BENCH_THREADS", THREADS),
        connections: env_or("KILN_BENCH_CONNECTIONS", CONNECTIONS),
    };
    let wrk = Command::new("wrk").arg("--version").output();
    if wrk.is_err() {
        bail!("wrk is not installed (deploy/setup installs it)");
    }

    let rtr_lines = env_or("KILN_BENCH_RTR_LINES", true);
    eprintln!("starting nats-server, Kiln's router and nginx; the backend is on {backend}");
    let bus = Nats::start();
    let router = kiln_router::start(kiln_router::Config {
        listen: "127.0.0.1:0".parse()?,
        status_listen: "127.0.0.1:0".parse()?,
        nats_url: bus.url.clone(),
        rtr_lines,
        ..kiln_router::Config::default()
    })
    .await
    .context("starting the router")?;
    register(&bus.url, backend).await?;
    let http = reqwest::Client::builder().no_proxy().build()?;
    wait_for_200(&http, router.addr).await?;
    let scratch = tempfile::tempdir()?;
    let nginx = Nginx::start(scratch.path(), backend)?;
    wait_for_200(&http, nginx.addr).await?;

    // KILN_BENCH_ONLY=kiln (say) loads one of them alone, for profiling.
    let only = std::env::var("KILN_BENCH_ONLY").ok();
    let targets: Vec<Target> = [Target::Direct, Target::Kiln, Target::Nginx]
        .into_iter()
        .filter(|t| only.as_deref().is_none_or(|o| o == t.name()))
        .collect();
    let addr = |t: Target| match t {
        Target::Direct => backend,
        Target::Kiln => router.addr,
        Target::Nginx => nginx.addr,
    };
    eprintln!(
        "wrk: {} threads, {} connections; warm-up {WARMUP_SECS} s each, then {rounds} rounds of {duration} s each, order rotating",
        load.threads, load.connections
    );
    for &t in &targets {
        wrk_run(&load, addr(t), WARMUP_SECS).await?;
    }
    let mut runs: Vec<(Target, Run)> = Vec::new();
    for round in 0..rounds {
        for i in 0..targets.len() {
            let t = targets[(i + round) % targets.len()];
            tokio::time::sleep(Duration::from_secs(1)).await;
            let cpu = |t: Target| match t {
                Target::Direct => 0,
                Target::Kiln => cpu_ns(&threads_named(ROUTER_THREADS)),
                Target::Nginx => cpu_ns(&nginx.workers()),
            };
            let bus_threads = tasks_of(bus.pid());
            let (cpu_before, bus_before) = (cpu(t), cpu_ns(&bus_threads));
            let mut run = wrk_run(&load, addr(t), duration).await?;
            let per_request = |ns: u64| ns as f64 / 1000.0 / run.requests.max(1) as f64;
            run.cpu_us = per_request(cpu(t).saturating_sub(cpu_before));
            if t == Target::Kiln {
                run.bus_cpu_us = per_request(cpu_ns(&bus_threads).saturating_sub(bus_before));
            }
            eprintln!(
                "  round {}/{rounds} {:>6}: {:>9.0} req/s  p50 {:.3} ms  p99 {:.3} ms  proxy CPU {:.1} µs/request{}",
                round + 1,
                t.name(),
                run.rps,
                run.p50_ms,
                run.p99_ms,
                run.cpu_us,
                if run.errors > 0 {
                    format!("  {} errors", run.errors)
                } else {
                    String::new()
                }
            );
            runs.push((t, run));
        }
    }
    // The proxies' own latency, away from saturation: one connection, one request at a time.
    let latency_secs = env_or("KILN_BENCH_LATENCY_SECS", LATENCY_SECS);
    let one = Load {
        threads: 1,
        connections: 1,
    };
    let mut single: Vec<(Target, Run)> = Vec::new();
    if latency_secs > 0 {
        eprintln!("one connection, {latency_secs} s each, {rounds} rounds");
        for round in 0..rounds {
            for i in 0..targets.len() {
                let t = targets[(i + round) % targets.len()];
                let run = wrk_run(&one, addr(t), latency_secs).await?;
                eprintln!(
                    "  round {}/{rounds} {:>6}: p50 {:.3} ms  p99 {:.3} ms",
                    round + 1,
                    t.name(),
                    run.p50_ms,
                    run.p99_ms
                );
                single.push((t, run));
            }
        }
    }
    let varz: Value = http
        .get(format!("http://{}/varz", router.status_addr))
        .send()
        .await?
        .json()
        .await?;
    router.shutdown();
    router.stopped().await;
    drop(nginx);
    drop(bus);

    let summary = |t: Target| {
        let of: Vec<Run> = runs.iter().filter(|(x, _)| *x == t).map(|r| r.1).collect();
        let median = |f: fn(&Run) -> f64| median(of.iter().map(f).collect());
        Summary {
            rps: median(|r| r.rps),
            p50_ms: median(|r| r.p50_ms),
            p99_ms: median(|r| r.p99_ms),
            cpu_us: median(|r| r.cpu_us),
            bus_cpu_us: median(|r| r.bus_cpu_us),
            errors: of.iter().map(|r| r.errors).sum::<u64>(),
            rps_per_round: of.iter().map(|r| round(r.rps)).collect(),
            p99_per_round: of.iter().map(|r| round(r.p99_ms)).collect(),
        }
    };
    let mut out = json!({
        "bench": "router",
        "wrk": {"threads": load.threads, "connections": load.connections, "duration_secs": duration},
        "rounds": rounds,
    });
    let mut medians = std::collections::HashMap::new();
    let mut errors = 0;
    for t in [Target::Direct, Target::Kiln, Target::Nginx] {
        let s = summary(t);
        errors += s.errors;
        out[t.name()] = json!({
            "rps": round(s.rps), "p50_ms": round(s.p50_ms), "p99_ms": round(s.p99_ms),
            "rps_per_round": s.rps_per_round, "p99_ms_per_round": s.p99_per_round,
            "errors": s.errors,
        });
        if t != Target::Direct {
            out[t.name()]["cpu_us_per_request"] = json!(round(s.cpu_us));
        }
        if t == Target::Kiln {
            out[t.name()]["nats_cpu_us_per_request"] = json!(round(s.bus_cpu_us));
        }
        medians.insert(t.name(), (s.rps, s.p99_ms));
    }
    let (kiln_rps, kiln_p99) = medians["kiln"];
    let (nginx_rps, _) = medians["nginx"];
    let (_, direct_p99) = medians["direct"];
    let ratio = if nginx_rps > 0.0 {
        kiln_rps / nginx_rps
    } else {
        0.0
    };
    let added = kiln_p99 - direct_p99;
    out["ratio_vs_nginx"] = json!(round(ratio));
    let (kiln_cpu, nginx_cpu) = (summary(Target::Kiln).cpu_us, summary(Target::Nginx).cpu_us);
    if nginx_cpu > 0.0 {
        out["cpu_ratio_vs_nginx"] = json!(round(kiln_cpu / nginx_cpu));
    }
    out["added_p99_ms"] = json!(round(added));
    out["targets"] = json!({"ratio_vs_nginx": TARGET_RATIO, "added_p99_ms": TARGET_ADDED_P99_MS});
    out["targets_met"] =
        json!(ratio >= TARGET_RATIO && added <= TARGET_ADDED_P99_MS && errors == 0);
    let single_p99 = |t: Target| {
        median(
            single
                .iter()
                .filter(|(x, _)| *x == t)
                .map(|(_, r)| r.p99_ms)
                .collect(),
        )
    };
    let single_p50 = |t: Target| {
        median(
            single
                .iter()
                .filter(|(x, _)| *x == t)
                .map(|(_, r)| r.p50_ms)
                .collect(),
        )
    };
    if !single.is_empty() {
        out["one_connection"] = json!({
            "direct_p50_ms": round(single_p50(Target::Direct)),
            "direct_p99_ms": round(single_p99(Target::Direct)),
            "kiln_p50_ms": round(single_p50(Target::Kiln)),
            "kiln_p99_ms": round(single_p99(Target::Kiln)),
            "nginx_p50_ms": round(single_p50(Target::Nginx)),
            "nginx_p99_ms": round(single_p99(Target::Nginx)),
            "kiln_added_p99_ms": round(single_p99(Target::Kiln) - single_p99(Target::Direct)),
            "nginx_added_p99_ms": round(single_p99(Target::Nginx) - single_p99(Target::Direct)),
        });
    }
    out["kiln_rtr_lines_on"] = json!(rtr_lines);
    out["kiln_rtr_lines"] = varz["rtr_lines"].clone();
    out["kiln_rtr_dropped"] = varz["rtr_dropped"].clone();
    Ok(out)
}

/// Medians over the rounds of one target.
struct Summary {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu_us: f64,
    bus_cpu_us: f64,
    errors: u64,
    rps_per_round: Vec<f64>,
    p99_per_round: Vec<f64>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Threads (as `/proc/<pid>/task/<tid>` paths) of this process whose name starts with `name`.
fn threads_named(name: &str) -> Vec<std::path::PathBuf> {
    tasks_of(std::process::id())
        .into_iter()
        .filter(|t| std::fs::read_to_string(t.join("comm")).is_ok_and(|c| c.starts_with(name)))
        .collect()
}

/// Every thread of process `pid`.
fn tasks_of(pid: u32) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|dir| dir.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// CPU time of `tasks` so far, ns (the first field of `schedstat`).
fn cpu_ns(tasks: &[std::path::PathBuf]) -> u64 {
    tasks
        .iter()
        .filter_map(|t| std::fs::read_to_string(t.join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Registers the backend for [`HOST`], as a cell's executor would.
async fn register(nats_url: &str, backend: SocketAddr) -> Result<()> {
    let client = async_nats::connect(nats_url).await?;
    let m = RegistryMessage {
        host: backend.ip().to_string(),
        port: backend.port(),
        uris: vec![HOST.into()],
        app: "bench-app-guid".into(),
        private_instance_id: "bench-instance".into(),
        private_instance_index: "0".into(),
        ..RegistryMessage::default()
    };
    client
        .publish(ROUTER_REGISTER, kiln_bus::encode(&m).into())
        .await?;
    client.flush().await?;
    Ok(())
}

async fn wait_for_200(http: &reqwest::Client, addr: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let response = http
            .get(format!("http://{addr}/"))
            .header("host", HOST)
            .send()
            .await;
        if let Ok(r) = response {
            if r.status() == 200 && r.bytes().await.ok().as_deref() == Some(BODY) {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("{addr} did not answer 200 with the backend's body within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `wrk --latency` against `addr` for `secs` (without blocking the router's runtime).
async fn wrk_run(load: &Load, addr: SocketAddr, secs: u64) -> Result<Run> {
    let output = tokio::process::Command::new("wrk")
        .args([
            format!("-t{}", load.threads),
            format!("-c{}", load.connections),
            format!("-d{secs}s"),
            "--latency".into(),
            "-H".into(),
            format!("Host: {HOST}"),
            format!("http://{addr}/"),
        ])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "wrk failed: {}\n{text}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    parse_wrk(&text).with_context(|| format!("reading wrk's output:\n{text}"))
}

/// Requests/s, p50 and p99 (ms), requests and errors from `wrk --latency`'s report.
fn parse_wrk(text: &str) -> Result<Run> {
    let mut rps = None;
    let (mut p50, mut p99) = (None, None);
    let mut errors = 0;
    let mut requests = None;
    for line in text.lines().map(str::trim) {
        if let Some((n, _)) = line.split_once(" requests in ") {
            requests = n.trim().parse::<u64>().ok();
        } else if let Some(v) = line.strip_prefix("Requests/sec:") {
            rps = v.trim().parse::<f64>().ok();
        } else if let Some(v) = line.strip_prefix("50%") {
            p50 = wrk_time_ms(v.trim());
        } else if let Some(v) = line.strip_prefix("99%") {
            p99 = wrk_time_ms(v.trim());
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            errors += v.trim().parse::<u64>().unwrap_or(1);
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            // `connect 0, read 0, write 0, timeout 0`
            errors += v
                .split(',')
                .filter_map(|part| part.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    match (rps, p50, p99, requests) {
        (Some(rps), Some(p50_ms), Some(p99_ms), Some(requests)) => Ok(Run {
            rps,
            p50_ms,
            p99_ms,
            requests,
            errors,
            cpu_us: 0.0,
            bus_cpu_us: 0.0,
        }),
        _ => bail!("no Requests/sec or latency distribution"),
    }
}

/// `812.00us`, `1.23ms`, `2.01s`, `1.5m` in milliseconds.
fn wrk_time_ms(v: &str) -> Option<f64> {
    let split = v.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = v.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor = match unit {
        "us" => 0.001,
        "ms" => 1.0,
        "s" => 1000.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        _ => return None,
    };
    Some(number * factor)
}

/// nginx from the Debian package, as a reverse proxy of the backend on a free loopback
/// port, with everything it writes in a temp dir; stopped (SIGTERM, by pid) when dropped.
struct Nginx {
    child: Child,
    addr: SocketAddr,
}

impl Nginx {
    fn start(scratch: &Path, backend: SocketAddr) -> Result<Nginx> {
        let dir = scratch.join("nginx");
        std::fs::create_dir_all(&dir)?;
        let port = free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let d = dir.display();
        // Tuned as one would for a fair comparison: as many workers as cores, keep-alive to
        // the backend (HTTP/1.1, a pool bigger than the connections), no request cap on
        // client or upstream connections; the access log on, as in the default config.
        let conf = format!(
            r#"worker_processes auto;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 1000000;
    upstream backend {{
        server {backend};
        keepalive 128;
        keepalive_requests 1000000;
    }}
    server {{
        listen {addr};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Request-Id $request_id;
        }}
    }}
}}
"#
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        // Workers may run as another user (nginx drops root): let them into the dir.
        for p in [scratch, dir.as_path()] {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755))?;
        }
        let child = Command::new("nginx")
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(dir.join("error.log"))
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nginx (deploy/setup installs it)")?;
        let mut nginx = Nginx { child, addr };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            let log = || std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
            if let Ok(Some(status)) = nginx.child.try_wait() {
                bail!("nginx exited ({status}): {}", log());
            }
            if Instant::now() > deadline {
                bail!("nginx did not listen on {addr}: {}", log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(nginx)
    }
}

impl Nginx {
    /// The worker processes' threads (children of the master).
    fn workers(&self) -> Vec<std::path::PathBuf> {
        let master = self.child.id().to_string();
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.flatten()
            .filter(|e| {
                let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
                // `pid (comm) state ppid ...`: the ppid is the second field after the `)`.
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                    == Some(master.as_str())
            })
            .flat_map(|e| tasks_of(e.file_name().to_str().unwrap_or("0").parse().unwrap_or(0)))
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill(2) on our own child's pid (not yet waited for, so not reused);
            // SIGTERM makes nginx's master stop its workers and exit.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_reports_are_read() {
        let report = "Running 10s test @ http://127.0.0.1:8080/
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   512.01us  100.00us   5.00ms   90.00%
    Req/Sec    30.00k     1.00k   35.00k    70.00%
  Latency Distribution
     50%  480.00us
     75%  600.00us
     90%  700.00us
     99%    1.25ms
  600000 requests in 10.00s, 70.00MB read
  Non-2xx or 3xx responses: 3
  Socket errors: connect 0, read 2, write 0, timeout 1
Requests/sec:  60000.50
Transfer/sec:      7.00MB
";
        let run = parse_wrk(report).unwrap();
        assert_eq!(run.rps, 60000.5);
        assert!((run.p50_ms - 0.48).abs() < 1e-9);
        assert!((run.p99_ms - 1.25).abs() < 1e-9);
        assert_eq!(run.errors, 6);
        assert_eq!(run.requests, 600000);
        assert_eq!(wrk_time_ms("2.00s"), Some(2000.0));
        assert!(parse_wrk("nothing").is_err());
    }
}
