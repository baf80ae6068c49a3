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
    after_help = "Examples:\n  kiln push hello -p examples/staticfile -s tiny\n  kiln push                       # every app of ./manifest.yml\n  kiln push api -f deploy/manifest.yml -i 3 -m 512M\n  kiln push hello --no-start      # upload only\n  kiln push web -p examples/dockerfile        # its Dockerfile is built at staging\n  kiln push web --docker-image web.tar        # an OCI layout or `docker save` tar\n  kiln push web --docker-image 127.0.0.1:5000/team/web:1   # from a registry the controller may pull from\n\nAn app with a Dockerfile at its root and no -b is built from it (or say -s docker)."
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
    /// Run an OCI image instead of staging files: an image archive (an OCI image layout or
    /// `docker save` tar, uploaded to the image store under the app's name), an image of the
    /// store by name or digest, or `host[:port]/repo:tag` of a registry the controller may pull
    /// from.
    #[arg(long = "docker-image", value_name = "ARCHIVE|IMAGE")]
    pub docker_image: Option<String>,
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
    let files = match p.docker_image {
        Some(_) => Vec::new(),
        None => ignore::files(&p.path)?,
    };
    let space = client.space_guid()?;
    let lifecycle = match p.docker_image {
        Some(_) => json!({"type": "docker", "data": {}}),
        None => {
            json!({"type": "buildpack", "data": {"buildpacks": p.buildpacks, "stack": p.stack}})
        }
    };
    let app = match client.find_app(&p.name).await? {
        Some(app) => {
            out.say(format!("Updating app {}...", p.name));
            if p.docker_image.is_some() {
                client
                    .patch(
                        &format!("/v3/apps/{}", s(&app, "guid")),
                        &json!({ "lifecycle": lifecycle }),
                    )
                    .await?
            } else if !p.buildpacks.is_empty() || p.stack.is_some() {
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
    let package = match &p.docker_image {
        Some(image) => docker_package(client, &app, image, p, out).await?,
        None => bits_package(client, &app, &files, p, out).await?,
    };
    let Some(package) = package else {
        return Ok(());
    };
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

/// The bits package of app `guid`: `files` uploaded (only those the controller lacks). None
/// with `--no-start`.
async fn bits_package(
    client: &mut Client,
    app: &serde_json::Value,
    files: &[ignore::AppFile],
    p: &Plan,
    out: Out,
) -> anyhow::Result<Option<String>> {
    let guid = s(app, "guid");
    let package = client
        .post(
            "/v3/packages",
            &json!({"type": "bits", "relationships": {"app": {"data": {"guid": guid}}}}),
        )
        .await?;
    let package = s(&package, "guid");
    out.say(format!("Uploading files ({} files)...", files.len()));
    let up = upload::upload(client, &package, files, !out.json).await?;
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
        return Ok(None);
    }
    Ok(Some(package))
}

/// The docker package of app `guid` running `image`: an archive on disk is uploaded to the
/// image store first (unnamed: the package names it by digest, and no name another app's
/// Dockerfile uses moves); anything else is an image reference the controller resolves (the
/// store, or a registry it may pull from). None with `--no-start`.
async fn docker_package(
    client: &mut Client,
    app: &serde_json::Value,
    image: &str,
    p: &Plan,
    out: Out,
) -> anyhow::Result<Option<String>> {
    let guid = s(app, "guid");
    let path = std::path::Path::new(image);
    let reference = if path.is_file() {
        let uploaded = crate::commands::images::upload(client, path, None, out).await?;
        s(&uploaded, "digest")
    } else {
        image.to_string()
    };
    out.say(format!("Using image {reference}"));
    let package = client
        .post(
            "/v3/packages",
            &json!({"type": "docker", "data": {"image": reference}, "relationships": {"app": {"data": {"guid": guid}}}}),
        )
        .await?;
    let package = s(&package, "guid");
    if p.no_start {
        out.say(format!(
            "App {} created with image {reference}; not staged or started (--no-start).",
            p.name
        ));
        if out.json {
            out.json(&json!({"app": app, "package": {"guid": package}, "image": reference}));
        }
        return Ok(None);
    }
    Ok(Some(package))
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
