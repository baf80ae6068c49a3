//! `kiln`: the command line of the platform. Today it stages and runs droplets locally for
//! buildpack authors (`kiln stage`, `kiln run-droplet`), with no server needed.

mod local;
mod run_droplet;
mod stage;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "Kiln: push apps, run them on buildpacks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Stage an app locally with the platform's lifecycle and sandbox, and write its droplet.
    Stage(stage::Args),
    /// Run a droplet locally in a container and forward a host port to it (Ctrl-C stops it).
    RunDroplet(run_droplet::Args),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KILN_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async {
        match cli.command {
            Command::Stage(args) => stage::run(args).await,
            Command::RunDroplet(args) => run_droplet::run(args).await,
        }
    });
    match code {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
