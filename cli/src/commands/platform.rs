//! Platform-wide listings and buildpacks: `stacks`, `buildpacks`, `create-buildpack`,
//! `domains`, `events`.

use std::path::PathBuf;

use serde_json::{json, Value};

use crate::api::Client;
use crate::output::{s, table, Out};

/// `kiln create-buildpack` arguments.
#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  kiln create-buildpack mybp ./my-buildpack 1          # a folder is zipped\n  kiln create-buildpack mybp mybp.zip 6 --disable"
)]
pub struct CreateBuildpackArgs {
    /// The buildpack's name.
    pub name: String,
    /// A `.zip`, or a folder to zip.
    pub path: PathBuf,
    /// Its position in detection order (1 is first).
    pub position: u32,
    /// Enabled (the default).
    #[arg(long, conflicts_with = "disable")]
    pub enable: bool,
    /// Disabled: not used until enabled.
    #[arg(long)]
    pub disable: bool,
    /// Only for this stack.
    #[arg(short = 's', long)]
    pub stack: Option<String>,
}

/// `kiln events` arguments.
#[derive(clap::Args)]
pub struct EventsArgs {
    /// The app.
    pub name: String,
}

/// Lists `path` as a table of `cols` (JSON keys) under `header`, or JSON.
async fn listing(
    path: &str,
    header: &[&str],
    row: impl Fn(&Value) -> Vec<String>,
    out: Out,
) -> anyhow::Result<u8> {
    let mut client = Client::from_config()?;
    let items = client.list(path).await?;
    if out.json {
        out.json(&json!({"resources": items}));
    } else {
        table(header, &items.iter().map(row).collect::<Vec<_>>());
    }
    Ok(0)
}

/// `kiln stacks`.
pub async fn stacks(out: Out) -> anyhow::Result<u8> {
    listing(
        "/v3/stacks",
        &["name", "description", "image", "since"],
        |v| {
            let image = &v["image"];
            vec![
                s(v, "name"),
                s(v, "description"),
                image["digest"]
                    .as_str()
                    .unwrap_or("(each machine's own)")
                    .to_string(),
                image["since"].as_str().unwrap_or("-").to_string(),
            ]
        },
        out,
    )
    .await
}

/// `kiln buildpacks`.
pub async fn buildpacks(out: Out) -> anyhow::Result<u8> {
    listing(
        "/v3/buildpacks",
        &[
            "position", "name", "stack", "enabled", "locked", "state", "filename",
        ],
        |v| {
            [
                "position", "name", "stack", "enabled", "locked", "state", "filename",
            ]
            .iter()
            .map(|k| s(v, k))
            .collect()
        },
        out,
    )
    .await
}

/// `kiln domains`.
pub async fn domains(out: Out) -> anyhow::Result<u8> {
    listing(
        "/v3/domains",
        &["name", "availability", "internal"],
        |v| vec![s(v, "name"), "shared".into(), s(v, "internal")],
        out,
    )
    .await
}

/// `kiln events NAME`.
pub async fn events(args: EventsArgs, out: Out) -> anyhow::Result<u8> {
    let mut client = Client::from_config()?;
    let app = client.app_by_name(&args.name).await?;
    let path = format!("/v3/audit_events?target_guids={}", s(&app, "guid"));
    let items = client.list(&path).await?;
    if out.json {
        out.json(&json!({"resources": items}));
        return Ok(0);
    }
    println!("Getting events for app {}...\n", args.name);
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|e| {
            let data = match &e["data"] {
                Value::Object(m) if !m.is_empty() => Value::Object(m.clone()).to_string(),
                _ => String::new(),
            };
            vec![
                s(e, "created_at"),
                s(e, "type"),
                s(&e["actor"], "name"),
                data,
            ]
        })
        .collect();
    table(&["time", "event", "actor", "description"], &rows);
    Ok(0)
}

/// Zips folder `dir` (modes kept) into a temp file.
fn zip_dir(dir: &std::path::Path) -> anyhow::Result<tempfile::NamedTempFile> {
    use std::io::Write;
    let files = crate::push::ignore::files(dir)?;
    let tmp = tempfile::NamedTempFile::new()?;
    let mut w = zip::ZipWriter::new(std::io::BufWriter::new(tmp));
    for f in &files {
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .unix_permissions(f.mode);
        if f.link.is_some() {
            anyhow::bail!("{}: buildpacks may not hold symlinks", f.full.display());
        }
        w.start_file(f.rel.as_str(), opts)?;
        std::io::copy(&mut std::fs::File::open(&f.full)?, &mut w)?;
    }
    let mut buf = w.finish()?;
    buf.flush()?;
    buf.into_inner().map_err(|e| e.into_error().into())
}

/// `kiln create-buildpack NAME PATH POSITION`.
pub async fn create_buildpack(args: CreateBuildpackArgs, out: Out) -> anyhow::Result<u8> {
    let mut client = Client::from_config()?;
    let (bytes, filename) = if args.path.is_dir() {
        let z = zip_dir(&args.path)?;
        (std::fs::read(z.path())?, format!("{}.zip", args.name))
    } else if args.path.is_file() {
        let name = args
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| format!("{}.zip", args.name));
        (std::fs::read(&args.path)?, name)
    } else {
        anyhow::bail!("{} does not exist", args.path.display());
    };
    out.say(format!("Creating buildpack {}...", args.name));
    let body = json!({"name": args.name, "position": args.position, "enabled": !args.disable, "stack": args.stack});
    let bp = client.post("/v3/buildpacks", &body).await?;
    let guid = s(&bp, "guid");
    out.say(format!("Uploading buildpack {}...", args.name));
    let upload = async {
        client.fresh().await?;
        let path = format!("/v3/buildpacks/{guid}/upload");
        client
            .send(|c| {
                let part =
                    reqwest::multipart::Part::bytes(bytes.clone()).file_name(filename.clone());
                c.request(reqwest::Method::POST, &path)
                    .multipart(reqwest::multipart::Form::new().part("bits", part))
            })
            .await
    };
    if let Err(e) = upload.await {
        // A buildpack without bits is of no use: take it back.
        let _ = client.delete(&format!("/v3/buildpacks/{guid}")).await;
        return Err(e.into());
    }
    let bp = client.get(&format!("/v3/buildpacks/{guid}")).await?;
    if out.json {
        out.json(&bp);
    } else {
        println!("OK");
    }
    Ok(0)
}
