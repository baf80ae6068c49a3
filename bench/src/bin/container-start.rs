//! `container-start`: create + run `/bin/true` + destroy through the backend, next to a bare
//! `runc run` of an equivalent bundle (same stack, namespaces, id mapping, limits, seccomp,
//! capabilities) in the same run. Prints progress, then one JSON line of figures.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use kiln_containers::bundle::{ContainerBundle, IdRange};
use kiln_containers::{Backend, Config, ContainerSpec, Limits, ProcessSpec, Recovery};

const ITERATIONS: usize = 100;

#[tokio::main]
async fn main() -> Result<()> {
    let iterations = std::env::var("KILN_BENCH_ITERATIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(ITERATIONS);
    let dir = tempfile::tempdir()?;
    let config = Config {
        data_dir: dir.path().join("data"),
        stacks_dir: dir.path().join("stacks"),
        network_pool: "10.245.0.0/24".into(),
        port_range_start: 45000,
        port_range_size: 100,
        uid_range_start: 3 << 28,
        store_size_bytes: 4 << 30,
        recovery: Recovery::Destroy,
        ..Config::default()
    };
    let result = bench(&config, dir.path(), iterations).await;
    Backend::destroy_all(&config).context("cleaning up the benchmark backend")?;
    let figures = result?;
    println!("{figures}");
    Ok(())
}

async fn bench(config: &Config, scratch: &Path, iterations: usize) -> Result<serde_json::Value> {
    let backend = Backend::new(config.clone()).await?;
    let layout = scratch.join("tiny-layout");
    kiln_rootfs::recipes::build_tiny(&layout)?;
    let stack = backend.import_stack(&layout, "tiny").await?;

    eprintln!("baseline: bare `runc run` of an equivalent bundle, {iterations} times");
    let baseline = baseline_runs(&stack.rootfs, scratch, iterations)?;

    eprintln!("kiln: create + run /bin/true + destroy, {iterations} times");
    let mut start = Vec::with_capacity(iterations);
    let mut destroy = Vec::with_capacity(iterations);
    for i in 0..iterations {
        let handle = format!("bench-{i}");
        let t0 = Instant::now();
        backend
            .create(ContainerSpec {
                handle: handle.clone(),
                stack: "tiny".into(),
                limits: Limits::default(),
                ..ContainerSpec::default()
            })
            .await?;
        let exit = backend
            .run(&handle, ProcessSpec::new("/bin/true", &[]))
            .await?
            .wait()
            .await?;
        if exit.code != 0 {
            bail!("/bin/true exited {}", exit.code);
        }
        start.push(t0.elapsed());
        let t1 = Instant::now();
        backend.destroy(&handle).await?;
        destroy.push(t1.elapsed());
        if (i + 1) % 10 == 0 {
            eprintln!("  {}/{iterations}", i + 1);
        }
    }
    let leftovers = backend.resources_on_machine();
    for resource in &leftovers {
        eprintln!("left after destroy: {resource}");
    }
    let (p50, p99) = percentiles(&mut start);
    let (d50, d99) = percentiles(&mut destroy);
    let (b50, b99) = percentiles(&mut baseline.clone());
    Ok(serde_json::json!({
        "bench": "container-start",
        "iterations": iterations,
        "p50_ms": p50, "p99_ms": p99,
        "destroy_p50_ms": d50, "destroy_p99_ms": d99,
        "baseline": "runc run",
        "baseline_p50_ms": b50, "baseline_p99_ms": b99,
        "ratio": round(p50 / b50),
        "resources_left_after_destroy": leftovers.len(),
    }))
}

/// `runc run` of the same stack with the backend's own bundle rules, `/bin/true` as pid 1.
fn baseline_runs(rootfs: &Path, scratch: &Path, iterations: usize) -> Result<Vec<Duration>> {
    let root = scratch.join("baseline-runc");
    let bundle_dir = scratch.join("baseline-bundle");
    std::fs::create_dir_all(&bundle_dir)?;
    let limits = Limits::default();
    let mut spec = ContainerBundle {
        handle: "baseline",
        rootfs,
        init: Path::new("/bin/true"),
        ids: IdRange {
            host_base: 3 << 28,
            size: 65536,
        },
        limits: &limits,
        bind_mounts: &[],
        cgroups_path: "/kiln-bench/baseline",
    }
    .spec()?;
    let mut process = spec.process().clone().context("process")?;
    process.set_args(Some(vec!["/bin/true".into()]));
    spec.set_process(Some(process));
    // The stack is shared and must not be written: a read-only root, no init bind mount.
    if let Some(root_cfg) = spec.root().clone() {
        let mut r = root_cfg;
        r.set_readonly(Some(true));
        spec.set_root(Some(r));
    }
    let mounts = spec.mounts().clone().unwrap_or_default();
    spec.set_mounts(Some(
        mounts
            .into_iter()
            .filter(|m| m.destination() != Path::new("/.kiln-init"))
            .collect(),
    ));
    std::fs::write(bundle_dir.join("config.json"), serde_json::to_vec(&spec)?)?;

    let mut times = Vec::with_capacity(iterations);
    for i in 0..iterations {
        let id = format!("baseline-{i}");
        let t0 = Instant::now();
        let status = std::process::Command::new("runc")
            .arg("--root")
            .arg(&root)
            .args(["run", "--bundle"])
            .arg(&bundle_dir)
            .arg(&id)
            .stdin(std::process::Stdio::null())
            .status()?;
        times.push(t0.elapsed());
        if !status.success() {
            bail!("baseline runc run failed: {status}");
        }
    }
    for ctrl in std::fs::read_dir("/sys/fs/cgroup")?.flatten() {
        let _ = std::fs::remove_dir(ctrl.path().join("kiln-bench/baseline"));
        let _ = std::fs::remove_dir(ctrl.path().join("kiln-bench"));
    }
    Ok(times)
}

fn percentiles(samples: &mut [Duration]) -> (f64, f64) {
    samples.sort();
    let at = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        round(samples[i].as_secs_f64() * 1000.0)
    };
    (at(0.50), at(0.99))
}

fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
