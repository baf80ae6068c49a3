//! `dockerfile`: builds `examples/dockerfile` (two stages on tiny: a `RUN`, `COPY`s, `ENV`,
//! `USER`, `EXPOSE`, `CMD`) with the stager's Dockerfile builder (`kiln_stager::dockerfile`)
//! on a container backend of its own (test index 74), cold (each run with a fresh, empty
//! layer cache) and cached (every run on the same cache, filled once before), 5 runs each
//! (`KILN_BENCH_RUNS`), medians. Then the built image runs in a container as its `CMD` says
//! and must answer 200 on `/` on port 8080. Prints progress on stderr and, last, one JSON
//! line on stdout. Whatever happens (failure or Ctrl-C included) the backend's containers are
//! destroyed and its temp dir removed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use kiln_containers::{Backend, Config, ContainerSpec, NetIn, ProcessSpec};
use kiln_rootfs::store::StackStore;
use kiln_stager::dockerfile::{build, BuildOptions, BuiltImage};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const RUNS: usize = 5;
/// The benchmarks' test index for this one (see bench/README.md).
const INDEX: u32 = 74;

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/dockerfile")
}

#[tokio::main]
async fn main() -> Result<()> {
    let runs = match kiln_bench::env_or("KILN_BENCH_RUNS", RUNS) {
        0 => RUNS,
        n => n,
    };
    let dir = tempfile::tempdir()?;
    let config = kiln_e2e::platform::backend_config(dir.path(), INDEX);
    let result = tokio::select! {
        result = bench(&config, dir.path(), runs) => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    // Containers a cancelled build left are being destroyed in the background: let them go.
    tokio::time::sleep(Duration::from_millis(200)).await;
    Backend::destroy_all(&config).context("cleaning up the benchmark backend")?;
    println!("{}", result?);
    Ok(())
}

fn p50_ms(v: &[Duration]) -> f64 {
    let mut v = v.to_vec();
    v.sort();
    v.get(v.len() / 2)
        .map_or(0.0, |d| (d.as_secs_f64() * 1e5).round() / 100.0)
}

async fn bench(config: &Config, scratch: &Path, runs: usize) -> Result<serde_json::Value> {
    let backend = Backend::new(config.clone()).await?;
    let tiny = tokio::task::spawn_blocking(|| kiln_rootfs::recipes::cached("tiny")).await??;
    backend.import_stack(&tiny.dir, "tiny").await?;
    let store = StackStore::open(&config.stacks_dir)?;
    let build_once = |name: String, cache: PathBuf| {
        let (backend, store) = (&backend, &store);
        async move {
            let opts = BuildOptions::new(
                &name,
                &example(),
                &cache,
                &scratch.join(format!("{name}-image")),
            );
            let t = Instant::now();
            let image = build(backend, store, &opts, kiln_stager::log::discard())
                .await
                .with_context(|| format!("building examples/dockerfile ({name})"))?;
            Ok::<(Duration, BuiltImage), anyhow::Error>((t.elapsed(), image))
        }
    };

    eprintln!("{runs} cold builds of examples/dockerfile, each with an empty layer cache");
    let mut cold = Vec::new();
    for i in 0..runs {
        let (took, image) =
            build_once(format!("cold-{i}"), scratch.join(format!("cache-cold-{i}"))).await?;
        eprintln!(
            "  cold {}/{runs}: {} ms ({} RUN)",
            i + 1,
            took.as_millis(),
            image.ran
        );
        cold.push(took);
    }
    let warm_cache = scratch.join("cache-warm");
    let (_, filled) = build_once("fill".into(), warm_cache.clone()).await?;
    eprintln!("{runs} cached builds on one cache (filled once first)");
    let mut cached = Vec::new();
    for i in 0..runs {
        let (took, image) = build_once(format!("cached-{i}"), warm_cache.clone()).await?;
        if image.ran != 0 || image.manifest_digest != filled.manifest_digest {
            bail!(
                "cached build {i} ran {} RUN and made {}, not {}",
                image.ran,
                image.manifest_digest,
                filled.manifest_digest
            );
        }
        eprintln!(
            "  cached {}/{runs}: {} ms ({} steps from the cache)",
            i + 1,
            took.as_millis(),
            image.cached
        );
        cached.push(took);
    }

    eprintln!("running the image: its CMD, as its USER, GET / on port 8080");
    let (status, body) = serve(&backend, &filled).await?;
    eprintln!("  {status}");
    if !status.contains(" 200 ") || !body.contains("Hello from dockerfile") {
        bail!("the image answered {status}: {body}");
    }
    let leftovers = backend.resources_on_machine();
    drop(backend);
    let (cold_p50, cached_p50) = (p50_ms(&cold), p50_ms(&cached));
    Ok(json!({
        "bench": "dockerfile",
        "app": "examples/dockerfile",
        "image_digest": filled.manifest_digest,
        "cold_p50_ms": cold_p50,
        "cached_p50_ms": cached_p50,
        "ratio_cached_vs_cold": (cached_p50 / cold_p50.max(0.01) * 1000.0).round() / 1000.0,
        "serves_200": true,
        "resources_left": leftovers.len(),
        "runs": runs,
    }))
}

/// Runs `image` as its config says (its `ENTRYPOINT` and `CMD` through `sh -c exec`, as its
/// `USER`) with port 8080 forwarded; GETs `/` until it answers (20 s at most): (status line,
/// body). The container is destroyed afterwards.
async fn serve(backend: &Backend, image: &BuiltImage) -> Result<(String, String)> {
    let stack = backend
        .import_stack(&image.layout, "bench-dockerfile")
        .await?;
    let config = image
        .config
        .config()
        .clone()
        .context("the image has a config")?;
    let argv: Vec<String> = config
        .entrypoint()
        .iter()
        .chain(config.cmd().iter())
        .flatten()
        .cloned()
        .collect();
    let handle = "bench-dockerfile-serve";
    let info = backend
        .create(ContainerSpec {
            handle: handle.into(),
            stack: stack.digest.clone(),
            net_in: vec![NetIn {
                host_port: None,
                container_port: 8080,
            }],
            ..ContainerSpec::default()
        })
        .await?;
    let answer = async {
        let port = info
            .mapped_ports
            .first()
            .context("port 8080 forwarded")?
            .host_port;
        let command = format!("exec {}", argv.join(" "));
        let mut spec = ProcessSpec::new("/bin/sh", &["-c", &command]);
        spec.user = config.user().clone();
        spec.env = config.env().clone().unwrap_or_default();
        spec.dir = config.working_dir().clone();
        let mut process = backend.run(handle, spec).await?;
        let deadline = Instant::now() + Duration::from_secs(20);
        let answer = loop {
            if let Some(a) = http_get(port).await {
                break Ok(a);
            }
            if Instant::now() > deadline {
                break Err(anyhow::anyhow!("the image never answered on port {port}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let _ = process.signal(libc::SIGKILL).await;
        let _ = process.wait().await;
        answer
    }
    .await;
    backend.destroy(handle).await?;
    answer
}

/// GET / on 127.0.0.1:`port` over HTTP/1.0: (status line, body).
async fn http_get(port: u16) -> Option<(String, String)> {
    let mut s = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    .ok()?
    .ok()?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    Some((head.lines().next()?.to_string(), body.to_string()))
}
