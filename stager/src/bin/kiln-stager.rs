//! `kiln-stager`: the staging service. Opens its own container backend, imports its stacks from
//! the machine's stack cache, connects to NATS and serves staging requests
//! ([`kiln_stager::service::run`]) until SIGTERM or SIGINT; then lets running stagings finish
//! (within a grace), and leaves nothing running or mounted.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use kiln_containers::{Backend, Config, Recovery};
use kiln_stager::service::{self, Settings, Token};
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

/// The Kiln stager: stages apps into droplets for the cloud controller, over NATS.
#[derive(Parser, Debug)]
#[command(name = "kiln-stager", version)]
struct Args {
    /// The NATS server.
    #[arg(
        long,
        env = "KILN_STAGER_NATS",
        default_value = "nats://127.0.0.1:4222"
    )]
    nats: String,
    /// This stager's id on the bus (default: <hostname>-<pid>).
    #[arg(long, env = "KILN_STAGER_ID")]
    id: Option<String>,
    /// The container backend's data dir (state, containers, disk store).
    #[arg(
        long,
        env = "KILN_STAGER_DATA_DIR",
        default_value = "/var/lib/kiln/stager"
    )]
    data_dir: PathBuf,
    /// Where stack images are imported (shared by the backends of the machine).
    #[arg(
        long,
        env = "KILN_STAGER_STACKS_DIR",
        default_value = "/var/lib/kiln/stacks"
    )]
    stacks_dir: PathBuf,
    /// The stacks to stage on, imported at start from the machine's stack cache (built there
    /// the first time) and advertised.
    #[arg(
        long,
        env = "KILN_STAGER_STACKS",
        value_delimiter = ',',
        default_value = "tiny,bookworm"
    )]
    stacks: Vec<String>,
    /// The folder of built-in buildpacks (default: the repository's buildpacks/).
    #[arg(long, env = "KILN_STAGER_BUILDPACKS")]
    buildpacks: Option<PathBuf>,
    /// Where admin buildpacks are cached, unpacked, by the sha256 of their zip (default:
    /// `<data-dir>/buildpack-cache`).
    #[arg(long, env = "KILN_STAGER_BUILDPACK_CACHE")]
    buildpack_cache: Option<PathBuf>,
    /// The layer cache of Dockerfile builds, kept across stagings (default:
    /// `<data-dir>/dockerfile-cache`).
    #[arg(long, env = "KILN_STAGER_DOCKERFILE_CACHE")]
    dockerfile_cache: Option<PathBuf>,
    /// A file holding the internal credential for the controller's internal endpoints, sent
    /// as `Authorization: Bearer <token>` (never given to a staging container).
    #[arg(long, env = "KILN_STAGER_INTERNAL_TOKEN_FILE")]
    internal_token_file: Option<PathBuf>,
    /// How many stagings run at once.
    #[arg(long, env = "KILN_STAGER_MAX_STAGINGS", default_value_t = 2,
          value_parser = clap::value_parser!(u16).range(1..))]
    max_stagings: u16,
    /// The network the staging containers' addresses come from (a /30 each).
    #[arg(
        long,
        env = "KILN_STAGER_NETWORK_POOL",
        default_value = "10.253.4.0/24"
    )]
    network_pool: String,
    /// The first host port the backend may hand out.
    #[arg(long, env = "KILN_STAGER_PORT_RANGE_START", default_value_t = 63001)]
    port_range_start: u16,
    /// How many host ports the backend may hand out.
    #[arg(long, env = "KILN_STAGER_PORT_RANGE_SIZE", default_value_t = 100)]
    port_range_size: u16,
    /// The first host uid of the containers' uid ranges (65536 per container).
    #[arg(long, env = "KILN_STAGER_UID_RANGE_START", default_value_t = (1 << 29) + (1 << 27))]
    uid_range_start: u32,
    /// Seconds running stagings get to finish after SIGTERM or SIGINT.
    #[arg(long, env = "KILN_STAGER_SHUTDOWN_GRACE", default_value_t = 60)]
    shutdown_grace: u64,
}

impl Args {
    fn backend_config(&self) -> Config {
        Config {
            data_dir: self.data_dir.clone(),
            stacks_dir: self.stacks_dir.clone(),
            network_pool: self.network_pool.clone(),
            port_range_start: self.port_range_start,
            port_range_size: self.port_range_size,
            uid_range_start: self.uid_range_start,
            max_containers: usize::from(self.max_stagings),
            // A restarted stager cannot resume a staging: the controller fails those builds
            // when this stager's advertisements stop listing them.
            recovery: Recovery::Destroy,
            ..Config::default()
        }
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
    let args = Args::parse();
    match main_with(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            eprintln!("kiln-stager: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn main_with(args: Args) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("kiln-stager runs containers and needs root");
    }
    let config = args.backend_config();
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let (served, backend_started) = runtime.block_on(serve(args));
    // Tasks still holding the backend (a container destroy in the background) end here, so
    // that its lock on the data dir is free for the clean-up.
    runtime.shutdown_timeout(Duration::from_secs(30));
    if backend_started {
        info!(data_dir = %config.data_dir.display(), "destroying what is left and unmounting");
        let cleaned = Backend::destroy_all(&config)
            .with_context(|| format!("cleaning up {}", config.data_dir.display()));
        if let Err(e) = cleaned {
            return match served {
                Ok(()) => Err(e),
                Err(served) => Err(served.context(format!("also {e:#}"))),
            };
        }
    }
    served
}

/// Runs the service; says whether the backend was started (and needs cleaning up).
async fn serve(args: Args) -> (Result<()>, bool) {
    let stop = CancellationToken::new();
    if let Err(e) = on_signals(stop.clone()) {
        return (Err(e), false);
    }
    let config = args.backend_config();
    let backend = match Backend::new(config.clone()).await {
        Ok(backend) => backend,
        Err(kiln_containers::Error::DataDirInUse(dir)) => {
            return (
                Err(anyhow::anyhow!(
                    "another stager (or backend) holds {}: give this one its own --data-dir",
                    dir.display()
                )),
                false,
            )
        }
        Err(e) => {
            return (
                Err(anyhow::Error::new(e).context(format!(
                    "starting the container backend in {}",
                    config.data_dir.display()
                ))),
                false,
            )
        }
    };
    (serve_with(&args, backend, stop).await, true)
}

async fn serve_with(args: &Args, backend: Backend, stop: CancellationToken) -> Result<()> {
    let token = match &args.internal_token_file {
        Some(path) => Some(Token::from_file(path)?),
        None => {
            tracing::warn!(
                "no --internal-token-file: requests to the controller carry no credential"
            );
            None
        }
    };
    let id = args.id.clone().unwrap_or_else(default_id);
    // Until it serves, a signal simply stops it.
    let ready = async {
        for stack in &args.stacks {
            import(&backend, stack).await?;
        }
        async_nats::ConnectOptions::new()
            .name(format!("kiln-stager {id}"))
            .connect(args.nats.as_str())
            .await
            .with_context(|| format!("connecting to NATS at {}", args.nats))
    };
    let client = tokio::select! {
        client = ready => client?,
        () = stop.cancelled() => {
            info!("stopped before serving");
            return Ok(());
        }
    };
    let mut settings = Settings::new(
        &id,
        args.stacks.clone(),
        args.buildpacks.clone().unwrap_or_else(builtin_dir),
    );
    settings.max_stagings = usize::from(args.max_stagings);
    settings.token = token;
    settings.buildpack_cache = args
        .buildpack_cache
        .clone()
        .unwrap_or_else(|| args.data_dir.join("buildpack-cache"));
    settings.dockerfile_cache = args
        .dockerfile_cache
        .clone()
        .unwrap_or_else(|| args.data_dir.join("dockerfile-cache"));
    settings.grace = Duration::from_secs(args.shutdown_grace);
    let summary = service::run(client, backend, settings, stop.cancelled_owned())
        .await
        .context("serving staging requests")?;
    info!(
        succeeded = summary.succeeded,
        failed = summary.failed,
        "kiln-stager stopped"
    );
    Ok(())
}

/// Stops the service on the first SIGTERM or SIGINT.
fn on_signals(stop: CancellationToken) -> Result<()> {
    let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        info!(signal = name, "stopping");
        stop.cancel();
    });
    Ok(())
}

/// Imports `stack` from the machine's stack cache, building it there the first time.
async fn import(backend: &Backend, stack: &str) -> Result<()> {
    if !kiln_rootfs::recipes::KNOWN.contains(&stack) {
        bail!(
            "unknown stack `{stack}` (known: {})",
            kiln_rootfs::recipes::KNOWN.join(", ")
        );
    }
    info!(stack, "importing the stack");
    let name = stack.to_string();
    let layout = tokio::task::spawn_blocking(move || kiln_rootfs::recipes::cached(&name))
        .await?
        .with_context(|| format!("building the {stack} stack"))?;
    backend
        .import_stack(&layout.dir, stack)
        .await
        .with_context(|| format!("importing the {stack} stack"))?;
    Ok(())
}

/// `<hostname>-<pid>`.
fn default_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "stager".to_string());
    format!("{host}-{}", std::process::id())
}

/// The built-in buildpacks: the repository's `buildpacks/`.
fn builtin_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../buildpacks")
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn flags_default_apart_from_the_other_kiln_backends() {
        Args::command().debug_assert();
        let args = Args::try_parse_from(["kiln-stager"]).expect("defaults parse");
        assert_eq!(
            args.stacks,
            vec!["tiny".to_string(), "bookworm".to_string()]
        );
        let config = args.backend_config();
        assert_eq!(config.network_pool, "10.253.4.0/24");
        assert_eq!(
            (config.port_range_start, config.port_range_size),
            (63001, 100)
        );
        assert_eq!(config.uid_range_start, (1 << 29) + (1 << 27));
        assert_eq!(config.max_containers, 2);
        assert_eq!(config.recovery, Recovery::Destroy);
        assert!(Args::try_parse_from(["kiln-stager", "--max-stagings", "0"]).is_err());
        let args =
            Args::try_parse_from(["kiln-stager", "--stacks", "bookworm", "--max-stagings", "4"])
                .expect("flags parse");
        assert_eq!(args.backend_config().max_containers, 4);
        assert_eq!(args.stacks, vec!["bookworm".to_string()]);
    }
}
