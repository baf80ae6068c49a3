//! Route commands: `routes`, `map-route`, `unmap-route`.

use serde_json::json;

use crate::api::Client;
use crate::output::{s, table, Out};

/// `kiln map-route` / `unmap-route` arguments.
#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  kiln map-route hello apps.kiln.local --hostname www\n  kiln map-route hello apps.kiln.local --hostname api --path /v1"
)]
pub struct MapArgs {
    /// The app.
    pub app: String,
    /// The domain.
    pub domain: String,
    /// The host (default: the app's name).
    #[arg(long = "hostname", short = 'n')]
    pub hostname: Option<String>,
    /// A path prefix: `/v1`.
    #[arg(long)]
    pub path: Option<String>,
}

/// `kiln routes`.
pub async fn routes(out: Out) -> anyhow::Result<u8> {
    let mut client = Client::from_config()?;
    let routes = client.list("/v3/routes").await?;
    if out.json {
        out.json(&json!({"resources": routes}));
        return Ok(0);
    }
    let mut names = std::collections::HashMap::new();
    for a in client.list("/v3/apps").await? {
        names.insert(s(&a, "guid"), s(&a, "name"));
    }
    let rows: Vec<Vec<String>> = routes
        .iter()
        .map(|r| {
            let url = s(r, "url");
            let host = s(r, "host");
            let domain = url
                .strip_prefix(&format!("{host}."))
                .unwrap_or(&url)
                .trim_end_matches(s(r, "path").as_str())
                .to_string();
            let apps: Vec<String> = r["destinations"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|d| d["app"]["guid"].as_str())
                .map(|g| names.get(g).cloned().unwrap_or_else(|| g.to_string()))
                .collect();
            vec![host, domain, s(r, "path"), apps.join(", ")]
        })
        .collect();
    if rows.is_empty() {
        println!("No routes found.");
    } else {
        table(&["host", "domain", "path", "apps"], &rows);
    }
    Ok(0)
}

/// `kiln map-route APP DOMAIN`.
pub async fn map(args: MapArgs, out: Out) -> anyhow::Result<u8> {
    let mut client = Client::from_config()?;
    let app = client.app_by_name(&args.app).await?;
    let domains = client.list("/v3/domains").await?;
    let Some(domain) = domains.iter().find(|d| d["name"] == args.domain.as_str()) else {
        let names: Vec<String> = domains.iter().map(|d| s(d, "name")).collect();
        anyhow::bail!(
            "domain {} not found (domains: {})",
            args.domain,
            names.join(", ")
        );
    };
    let host = args
        .hostname
        .clone()
        .unwrap_or_else(|| crate::push::routes_host(&args.app));
    let path = args.path.clone().unwrap_or_default();
    out.say(format!(
        "Mapping route {host}.{}{path} to app {}...",
        args.domain, args.app
    ));
    let space = client.space_guid()?;
    let route = crate::push::ensure_route(&mut client, &host, domain, &path, &space).await?;
    let body =
        json!({"destinations": [{"app": {"guid": s(&app, "guid"), "process": {"type": "web"}}}]});
    let r = client
        .post(&format!("/v3/routes/{route}/destinations"), &body)
        .await?;
    if out.json {
        out.json(&r);
    } else {
        println!("OK");
    }
    Ok(0)
}

/// `kiln unmap-route APP DOMAIN`: the controller cannot remove one destination yet
/// (no `DELETE /v3/routes/:guid/destinations/:guid`); a route only the app uses is deleted.
pub async fn unmap(args: MapArgs, out: Out) -> anyhow::Result<u8> {
    let mut client = Client::from_config()?;
    let app = client.app_by_name(&args.app).await?;
    let guid = s(&app, "guid");
    let host = args
        .hostname
        .clone()
        .unwrap_or_else(|| crate::push::routes_host(&args.app));
    let path = args.path.clone().unwrap_or_default();
    let url = format!("{host}.{}{path}", args.domain);
    let routes = client.list(&format!("/v3/apps/{guid}/routes")).await?;
    let Some(route) = routes.iter().find(|r| s(r, "url") == url) else {
        anyhow::bail!("route {url} is not mapped to app {}", args.app);
    };
    let others = route["destinations"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|d| d["app"]["guid"] != guid.as_str());
    if others {
        anyhow::bail!("route {url} also serves other apps, and the controller cannot remove one destination yet");
    }
    out.say(format!("Removing route {url} from app {}...", args.app));
    client
        .delete(&format!("/v3/routes/{}", s(route, "guid")))
        .await?;
    out.say("OK");
    Ok(0)
}
