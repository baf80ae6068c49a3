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
    /// The largest upload accepted (packages, droplets), in bytes.
    pub max_upload_bytes: u64,
    /// Staging limits sent with each staging.
    pub staging_memory_mb: u64,
    /// Staging limits sent with each staging.
    pub staging_disk_mb: u64,
    /// Staging limits sent with each staging.
    pub staging_timeout_secs: u64,
    /// How long a build waits for a stager to accept it before it fails.
    pub accept_timeout_secs: u64,
}

impl Config {
    /// Defaults for a controller keeping its state in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Config {
        Config {
            data_dir: data_dir.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 9022)),
            internal_url: None,
            external_url: None,
            database_url: None,
            nats_url: "nats://127.0.0.1:4222".into(),
            default_domain: "apps.kiln.local".into(),
            default_stack: "bookworm".into(),
            max_upload_bytes: 1 << 30,
            staging_memory_mb: 1024,
            staging_disk_mb: 4096,
            staging_timeout_secs: 900,
            accept_timeout_secs: 30,
        }
    }
}
