//! The executor's configuration: what the cell is and offers, where it keeps things, whom it
//! talks to, and its timings. The same struct is read from a TOML file and filled from flags.

use std::path::PathBuf;
use std::time::Duration;

use kiln_containers::Recovery;
use serde::{Deserialize, Serialize};

/// Everything an executor needs to know.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The cell's id on the bus (in its command subjects; letters, digits, `-`, `_`).
    pub cell_id: String,
    /// Its availability zone.
    pub zone: String,
    /// The stacks it runs, imported at start from the machine's stack cache.
    pub stacks: Vec<String>,
    /// Memory offered to instances, MiB.
    pub memory_mb: u64,
    /// Disk offered to instances, MiB.
    pub disk_mb: u64,
    /// At most this many instances.
    pub max_containers: u64,
    /// Droplet cache, unpacked droplets and the container backend's data.
    pub data_dir: PathBuf,
    /// Where stack images are imported (shared by the backends of the machine).
    pub stacks_dir: PathBuf,
    /// The NATS server.
    pub nats_url: String,
    /// The controller's internal URL (droplet URLs come whole in start messages; this one is
    /// for logs and future use).
    pub internal_url: Option<String>,
    /// A file holding the internal credential, sent as `Authorization: Bearer <token>` on
    /// droplet downloads (never given to a container).
    pub internal_token_file: Option<PathBuf>,
    /// The address the router reaches instances on (their NetIn ports are on this host).
    pub host_ip: String,
    /// Droplets (`.tgz`) kept on the cell, MiB; least recently used ones go first.
    pub droplet_cache_mb: u64,
    /// Containers: addresses (a /30 each), host ports for NetIn, host uid ranges.
    pub network_pool: String,
    /// The first host port NetIn hands out.
    pub port_range_start: u16,
    /// How many host ports NetIn may hand out.
    pub port_range_size: u16,
    /// The first host uid of container uid ranges (65536 per container).
    pub uid_range_start: u32,
    /// Size of the sparse file holding the containers' writable layers, bytes.
    pub store_size_bytes: u64,
    /// Timings.
    pub timings: Timings,
}

/// How often and how long, in the units their names say.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Timings {
    /// Time an instance has to become healthy, unless its health check says otherwise.
    pub start_timeout_secs: u64,
    /// Probe interval while starting.
    pub starting_probe_interval_ms: u64,
    /// Probe interval once running.
    pub running_probe_interval_secs: u64,
    /// Time one probe may take, unless the health check says otherwise.
    pub probe_timeout_ms: u64,
    /// SIGTERM to SIGKILL on stop.
    pub stop_grace_secs: u64,
    /// Routes are registered again this often.
    pub register_interval_secs: u64,
    /// The cell advertises itself this often (and at once on a change).
    pub advertise_interval_ms: u64,
    /// The cell lists its instances this often.
    pub instances_interval_secs: u64,
    /// Instance metrics are published this often.
    pub metrics_interval_secs: u64,
    /// Evacuating (SIGTERM or a drain command), the cell waits this long for the controller
    /// to move its instances elsewhere before it stops what remains.
    pub evacuation_timeout_secs: u64,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            start_timeout_secs: 60,
            starting_probe_interval_ms: 500,
            running_probe_interval_secs: 30,
            probe_timeout_ms: 1000,
            stop_grace_secs: 10,
            register_interval_secs: kiln_bus::router::DEFAULT_REGISTER_INTERVAL_SECS,
            advertise_interval_ms: kiln_bus::cell::ADVERTISE_INTERVAL_SECS * 1000,
            instances_interval_secs: kiln_bus::cell::INSTANCES_INTERVAL_SECS,
            metrics_interval_secs: 15,
            evacuation_timeout_secs: 60,
        }
    }
}

impl Timings {
    /// `start_timeout_secs` as a duration.
    pub fn start_timeout(&self) -> Duration {
        Duration::from_secs(self.start_timeout_secs)
    }
    /// `starting_probe_interval_ms` as a duration (at least 10 ms).
    pub fn starting_probe_interval(&self) -> Duration {
        Duration::from_millis(self.starting_probe_interval_ms.max(10))
    }
    /// `running_probe_interval_secs` as a duration (at least 1 s).
    pub fn running_probe_interval(&self) -> Duration {
        Duration::from_secs(self.running_probe_interval_secs.max(1))
    }
    /// `probe_timeout_ms` as a duration.
    pub fn probe_timeout(&self) -> Duration {
        Duration::from_millis(self.probe_timeout_ms.max(1))
    }
    /// `stop_grace_secs` as a duration.
    pub fn stop_grace(&self) -> Duration {
        Duration::from_secs(self.stop_grace_secs)
    }
    /// `evacuation_timeout_secs` as a duration.
    pub fn evacuation_timeout(&self) -> Duration {
        Duration::from_secs(self.evacuation_timeout_secs)
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            cell_id: "cell-0".to_string(),
            zone: "z1".to_string(),
            stacks: vec!["tiny".to_string(), "bookworm".to_string()],
            memory_mb: 8192,
            disk_mb: 32768,
            max_containers: 100,
            data_dir: PathBuf::from("/var/lib/kiln/executor"),
            stacks_dir: PathBuf::from("/var/lib/kiln/stacks"),
            nats_url: "nats://127.0.0.1:4222".to_string(),
            internal_url: None,
            internal_token_file: None,
            host_ip: "127.0.0.1".to_string(),
            droplet_cache_mb: 4096,
            network_pool: "10.254.0.0/22".to_string(),
            // 61001-62000: apart from the stager's (63001-63100) and the CLI's (62001-).
            port_range_start: 61001,
            port_range_size: 1000,
            uid_range_start: 1 << 30,
            store_size_bytes: 64 << 30,
            timings: Timings::default(),
        }
    }
}

impl Config {
    /// Reads a TOML file (missing keys take their defaults).
    pub fn from_toml(text: &str) -> Result<Config, toml::de::Error> {
        toml::from_str(text)
    }

    /// The container backend's configuration: its data under `<data_dir>/containers`.
    ///
    /// Recovery adopts what a previous executor left so that the executor can name the
    /// instances it finds (from their container properties) before it destroys them: the
    /// processes of a previous owner cannot be re-attached (their output and exit are lost).
    pub fn backend_config(&self) -> kiln_containers::Config {
        kiln_containers::Config {
            data_dir: self.data_dir.join("containers"),
            stacks_dir: self.stacks_dir.clone(),
            network_pool: self.network_pool.clone(),
            port_range_start: self.port_range_start,
            port_range_size: self.port_range_size,
            uid_range_start: self.uid_range_start,
            store_size_bytes: self.store_size_bytes,
            max_containers: usize::try_from(self.max_containers).unwrap_or(usize::MAX),
            recovery: Recovery::Adopt,
            ..kiln_containers::Config::default()
        }
    }

    /// Refuses a configuration that cannot work.
    pub fn validate(&self) -> Result<(), String> {
        let id_ok = !self.cell_id.is_empty()
            && self
                .cell_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
        if !id_ok {
            return Err(format!(
                "cell id {:?}: use letters, digits, '-' and '_' (it is part of NATS subjects)",
                self.cell_id
            ));
        }
        if self.stacks.is_empty() {
            return Err("the cell offers no stacks".into());
        }
        if self.host_ip.parse::<std::net::IpAddr>().is_err() {
            return Err(format!("host ip {:?} is not an IP address", self.host_ip));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_files_fill_in_defaults_and_refuse_unknown_keys() {
        let c = Config::from_toml(
            "cell_id = \"c1\"\nstacks = [\"tiny\"]\nmemory_mb = 512\n[timings]\nstart_timeout_secs = 5\n",
        )
        .unwrap();
        assert_eq!(c.cell_id, "c1");
        assert_eq!(c.memory_mb, 512);
        assert_eq!(c.timings.start_timeout_secs, 5);
        assert_eq!(c.timings.stop_grace_secs, 10);
        assert_eq!(c.timings.evacuation_timeout_secs, 60);
        assert!(c.validate().is_ok());
        assert!(Config::from_toml("cel_id = \"x\"").is_err());
        let bad = Config {
            cell_id: "a.b".into(),
            ..Config::default()
        };
        assert!(bad.validate().is_err());
    }
}
