//! `kiln-executor`: the cell agent. Reads its configuration (a TOML file, then flags and
//! environment variables over it), opens its container backend, imports its stacks, connects
//! to NATS and runs instances for the controller until SIGTERM, SIGINT or a drain command;
//! then evacuates (the controller starts its instances elsewhere and stops them here, for up
//! to the evacuation timeout; a second signal cuts this short), unregisters the routes of what
//! remains, stops it, and exits leaving nothing running or mounted.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use kiln_containers::Backend;
use kiln_executor::{Config, Evacuation, Executor};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info};

/// The Kiln executor: runs app instances on this machine for the cloud controller.
#[derive(Parser, Debug)]
#[command(name = "kiln-executor", version)]
struct Args {
    /// A TOML file with the configuration (flags override it).
    #[arg(long, env = "KILN_EXECUTOR_CONFIG")]
    config: Option<PathBuf>,
    /// The cell's id on the bus.
    #[arg(long, env = "KILN_EXECUTOR_CELL_ID")]
    cell_id: Option<String>,
    /// Its availability zone.
    #[arg(long, env = "KILN_EXECUTOR_ZONE")]
    zone: Option<String>,
    /// The stacks it runs (comma-separated).
    #[arg(long, env = "KILN_EXECUTOR_STACKS", value_delimiter = ',')]
    stacks: Option<Vec<String>>,
    /// Memory offered to instances, MiB.
    #[arg(long, env = "KILN_EXECUTOR_MEMORY_MB")]
    memory_mb: Option<u64>,
    /// Disk offered to instances, MiB.
    #[arg(long, env = "KILN_EXECUTOR_DISK_MB")]
    disk_mb: Option<u64>,
    /// At most this many instances.
    #[arg(long, env = "KILN_EXECUTOR_MAX_CONTAINERS")]
    max_containers: Option<u64>,
    /// Droplet cache and container data.
    #[arg(long, env = "KILN_EXECUTOR_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Where stacks are imported.
    #[arg(long, env = "KILN_EXECUTOR_STACKS_DIR")]
    stacks_dir: Option<PathBuf>,
    /// The NATS server.
    #[arg(long, env = "KILN_EXECUTOR_NATS")]
    nats: Option<String>,
    /// The controller's internal URL.
    #[arg(long, env = "KILN_EXECUTOR_INTERNAL_URL")]
    internal_url: Option<String>,
    /// A file holding the internal credential (sent as `Authorization: Bearer <token>`).
    #[arg(long, env = "KILN_EXECUTOR_INTERNAL_TOKEN_FILE")]
    internal_token_file: Option<PathBuf>,
    /// The address the router reaches instances on.
    #[arg(long, env = "KILN_EXECUTOR_HOST_IP")]
    host_ip: Option<String>,
    /// The droplet cache's size, MiB.
    #[arg(long, env = "KILN_EXECUTOR_DROPLET_CACHE_MB")]
    droplet_cache_mb: Option<u64>,
    /// The containers' address pool (a /30 each).
    #[arg(long, env = "KILN_EXECUTOR_NETWORK_POOL")]
    network_pool: Option<String>,
    /// The first NetIn host port.
    #[arg(long, env = "KILN_EXECUTOR_PORT_RANGE_START")]
    port_range_start: Option<u16>,
    /// How many NetIn host ports.
    #[arg(long, env = "KILN_EXECUTOR_PORT_RANGE_SIZE")]
    port_range_size: Option<u16>,
    /// The first host uid of the containers' uid ranges.
    #[arg(long, env = "KILN_EXECUTOR_UID_RANGE_START")]
    uid_range_start: Option<u32>,
}

impl Args {
    fn config(&self) -> Result<Config> {
        let mut c = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                Config::from_toml(&text).with_context(|| format!("parsing {}", path.display()))?
            }
            None => Config::default(),
        };
        macro_rules! set {
            ($($field:ident),*) => { $(if let Some(v) = &self.$field { c.$field = v.clone(); })* };
        }
        set!(
            cell_id,
            zone,
            stacks,
            memory_mb,
            disk_mb,
            max_containers,
            data_dir,
            stacks_dir
        );
        set!(
            host_ip,
            droplet_cache_mb,
            network_pool,
            port_range_start,
            port_range_size,
            uid_range_start
        );
        if let Some(n) = &self.nats {
            c.nats_url = n.clone();
        }
        if self.internal_url.is_some() {
            c.internal_url = self.internal_url.clone();
        }
        if self.internal_token_file.is_some() {
            c.internal_token_file = self.internal_token_file.clone();
        }
        c.validate().map_err(anyhow::Error::msg)?;
        Ok(c)
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match Args::parse().config().and_then(main_with) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            eprintln!("kiln-executor: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn main_with(config: Config) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("kiln-executor runs containers and needs root");
    }
    let backend_config = config.backend_config();
    // Blocking threads (metrics, container operations) are kept between the periodic rounds
    // instead of being made again each time.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_keep_alive(Duration::from_secs(120))
        .build()
        .context("starting the async runtime")?;
    let mut opened = false;
    let served = runtime.block_on(serve(config, &mut opened));
    // Tasks still holding the backend end here, so its data dir lock is free for clean-up.
    runtime.shutdown_timeout(Duration::from_secs(30));
    if opened {
        info!("destroying what is left and unmounting the container store");
        let cleaned =
            Backend::destroy_all(&backend_config).context("cleaning up the container backend");
        if let Err(e) = cleaned {
            return Err(match served {
                Ok(()) => e,
                Err(served) => served.context(format!("also {e:#}")),
            });
        }
    }
    served
}

/// Serves until a signal; `opened` says whether the backend was opened (and needs cleaning).
async fn serve(config: Config, opened: &mut bool) -> Result<()> {
    let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    let backend = Backend::new(config.backend_config())
        .await
        .with_context(|| {
            format!(
                "opening the container backend in {}",
                config.data_dir.display()
            )
        })?;
    *opened = true;
    let ready = async {
        for stack in &config.stacks {
            info!(stack, "importing the stack");
            kiln_executor::import_stack(&backend, stack).await?;
        }
        let nats = async_nats::ConnectOptions::new()
            .name(format!("kiln-executor {}", config.cell_id))
            .connect(config.nats_url.as_str())
            .await
            .with_context(|| format!("connecting to NATS at {}", config.nats_url))?;
        Ok::<_, anyhow::Error>(Executor::start(config.clone(), backend.clone(), nats).await?)
    };
    let executor = tokio::select! {
        e = ready => e?,
        _ = term.recv() => return Ok(()),
        _ = int.recv() => return Ok(()),
    };
    let why = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
        () = executor.drain_requested() => "drain command",
    };
    let timeout = config.timings.evacuation_timeout();
    info!(
        reason = why,
        timeout_secs = timeout.as_secs(),
        "evacuating: the controller starts this cell's instances elsewhere (SIGTERM or SIGINT again stops them at once)"
    );
    executor.evacuate();
    let handed_over = tokio::select! {
        outcome = executor.evacuated(timeout) => outcome == Evacuation::Complete,
        _ = term.recv() => {
            info!(signal = "SIGTERM", "a second signal: stopping at once");
            false
        }
        _ = int.recv() => {
            info!(signal = "SIGINT", "a second signal: stopping at once");
            false
        }
    };
    if !handed_over {
        info!("stopping what is left: unregistering routes and stopping instances");
    }
    executor.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn flags_override_the_file() {
        Args::command().debug_assert();
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("cell.toml");
        std::fs::write(
            &file,
            "cell_id = \"from-file\"\nzone = \"z9\"\nmemory_mb = 100\n",
        )
        .expect("write");
        let args = Args::try_parse_from([
            "kiln-executor",
            "--config",
            file.to_str().expect("utf8"),
            "--memory-mb",
            "200",
        ])
        .expect("parse");
        let c = args.config().expect("config");
        assert_eq!(
            (c.cell_id.as_str(), c.zone.as_str(), c.memory_mb),
            ("from-file", "z9", 200)
        );
    }
}
