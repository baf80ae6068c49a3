//! What Kiln's benchmark binaries share. Settings from the environment ([`env_or`]). For the
//! benchmarks that run a whole platform, how a run begins and ends: it needs root
//! ([`require_root`]) and starts from a [`Scratch`] (the `kiln-executor` binary its cells run,
//! a temp dir, a `nats-server` of its own); the measuring runs on a runtime of its own, raced
//! against SIGINT/SIGTERM ([`run`]), and starts its cells ([`start_cell`]) and hears the bus
//! ([`listen`]); then ([`finish`], [`Scratch::finish`]) on failure the cells' last log lines
//! are shown, whatever the outcome everything the run made is removed, and the figures are
//! printed as the last line, one JSON object, with what was left after clean-up (a run that
//! leaves anything fails).

use std::future::Future;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail};
use futures::StreamExt;
use kiln_bus::cell::InstanceStart;
use kiln_containers::{ContainerSpec, Limits, NetIn, ProcessSpec};
use kiln_e2e::platform::{self, CellProcess, Leftovers};
use kiln_testkit::Nats;
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::sync::mpsc;

/// The environment variable `name` parsed as a `T`; `default` when it is unset or does not
/// parse.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Fails unless this process runs as root, which the benchmark `bench` needs (containers).
pub fn require_root(bench: &str) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("{bench} needs root (containers)");
    }
    Ok(())
}

/// What a whole-platform benchmark runs in. Dropped (by [`Scratch::finish`], or on an early
/// error) the `nats-server` stops, then the temp dir goes.
pub struct Scratch {
    /// The `kiln-executor` binary its cells run.
    pub executor: PathBuf,
    /// The platform's own `nats-server`.
    pub nats: Nats,
    /// The run's data dirs, configs and logs: `kiln-bench-<bench>-…` in the temp dir.
    pub dir: TempDir,
}

impl Scratch {
    /// Builds (if need be) the `kiln-executor` binary, makes the temp dir and starts the
    /// `nats-server`, for the benchmark `bench`.
    pub fn new(bench: &str) -> anyhow::Result<Scratch> {
        eprintln!("building kiln-executor");
        let executor = platform::executor_binary().map_err(anyhow::Error::msg)?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("kiln-bench-{bench}-"))
            .tempdir()?;
        let nats = Nats::start();
        Ok(Scratch {
            executor,
            nats,
            dir,
        })
    }

    /// Ends the run whose outcome [`run`] returned as [`finish`] does, then stops the
    /// `nats-server` and removes the temp dir: the cells and the containers go before the
    /// dirs they live in.
    pub fn finish(
        self,
        result: anyhow::Result<Value>,
        leftovers: &mut Leftovers,
    ) -> anyhow::Result<()> {
        let outcome = finish(result, leftovers);
        let Scratch { nats, dir, .. } = self;
        drop(nats);
        drop(dir);
        outcome
    }
}

/// Runs `bench` to its end on a multi-thread runtime of its own, or until SIGINT/SIGTERM (an
/// error then). The runtime is gone when this returns, and with it the future, whatever it
/// spawned and the in-process components: what is left (cell processes, the backends'
/// containers) is for [`finish`].
pub fn run(bench: impl Future<Output = anyhow::Result<Value>>) -> anyhow::Result<Value> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(async {
        tokio::select! {
            r = bench => r,
            signal = platform::interrupted() => Err(anyhow!("interrupted ({signal})")),
        }
    });
    drop(runtime);
    result
}

/// Starts the cell `name` (any cell of that name in `leftovers` killed first): `config` written
/// to `<dir>/<name>.toml`, the `kiln-executor` binary `executor` run on it, its log in
/// `<dir>/<name>.log`. It is kept in `leftovers.cells` as `name`; returned, to wait for its
/// `executor.started`.
pub fn start_cell<'l>(
    dir: &Path,
    executor: &Path,
    config: &kiln_executor::Config,
    name: &str,
    leftovers: &'l mut Leftovers,
) -> anyhow::Result<&'l CellProcess> {
    let file = dir.join(format!("{name}.toml"));
    platform::write_cell_config(&file, config).map_err(anyhow::Error::msg)?;
    leftovers.cells.remove(name);
    let process = CellProcess::start(executor, &file, dir.join(format!("{name}.log")))
        .map_err(anyhow::Error::msg)?;
    Ok(leftovers.cells.entry(name.into()).or_insert(process))
}

/// Subscribes to `subjects` on the NATS server at `nats_url`; once the server has them (a
/// round trip), a task sends what `hear` makes of each message (nothing for `None`) until the
/// receiver is dropped.
pub async fn listen<T: Send + 'static>(
    nats_url: &str,
    subjects: Vec<String>,
    mut hear: impl FnMut(async_nats::Message) -> Option<T> + Send + 'static,
) -> anyhow::Result<mpsc::UnboundedReceiver<T>> {
    let client = async_nats::connect(nats_url).await?;
    let mut subscriptions = Vec::new();
    for subject in subjects {
        subscriptions.push(client.subscribe(subject).await?);
    }
    kiln_bus::round_trip(&client, kiln_bus::ROUND_TRIP_TIMEOUT).await?;
    let (tx, rx) = mpsc::unbounded_channel();
    let mut all = futures::stream::select_all(subscriptions);
    tokio::spawn(async move {
        // The client lives as long as its subscriptions are read.
        let _client = client;
        while let Some(m) = all.next().await {
            if let Some(heard) = hear(m) {
                if tx.send(heard).is_err() {
                    return;
                }
            }
        }
    });
    Ok(rx)
}

/// The container a cell makes for the instance `start` (its stack and limits, the droplet
/// `layer`, the app's port forwarded), as `handle`: what a baseline starts straight through a
/// backend.
pub fn cell_container(handle: &str, layer: &Path, start: &InstanceStart) -> ContainerSpec {
    ContainerSpec {
        handle: handle.to_string(),
        stack: start.stack.clone(),
        limits: Limits {
            memory_bytes: start.memory_mb << 20,
            disk_bytes: start.disk_mb << 20,
            cpu_shares: start.memory_mb.clamp(2, 262_144),
            ..Limits::default()
        },
        layers: vec![PathBuf::from(layer)],
        net_in: vec![NetIn {
            host_port: None,
            container_port: kiln_droplet::APP_PORT,
        }],
        ..ContainerSpec::default()
    }
}

/// The process a cell runs in [`cell_container`]: `start_command` through the droplet's
/// launcher as `vcap`, with the environment of `start` and the instance's (`handle`, its
/// forwarded `port`).
pub fn cell_process(
    handle: &str,
    port: u16,
    start: &InstanceStart,
    start_command: &str,
) -> ProcessSpec {
    let args = kiln_droplet::launcher_args(start_command);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut spec = ProcessSpec::new("/bin/sh", &args).user("vcap");
    spec.env = start.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    spec.env
        .extend(kiln_droplet::instance_env(&kiln_droplet::Instance {
            app_id: start.app_guid.clone(),
            app_name: start.app_name.clone(),
            space_id: start.space_guid.clone(),
            index: 0,
            instance_id: handle.to_string(),
            host_ip: "127.0.0.1".into(),
            host_port: port,
            memory_mib: start.memory_mb,
            disk_mib: start.disk_mb,
            uris: start.routes.clone(),
        }));
    spec.dir = Some(kiln_droplet::APP_DIR.to_string());
    spec
}

/// Ends a run whose outcome is `result`: see the module's doc.
pub fn finish(result: anyhow::Result<Value>, leftovers: &mut Leftovers) -> anyhow::Result<()> {
    if result.is_err() {
        for (name, p) in &leftovers.cells {
            eprintln!("--- {name}'s log (last lines) ---\n{}", tail(&p.log(), 30));
        }
    }
    let left = leftovers.clean();
    let mut figures = result?;
    figures["left_after_cleanup"] = json!(left);
    println!("{figures}");
    if !left.is_empty() {
        bail!("the benchmark left {left:?}");
    }
    Ok(())
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a\nb", 5), "a\nb");
        assert_eq!(tail("", 3), "");
    }

    #[test]
    fn env_or_parses_or_falls_back() {
        assert_eq!(env_or("KILN_BENCH_SURELY_UNSET_IN_TESTS", 7u32), 7);
        // Cargo sets it for the tests it runs: a value, but not a number.
        assert_eq!(env_or("CARGO_PKG_NAME", String::new()), "kiln-bench");
        assert_eq!(env_or("CARGO_PKG_NAME", 3u64), 3);
    }

    #[test]
    fn the_baseline_is_the_cells_container_and_process() {
        let start: InstanceStart = serde_json::from_value(json!({
            "app_guid": "app", "app_name": "starter", "space_guid": "space",
            "process_guid": "process", "process_type": "web", "index": 0,
            "instance_guid": "instance", "droplet_guid": "droplet",
            "droplet_url": "http://127.0.0.1/droplet", "droplet_sha256": "abc",
            "stack": "tiny", "memory_mb": 64, "disk_mb": 128,
            "start_command": "httpd -f", "env": {"FOO": "bar"},
            "routes": ["starter.apps.bench.test"],
        }))
        .expect("an InstanceStart");
        let c = cell_container("b-0", Path::new("/layers/abc"), &start);
        assert_eq!((c.handle.as_str(), c.stack.as_str()), ("b-0", "tiny"));
        assert_eq!(c.limits.memory_bytes, 64 << 20);
        assert_eq!(c.limits.disk_bytes, 128 << 20);
        assert_eq!(c.limits.cpu_shares, 64);
        assert_eq!(c.layers, vec![PathBuf::from("/layers/abc")]);
        assert_eq!(c.net_in.len(), 1);
        assert_eq!(c.net_in[0].container_port, kiln_droplet::APP_PORT);

        let p = cell_process("b-0", 41000, &start, &start.start_command);
        assert_eq!(p.user.as_deref(), Some("vcap"));
        assert_eq!(p.dir.as_deref(), Some(kiln_droplet::APP_DIR));
        assert!(
            p.args.iter().any(|a| a.contains("httpd -f")),
            "{:?}",
            p.args
        );
        for var in ["FOO=bar", "CF_INSTANCE_GUID=b-0"] {
            assert!(p.env.iter().any(|e| e == var), "{var} in {:?}", p.env);
        }
    }
}
