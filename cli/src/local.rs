//! A container backend of the CLI's own on this machine, for local staging and runs: its own
//! data dir, address pool, port range and uid range, apart from a platform running here.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use kiln_containers::{Backend, Config, Recovery};

/// Where the CLI keeps its backends, stacks and caches (`KILN_CLI_DIR`, default
/// `/var/lib/kiln/cli`).
pub fn cli_dir() -> PathBuf {
    std::env::var_os("KILN_CLI_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/kiln/cli"))
}

/// Which local backend: staging and running each have their own, so both can run at once.
#[derive(Clone, Copy)]
pub enum Purpose {
    /// `kiln stage`.
    Stage,
    /// `kiln run-droplet`.
    Run,
}

/// A local backend that, when dropped, destroys what it made and unmounts its disk store, so
/// the CLI leaves nothing mounted behind.
pub struct LocalBackend {
    backend: Option<Backend>,
    config: Config,
}

impl std::ops::Deref for LocalBackend {
    type Target = Backend;
    fn deref(&self) -> &Backend {
        // Only `drop` takes it out.
        self.backend.as_ref().expect("backend present until drop")
    }
}

impl Drop for LocalBackend {
    fn drop(&mut self) {
        drop(self.backend.take());
        if let Err(e) = Backend::destroy_all(&self.config) {
            eprintln!(
                "warning: cleaning up {}: {e}",
                self.config.data_dir.display()
            );
        }
    }
}

/// Starts the backend for `purpose`; `port` pins the one host port `run-droplet` may hand out.
pub async fn backend(purpose: Purpose, port: Option<u16>) -> Result<LocalBackend> {
    let command = match purpose {
        Purpose::Stage => "stage",
        Purpose::Run => "run-droplet",
    };
    if libc_geteuid() != 0 {
        bail!("kiln {command} runs containers and needs root: run it with sudo");
    }
    let (name, pool, uid_start) = match purpose {
        Purpose::Stage => ("stage", "10.253.0.0/26", 1u32 << 29),
        Purpose::Run => ("run", "10.253.0.64/26", (1u32 << 29) + (1 << 26)),
    };
    let (port_start, port_size) = match port {
        Some(p) => (p, 1),
        None => (62001, 100),
    };
    let config = Config {
        data_dir: cli_dir().join(name),
        stacks_dir: cli_dir().join("stacks"),
        network_pool: pool.to_string(),
        port_range_start: port_start,
        port_range_size: port_size,
        uid_range_start: uid_start,
        store_size_bytes: 32 << 30,
        max_containers: 8,
        recovery: Recovery::Destroy,
        ..Config::default()
    };
    let backend = match Backend::new(config.clone()).await {
        Ok(b) => b,
        Err(kiln_containers::Error::DataDirInUse(dir)) => bail!(
            "another `kiln {command}` is running on this machine (it holds {}): wait for it or stop it",
            dir.display()
        ),
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!(
                "starting the local container backend in {}",
                cli_dir().join(name).display()
            )))
        }
    };
    Ok(LocalBackend {
        backend: Some(backend),
        config,
    })
}

/// Makes sure `stack` is imported, building it from its recipe the first time on this machine.
pub async fn ensure_stack(backend: &Backend, stack: &str) -> Result<()> {
    if !kiln_rootfs::recipes::KNOWN.contains(&stack) {
        bail!(
            "unknown stack `{stack}` (known: {})",
            kiln_rootfs::recipes::KNOWN.join(", ")
        );
    }
    let name = stack.to_string();
    let layout = tokio::task::spawn_blocking(move || {
        let root = kiln_rootfs::recipes::cache_root();
        kiln_rootfs::recipes::cached_in(&root, &name, &mut |line| eprintln!("stack {name}: {line}"))
    })
    .await?
    .with_context(|| format!("building the {stack} stack"))?;
    backend
        .import_stack(&layout.dir, stack)
        .await
        .with_context(|| format!("importing the {stack} stack"))?;
    Ok(())
}

fn libc_geteuid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}
