//! `kiln-cc`: runs the cloud controller.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;

/// The Kiln cloud controller.
#[derive(Parser)]
#[command(name = "kiln-cc", version)]
struct Args {
    /// Database, blobstore, keys, admin password.
    #[arg(long, env = "KILN_CC_DATA_DIR", default_value = "/var/lib/kiln/cc")]
    data_dir: PathBuf,
    /// Address to listen on.
    #[arg(long, env = "KILN_CC_LISTEN", default_value = "127.0.0.1:9022")]
    listen: SocketAddr,
    /// The NATS server.
    #[arg(long, env = "KILN_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats: String,
    /// PostgreSQL URL (postgres://user:password@host:port/db); default: SQLite in the data dir.
    #[arg(long, env = "KILN_CC_DATABASE_URL")]
    database_url: Option<String>,
    /// The URL clients reach the API at, for links (default: http://<listen>).
    #[arg(long, env = "KILN_CC_EXTERNAL_URL")]
    external_url: Option<String>,
    /// The port clients reach app routes at through the router, when it is not 80.
    #[arg(long, env = "KILN_CC_APPS_PORT")]
    apps_port: Option<u16>,
    /// Milliseconds after which a silent cell is lost and its instances run elsewhere
    /// (default 10000; keep it several times the cells' advertise interval).
    #[arg(long, env = "KILN_CC_CELL_TTL_MS")]
    cell_ttl_ms: Option<u64>,
    /// Base URL stagers and cells use for the internal endpoints (default: the listen address).
    #[arg(long, env = "KILN_CC_INTERNAL_URL")]
    internal_url: Option<String>,
    /// The shared domain of app routes.
    #[arg(
        long,
        env = "KILN_CC_DEFAULT_DOMAIN",
        default_value = "apps.kiln.local"
    )]
    default_domain: String,
    /// The stack apps stage on unless they say otherwise.
    #[arg(long, env = "KILN_CC_DEFAULT_STACK", default_value = "bookworm")]
    default_stack: String,
    /// A stack there is, as NAME=DESCRIPTION (repeat the flag; default: bookworm and tiny).
    /// Stacks stagers advertise are added on their own.
    #[arg(long = "stack", env = "KILN_CC_STACKS", value_delimiter = ',')]
    stacks: Vec<String>,
    /// How often unreferenced blobs are removed, in seconds.
    #[arg(long, env = "KILN_CC_BLOB_GC_INTERVAL", default_value_t = 3600)]
    blob_gc_interval_secs: u64,
    /// The stagers' built-in buildpacks made admin buildpacks at first start, in detection
    /// order (default: python, nodejs, binary, procfile, staticfile).
    #[arg(long, env = "KILN_CC_BUILTIN_BUILDPACKS", value_delimiter = ',')]
    builtin_buildpacks: Vec<String>,
    /// The largest upload, in MiB.
    #[arg(long, env = "KILN_CC_MAX_UPLOAD_MB", default_value_t = 1024)]
    max_upload_mb: u64,
    /// The smallest file kept in the resource pool (matched by `resource_matches`), in bytes.
    #[arg(long, env = "KILN_CC_RESOURCE_POOL_MIN_BYTES", default_value_t = 1)]
    resource_pool_min_bytes: u64,
    /// A registry `kiln push --docker-image HOST/REPO:TAG` may pull from:
    /// `https://[user:password@]host[:port]`, or `http://...` for plain HTTP (loopback or a
    /// trusted network). Repeat the flag; none: images come from the image store only.
    #[arg(
        long = "registry",
        env = "KILN_CC_REGISTRIES",
        value_delimiter = ',',
        hide_env_values = true
    )]
    registries: Vec<kiln_cloud_controller::config::RegistryAccess>,
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KILN_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let mut config = kiln_cloud_controller::Config::new(&args.data_dir);
    config.listen = args.listen;
    config.nats_url = args.nats;
    config.internal_url = args.internal_url;
    config.external_url = args.external_url;
    config.apps_port = args.apps_port;
    config.cell_ttl_ms = args.cell_ttl_ms;
    config.database_url = args.database_url;
    config.default_domain = args.default_domain;
    config.default_stack = args.default_stack;
    config.max_upload_bytes = args.max_upload_mb << 20;
    if !args.builtin_buildpacks.is_empty() {
        config.builtin_buildpacks = args.builtin_buildpacks;
    }
    config.resource_pool_min_bytes = args.resource_pool_min_bytes;
    config.blob_gc_interval_secs = args.blob_gc_interval_secs;
    config.registries = args.registries;
    if !args.stacks.is_empty() {
        config.stacks = args
            .stacks
            .iter()
            .map(|s| match s.split_once('=') {
                Some((name, description)) => (name.to_string(), description.to_string()),
                None => (s.to_string(), String::new()),
            })
            .collect();
    }
    let started = kiln_cloud_controller::start(config).await?;
    if let Some(password) = &started.admin_password {
        println!(
            "admin password (shown once; also in {}): {password}",
            args.data_dir.join("admin-password").display()
        );
    }
    println!("cloud controller listening on http://{}", started.addr);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("listening for SIGTERM")?;
    tokio::select! {
        r = started.server => r??,
        _ = tokio::signal::ctrl_c() => println!("stopping (SIGINT)"),
        _ = term.recv() => println!("stopping (SIGTERM)"),
    }
    Ok(())
}
