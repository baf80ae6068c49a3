//! The controller's configuration.

use std::net::SocketAddr;
use std::path::PathBuf;

/// How a controller runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Database, blobstore, keys, admin password.
    pub data_dir: PathBuf,
    /// Where the API listens.
    pub listen: SocketAddr,
    /// The URL clients reach the API at (`https://api.example.com`), used in links; by
    /// default `http://<listen address>`.
    pub external_url: Option<String>,
    /// The port clients reach app routes at through the router, when it is not 80 (shown in
    /// `GET /` so that clients print working app URLs).
    pub apps_port: Option<u16>,
    /// A cell not heard from for this long, ms, is lost and its instances run elsewhere (none:
    /// `kiln_bus::cell::CELL_TTL_SECS`). Keep it several times the cells' advertise interval.
    pub cell_ttl_ms: Option<u64>,
    /// A PostgreSQL URL (`postgres://user:password@host:port/database`); none: SQLite in the
    /// data dir.
    pub database_url: Option<String>,
    /// The address stagers and cells use to reach the internal endpoints
    /// (`http://host:port`); by default the listen address.
    pub internal_url: Option<String>,
    /// The NATS server.
    pub nats_url: String,
    /// The shared domain apps get routes on.
    pub default_domain: String,
    /// The stack apps stage on unless they say otherwise.
    pub default_stack: String,
    /// The stacks there are (name, description), besides those stagers advertise.
    pub stacks: Vec<(String, String)>,
    /// The largest upload accepted (packages, droplets), in bytes.
    pub max_upload_bytes: u64,
    /// The smallest file kept in the resource pool (and so matched by `resource_matches`).
    pub resource_pool_min_bytes: u64,
    /// The largest file kept in the resource pool.
    pub resource_pool_max_bytes: u64,
    /// Staging limits sent with each staging.
    pub staging_memory_mb: u64,
    /// Staging limits sent with each staging.
    pub staging_disk_mb: u64,
    /// Staging limits sent with each staging.
    pub staging_timeout_secs: u64,
    /// How long a build waits for a stager to accept it before it fails.
    pub accept_timeout_secs: u64,
    /// The stagers' built-in buildpacks, made admin buildpacks (READY, any stack) at the first
    /// start in this order, which is their detection order; later starts add only missing ones.
    pub builtin_buildpacks: Vec<String>,
    /// How long after start convergence waits before acting, so cells can list what they
    /// already run (default: a listing interval and a second).
    pub converge_settle_ms: u64,
    /// How often unreferenced blobs are removed.
    pub blob_gc_interval_secs: u64,
    /// How old an unreferenced blob must be to be removed.
    pub blob_gc_grace_secs: u64,
    /// Registries `kiln push --docker-image HOST/REPO:TAG` may pull from; none: images come
    /// from the image store only.
    pub registries: Vec<RegistryAccess>,
}

impl Config {
    /// Defaults for a controller keeping its state in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Config {
        Config {
            data_dir: data_dir.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 9022)),
            internal_url: None,
            external_url: None,
            apps_port: None,
            cell_ttl_ms: None,
            database_url: None,
            nats_url: "nats://127.0.0.1:4222".into(),
            default_domain: "apps.kiln.local".into(),
            default_stack: "bookworm".into(),
            stacks: vec![
                (
                    "bookworm".into(),
                    "Debian 12 (bookworm) with bash, python3 and nodejs".into(),
                ),
                (
                    "tiny".into(),
                    "busybox only: static binaries and shell scripts".into(),
                ),
                (
                    kiln_bus::DOCKER_STACK.into(),
                    "Dockerfile apps: the app's Dockerfile is built into an OCI image when staging"
                        .into(),
                ),
            ],
            max_upload_bytes: 1 << 30,
            resource_pool_min_bytes: 1,
            resource_pool_max_bytes: 512 << 20,
            staging_memory_mb: 1024,
            staging_disk_mb: 4096,
            staging_timeout_secs: 900,
            accept_timeout_secs: 30,
            // Detection order: the first buildpack whose detect accepts the app stages it. An
            // app shows what it is by the files of its language (requirements.txt,
            // package.json), then by a Procfile (binary: a program in the app; procfile: one
            // of the stack), while staticfile takes any app with an index.html at its root,
            // the weakest sign: most specific first, staticfile last, so an app with an
            // index.html among its files is not served as a static site by mistake (also
            // when an admin puts a buildpack of their own between these).
            builtin_buildpacks: ["python", "nodejs", "binary", "procfile", "staticfile"]
                .map(String::from)
                .to_vec(),
            converge_settle_ms: (kiln_bus::cell::INSTANCES_INTERVAL_SECS + 1) * 1000,
            blob_gc_interval_secs: 3600,
            blob_gc_grace_secs: 3600,
            registries: Vec::new(),
        }
    }
}

/// A registry images may be pulled from.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryAccess {
    /// `host[:port]`, as image references name it.
    pub host: String,
    /// Plain HTTP instead of HTTPS (a registry on loopback or a trusted network).
    pub allow_http: bool,
    /// Basic credentials, if the registry needs them: (user, password).
    pub credentials: Option<(String, String)>,
}

impl std::fmt::Debug for RegistryAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAccess")
            .field("host", &self.host)
            .field("allow_http", &self.allow_http)
            .field("user", &self.credentials.as_ref().map(|(u, _)| u))
            .finish()
    }
}

impl std::str::FromStr for RegistryAccess {
    type Err = String;

    /// `https://[user:password@]host[:port]`, `http://...` (plain HTTP), or a bare
    /// `host[:port]` (HTTPS).
    fn from_str(s: &str) -> Result<Self, String> {
        let (allow_http, rest) = match s.split_once("://") {
            Some(("http", rest)) => (true, rest),
            Some(("https", rest)) => (false, rest),
            Some((scheme, _)) => {
                // (Not the whole URL: it may hold a password.)
                return Err(format!("a registry's scheme {scheme} is not http or https"));
            }
            None => (false, s),
        };
        let rest = rest.trim_end_matches('/');
        let (credentials, host) = match rest.rsplit_once('@') {
            Some((auth, host)) => match auth.split_once(':') {
                Some((u, p)) => (Some((u.to_string(), p.to_string())), host),
                None => {
                    return Err(format!(
                        "registry `{host}`: credentials must be user:password"
                    ))
                }
            },
            None => (None, rest),
        };
        let valid = !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
        if !valid {
            return Err(format!("registry `{host}` is not a host[:port]"));
        }
        Ok(RegistryAccess {
            host: host.to_string(),
            allow_http,
            credentials,
        })
    }
}
