//! The steps shared by `push`, `start`, `restart` and `restage`: staging a package with its
//! `STG` log streamed as it happens, and waiting for instances to run with a spinner
//! (a crashed instance, or one that cannot be placed, ends the wait with its reason).

use std::time::{Duration, Instant};

use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

use crate::api::Client;
use crate::output::{s, Out};

/// How many of the buildpack's last lines a failed staging shows again.
const LAST_LINES: usize = 10;

/// Stages `package` of `app`; the droplet's guid. Staging lines are printed as they come; a
/// FAILED build prints its error and the buildpack's last lines and is an error.
pub async fn stage(
    client: &mut Client,
    app: &str,
    package: &str,
    out: Out,
) -> anyhow::Result<String> {
    out.say("Staging app and tracing logs...");
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stream = match super::logs::open(client, app).await {
        Ok(resp) => {
            let seen = seen.clone();
            Some(tokio::spawn(async move {
                let mut lines = std::pin::pin!(super::logs::lines(resp));
                while let Some(l) = lines.next().await {
                    if l["source"] != "STG" {
                        continue;
                    }
                    let text = l["message"].as_str().unwrap_or("").to_string();
                    if out.json {
                        eprintln!("   {text}");
                    } else {
                        println!("   {text}");
                    }
                    if let Ok(mut s) = seen.lock() {
                        s.push(text);
                    }
                }
            }))
        }
        Err(e) => {
            eprintln!("warning: no live staging log ({e})");
            None
        }
    };
    let build = client
        .post("/v3/builds", &json!({"package": {"guid": package}}))
        .await;
    let build = match build {
        Ok(b) => b,
        Err(e) => {
            if let Some(t) = stream {
                t.abort();
            }
            return Err(e.into());
        }
    };
    let guid = s(&build, "guid");
    let build = loop {
        let b = client.get(&format!("/v3/builds/{guid}")).await?;
        if b["state"] != "STAGING" {
            break b;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    if let Some(t) = stream {
        // The last lines may still be on their way; a failure's matter most.
        let linger = if build["state"] == "STAGED" { 50 } else { 300 };
        tokio::time::sleep(Duration::from_millis(linger)).await;
        t.abort();
    }
    if build["state"] == "STAGED" {
        if let Some(d) = build["droplet"]["guid"].as_str() {
            return Ok(d.to_string());
        }
    }
    let mut last: Vec<String> = seen.lock().map(|s| s.clone()).unwrap_or_default();
    if last.is_empty() {
        let recent = client.get(&format!("/v3/apps/{app}/logs/recent")).await?;
        last = recent["resources"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|l| l["source"] == "STG")
            .filter_map(|l| l["message"].as_str().map(str::to_string))
            .collect();
    }
    if !last.is_empty() {
        eprintln!("\nThe buildpack's last lines:");
        for l in &last[last.len().saturating_sub(LAST_LINES)..] {
            eprintln!("   {l}");
        }
    }
    anyhow::bail!(
        "staging failed: {}",
        build["error"].as_str().unwrap_or("no reason given")
    )
}

/// Counts of one wait round.
struct Round {
    running: usize,
    total: usize,
    failure: Option<String>,
}

async fn round(client: &mut Client, app: &str) -> anyhow::Result<Round> {
    let mut r = Round {
        running: 0,
        total: 0,
        failure: None,
    };
    for p in client.list(&format!("/v3/apps/{app}/processes")).await? {
        if p["instances"].as_u64().unwrap_or(0) == 0 {
            continue;
        }
        let stats = client
            .get(&format!("/v3/processes/{}/stats", s(&p, "guid")))
            .await?;
        for i in stats["resources"].as_array().into_iter().flatten() {
            r.total += 1;
            let details = i["details"].as_str().filter(|d| !d.is_empty());
            match (i["state"].as_str(), details) {
                (Some("RUNNING"), _) => r.running += 1,
                (Some("CRASHED"), d) => {
                    r.failure = Some(format!(
                        "instance {} of process {} crashed: {}",
                        i["index"],
                        s(&p, "type"),
                        d.unwrap_or("no reason given")
                    ))
                }
                (Some("DOWN"), Some(d)) => {
                    r.failure = Some(format!(
                        "instance {} of process {} cannot start: {d}",
                        i["index"],
                        s(&p, "type")
                    ))
                }
                _ => {}
            }
        }
    }
    Ok(r)
}

/// Waits until every instance of `app` is RUNNING, for `timeout` at most.
pub async fn wait_running(
    client: &mut Client,
    app: &str,
    timeout: Duration,
    out: Out,
) -> anyhow::Result<()> {
    out.say("Waiting for app to start...");
    let spinner = if out.json {
        ProgressBar::hidden()
    } else {
        let b = ProgressBar::new_spinner();
        b.set_style(
            ProgressStyle::with_template("   {spinner} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        b.enable_steady_tick(Duration::from_millis(120));
        b
    };
    let deadline = Instant::now() + timeout;
    let result = loop {
        let r = round(client, app).await?;
        spinner.set_message(format!("{} of {} instances running", r.running, r.total));
        if let Some(f) = r.failure {
            break Err(anyhow::anyhow!("{f}"));
        }
        if r.total > 0 && r.running == r.total {
            break Ok(());
        }
        if r.total == 0 {
            break Ok(());
        }
        if Instant::now() > deadline {
            break Err(anyhow::anyhow!(
                "the app did not start within {} s ({} of {} instances running)",
                timeout.as_secs(),
                r.running,
                r.total
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    spinner.finish_and_clear();
    result
}

/// The routes of `app` as URLs (`host.domain/path`).
pub async fn route_urls(client: &mut Client, app: &str) -> anyhow::Result<Vec<String>> {
    Ok(client
        .list(&format!("/v3/apps/{app}/routes"))
        .await?
        .iter()
        .map(|r| s(r, "url"))
        .collect())
}

/// The URL a browser reaches `route` (a route's `url`: host and path) at: with the router's
/// port when the controller says apps are served on one other than 80.
pub async fn app_url(client: &mut Client, route: &str) -> String {
    let port = client
        .get("/")
        .await
        .ok()
        .and_then(|root| root["links"]["app_routes"]["meta"]["port"].as_u64())
        .filter(|p| *p != 80);
    match (port, route.split_once('/')) {
        (Some(p), Some((host, path))) => format!("http://{host}:{p}/{path}"),
        (Some(p), None) => format!("http://{route}:{p}"),
        (None, _) => format!("http://{route}"),
    }
}

/// Prints `kiln app`'s summary of `app` (an app resource).
pub async fn summary(client: &mut Client, app: &Value) -> anyhow::Result<()> {
    let guid = s(app, "guid");
    let routes = route_urls(client, &guid).await?;
    let droplet = client
        .get(&format!("/v3/apps/{guid}/droplets/current"))
        .await
        .ok();
    let buildpacks: Vec<String> = droplet
        .as_ref()
        .and_then(|d| d["buildpacks"].as_array())
        .into_iter()
        .flatten()
        .map(|b| s(b, "name"))
        .collect();
    let field = |k: &str, v: String| println!("{:<19}{v}", format!("{k}:"));
    field("name", s(app, "name"));
    field("requested state", s(app, "state").to_lowercase());
    field("routes", routes.join(", "));
    field(
        "last uploaded",
        droplet
            .as_ref()
            .map(|d| s(d, "created_at"))
            .unwrap_or_default(),
    );
    field("stack", s(&app["lifecycle"]["data"], "stack"));
    field("buildpacks", buildpacks.join(", "));
    for p in client.list(&format!("/v3/apps/{guid}/processes")).await? {
        super::app::print_process(client, &p).await?;
    }
    Ok(())
}
