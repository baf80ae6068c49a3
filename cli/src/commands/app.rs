//! App commands: `apps`, `app`, `start`, `stop`, `restart`, `restage`, `delete`.

use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

use serde_json::{json, Value};

use super::lifecycle;
use crate::api::Client;
use crate::output::{ago, bytes, s, table, Out};

/// An app by name.
#[derive(clap::Args)]
pub struct Named {
    /// The app.
    pub name: String,
}

/// `kiln delete` arguments.
#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  kiln delete hello -f      # no question\n  kiln delete hello -r -f   # and its routes"
)]
pub struct DeleteArgs {
    /// The app.
    pub name: String,
    /// Also delete the app's routes.
    #[arg(short = 'r')]
    pub routes: bool,
    /// Do not ask.
    #[arg(short = 'f')]
    pub force: bool,
}

/// Prints one process: type, instances, memory, and its instances table.
pub async fn print_process(client: &mut Client, p: &Value) -> anyhow::Result<()> {
    let stats = client
        .get(&format!("/v3/processes/{}/stats", s(p, "guid")))
        .await?;
    let instances: Vec<Value> = stats["resources"].as_array().cloned().unwrap_or_default();
    let running = instances.iter().filter(|i| i["state"] == "RUNNING").count();
    println!();
    println!("{:<16}{}", "type:", s(p, "type"));
    println!("{:<16}{running}/{}", "instances:", instances.len());
    println!("{:<16}{}M", "memory usage:", s(p, "memory_in_mb"));
    if instances.is_empty() {
        println!("There are no running instances of this process.");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = instances
        .iter()
        .map(|i| {
            let u = &i["usage"];
            let f = |k: &str| u[k].as_f64().unwrap_or(0.0);
            let state = s(i, "state").to_lowercase();
            let state = match i["details"].as_str() {
                Some(d) if !d.is_empty() => format!("{state} ({d})"),
                _ => state,
            };
            vec![
                format!("#{}", s(i, "index")),
                state,
                if i["state"] == "RUNNING" {
                    ago(i["uptime"].as_u64().unwrap_or(0))
                } else {
                    String::new()
                },
                format!("{:.1}%", f("cpu") * 100.0),
                format!(
                    "{} of {}",
                    bytes(f("mem")),
                    bytes(i["mem_quota"].as_f64().unwrap_or(0.0))
                ),
                format!(
                    "{} of {}",
                    bytes(f("disk")),
                    bytes(i["disk_quota"].as_f64().unwrap_or(0.0))
                ),
            ]
        })
        .collect();
    table(&["", "state", "since", "cpu", "memory", "disk"], &rows);
    Ok(())
}

/// `kiln apps`.
pub async fn apps(out: Out) -> anyhow::Result<u8> {
    let mut client = Client::from_config()?;
    let space = client.space_guid()?;
    let apps = client
        .list(&format!("/v3/apps?space_guids={space}"))
        .await?;
    if out.json {
        out.json(&json!({"resources": apps}));
        return Ok(0);
    }
    let mut rows = Vec::new();
    for a in &apps {
        let guid = s(a, "guid");
        let mut procs = Vec::new();
        for p in client.list(&format!("/v3/apps/{guid}/processes")).await? {
            procs.push(format!("{}:{}", s(&p, "type"), s(&p, "instances")));
        }
        let routes = lifecycle::route_urls(&mut client, &guid).await?;
        rows.push(vec![
            s(a, "name"),
            s(a, "state").to_lowercase(),
            procs.join(", "),
            routes.join(", "),
        ]);
    }
    if rows.is_empty() {
        println!("No apps found.");
    } else {
        table(&["name", "requested state", "processes", "routes"], &rows);
    }
    Ok(0)
}

/// `kiln app NAME`.
pub async fn app(args: Named, out: Out) -> anyhow::Result<u8> {
    let mut client = Client::from_config()?;
    let app = client.app_by_name(&args.name).await?;
    if out.json {
        let guid = s(&app, "guid");
        let mut procs = Vec::new();
        for p in client.list(&format!("/v3/apps/{guid}/processes")).await? {
            let stats = client
                .get(&format!("/v3/processes/{}/stats", s(&p, "guid")))
                .await?;
            procs.push(json!({"process": p, "stats": stats["resources"]}));
        }
        out.json(&json!({"app": app, "processes": procs}));
        return Ok(0);
    }
    lifecycle::summary(&mut client, &app).await?;
    Ok(0)
}

/// `kiln start NAME` (`restart`: a rolling restart of a started app).
pub async fn start(args: Named, restart: bool, out: Out) -> anyhow::Result<u8> {
    let mut client = Client::from_config()?;
    let app = client.app_by_name(&args.name).await?;
    let guid = s(&app, "guid");
    let action = if restart && app["state"] == "STARTED" {
        "restart"
    } else {
        "start"
    };
    out.say(format!("{}ing app {}...", capital(action), args.name));
    let app = client
        .post(&format!("/v3/apps/{guid}/actions/{action}"), &json!({}))
        .await?;
    lifecycle::wait_running(&mut client, &guid, Duration::from_secs(180), out).await?;
    finish(&mut client, &app, out).await
}

fn capital(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

async fn finish(client: &mut Client, app: &Value, out: Out) -> anyhow::Result<u8> {
    if out.json {
        out.json(app);
    } else {
        println!();
        lifecycle::summary(client, app).await?;
    }
    Ok(0)
}

/// `kiln stop NAME`.
pub async fn stop(args: Named, out: Out) -> anyhow::Result<u8> {
    let mut client = Client::from_config()?;
    let app = client.app_by_name(&args.name).await?;
    out.say(format!("Stopping app {}...", args.name));
    let app = client
        .post(
            &format!("/v3/apps/{}/actions/stop", s(&app, "guid")),
            &json!({}),
        )
        .await?;
    if out.json {
        out.json(&app);
    } else {
        println!("OK");
    }
    Ok(0)
}

/// `kiln restage NAME`: a new build of the newest package, then its droplet and a restart.
pub async fn restage(args: Named, out: Out) -> anyhow::Result<u8> {
    let mut client = Client::from_config()?;
    let app = client.app_by_name(&args.name).await?;
    let guid = s(&app, "guid");
    let packages = client.list(&format!("/v3/apps/{guid}/packages")).await?;
    let package = packages
        .iter()
        .filter(|p| p["state"] == "READY")
        .max_by_key(|p| s(p, "created_at"))
        .ok_or_else(|| anyhow::anyhow!("app {} has no package to restage: push it", args.name))?;
    out.say(format!("Restaging app {}...", args.name));
    let droplet = lifecycle::stage(&mut client, &guid, &s(package, "guid"), out).await?;
    client
        .patch(
            &format!("/v3/apps/{guid}/relationships/current_droplet"),
            &json!({"data": {"guid": droplet}}),
        )
        .await?;
    let action = if app["state"] == "STARTED" {
        "restart"
    } else {
        "start"
    };
    let app = client
        .post(&format!("/v3/apps/{guid}/actions/{action}"), &json!({}))
        .await?;
    lifecycle::wait_running(&mut client, &guid, Duration::from_secs(180), out).await?;
    finish(&mut client, &app, out).await
}

/// `kiln delete NAME [-r] [-f]`.
pub async fn delete(args: DeleteArgs, out: Out) -> anyhow::Result<u8> {
    let mut client = Client::from_config()?;
    let Some(app) = client.find_app(&args.name).await? else {
        out.say(format!("App {} does not exist.", args.name));
        return Ok(0);
    };
    if !args.force {
        if !std::io::stdin().is_terminal() {
            anyhow::bail!("delete app {}? Say so with -f", args.name);
        }
        print!("Really delete the app {}? [yN]: ", args.name);
        let _ = std::io::stdout().flush();
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            println!("Delete cancelled");
            return Ok(0);
        }
    }
    let guid = s(&app, "guid");
    let routes = if args.routes {
        client.list(&format!("/v3/apps/{guid}/routes")).await?
    } else {
        Vec::new()
    };
    out.say(format!("Deleting app {}...", args.name));
    client.delete(&format!("/v3/apps/{guid}")).await?;
    for r in routes {
        out.say(format!("Deleting route {}...", s(&r, "url")));
        client
            .delete(&format!("/v3/routes/{}", s(&r, "guid")))
            .await?;
    }
    out.say("OK");
    Ok(0)
}
