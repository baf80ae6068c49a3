//! The cf `manifest.yml`: `applications:` with name, path, buildpacks, stack, memory, disk,
//! instances, command, env, routes, no-route, random-route, processes and health checks;
//! flags override it for one app.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// A manifest that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Reading the file failed.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The YAML does not fit the manifest shape.
    #[error("{path} is not a valid manifest: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_yaml::Error,
    },
    /// A field with a bad value.
    #[error("{0}")]
    Invalid(String),
}

/// The whole file.
#[derive(Debug, Deserialize, Default)]
pub struct Manifest {
    /// The apps.
    #[serde(default)]
    pub applications: Vec<AppManifest>,
}

/// A route entry: `{route: host.domain/path}`.
#[derive(Debug, Deserialize, Clone)]
pub struct RouteEntry {
    /// `host.domain[/path]`.
    pub route: String,
}

/// One process type's settings.
#[derive(Debug, Deserialize, Clone, Default)]
#[serde(rename_all = "kebab-case")]
pub struct ProcessManifest {
    /// `web`, `worker`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// The start command.
    pub command: Option<String>,
    /// How many instances.
    pub instances: Option<u32>,
    /// Memory: `256M`, `1G`.
    pub memory: Option<Size>,
    /// Disk: `1G`.
    #[serde(rename = "disk_quota", alias = "disk-quota")]
    pub disk_quota: Option<Size>,
    /// `port`, `http` or `process`.
    pub health_check_type: Option<String>,
    /// The endpoint of an `http` check.
    pub health_check_http_endpoint: Option<String>,
}

/// One app of the manifest.
#[derive(Debug, Deserialize, Clone, Default)]
#[serde(rename_all = "kebab-case")]
pub struct AppManifest {
    /// The app's name.
    pub name: String,
    /// Its folder, relative to the manifest.
    pub path: Option<PathBuf>,
    /// Buildpacks by name, in order.
    #[serde(default)]
    pub buildpacks: Vec<String>,
    /// cf's older single `buildpack`.
    pub buildpack: Option<String>,
    /// The stack.
    pub stack: Option<String>,
    /// Memory of the web process.
    pub memory: Option<Size>,
    /// Disk of the web process.
    #[serde(rename = "disk_quota", alias = "disk-quota")]
    pub disk_quota: Option<Size>,
    /// Instances of the web process.
    pub instances: Option<u32>,
    /// The web command.
    pub command: Option<String>,
    /// Environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, serde_yaml::Value>,
    /// Routes.
    #[serde(default)]
    pub routes: Vec<RouteEntry>,
    /// No route at all.
    #[serde(default)]
    pub no_route: bool,
    /// A generated host name.
    #[serde(default)]
    pub random_route: bool,
    /// Process types.
    #[serde(default)]
    pub processes: Vec<ProcessManifest>,
    /// The web health check.
    pub health_check_type: Option<String>,
    /// The web `http` check's endpoint.
    pub health_check_http_endpoint: Option<String>,
    /// Seconds to wait for the app to start.
    pub timeout: Option<u64>,
    /// `docker: {image: ...}`: run an image instead of staging files.
    pub docker: Option<DockerManifest>,
}

/// The manifest's `docker` section.
#[derive(Debug, Deserialize, Clone, Default)]
pub struct DockerManifest {
    /// An image archive, an image of the store, or `host[:port]/repo:tag`.
    pub image: String,
}

/// A size in MiB, written `256M`, `1G`, `512MB`, `1024` (MiB).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Size(pub u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Size, D::Error> {
        let v = serde_yaml::Value::deserialize(d)?;
        let text = match v {
            serde_yaml::Value::Number(n) => n.to_string(),
            serde_yaml::Value::String(s) => s,
            other => return Err(serde::de::Error::custom(format!("bad size {other:?}"))),
        };
        parse_size(&text)
            .map(Size)
            .map_err(serde::de::Error::custom)
    }
}

/// Parses `256M`, `1G`, `1.5G`, `512MB`, `1024` into MiB.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim().to_ascii_uppercase();
    let t = t.strip_suffix('B').unwrap_or(&t);
    let (num, factor) = match t.chars().last() {
        Some('M') => (&t[..t.len() - 1], 1.0),
        Some('G') => (&t[..t.len() - 1], 1024.0),
        Some('T') => (&t[..t.len() - 1], 1024.0 * 1024.0),
        Some('K') => (&t[..t.len() - 1], 1.0 / 1024.0),
        _ => (t, 1.0),
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a size (examples: 256M, 1G)"))?;
    if !n.is_finite() || n <= 0.0 {
        return Err(format!("`{text}` must be more than zero"));
    }
    Ok((n * factor).ceil() as u64)
}

impl Manifest {
    /// Reads and checks the manifest at `path`.
    pub fn read(path: &Path) -> Result<Manifest, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let m: Manifest = serde_yaml::from_str(&text).map_err(|source| ManifestError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        for (i, app) in m.applications.iter().enumerate() {
            if app.name.trim().is_empty() {
                return Err(ManifestError::Invalid(format!(
                    "{}: applications[{i}] has no name",
                    path.display()
                )));
            }
        }
        Ok(m)
    }
}

/// An env value as the API takes it: YAML scalars as text.
pub fn env_text(v: &serde_yaml::Value) -> String {
    match v {
        serde_yaml::Value::String(s) => s.clone(),
        serde_yaml::Value::Null => String::new(),
        serde_yaml::Value::Bool(b) => b.to_string(),
        serde_yaml::Value::Number(n) => n.to_string(),
        other => serde_yaml::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_in_cf_units() {
        assert_eq!(parse_size("256M"), Ok(256));
        assert_eq!(parse_size("1G"), Ok(1024));
        assert_eq!(parse_size("512mb"), Ok(512));
        assert_eq!(parse_size("1024"), Ok(1024));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("0M").is_err());
    }

    #[test]
    fn two_apps_with_routes_processes_and_env() {
        let y = "applications:\n- name: a\n  memory: 128M\n  env: {X: 1, Y: yes}\n  routes: [{route: a.example.com/x}]\n  processes:\n  - type: worker\n    instances: 2\n    health-check-type: process\n- name: b\n  no-route: true\n  disk_quota: 2G\n";
        let m: Manifest = serde_yaml::from_str(y).unwrap();
        assert_eq!(m.applications.len(), 2);
        assert_eq!(m.applications[0].memory, Some(Size(128)));
        assert_eq!(env_text(&m.applications[0].env["X"]), "1");
        assert_eq!(m.applications[0].routes[0].route, "a.example.com/x");
        assert_eq!(m.applications[0].processes[0].instances, Some(2));
        assert!(m.applications[1].no_route);
        assert_eq!(m.applications[1].disk_quota, Some(Size(2048)));
    }
}
