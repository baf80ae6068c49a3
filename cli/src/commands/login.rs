//! `kiln login` (asks for what is missing; the password without echo) and `kiln target`.

use std::io::{BufRead, Write};

use serde_json::json;

use crate::api::{http, token, transport, ApiError, Client};
use crate::config::{Config, Named};
use crate::output::{s, Out};

/// `kiln login` arguments.
#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  kiln login -a http://127.0.0.1:9022 -u admin\n  kiln login                              # the API of the last login\n  KILN_PASSWORD=... kiln login -a URL -u admin   # scripts"
)]
pub struct Args {
    /// The API's URL.
    #[arg(short = 'a', long)]
    pub api: Option<String>,
    /// The user.
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// The password (asked without echo when missing).
    #[arg(
        short = 'p',
        long,
        env = "KILN_PASSWORD",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    pub password: Option<String>,
}

fn ask(prompt: &str) -> anyhow::Result<String> {
    print!("{prompt}");
    std::io::stdout().flush()?;
    let mut line = String::new();
    if std::io::stdin().lock().read_line(&mut line)? == 0 {
        anyhow::bail!("no answer to `{}`", prompt.trim_end_matches([':', ' ']));
    }
    Ok(line.trim().to_string())
}

/// Runs `kiln login`.
pub async fn login(args: Args, out: Out) -> anyhow::Result<u8> {
    let mut config = Config::load().unwrap_or_default();
    let api = match args.api.or(config.api.clone()) {
        Some(a) => a,
        None => ask("API endpoint: ")?,
    };
    let api = if api.contains("://") {
        api
    } else {
        // No TLS in this build yet: the controller speaks plain HTTP.
        format!("http://{api}")
    };
    let api = api.trim_end_matches('/').to_string();
    out.say(format!("API endpoint: {api}"));
    let http = http();
    let root: serde_json::Value = http
        .get(format!("{api}/"))
        .send()
        .await
        .map_err(|e| transport(&api, e))?
        .json()
        .await
        .map_err(|_| ApiError::Unexpected(api.clone()))?;
    let login = root["links"]["login"]["href"]
        .as_str()
        .unwrap_or(&api)
        .trim_end_matches('/')
        .to_string();
    let user = match args.user {
        Some(u) => u,
        None => ask("Username: ")?,
    };
    let password = match args.password {
        Some(p) => p,
        None => rpassword::prompt_password("Password: ")?,
    };
    config = Config {
        api: Some(api.clone()),
        login: Some(login),
        user: Some(user.clone()),
        ..Config::default()
    };
    out.say("Authenticating...");
    token(
        &http,
        &mut config,
        &[
            ("grant_type", "password"),
            ("username", &user),
            ("password", &password),
        ],
    )
    .await?;
    config.save()?;
    let mut client = Client::from_config()?;
    let orgs = client.list("/v3/organizations").await?;
    if let Some(org) = orgs.first() {
        client.config.org = Some(Named {
            guid: s(org, "guid"),
            name: s(org, "name"),
        });
        let spaces = client
            .list(&format!("/v3/spaces?organization_guids={}", s(org, "guid")))
            .await?;
        let space = spaces
            .iter()
            .find(|sp| sp["relationships"]["organization"]["data"]["guid"] == org["guid"])
            .or(spaces.first());
        client.config.space = space.map(|sp| Named {
            guid: s(sp, "guid"),
            name: s(sp, "name"),
        });
    }
    client.config.save()?;
    out.say("OK\n");
    print_target(&client.config, out);
    Ok(0)
}

fn print_target(c: &Config, out: Out) {
    if out.json {
        out.json(&json!({
            "api": c.api, "user": c.user,
            "org": c.org.as_ref().map(|o| &o.name), "space": c.space.as_ref().map(|s| &s.name),
        }));
        return;
    }
    let none = || "(none)".to_string();
    println!(
        "{:<16}{}",
        "API endpoint:",
        c.api.clone().unwrap_or_else(none)
    );
    println!("{:<16}{}", "user:", c.user.clone().unwrap_or_else(none));
    println!(
        "{:<16}{}",
        "org:",
        c.org.as_ref().map(|o| o.name.clone()).unwrap_or_else(none)
    );
    println!(
        "{:<16}{}",
        "space:",
        c.space
            .as_ref()
            .map(|o| o.name.clone())
            .unwrap_or_else(none)
    );
}

/// Runs `kiln target`.
pub async fn target(out: Out) -> anyhow::Result<u8> {
    let config = Config::load()?;
    if config.api.is_none() {
        return Err(ApiError::NotLoggedIn.into());
    }
    print_target(&config, out);
    Ok(0)
}
