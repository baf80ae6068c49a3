//! Operator commands for images and stack swaps: `kiln admin images`, `kiln admin image import
//! ARCHIVE [--name N]`, `kiln admin stack import NAME ARCHIVE` (import, then point the stack at
//! it), and `kiln admin config get|set KEY [VALUE]` (today `stack.<name>.image`). Setting a
//! stack's image restarts the stack's apps onto it, rolling; the command waits and shows the
//! progress unless `--no-wait`. Rollback is the same command with the previous image.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

use crate::api::{encode, transport, Client};
use crate::output::{s, table, Out};

/// `kiln admin image` subcommands.
#[derive(clap::Subcommand)]
pub enum ImageCommand {
    /// Add an image to the controller's image store, from an OCI image layout or a `docker
    /// save` archive (a tar, plain or gzip).
    #[command(
        after_help = "Examples:\n  kiln admin image import bookworm-2026-11.tar --name bookworm-2026-11\n  kiln admin images"
    )]
    Import {
        /// The archive.
        archive: PathBuf,
        /// A name for the image (it moves to this image if another had it).
        #[arg(long)]
        name: Option<String>,
    },
}

/// `kiln admin stack` subcommands.
#[derive(clap::Subcommand)]
pub enum StackCommand {
    /// Import an image archive and make it stack NAME's image: the stack's apps are restarted
    /// onto it, rolling (same as `image import` + `config set stack.NAME.image`).
    #[command(
        after_help = "Examples:\n  kiln admin stack import bookworm bookworm-2026-11.tar\n  kiln stacks"
    )]
    Import {
        /// The stack.
        name: String,
        /// The archive (OCI image layout or `docker save`, a tar, plain or gzip).
        archive: PathBuf,
        #[command(flatten)]
        wait: WaitArgs,
    },
}

/// `kiln admin config` subcommands.
#[derive(clap::Subcommand)]
pub enum ConfigCommand {
    /// Show a setting, or every setting without KEY.
    #[command(
        after_help = "Examples:\n  kiln admin config get\n  kiln admin config get stack.bookworm.image"
    )]
    Get {
        /// `stack.<name>.image`.
        key: Option<String>,
    },
    /// Change a setting. `stack.<name>.image IMAGE` (a name, digest or digest prefix of an
    /// image in the store) restarts the stack's apps onto it, rolling, without downtime;
    /// droplets are not rebuilt. Roll back with the previous image.
    #[command(
        after_help = "Examples:\n  kiln admin config set stack.bookworm.image bookworm-2026-11\n  kiln admin config set stack.tiny.image sha256:4f1c2a9b8e7d --no-wait"
    )]
    Set {
        /// `stack.<name>.image`.
        key: String,
        /// The image: name, `sha256:<digest>` or a digest prefix of 12+ hex digits.
        value: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
}

/// Waiting for a rolling restart.
#[derive(clap::Args)]
pub struct WaitArgs {
    /// Return once the change is recorded, without waiting for the instances.
    #[arg(long)]
    pub no_wait: bool,
    /// How long to wait for every instance to be on the new image, in seconds.
    #[arg(long, default_value_t = 900)]
    pub timeout: u64,
}

/// `kiln admin images`.
pub async fn list(client: &mut Client, out: Out) -> anyhow::Result<u8> {
    let images = client.list("/v3/images").await?;
    if out.json {
        out.json(&json!({"resources": images}));
        return Ok(0);
    }
    if images.is_empty() {
        out.say("No images: add one with `kiln admin image import ARCHIVE --name NAME`.");
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = images
        .iter()
        .map(|i| {
            vec![
                i["name"].as_str().unwrap_or("-").to_string(),
                s(i, "digest"),
                crate::output::bytes(i["size"].as_f64().unwrap_or(0.0)),
                s(i, "created_at"),
            ]
        })
        .collect();
    table(&["name", "digest", "size", "imported"], &rows);
    Ok(0)
}

/// `kiln admin image import`.
pub async fn import(
    client: &mut Client,
    archive: &Path,
    name: Option<&str>,
    out: Out,
) -> anyhow::Result<u8> {
    let image = upload(client, archive, name, out).await?;
    if out.json {
        out.json(&image);
    }
    Ok(0)
}

/// Uploads `archive` to the image store; the image's JSON.
pub(crate) async fn upload(
    client: &mut Client,
    archive: &Path,
    name: Option<&str>,
    out: Out,
) -> anyhow::Result<Value> {
    let file = tokio::fs::File::open(archive)
        .await
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", archive.display()))?;
    let size = file.metadata().await?.len();
    out.say(format!(
        "Uploading {} ({})...",
        archive.display(),
        crate::output::bytes(size as f64)
    ));
    let bar = if out.json || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        ProgressBar::hidden()
    } else {
        let b = ProgressBar::new(size);
        b.set_style(
            ProgressStyle::with_template("   {bar:30} {bytes}/{total_bytes} {bytes_per_sec}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    };
    let path = match name {
        Some(n) => format!("/v3/images?name={}", encode(n)),
        None => "/v3/images".to_string(),
    };
    client.fresh().await?;
    let b = bar.clone();
    let stream = tokio_util::io::ReaderStream::new(file).inspect(move |chunk| {
        if let Ok(c) = chunk {
            b.inc(c.len() as u64);
        }
    });
    let resp = client
        .request(reqwest::Method::POST, &path)
        .header("Content-Type", "application/x-tar")
        .header("Content-Length", size)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .map_err(|e| transport(&client.api, e))?;
    bar.finish_and_clear();
    if !resp.status().is_success() {
        return Err(crate::api::error_of(resp).await.into());
    }
    let image: Value = resp.json().await.map_err(|e| transport(&client.api, e))?;
    out.say(format!(
        "Image {} imported{}.",
        s(&image, "digest"),
        image["name"]
            .as_str()
            .map(|n| format!(" as {n}"))
            .unwrap_or_default()
    ));
    Ok(image)
}

/// `kiln admin stack import NAME ARCHIVE`.
pub async fn stack_import(
    client: &mut Client,
    stack: &str,
    archive: &Path,
    wait: &WaitArgs,
    out: Out,
) -> anyhow::Result<u8> {
    let image = upload(client, archive, None, out).await?;
    let digest = s(&image, "digest");
    set(client, &format!("stack.{stack}.image"), &digest, wait, out).await
}

/// `kiln admin config get [KEY]`.
pub async fn get(client: &mut Client, key: Option<&str>, out: Out) -> anyhow::Result<u8> {
    let keys = match key {
        Some(k) => vec![
            client
                .get(&format!("/v3/admin/config/{}", encode(k)))
                .await?,
        ],
        None => client.get("/v3/admin/config").await?["resources"]
            .as_array()
            .cloned()
            .unwrap_or_default(),
    };
    if out.json {
        match key {
            Some(_) => out.json(&keys[0]),
            None => out.json(&json!({"resources": keys})),
        }
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = keys
        .iter()
        .map(|k| {
            vec![
                s(k, "key"),
                k["value"].as_str().unwrap_or("(unset)").to_string(),
                k["since"].as_str().unwrap_or("-").to_string(),
                rollout_text(&k["rollout"]),
            ]
        })
        .collect();
    table(&["key", "value", "since", "instances"], &rows);
    Ok(0)
}

fn rollout_text(r: &Value) -> String {
    let (wanted, updated, outdated) = (
        r["instances"].as_u64().unwrap_or(0),
        r["updated"].as_u64().unwrap_or(0),
        r["outdated"].as_u64().unwrap_or(0),
    );
    if outdated > 0 {
        format!("{updated}/{wanted} updated, {outdated} to replace")
    } else {
        format!("{updated}/{wanted} updated")
    }
}

/// `kiln admin config set KEY VALUE`: records it, then waits for the rolling restart.
pub async fn set(
    client: &mut Client,
    key: &str,
    value: &str,
    wait: &WaitArgs,
    out: Out,
) -> anyhow::Result<u8> {
    let path = format!("/v3/admin/config/{}", encode(key));
    let mut now = client
        .call(reqwest::Method::PUT, &path, Some(&json!({"value": value})))
        .await?;
    out.say(format!(
        "{key} = {} (since {})",
        s(&now, "value"),
        s(&now, "since")
    ));
    if !wait.no_wait {
        let deadline = Instant::now() + Duration::from_secs(wait.timeout);
        let mut last = String::new();
        loop {
            let text = rollout_text(&now["rollout"]);
            if text != last {
                out.say(format!("  {text}"));
                last = text;
            }
            if now["rollout"]["done"].as_bool().unwrap_or(false) {
                break;
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "the instances are not all on the new image after {} s: see `kiln admin \
                     config get {key}`, `kiln admin cells` and the apps' events",
                    wait.timeout
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            now = client.get(&path).await?;
        }
        out.say("Every instance is on the new image.");
    }
    if out.json {
        out.json(&now);
    }
    Ok(0)
}
