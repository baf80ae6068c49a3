//! What to push: the manifest's apps with the flags laid over them (flags apply to one app
//! only), or the single app the flags describe.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::manifest::{env_text, parse_size, AppManifest, Manifest};
use super::Args;

/// One app's push, everything resolved.
#[derive(Debug)]
pub struct Plan {
    /// The app's name.
    pub name: String,
    /// Its folder.
    pub path: PathBuf,
    /// Buildpack names (empty: detect).
    pub buildpacks: Vec<String>,
    /// The stack (None: the controller's default).
    pub stack: Option<String>,
    /// Env to set.
    pub env: BTreeMap<String, String>,
    /// Routes `host.domain[/path]` named by the manifest.
    pub routes: Vec<String>,
    /// No route at all.
    pub no_route: bool,
    /// A generated host.
    pub random_route: bool,
    /// The default route's host.
    pub hostname: Option<String>,
    /// Upload only.
    pub no_start: bool,
    /// Scale bodies per process type.
    pub scales: Vec<(String, Value)>,
    /// `PATCH /v3/processes/:guid` bodies by process type: command and health check.
    pub updates: Vec<(String, Value)>,
    /// Seconds to wait for instances.
    pub timeout: u64,
    /// Run this image (an archive, a store image or a registry reference) instead of
    /// staging the folder.
    pub docker_image: Option<String>,
}

/// The manifest to read: `-f`, else `manifest.yml` of the app folder or `.`.
fn manifest_path(args: &Args) -> anyhow::Result<Option<PathBuf>> {
    if args.no_manifest {
        return Ok(None);
    }
    if let Some(f) = &args.manifest {
        let f = if f.is_dir() {
            f.join("manifest.yml")
        } else {
            f.clone()
        };
        if !f.is_file() {
            anyhow::bail!("the manifest {} does not exist", f.display());
        }
        return Ok(Some(f));
    }
    let dir = args.path.clone().unwrap_or_else(|| PathBuf::from("."));
    Ok([dir.join("manifest.yml"), PathBuf::from("manifest.yml")]
        .into_iter()
        .find(|p| p.is_file()))
}

fn overrides(args: &Args) -> bool {
    args.path.is_some()
        || args.stack.is_some()
        || !args.buildpacks.is_empty()
        || args.memory.is_some()
        || args.disk.is_some()
        || args.instances.is_some()
        || args.command.is_some()
        || args.hostname.is_some()
        || args.docker_image.is_some()
}

/// The plans of `args`.
pub fn plans(args: &Args) -> anyhow::Result<Vec<Plan>> {
    let manifest = match manifest_path(args)? {
        Some(p) => Some((Manifest::read(&p)?, p)),
        None => None,
    };
    let (apps, base) = match &manifest {
        Some((m, p)) if !m.applications.is_empty() => (
            m.applications.clone(),
            p.parent().map(Path::to_path_buf).unwrap_or_default(),
        ),
        _ => {
            let name = args.name.clone().ok_or_else(|| {
                anyhow::anyhow!(
                    "no app name: say `kiln push NAME`, or push from a folder with a manifest.yml"
                )
            })?;
            (
                vec![AppManifest {
                    name,
                    ..AppManifest::default()
                }],
                PathBuf::from("."),
            )
        }
    };
    let apps: Vec<AppManifest> = match &args.name {
        Some(n) => {
            let one: Vec<AppManifest> = apps.into_iter().filter(|a| &a.name == n).collect();
            if one.is_empty() {
                anyhow::bail!("the manifest has no app named {n}");
            }
            one
        }
        None => apps,
    };
    if apps.len() > 1 && overrides(args) {
        anyhow::bail!(
            "flags apply to one app: name the app of the manifest to push (`kiln push NAME ...`)"
        );
    }
    apps.into_iter().map(|a| plan(args, a, &base)).collect()
}

fn plan(args: &Args, a: AppManifest, base: &Path) -> anyhow::Result<Plan> {
    let path = match (&args.path, &a.path) {
        (Some(p), _) => p.clone(),
        (None, Some(p)) => base.join(p),
        (None, None) => base.to_path_buf(),
    };
    let docker_image = args
        .docker_image
        .clone()
        .or(a.docker.as_ref().map(|d| d.image.clone()));
    if docker_image.is_none() && !path.is_dir() {
        anyhow::bail!(
            "the app path {} does not exist or is not a folder",
            path.display()
        );
    }
    let mut buildpacks = if args.buildpacks.is_empty() {
        a.buildpacks.clone()
    } else {
        args.buildpacks.clone()
    };
    if buildpacks.is_empty() {
        buildpacks.extend(a.buildpack.clone());
    }
    let stack = args.stack.clone().or(a.stack.clone());
    if docker_image.is_some() {
        if !buildpacks.is_empty() {
            anyhow::bail!("--docker-image runs an image: buildpacks (-b) do not apply");
        }
        if stack.as_deref().is_some_and(|s| s != "docker") {
            anyhow::bail!("--docker-image runs an image on no stack: drop -s");
        }
        if args.path.is_some() {
            anyhow::bail!("--docker-image runs an image: there are no files to push (-p)");
        }
    }
    let size = |flag: &Option<String>, m: Option<u64>| -> anyhow::Result<Option<u64>> {
        match flag {
            Some(f) => parse_size(f).map(Some).map_err(|e| anyhow::anyhow!(e)),
            None => Ok(m),
        }
    };
    let memory = size(&args.memory, a.memory.map(|s| s.0))?;
    let disk = size(&args.disk, a.disk_quota.map(|s| s.0))?;
    let instances = args.instances.or(a.instances);
    let mut scales = Vec::new();
    let mut updates = Vec::new();
    let mut web = serde_json::Map::new();
    if let Some(i) = instances {
        web.insert("instances".into(), json!(i));
    }
    if let Some(m) = memory {
        web.insert("memory_in_mb".into(), json!(m));
    }
    if let Some(d) = disk {
        web.insert("disk_in_mb".into(), json!(d));
    }
    for p in &a.processes {
        let mut body = serde_json::Map::new();
        if let Some(i) = p.instances {
            body.insert("instances".into(), json!(i));
        }
        if let Some(m) = p.memory {
            body.insert("memory_in_mb".into(), json!(m.0));
        }
        if let Some(d) = p.disk_quota {
            body.insert("disk_in_mb".into(), json!(d.0));
        }
        let settings = process_settings(
            p.command.as_ref(),
            p.health_check_type.as_ref(),
            p.health_check_http_endpoint.as_ref(),
            None,
        );
        if let Some(body) = settings.filter(|_| p.kind != "web") {
            updates.push((p.kind.clone(), body));
        }
        if p.kind == "web" {
            web.extend(body);
        } else if !body.is_empty() {
            scales.push((p.kind.clone(), Value::Object(body)));
        }
    }
    if !web.is_empty() {
        scales.insert(0, ("web".to_string(), Value::Object(web)));
    }
    let web_manifest = a.processes.iter().find(|p| p.kind == "web");
    let web_settings = process_settings(
        args.command
            .as_ref()
            .or(a.command.as_ref())
            .or(web_manifest.and_then(|p| p.command.as_ref())),
        a.health_check_type
            .as_ref()
            .or(web_manifest.and_then(|p| p.health_check_type.as_ref())),
        a.health_check_http_endpoint
            .as_ref()
            .or(web_manifest.and_then(|p| p.health_check_http_endpoint.as_ref())),
        args.timeout.or(a.timeout),
    );
    if let Some(body) = web_settings {
        updates.insert(0, ("web".to_string(), body));
    }
    Ok(Plan {
        name: a.name.clone(),
        path,
        buildpacks,
        stack,
        env: a
            .env
            .iter()
            .map(|(k, v)| (k.clone(), env_text(v)))
            .collect(),
        routes: a.routes.iter().map(|r| r.route.clone()).collect(),
        no_route: args.no_route || a.no_route,
        random_route: args.random_route || a.random_route,
        hostname: args.hostname.clone(),
        no_start: args.no_start,
        scales,
        updates,
        timeout: args.timeout.or(a.timeout).unwrap_or(180),
        docker_image,
    })
}

/// The body that sets a process's command and health check, if any is given. A `timeout`
/// (the manifest's, or `-t`) is also the health check's start timeout, capped at the
/// controller's 180 s.
fn process_settings(
    command: Option<&String>,
    health_check_type: Option<&String>,
    endpoint: Option<&String>,
    timeout: Option<u64>,
) -> Option<Value> {
    let mut body = serde_json::Map::new();
    if let Some(c) = command {
        body.insert("command".into(), json!(c));
    }
    let mut data = serde_json::Map::new();
    if let Some(e) = endpoint {
        data.insert("endpoint".into(), json!(e));
    }
    if let Some(t) = timeout {
        data.insert("timeout".into(), json!(t.clamp(1, 180)));
    }
    // `none` is the old name of `process`.
    let kind = health_check_type.map(|t| if t == "none" { "process" } else { t.as_str() });
    if kind.is_some() || !data.is_empty() {
        let mut hc = serde_json::Map::new();
        if let Some(k) = kind {
            hc.insert("type".into(), json!(k));
        }
        if !data.is_empty() {
            hc.insert("data".into(), Value::Object(data));
        }
        body.insert("health_check".into(), Value::Object(hc));
    }
    (!body.is_empty()).then_some(Value::Object(body))
}
