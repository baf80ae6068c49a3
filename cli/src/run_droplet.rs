//! `kiln run-droplet`: runs a droplet in a container on this machine, forwards a host port to
//! it, streams its output tagged like the platform's logs, and cleans up on Ctrl-C.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use kiln_containers::{ContainerSpec, Limits, NetIn, ProcessSpec, StreamInOptions};
use kiln_droplet::{Instance, APP_PORT};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use crate::local::{self, Purpose};

/// `kiln run-droplet` arguments.
#[derive(clap::Args)]
pub struct Args {
    /// The droplet (.tgz) made by `kiln stage`.
    droplet: PathBuf,
    /// The stack to run it on (the one it was staged on).
    #[arg(long, short = 's', default_value = "bookworm")]
    stack: String,
    /// The host port forwarded to the app's port (default: the first free one from 62001).
    #[arg(long, short = 'p')]
    port: Option<u16>,
    /// The process type to run.
    #[arg(long, default_value = "web")]
    process: String,
    /// A command instead of the droplet's.
    #[arg(long = "start-command", short = 'c')]
    start_command: Option<String>,
    /// Memory limit in MiB.
    #[arg(long, short = 'm', default_value_t = 512)]
    memory: u64,
    /// An environment variable for the app, KEY=VALUE (repeatable).
    #[arg(long = "env", short = 'e')]
    env: Vec<String>,
}

pub async fn run(args: Args) -> Result<u8> {
    let info = kiln_droplet::read_staging_info(&args.droplet)
        .with_context(|| format!("reading {}", args.droplet.display()))?;
    let command = match &args.start_command {
        Some(c) => c.clone(),
        None => match info.command_for(&args.process) {
            Some(c) => c.to_string(),
            None => bail!(
                "the droplet has no command for process type `{}` (it has: {}): give one with -c",
                args.process,
                if info.process_types.is_empty() {
                    "none".to_string()
                } else {
                    info.process_types
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ),
        },
    };
    for e in &args.env {
        if !e.contains('=') {
            bail!("`{e}` is not KEY=VALUE");
        }
    }
    // From here on Ctrl-C stops the app and cleans up instead of killing `kiln`.
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("handling Ctrl-C")?;
    let backend = local::backend(Purpose::Run, args.port).await?;
    tokio::select! {
        r = local::ensure_stack(&backend, &args.stack) => r?,
        _ = interrupt.recv() => return Ok(130),
    }
    let handle = format!("run-droplet-{}", std::process::id());
    let spec = ContainerSpec {
        handle: handle.clone(),
        stack: args.stack.clone(),
        limits: Limits {
            memory_bytes: args.memory << 20,
            ..Limits::default()
        },
        net_in: vec![NetIn {
            host_port: args.port,
            container_port: APP_PORT,
        }],
        ..ContainerSpec::default()
    };
    // An interrupted create is undone by the backend's clean-up when `backend` is dropped.
    let created = tokio::select! {
        c = backend.create(spec) => c.context("creating the container")?,
        _ = interrupt.recv() => return Ok(130),
    };
    let result = serve(&backend, &handle, created, &args, &command, &mut interrupt).await;
    if let Err(e) = backend.destroy(&handle).await {
        eprintln!("warning: destroying {handle}: {e}");
    }
    result
}

async fn serve(
    backend: &kiln_containers::Backend,
    handle: &str,
    created: kiln_containers::ContainerInfo,
    args: &Args,
    command: &str,
    interrupt: &mut tokio::signal::unix::Signal,
) -> Result<u8> {
    let host_port = created
        .mapped_ports
        .first()
        .map(|m| m.host_port)
        .context("the container has no forwarded port")?;
    let droplet = std::fs::File::open(&args.droplet)
        .with_context(|| format!("opening {}", args.droplet.display()))?;
    // Droplets hold links such as `node_modules -> /home/vcap/deps/0/node_modules`.
    let options = StreamInOptions {
        user: Some("vcap"),
        absolute_links: true,
    };
    let copy = backend.stream_in_with(
        handle,
        kiln_droplet::HOME,
        options,
        flate2::read::GzDecoder::new(std::io::BufReader::new(droplet)),
    );
    tokio::select! {
        r = copy => r.context("copying the droplet in")?,
        _ = interrupt.recv() => return Ok(130),
    }
    let instance = Instance {
        app_id: "local".into(),
        app_name: args
            .droplet
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        instance_id: handle.to_string(),
        host_ip: "127.0.0.1".into(),
        host_port,
        memory_mib: args.memory,
        disk_mib: 1024,
        ..Instance::default()
    };
    let launcher = kiln_droplet::launcher_args(command);
    let launcher: Vec<&str> = launcher.iter().map(String::as_str).collect();
    let mut spec = ProcessSpec::new("/bin/sh", &launcher).user("vcap");
    spec.env = kiln_droplet::instance_env(&instance);
    spec.env.extend(args.env.iter().cloned());
    spec.dir = Some(kiln_droplet::APP_DIR.to_string());
    let mut process = backend
        .run(handle, spec)
        .await
        .context("starting the app")?;
    let tag = format!("APP/PROC/{}/0", args.process.to_uppercase());
    println!("Running `{command}`: http://127.0.0.1:{host_port} (Ctrl-C stops it)");
    let out = tokio::spawn(pump(process.take_stdout(), tag.clone(), "OUT"));
    let err = tokio::spawn(pump(process.take_stderr(), tag, "ERR"));
    let code = tokio::select! {
        exit = process.wait() => {
            let exit = exit.context("waiting for the app")?;
            let _ = tokio::join!(out, err);
            eprintln!("the app exited with status {}{}", exit.code, if exit.oom_killed { " (out of memory)" } else { "" });
            u8::try_from(exit.code).unwrap_or(1).max(1)
        }
        _ = interrupt.recv() => {
            eprintln!("\nstopping");
            let _ = process.signal(libc::SIGTERM).await;
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), process.wait()).await;
            0
        }
    };
    Ok(code)
}

async fn pump(stream: Option<impl AsyncRead + Unpin>, tag: String, kind: &'static str) {
    let Some(stream) = stream else { return };
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        println!("[{tag}] {kind} {line}");
    }
}
