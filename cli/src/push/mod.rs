//! `kiln push`: the cf CLI's push sequence. Reads `manifest.yml` (flags override it for one
//! app), finds or creates the app, sets env, maps routes, uploads only the files the
//! controller lacks, stages with the log streamed, sets the droplet, scales, starts (or
//! restarts) and waits for the instances, then prints the app's summary and URL.

pub mod ignore;
pub mod manifest;
mod plan;
mod routes;
pub mod upload;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;

use crate::api::Client;
use crate::commands::lifecycle;
use crate::output::{s, Out};
use plan::Plan;
pub use routes::{ensure as ensure_route, host_for as routes_host};

/// `kiln push` arguments.
#[derive(clap::Args, Default)]
#[command(
    after_help = "Examples:\n  kiln push hello -p examples/staticfile -s tiny\n  kiln push                       # every app of ./manifest.yml\n  kiln push api -f deploy/manifest.yml -i 3 -m 512M\n  kiln push hello --no-start      # upload only"
)]
pub struct Args {
    /// The app (default: every app of the manifest).
    pub name: Option<String>,
    /// The app's folder (default: the manifest's `path`, else `.`).
    #[arg(short = 'p', long)]
    pub path: Option<PathBuf>,
    /// The stack.
    #[arg(short = 's', long)]
    pub stack: Option<String>,
    /// A buildpack by name (repeat for several; default: detected).
    #[arg(short = 'b', long = "buildpack")]
    pub buildpacks: Vec<String>,
    /// Memory of each web instance: 256M, 1G.
    #[arg(short = 'm', long)]
    pub memory: Option<String>,
    /// Disk of each web instance: 1G.
    #[arg(short = 'k', long = "disk")]
    pub disk: Option<String>,
    /// Web instances.
    #[arg(short = 'i', long)]
    pub instances: Option<u32>,
    /// The web start command.
    #[arg(short = 'c', long)]
    pub command: Option<String>,
    /// Upload only: do not stage or start.
    #[arg(long)]
    pub no_start: bool,
    /// Map no route.
    #[arg(long)]
    pub no_route: bool,
    /// A generated host name.
    #[arg(long)]
    pub random_route: bool,
    /// The host name of the app's route (default: the app's name).
    #[arg(long)]
    pub hostname: Option<String>,
    /// How a started app is replaced: `rolling` (the only one).
    #[arg(long, value_parser = ["rolling"])]
    pub strategy: Option<String>,
    /// The manifest (default: `manifest.yml` in the app folder or here, if any).
    #[arg(short = 'f', long = "manifest")]
    pub manifest: Option<PathBuf>,
    /// Ignore `manifest.yml`.
    #[arg(long)]
    pub no_manifest: bool,
    /// Seconds to wait for the instances to run.
    #[arg(short = 't', long)]
    pub timeout: Option<u64>,
}

/// Runs `kiln push`.
pub async fn run(args: Args, out: Out) -> anyhow::Result<u8> {
    let plans = plan::plans(&args)?;
    let mut client = Client::from_config()?;
    for p in &plans {
        push_one(&mut client, p, out).await?;
    }
    Ok(0)
}

async fn push_one(client: &mut Client, p: &Plan, out: Out) -> anyhow::Result<()> {
    let org = client.config.org.clone().unwrap_or_default().name;
    let space_name = client.config.space.clone().unwrap_or_default().name;
    let user = client.config.user.clone().unwrap_or_default();
    out.say(format!(
        "Pushing app {} to org {org} / space {space_name} as {user}...",
        p.name
    ));
    let files = ignore::files(&p.path)?;
    let space = client.space_guid()?;
    let lifecycle =
        json!({"type": "buildpack", "data": {"buildpacks": p.buildpacks, "stack": p.stack}});
    let app = match client.find_app(&p.name).await? {
        Some(app) => {
            out.say(format!("Updating app {}...", p.name));
            if !p.buildpacks.is_empty() || p.stack.is_some() {
                let mut data = serde_json::Map::new();
                if !p.buildpacks.is_empty() {
                    data.insert("buildpacks".into(), json!(p.buildpacks));
                }
                if let Some(st) = &p.stack {
                    data.insert("stack".into(), json!(st));
                }
                let body = json!({"lifecycle": {"type": "buildpack", "data": data}});
                client
                    .patch(&format!("/v3/apps/{}", s(&app, "guid")), &body)
                    .await?
            } else {
                app
            }
        }
        None => {
            out.say(format!("Creating app {}...", p.name));
            let body = json!({"name": p.name, "relationships": {"space": {"data": {"guid": space}}}, "lifecycle": lifecycle, "no_route": true});
            client.post("/v3/apps", &body).await?
        }
    };
    let guid = s(&app, "guid");
    if !p.env.is_empty() {
        client
            .patch(
                &format!("/v3/apps/{guid}/environment_variables"),
                &json!({"var": p.env}),
            )
            .await?;
    }
    routes::map(client, p, &guid, &space, out).await?;
    set_processes(client, &guid, p, true).await?;
    let package = client
        .post(
            "/v3/packages",
            &json!({"type": "bits", "relationships": {"app": {"data": {"guid": guid}}}}),
        )
        .await?;
    let package = s(&package, "guid");
    out.say(format!("Uploading files ({} files)...", files.len()));
    let up = upload::upload(client, &package, &files, !out.json).await?;
    out.say(format!(
        "   {} files matched, {} files uploaded ({} bytes zipped)",
        up.matched, up.sent, up.zip_bytes
    ));
    if p.no_start {
        out.say(format!(
            "App {} uploaded; not staged or started (--no-start).",
            p.name
        ));
        if out.json {
            out.json(&json!({"app": app, "package": {"guid": package}, "matched": up.matched, "uploaded": up.sent, "zip_bytes": up.zip_bytes}));
        }
        return Ok(());
    }
    let droplet = lifecycle::stage(client, &guid, &package, out).await?;
    client
        .patch(
            &format!("/v3/apps/{guid}/relationships/current_droplet"),
            &json!({"data": {"guid": droplet}}),
        )
        .await?;
    set_processes(client, &guid, p, false).await?;
    for (kind, body) in &p.scales {
        client
            .post(
                &format!("/v3/apps/{guid}/processes/{kind}/actions/scale"),
                body,
            )
            .await?;
    }
    let current = client.get(&format!("/v3/apps/{guid}")).await?;
    let action = if current["state"] == "STARTED" {
        "restart"
    } else {
        "start"
    };
    let app = client
        .post(&format!("/v3/apps/{guid}/actions/{action}"), &json!({}))
        .await?;
    lifecycle::wait_running(client, &guid, Duration::from_secs(p.timeout), out).await?;
    if out.json {
        out.json(&app);
        return Ok(());
    }
    println!();
    lifecycle::summary(client, &app).await?;
    if let Some(url) = lifecycle::route_urls(client, &guid).await?.first() {
        println!("\nApp URL: {}", lifecycle::app_url(client, url).await);
    }
    Ok(())
}

/// Sets the command and health check of the app's processes from the plan: `web` (which
/// exists from the start) when `web` is true, the others (made by staging) otherwise.
async fn set_processes(client: &mut Client, guid: &str, p: &Plan, web: bool) -> anyhow::Result<()> {
    for (kind, body) in p.updates.iter().filter(|(k, _)| (k == "web") == web) {
        let process = client
            .get(&format!("/v3/apps/{guid}/processes/{kind}"))
            .await?;
        client
            .patch(&format!("/v3/processes/{}", s(&process, "guid")), body)
            .await
            .map_err(|e| {
                anyhow::anyhow!("setting process {kind}'s command and health check: {e}")
            })?;
    }
    Ok(())
}
