//! `kiln env`, `set-env`, `unset-env` and `scale`.

use serde_json::json;

use crate::api::Client;
use crate::output::{s, Out};

/// `kiln set-env` arguments.
#[derive(clap::Args)]
#[command(after_help = "Example:\n  kiln set-env hello GREETING hi && kiln restart hello")]
pub struct SetArgs {
    /// The app.
    pub name: String,
    /// The variable.
    pub var: String,
    /// Its value.
    pub value: String,
}

/// `kiln unset-env` arguments.
#[derive(clap::Args)]
pub struct UnsetArgs {
    /// The app.
    pub name: String,
    /// The variable.
    pub var: String,
}

/// `kiln scale` arguments.
#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  kiln scale hello -i 3\n  kiln scale hello -m 512M -k 2G\n  kiln scale hello            # show the current scale"
)]
pub struct ScaleArgs {
    /// The app.
    pub name: String,
    /// Instances.
    #[arg(short = 'i')]
    pub instances: Option<u32>,
    /// Memory per instance: 256M, 1G.
    #[arg(short = 'm')]
    pub memory: Option<String>,
    /// Disk per instance: 1G.
    #[arg(short = 'k')]
    pub disk: Option<String>,
    /// The process type.
    #[arg(long = "process", default_value = "web")]
    pub process: String,
}

/// `kiln env NAME`.
pub async fn env(args: super::app::Named, out: Out) -> anyhow::Result<u8> {
    let mut client = Client::from_config()?;
    let app = client.app_by_name(&args.name).await?;
    let env = client
        .get(&format!("/v3/apps/{}/env", s(&app, "guid")))
        .await?;
    if out.json {
        out.json(&env);
        return Ok(0);
    }
    println!("Getting env variables for app {}...\n", args.name);
    for (title, key) in [
        ("System-Provided:", "system_env_json"),
        ("User-Provided:", "environment_variables"),
        ("Staging Environment Variable Groups:", "staging_env_json"),
        ("Running Environment Variable Groups:", "running_env_json"),
    ] {
        let Some(map) = env[key].as_object().filter(|m| !m.is_empty()) else {
            continue;
        };
        println!("{title}");
        for (k, v) in map {
            match v {
                serde_json::Value::String(t) => println!("{k}: {t}"),
                other => println!(
                    "{k}: {}",
                    serde_json::to_string_pretty(other).unwrap_or_default()
                ),
            }
        }
        println!();
    }
    Ok(0)
}

/// `kiln set-env` / `unset-env` (value None).
pub async fn set(name: &str, var: &str, value: Option<&str>, out: Out) -> anyhow::Result<u8> {
    let mut client = Client::from_config()?;
    let app = client.app_by_name(name).await?;
    let verb = if value.is_some() {
        "Setting"
    } else {
        "Removing"
    };
    out.say(format!("{verb} env variable {var} for app {name}..."));
    let v = client
        .patch(
            &format!("/v3/apps/{}/environment_variables", s(&app, "guid")),
            &json!({"var": {var: value}}),
        )
        .await?;
    if out.json {
        out.json(&v);
    } else {
        println!("OK\nTIP: Use 'kiln restage {name}' or 'kiln restart {name}' for the change to take effect.");
    }
    Ok(0)
}

/// `kiln scale`.
pub async fn scale(args: ScaleArgs, out: Out) -> anyhow::Result<u8> {
    let mut client = Client::from_config()?;
    let app = client.app_by_name(&args.name).await?;
    let guid = s(&app, "guid");
    let size = |v: &Option<String>| -> anyhow::Result<Option<u64>> {
        v.as_deref()
            .map(crate::push::manifest::parse_size)
            .transpose()
            .map_err(|e| anyhow::anyhow!(e))
    };
    let mut body = serde_json::Map::new();
    if let Some(i) = args.instances {
        body.insert("instances".into(), json!(i));
    }
    if let Some(m) = size(&args.memory)? {
        body.insert("memory_in_mb".into(), json!(m));
    }
    if let Some(d) = size(&args.disk)? {
        body.insert("disk_in_mb".into(), json!(d));
    }
    let path = format!("/v3/apps/{guid}/processes/{}", args.process);
    let p = if body.is_empty() {
        client.get(&path).await?
    } else {
        out.say(format!("Scaling app {}...", args.name));
        client
            .post(&format!("{path}/actions/scale"), &body.into())
            .await?
    };
    if out.json {
        out.json(&p);
        return Ok(0);
    }
    super::app::print_process(&mut client, &p).await?;
    Ok(0)
}
