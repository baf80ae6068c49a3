//! The backend's configuration.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// What to do at start with the containers a previous owner of the data dir left.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Recovery {
    /// Keep the ones that are intact and running; destroy the rest.
    Adopt,
    /// Destroy them all.
    Destroy,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the backend keeps its state, containers and disk store. One backend per data dir.
    pub data_dir: PathBuf,
    /// Where stack images are imported and unpacked, shared by every backend on the machine.
    pub stacks_dir: PathBuf,
    /// The OCI runtime binary.
    pub runtime_path: PathBuf,
    /// Container addresses: a /30 per container from this network.
    pub network_pool: String,
    /// The first host port NetIn hands out.
    pub port_range_start: u16,
    /// How many host ports NetIn may hand out.
    pub port_range_size: u16,
    /// The first host uid of container uid ranges; container slot `i` maps container uid 0 to
    /// `uid_range_start + i * 65536`.
    pub uid_range_start: u32,
    /// Size of the sparse file holding every container's writable layer.
    pub store_size_bytes: u64,
    /// At most this many containers (also bounded by the network pool).
    pub max_containers: usize,
    pub recovery: Recovery,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("/var/lib/kiln/containers"),
            stacks_dir: PathBuf::from("/var/lib/kiln/stacks"),
            runtime_path: PathBuf::from("runc"),
            network_pool: "10.254.0.0/22".to_string(),
            port_range_start: 61001,
            port_range_size: 4000,
            uid_range_start: 1 << 28,
            store_size_bytes: 64 << 30,
            max_containers: 250,
            recovery: Recovery::Adopt,
        }
    }
}

/// Size of each container's uid/gid range.
pub const IDS_PER_CONTAINER: u32 = 65536;
