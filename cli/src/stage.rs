//! `kiln stage`: stages an app on this machine with the platform's lifecycle and sandbox,
//! streams the buildpacks' output, and prints what staging found.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use kiln_containers::{NetOutRule, Protocol};
use kiln_stager::{LogLine, LogSink, Stager, StagingRequest, Stream};
use sha2::{Digest, Sha256};

use crate::local::{self, Purpose};

/// `kiln stage` arguments.
#[derive(clap::Args)]
pub struct Args {
    /// The stack to stage on.
    #[arg(long, short = 's', default_value = "bookworm")]
    stack: String,
    /// A buildpack: a directory, a .zip, or a built-in name (repeat for multi-buildpack).
    /// None: detect among the built-in buildpacks.
    #[arg(long = "buildpack", short = 'b')]
    buildpacks: Vec<String>,
    /// An environment variable for the buildpacks, KEY=VALUE (repeatable).
    #[arg(long = "env", short = 'e', value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// Where to write the droplet.
    #[arg(long, short = 'o', default_value = "droplet.tgz")]
    output: PathBuf,
    /// The start command, overriding the buildpack's and the Procfile's `web`.
    #[arg(long = "start-command", short = 'c')]
    start_command: Option<String>,
    /// Stage without the build cache of this app's previous local staging.
    #[arg(long)]
    no_cache: bool,
    /// Let staging reach NETWORK (a.b.c.d or a.b.c.d/len), optionally only PORT or PORT-PORT,
    /// e.g. `--egress 0.0.0.0/0:443` (repeatable; default: no network, like the platform).
    #[arg(long = "egress", value_parser = parse_egress)]
    egress: Vec<NetOutRule>,
    /// The app: a directory, a .zip or a .tar(.gz).
    #[arg(default_value = ".")]
    app: PathBuf,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not KEY=VALUE"))?;
    if k.is_empty() || k.contains('/') {
        return Err(format!("`{k}` is not a valid variable name"));
    }
    Ok((k.to_string(), v.to_string()))
}

fn parse_egress(s: &str) -> Result<NetOutRule, String> {
    let (network, ports) = match s.split_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (s, None),
    };
    let (addr, len) = network.split_once('/').unwrap_or((network, "32"));
    let valid =
        addr.parse::<std::net::Ipv4Addr>().is_ok() && len.parse::<u8>().is_ok_and(|l| l <= 32);
    if !valid {
        return Err(format!(
            "`{network}` is not an IPv4 address or network (a.b.c.d/len)"
        ));
    }
    let ports = match ports {
        None => Vec::new(),
        Some(p) => {
            let (lo, hi) = p.split_once('-').unwrap_or((p, p));
            match (lo.parse::<u16>(), hi.parse::<u16>()) {
                (Ok(lo), Ok(hi)) if lo <= hi && lo > 0 => vec![(lo, hi)],
                _ => return Err(format!("`{p}` is not a port or a port range (PORT-PORT)")),
            }
        }
    };
    Ok(NetOutRule {
        protocol: if ports.is_empty() {
            Protocol::All
        } else {
            Protocol::Tcp
        },
        networks: vec![network.to_string()],
        ports,
    })
}

/// The built-in buildpacks: `KILN_BUILDPACKS`, else the repository's `buildpacks/`.
pub fn builtin_dir() -> PathBuf {
    std::env::var_os("KILN_BUILDPACKS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../buildpacks"))
}

pub async fn run(args: Args) -> Result<u8> {
    let app = std::fs::canonicalize(&args.app)
        .with_context(|| format!("reading the app at {}", args.app.display()))?;
    let output = absolute(&args.output)?;
    if output.starts_with(&app) && app.is_dir() {
        bail!(
            "the droplet {} would be written inside the app folder {}: choose another -o",
            output.display(),
            app.display()
        );
    }
    match output.parent() {
        Some(dir) if dir.is_dir() => {}
        _ => bail!(
            "cannot write the droplet to {}: its directory does not exist",
            output.display()
        ),
    }
    // From here on Ctrl-C cleans up instead of killing `kiln`.
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("handling Ctrl-C")?;
    let backend = local::backend(Purpose::Stage, None).await?;
    tokio::select! {
        r = local::ensure_stack(&backend, &args.stack) => r?,
        _ = interrupt.recv() => return Ok(130),
    }
    let cache = local::cli_dir().join("caches").join(format!(
        "{}-{}.tgz",
        hex::encode(&Sha256::digest(app.as_os_str().as_encoded_bytes())[..8]),
        args.stack
    ));
    if let Some(parent) = cache.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let mut request = StagingRequest::new(
        &format!("cli-{}", std::process::id()),
        &app,
        &args.stack,
        &output,
    );
    request.buildpacks = args.buildpacks;
    request.env = args.env;
    request.start_command = args.start_command;
    request.egress = args.egress;
    request.cache_in = (!args.no_cache).then(|| cache.clone());
    request.cache_out = Some(cache);

    let sink: LogSink = Arc::new(|line: &LogLine| match line.stream {
        Stream::Out => {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{}", line.text);
            let _ = out.flush();
        }
        Stream::Err => eprintln!("{}", line.text),
    });
    let started = Instant::now();
    let stager = Stager::new(&backend, builtin_dir());
    let handle = format!("staging-{}", request.id);
    let outcome = tokio::select! {
        r = stager.stage(request, sink) => Some(r),
        _ = interrupt.recv() => None,
    };
    let Some(outcome) = outcome else {
        eprintln!("\ninterrupted: cleaning up the staging container");
        // Dropping the staging destroys its container in the background; wait for that.
        for _ in 0..100 {
            if backend.info(&handle).is_err() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        return Ok(130);
    };
    match outcome {
        Ok(r) => {
            println!();
            println!("Staged in {:.1} s", started.elapsed().as_secs_f64());
            println!("  detected buildpack: {}", r.detected_buildpack);
            if r.buildpacks.len() > 1 {
                println!("  buildpacks:         {}", r.buildpacks.join(", "));
            }
            println!(
                "  start command:      {}",
                if r.start_command.is_empty() {
                    "(none)"
                } else {
                    &r.start_command
                }
            );
            for (kind, command) in &r.process_types {
                println!("  process {kind:<11} {command}");
            }
            println!(
                "  droplet:            {} ({} bytes, sha256 {})",
                r.droplet.display(),
                r.droplet_size,
                r.droplet_sha256
            );
            let phases: Vec<String> = r
                .phases
                .iter()
                .map(|(name, d)| format!("{name} {:.2} s", d.as_secs_f64()))
                .collect();
            println!("  phases:             {}", phases.join(", "));
            Ok(0)
        }
        Err(e) => {
            eprintln!("\nstaging failed: {e}");
            Ok(u8::try_from(e.exit_code()).unwrap_or(1))
        }
    }
}

fn absolute(path: &Path) -> Result<PathBuf> {
    if path.is_absolute() {
        return Ok(path.to_path_buf());
    }
    Ok(std::env::current_dir()?.join(path))
}
