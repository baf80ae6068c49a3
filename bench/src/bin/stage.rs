//! `stage`: stages `examples/staticfile` on tiny and `examples/python` (two vendored wheels)
//! on bookworm, cold (no cache) and warm (the previous staging's cache), and reports wall time
//! and time per phase. The baseline, measured in the same run, is the same buildpack scripts
//! (detect, supply, finalize, release) run straight on the host without a sandbox; `ratio` is
//! warm python staging over its baseline. Targets: staticfile <= 1 s, python warm <= 5 s.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use kiln_containers::{Backend, Config, Recovery};
use kiln_stager::{Stager, StagingRequest};
use serde_json::json;

const ROUNDS: usize = 5;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[tokio::main]
async fn main() -> Result<()> {
    let rounds = kiln_bench::env_or("KILN_BENCH_ITERATIONS", ROUNDS);
    let dir = tempfile::tempdir()?;
    let config = Config {
        data_dir: dir.path().join("data"),
        stacks_dir: dir.path().join("stacks"),
        network_pool: "10.245.1.0/24".into(),
        port_range_start: 45200,
        port_range_size: 50,
        uid_range_start: (3 << 28) + (1 << 26),
        store_size_bytes: 16 << 30,
        recovery: Recovery::Destroy,
        ..Config::default()
    };
    let result = bench(&config, dir.path(), rounds).await;
    Backend::destroy_all(&config).context("cleaning up the benchmark backend")?;
    println!("{}", result?);
    Ok(())
}

/// Wall times and per-phase times of one kind of staging.
#[derive(Default)]
struct Series {
    wall: Vec<Duration>,
    phases: BTreeMap<String, Vec<Duration>>,
}

impl Series {
    fn p50_ms(v: &[Duration]) -> f64 {
        let mut v = v.to_vec();
        v.sort();
        v.get(v.len() / 2)
            .map_or(0.0, |d| (d.as_secs_f64() * 1e5).round() / 100.0)
    }

    fn figures(&self) -> serde_json::Value {
        let phases: BTreeMap<&String, f64> = self
            .phases
            .iter()
            .map(|(k, v)| (k, Self::p50_ms(v)))
            .collect();
        json!({"p50_ms": Self::p50_ms(&self.wall), "phases_p50_ms": phases})
    }
}

async fn bench(config: &Config, scratch: &Path, rounds: usize) -> Result<serde_json::Value> {
    let backend = Backend::new(config.clone()).await?;
    eprintln!("importing stacks (bookworm is built once per machine: minutes the first time)");
    let tiny = scratch.join("tiny-layout");
    kiln_rootfs::recipes::build_tiny(&tiny)?;
    backend.import_stack(&tiny, "tiny").await?;
    let bookworm =
        tokio::task::spawn_blocking(|| kiln_rootfs::recipes::cached("bookworm")).await??;
    backend.import_stack(&bookworm.dir, "bookworm").await?;
    let stager = Stager::new(&backend, repo().join("buildpacks"));

    let mut series: BTreeMap<&str, Series> = BTreeMap::new();
    let mut baseline: BTreeMap<&str, Vec<Duration>> = BTreeMap::new();
    eprintln!("{rounds} rounds of: staticfile cold, warm; python cold, warm; each next to its host baseline");
    for round in 0..rounds {
        for (app, stack) in [("staticfile", "tiny"), ("python", "bookworm")] {
            let cache = scratch.join(format!("{app}-{round}-cache.tgz"));
            for warm in [false, true] {
                let id = format!("bench-{app}-{round}-{}", if warm { "warm" } else { "cold" });
                let mut req = StagingRequest::new(
                    &id,
                    repo().join("examples").join(app),
                    stack,
                    scratch.join(format!("{id}.tgz")),
                );
                req.cache_in = warm.then(|| cache.clone());
                req.cache_out = Some(cache.clone());
                let t = Instant::now();
                let r = stager
                    .stage(req, kiln_stager::log::discard())
                    .await
                    .with_context(|| format!("staging {app}"))?;
                let wall = t.elapsed();
                let s = series
                    .entry(if warm { warm_key(app) } else { cold_key(app) })
                    .or_default();
                s.wall.push(wall);
                for (phase, d) in r.phases {
                    s.phases.entry(phase).or_default().push(d);
                }
                let _ = std::fs::remove_file(scratch.join(format!("{id}.tgz")));
                let b = host_baseline(app, scratch, round, warm)?;
                baseline
                    .entry(if warm { warm_key(app) } else { cold_key(app) })
                    .or_default()
                    .push(b);
            }
        }
        eprintln!("  {}/{rounds}", round + 1);
    }
    let leftovers = backend.resources_on_machine();
    drop(backend);
    let p50 = |k: &str| Series::p50_ms(&series[k].wall);
    let base = |k: &str| Series::p50_ms(&baseline[k]);
    let ratio = (p50("python_warm") / base("python_warm").max(0.01) * 100.0).round() / 100.0;
    Ok(json!({
        "bench": "stage",
        "iterations": rounds,
        "baseline": "the same buildpack scripts run on the host, no sandbox",
        "staticfile_cold": series["staticfile_cold"].figures(),
        "staticfile_warm": series["staticfile_warm"].figures(),
        "python_cold": series["python_cold"].figures(),
        "python_warm": series["python_warm"].figures(),
        "baseline_p50_ms": baseline.keys().map(|k| (k.to_string(), base(k))).collect::<BTreeMap<_, _>>(),
        "p50_ms": p50("python_warm"),
        "ratio": ratio,
        "targets": {"staticfile_ms": 1000, "python_warm_ms": 5000},
        "targets_met": p50("staticfile_cold") <= 1000.0 && p50("python_warm") <= 5000.0,
        "resources_left": leftovers.len(),
    }))
}

fn cold_key(app: &str) -> &'static str {
    if app == "python" {
        "python_cold"
    } else {
        "staticfile_cold"
    }
}

fn warm_key(app: &str) -> &'static str {
    if app == "python" {
        "python_warm"
    } else {
        "staticfile_warm"
    }
}

/// Runs the app's buildpack scripts on the host in scratch dirs; cold with an empty cache dir,
/// warm with the cache dir the round's cold run filled.
fn host_baseline(app: &str, scratch: &Path, round: usize, warm: bool) -> Result<Duration> {
    // The same paths cold and warm: buildpacks may key their cache on them.
    let root = scratch.join(format!("host-{app}-{round}"));
    let build = root.join("app");
    let deps = root.join("deps");
    let profile = root.join("profile.d");
    let cache = scratch.join(format!("host-{app}-cache-{round}"));
    if !warm && cache.exists() {
        std::fs::remove_dir_all(&cache)?;
    }
    for d in [&build, &deps.join("0"), &profile, &cache] {
        std::fs::create_dir_all(d)?;
    }
    let copy = Command::new("cp")
        .arg("-a")
        .arg(repo().join("examples").join(app).join("."))
        .arg(&build)
        .status()?;
    if !copy.success() {
        bail!("copying the {app} example");
    }
    let bp = repo().join("buildpacks").join(app).join("bin");
    let t = Instant::now();
    let steps: [(&str, Vec<&Path>); 4] = [
        ("detect", vec![&build]),
        ("supply", vec![&build, &cache, &deps, Path::new("0")]),
        (
            "finalize",
            vec![&build, &cache, &deps, Path::new("0"), &profile],
        ),
        ("release", vec![&build]),
    ];
    for (script, args) in steps {
        let out = Command::new(bp.join(script))
            .args(args)
            .current_dir(&build)
            .env("CF_STACK", "host")
            .output()?;
        if !out.status.success() {
            bail!(
                "host baseline {app}: {script} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let took = t.elapsed();
    std::fs::remove_dir_all(&root)?;
    Ok(took)
}
