//! `container-start`: create + run `/bin/true` + destroy through the backend, next to a bare
//! `runc run` of an equivalent bundle (same stack, namespaces, id mapping, limits, seccomp,
//! capabilities) in the same run, the two interleaved so that both see the same machine.
//! Prints progress, then one JSON line of figures; `ratio` is Kiln's create + run p50 over the
//! baseline's p50.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use kiln_containers::bundle::{ContainerBundle, IdRange};
use kiln_containers::{Backend, Config, ContainerSpec, Limits, ProcessSpec, Recovery};

const ITERATIONS: usize = 100;
const WARMUP: usize = 5;

#[tokio::main]
async fn main() -> Result<()> {
    let iterations = kiln_bench::env_or("KILN_BENCH_ITERATIONS", ITERATIONS);
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

    // One baseline run and one Kiln run per iteration, so that both see the same machine.
    let baseline = Baseline::prepare(&stack.rootfs, scratch)?;
    eprintln!("{WARMUP} warm-up rounds, then {iterations} rounds of: bare `runc run` of an equivalent bundle; kiln create + run /bin/true + destroy");
    let mut base = Vec::with_capacity(iterations);
    let mut start = Vec::with_capacity(iterations);
    let mut destroy = Vec::with_capacity(iterations);
    for i in 0..WARMUP + iterations {
        // Alternate which goes first, and let the kernel finish tearing down the previous
        // round (network namespaces are freed asynchronously) before each measurement.
        let handle = format!("bench-{i}");
        let (b, s, d) = if i % 2 == 0 {
            settle().await;
            let b = baseline.run(i)?;
            settle().await;
            let (s, d) = kiln_round(&backend, &handle).await?;
            (b, s, d)
        } else {
            settle().await;
            let (s, d) = kiln_round(&backend, &handle).await?;
            settle().await;
            (baseline.run(i)?, s, d)
        };
        if i >= WARMUP {
            base.push(b);
            start.push(s);
            destroy.push(d);
            if (i + 1 - WARMUP).is_multiple_of(10) {
                eprintln!("  {}/{iterations}", i + 1 - WARMUP);
            }
        }
    }
    baseline.clean_up();
    let leftovers = backend.resources_on_machine();
    for resource in &leftovers {
        eprintln!("left after destroy: {resource}");
    }
    let (p50, p99) = percentiles(&mut start);
    let (d50, d99) = percentiles(&mut destroy);
    let (b50, b99) = percentiles(&mut base);
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

/// Create + run `/bin/true` (timed as one), then destroy (timed apart).
async fn kiln_round(backend: &Backend, handle: &str) -> Result<(Duration, Duration)> {
    let t0 = Instant::now();
    backend
        .create(ContainerSpec {
            handle: handle.to_string(),
            stack: "tiny".into(),
            limits: Limits::default(),
            ..ContainerSpec::default()
        })
        .await?;
    let exit = backend
        .run(handle, ProcessSpec::new("/bin/true", &[]))
        .await?
        .wait()
        .await?;
    if exit.code != 0 {
        bail!("/bin/true exited {}", exit.code);
    }
    let started = t0.elapsed();
    let t1 = Instant::now();
    backend.destroy(handle).await?;
    Ok((started, t1.elapsed()))
}

async fn settle() {
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// `runc run` of the same stack with the backend's own bundle rules, `/bin/true` as pid 1.
struct Baseline {
    root: PathBuf,
    bundle_dir: PathBuf,
}

impl Baseline {
    fn prepare(rootfs: &Path, scratch: &Path) -> Result<Baseline> {
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
        if let Some(mut r) = spec.root().clone() {
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
        Ok(Baseline { root, bundle_dir })
    }

    fn run(&self, i: usize) -> Result<Duration> {
        let t0 = Instant::now();
        let status = std::process::Command::new("runc")
            .arg("--root")
            .arg(&self.root)
            .args(["run", "--bundle"])
            .arg(&self.bundle_dir)
            .arg(format!("baseline-{i}"))
            .stdin(std::process::Stdio::null())
            .status()?;
        let elapsed = t0.elapsed();
        if !status.success() {
            bail!("baseline runc run failed: {status}");
        }
        Ok(elapsed)
    }

    fn clean_up(&self) {
        if let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") {
            for ctrl in hierarchies.flatten() {
                let _ = std::fs::remove_dir(ctrl.path().join("kiln-bench/baseline"));
                let _ = std::fs::remove_dir(ctrl.path().join("kiln-bench"));
            }
        }
    }
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
