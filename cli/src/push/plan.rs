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
    /// Seconds to wait for instances.
    pub timeout: u64,
    /// What the controller cannot do yet and is left out.
    pub warnings: Vec<String>,
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
    if !path.is_dir() {
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
    let size = |flag: &Option<String>, m: Option<u64>| -> anyhow::Result<Option<u64>> {
        match flag {
            Some(f) => parse_size(f).map(Some).map_err(|e| anyhow::anyhow!(e)),
            None => Ok(m),
        }
    };
    let memory = size(&args.memory, a.memory.map(|s| s.0))?;
    let disk = size(&args.disk, a.disk_quota.map(|s| s.0))?;
    let instances = args.instances.or(a.instances);
    let mut warnings = Vec::new();
    let mut scales = Vec::new();
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
        if p.command.is_some()
            || p.health_check_type.is_some()
            || p.health_check_http_endpoint.is_some()
        {
            warnings.push(format!("process {}: the controller cannot set a process's command or health check yet; the droplet's are used", p.kind));
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
    if args.command.is_some()
        || a.command.is_some()
        || a.health_check_type.is_some()
        || a.health_check_http_endpoint.is_some()
    {
        warnings.push(
            "the controller cannot set the web command or health check yet; the droplet's are used"
                .into(),
        );
    }
    Ok(Plan {
        name: a.name.clone(),
        path,
        buildpacks,
        stack: args.stack.clone().or(a.stack.clone()),
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
        timeout: args.timeout.or(a.timeout).unwrap_or(180),
        warnings,
    })
}
