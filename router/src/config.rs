//! The router's settings: one serde struct with gorouter's defaults, read from a TOML file
//! (every key optional) and overridden by the binary's flags.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// How a route's endpoints share its requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balancing {
    /// Each endpoint in turn.
    #[default]
    RoundRobin,
    /// The endpoint with the fewest requests in flight (ties in turn).
    LeastConnections,
}

impl std::str::FromStr for Balancing {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "round-robin" => Ok(Balancing::RoundRobin),
            "least-connections" => Ok(Balancing::LeastConnections),
            other => Err(format!(
                "unknown balancing `{other}` (round-robin or least-connections)"
            )),
        }
    }
}

/// Everything the router can be told. Durations are seconds (fractions allowed) in TOML.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where apps' traffic arrives (gorouter's default port is 8081).
    pub listen: SocketAddr,
    /// The status listener: `/health`, `/varz`, `/routes`. Keep it private.
    pub status_listen: SocketAddr,
    /// The NATS server routes are registered on.
    pub nats_url: String,
    /// The router's id in `router.start`; a fresh uuid when unset.
    pub id: Option<String>,
    /// Addresses announced in `router.start` (default: the listen address, if specific).
    pub hosts: Vec<String>,
    /// How requests are spread over a route's endpoints.
    pub balancing: Balancing,
    /// Advice to registrars in `router.start`: register again this often.
    pub register_interval_secs: u64,
    /// Stale threshold for registrations that do not carry one.
    #[serde(rename = "stale_threshold_secs", with = "secs")]
    pub stale_threshold: Duration,
    /// How often stale endpoints are pruned.
    #[serde(rename = "prune_interval_secs", with = "secs")]
    pub prune_interval: Duration,
    /// Prune while the bus is unreachable? No by default: the table is kept until it is back
    /// (registrations cannot be refreshed meanwhile), and refreshed when it is.
    pub prune_on_bus_outage: bool,
    /// How long to wait for a TCP connection to an endpoint.
    #[serde(rename = "dial_timeout_secs", with = "secs")]
    pub dial_timeout: Duration,
    /// How long an endpoint may take to answer with its response head.
    #[serde(rename = "request_timeout_secs", with = "secs")]
    pub request_timeout: Duration,
    /// How long a client may take to send a request head (against slow clients).
    #[serde(rename = "header_read_timeout_secs", with = "secs")]
    pub header_read_timeout: Duration,
    /// How long in-flight requests get to finish after a shutdown begins.
    #[serde(rename = "drain_timeout_secs", with = "secs")]
    pub drain_timeout: Duration,
    /// Larger request heads (request line and headers) are answered 431.
    pub max_header_bytes: usize,
    /// More request headers than this are answered 431 too.
    pub max_header_count: usize,
    /// Idle connections kept per endpoint.
    pub max_idle_per_endpoint: usize,
    /// Publish an RTR access log line to the app's log on the bus for every request to a
    /// route whose registration names an app.
    pub rtr_lines: bool,
    /// RTR lines waiting to be published; when the queue is full, lines are dropped (and
    /// counted) rather than slowing requests down.
    pub rtr_queue: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([0, 0, 0, 0], 8081)),
            status_listen: SocketAddr::from(([127, 0, 0, 1], 8082)),
            nats_url: "nats://127.0.0.1:4222".into(),
            id: None,
            hosts: Vec::new(),
            balancing: Balancing::RoundRobin,
            register_interval_secs: kiln_bus::router::DEFAULT_REGISTER_INTERVAL_SECS,
            stale_threshold: Duration::from_secs(kiln_bus::router::DEFAULT_STALE_THRESHOLD_SECS),
            prune_interval: Duration::from_secs(30),
            prune_on_bus_outage: false,
            dial_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(900),
            header_read_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(30),
            max_header_bytes: 1 << 20,
            max_header_count: 100,
            max_idle_per_endpoint: 100,
            rtr_lines: true,
            rtr_queue: 8192,
        }
    }
}

impl Config {
    /// Reads a TOML file; keys it does not name keep their defaults.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Config, toml::de::Error> {
        toml::from_str(text)
    }

    /// Refuses settings the router cannot run with.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |what: &str| Err(ConfigError::Invalid(what.to_string()));
        if self.max_header_bytes < 1024 {
            return invalid("max_header_bytes must be at least 1024");
        }
        if self.max_header_count == 0 {
            return invalid("max_header_count must be at least 1");
        }
        if self.prune_interval.is_zero() {
            return invalid("prune_interval_secs must be above 0");
        }
        if self.stale_threshold.is_zero() {
            return invalid("stale_threshold_secs must be above 0");
        }
        if self.rtr_lines && self.rtr_queue == 0 {
            return invalid("rtr_queue must be at least 1 (or rtr_lines = false)");
        }
        for (name, d) in [
            ("dial_timeout_secs", self.dial_timeout),
            ("request_timeout_secs", self.request_timeout),
            ("header_read_timeout_secs", self.header_read_timeout),
        ] {
            if d.is_zero() {
                return invalid(&format!("{name} must be above 0"));
            }
        }
        Ok(())
    }
}

/// Durations as (fractional) seconds.
mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_overrides_only_what_it_names() {
        let c = Config::from_toml(
            "listen = \"127.0.0.1:9000\"\nbalancing = \"least-connections\"\n\
             dial_timeout_secs = 0.5\nprune_interval_secs = 2\n",
        )
        .unwrap();
        assert_eq!(c.listen, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(c.balancing, Balancing::LeastConnections);
        assert_eq!(c.dial_timeout, Duration::from_millis(500));
        assert_eq!(c.prune_interval, Duration::from_secs(2));
        assert_eq!(c.request_timeout, Duration::from_secs(900));
        assert_eq!(c.max_header_bytes, 1 << 20);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        assert!(Config::from_toml("lisen = \"127.0.0.1:1\"").is_err());
        assert!(Config::from_toml("dial_timeout_secs = -1").is_err());
        assert!(Config::from_toml("balancing = \"random\"").is_err());
        let c = Config {
            max_header_bytes: 10,
            ..Config::default()
        };
        assert!(c.validate().is_err());
    }

    #[test]
    fn the_default_serialises_to_toml_that_reads_back() {
        let text = toml::to_string(&Config::default()).unwrap();
        assert_eq!(Config::from_toml(&text).unwrap(), Config::default());
    }
}
