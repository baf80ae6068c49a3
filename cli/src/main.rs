//! `kiln`: the command line of the platform. Against a controller it works like the cf CLI
//! (`login`, `push`, `apps`, `logs`, `scale`, ...); for buildpack authors it stages and runs
//! droplets locally with no server (`kiln stage`, `kiln run-droplet`).
//!
//! Layout: `api` (the HTTP client and its errors), `config` (the saved login), `output`
//! (tables, colour, `--json`), `push/` (manifest, ignore rules, upload), `commands/` (the
//! other controller commands), and the local `stage`, `run_droplet`, `local`.

mod api;
mod commands;
mod config;
mod local;
mod output;
mod push;
mod run_droplet;
mod stage;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use commands::{admin, app, env, login, logs, platform, routes, ssh};

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "Kiln: push apps, run them on buildpacks",
    after_help = "Getting started:\n  kiln login -a http://127.0.0.1:9022 -u admin\n  kiln push hello -p examples/staticfile\n  kiln app hello\n  kiln logs hello --recent\n\nNO_COLOR turns colour off; KILN_HOME moves ~/.kiln."
)]
struct Cli {
    /// Print JSON for scripts instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Log in to an API and target its first org and space.
    Login(login::Args),
    /// Show the API, user, org and space.
    Target,
    /// Push apps: upload, stage, start (reads manifest.yml).
    Push(push::Args),
    /// List the apps of the space.
    Apps,
    /// Show an app and its instances.
    App(app::Named),
    /// Show an app's logs (live, or --recent).
    Logs(logs::Args),
    /// Change or show an app's instances, memory and disk.
    Scale(env::ScaleArgs),
    /// Start an app and wait for its instances.
    Start(app::Named),
    /// Stop an app.
    Stop(app::Named),
    /// Restart an app (rolling when it runs).
    Restart(app::Named),
    /// Stage the app's package again, then restart it with the new droplet.
    Restage(app::Named),
    /// Delete an app (-r: and its routes).
    Delete(app::DeleteArgs),
    /// Run a command in an app's instance: `kiln ssh NAME -c COMMAND`.
    Ssh(ssh::Args),
    /// Show an app's environment.
    Env(app::Named),
    /// Set an app's environment variable.
    SetEnv(env::SetArgs),
    /// Remove an app's environment variable.
    UnsetEnv(env::UnsetArgs),
    /// List the stacks.
    Stacks,
    /// List the buildpacks in detection order.
    Buildpacks,
    /// Create an admin buildpack from a zip or a folder.
    CreateBuildpack(platform::CreateBuildpackArgs),
    /// List the routes.
    Routes,
    /// Map a route to an app.
    MapRoute(routes::MapArgs),
    /// Unmap a route from an app.
    UnmapRoute(routes::MapArgs),
    /// List the domains.
    Domains,
    /// Show an app's audit events.
    Events(platform::EventsArgs),
    /// Operator commands: `kiln admin cells`, `kiln admin cell drain ID`.
    #[command(subcommand)]
    Admin(admin::Admin),
    /// Print a shell completion script: `source <(kiln completion bash)`.
    Completion {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Stage an app locally with the platform's lifecycle and sandbox, and write its droplet.
    Stage(stage::Args),
    /// Run a droplet locally in a container and forward a host port to it (Ctrl-C stops it).
    RunDroplet(run_droplet::Args),
}

async fn dispatch(command: Command, out: output::Out) -> anyhow::Result<u8> {
    match command {
        Command::Login(a) => login::login(a, out).await,
        Command::Target => login::target(out).await,
        Command::Push(a) => push::run(a, out).await,
        Command::Apps => app::apps(out).await,
        Command::App(a) => app::app(a, out).await,
        Command::Logs(a) => logs::run(a, out).await,
        Command::Scale(a) => env::scale(a, out).await,
        Command::Start(a) => app::start(a, false, out).await,
        Command::Stop(a) => app::stop(a, out).await,
        Command::Restart(a) => app::start(a, true, out).await,
        Command::Restage(a) => app::restage(a, out).await,
        Command::Delete(a) => app::delete(a, out).await,
        Command::Ssh(a) => ssh::run(a, out).await,
        Command::Env(a) => env::env(a, out).await,
        Command::SetEnv(a) => env::set(&a.name, &a.var, Some(&a.value), out).await,
        Command::UnsetEnv(a) => env::set(&a.name, &a.var, None, out).await,
        Command::Stacks => platform::stacks(out).await,
        Command::Buildpacks => platform::buildpacks(out).await,
        Command::CreateBuildpack(a) => platform::create_buildpack(a, out).await,
        Command::Routes => routes::routes(out).await,
        Command::MapRoute(a) => routes::map(a, out).await,
        Command::UnmapRoute(a) => routes::unmap(a, out).await,
        Command::Domains => platform::domains(out).await,
        Command::Events(a) => platform::events(a, out).await,
        Command::Admin(a) => admin::run(a, out).await,
        Command::Completion { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "kiln", &mut std::io::stdout());
            Ok(0)
        }
        Command::Stage(args) => stage::run(args).await,
        Command::RunDroplet(args) => run_droplet::run(args).await,
    }
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
    let out = output::Out { json: cli.json };
    let code = runtime.block_on(dispatch(cli.command, out));
    // Not waiting for blocking reads still pending (a session's stdin after the shell ended).
    runtime.shutdown_background();
    match code {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("{} {e:#}", output::paint_err("FAILED"));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_may_start_with_a_hyphen() {
        // Generated passwords are base64url: a quarter of them start with `-`.
        let cli =
            Cli::try_parse_from(["kiln", "login", "-u", "admin", "-p", "-Nx4"]).expect("parsed");
        match cli.command {
            Command::Login(a) => assert_eq!(a.password.as_deref(), Some("-Nx4")),
            _ => panic!("not login"),
        }
    }
}
