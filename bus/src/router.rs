//! Routing messages, in gorouter's wire format so that route emitters and registrars written
//! for Cloud Foundry can speak to Kiln's router unchanged.
//!
//! A router publishes [`RouterStart`] on [`ROUTER_START`] when it starts and each time it
//! reconnects to the bus, and answers requests on [`ROUTER_GREET`] with the same body. Whoever
//! owns an app instance (a cell's executor, a registrar) publishes a [`RegistryMessage`] on
//! [`ROUTER_REGISTER`] at least every `minimumRegisterIntervalInSeconds` while the instance
//! should receive traffic, and once on [`ROUTER_UNREGISTER`] when it should stop. A router
//! forgets an endpoint that was not registered again within its stale threshold.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

/// A router says hello ([`RouterStart`]): registrars should register everything now.
pub const ROUTER_START: &str = "router.start";
/// Request/reply: a registrar asks the routers for their [`RouterStart`].
pub const ROUTER_GREET: &str = "router.greet";
/// Add or refresh routes to an endpoint ([`RegistryMessage`]).
pub const ROUTER_REGISTER: &str = "router.register";
/// Remove routes to an endpoint ([`RegistryMessage`]; matched on host, port and uris).
pub const ROUTER_UNREGISTER: &str = "router.unregister";
/// Every router subject, for one subscription that sees them in order.
pub const ROUTER_ALL: &str = "router.*";

/// gorouter's default: a registration older than this is pruned.
pub const DEFAULT_STALE_THRESHOLD_SECS: u64 = 120;
/// gorouter's default advice to registrars: register again this often.
pub const DEFAULT_REGISTER_INTERVAL_SECS: u64 = 20;

/// A router's greeting, published on [`ROUTER_START`] and answered on [`ROUTER_GREET`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterStart {
    /// The router's id (unique per process).
    pub id: String,
    /// Addresses the router can be reached at.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// How often registrars should repeat their registrations.
    #[serde(rename = "minimumRegisterIntervalInSeconds")]
    pub minimum_register_interval_in_seconds: u64,
    /// How old a registration may get before the router forgets it.
    #[serde(rename = "pruneThresholdInSeconds")]
    pub prune_threshold_in_seconds: u64,
}

/// A register or unregister message: routes (`uris`) to one endpoint (`host:port`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RegistryMessage {
    /// The address traffic goes to (an IP address, or a name the router can resolve).
    pub host: String,
    /// The plain-HTTP port.
    pub port: u16,
    /// A TLS port, if the endpoint has one (Kiln's router dials `port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_port: Option<u16>,
    /// `http1` (the default) or `http2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Routes: a host name with an optional path, such as `app.example.com/api`.
    #[serde(default)]
    pub uris: Vec<String>,
    /// The app guid (sent to the app as `X-CF-ApplicationID`).
    #[serde(default)]
    pub app: String,
    /// The instance guid (sent to the app as `X-CF-InstanceID`).
    #[serde(default)]
    pub private_instance_id: String,
    /// The instance index; gorouter's wire format has it as a string, numbers are accepted.
    #[serde(default, deserialize_with = "string_or_number")]
    pub private_instance_index: String,
    /// Free-form labels (`component`, `process_type`, ...).
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Forget the endpoint this long after its last registration (0: the router's default).
    #[serde(default)]
    pub stale_threshold_in_seconds: u64,
    /// The availability zone of the endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability_zone: Option<String>,
    /// When the endpoint last changed (ns since the Unix epoch): an older message than the
    /// one the router holds for the same endpoint is ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_updated_at_ns: Option<i64>,
}

fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Index {
        Text(String),
        Number(i64),
    }
    Ok(match Option::<Index>::deserialize(d)? {
        Some(Index::Text(s)) => s,
        Some(Index::Number(n)) => n.to_string(),
        None => String::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{decode, encode};

    #[test]
    fn registry_messages_read_gorouter_bodies() {
        let body =
            br#"{"host":"10.0.0.5","port":61001,"uris":["a.example.com","a.example.com/api"],
            "app":"app-guid","private_instance_id":"inst","private_instance_index":"2",
            "tags":{"component":"route-emitter"},"stale_threshold_in_seconds":120,
            "endpoint_updated_at_ns":1700000000000000000}"#;
        let m: RegistryMessage = decode(ROUTER_REGISTER, body).unwrap();
        assert_eq!(m.port, 61001);
        assert_eq!(m.uris.len(), 2);
        assert_eq!(m.private_instance_index, "2");
        assert_eq!(m.tls_port, None);
        let numeric: RegistryMessage = decode(
            ROUTER_REGISTER,
            br#"{"host":"h","port":1,"private_instance_index":3}"#,
        )
        .unwrap();
        assert_eq!(numeric.private_instance_index, "3");
        assert_eq!(numeric.stale_threshold_in_seconds, 0);
        let text = String::from_utf8(encode(&m)).unwrap();
        assert!(!text.contains("tls_port"), "{text}");
        assert_eq!(
            decode::<RegistryMessage>(ROUTER_REGISTER, text.as_bytes()).unwrap(),
            m
        );
    }

    #[test]
    fn router_start_uses_gorouter_field_names() {
        let start = RouterStart {
            id: "r1".into(),
            hosts: vec!["10.0.0.1".into()],
            minimum_register_interval_in_seconds: 20,
            prune_threshold_in_seconds: 120,
        };
        let text = String::from_utf8(encode(&start)).unwrap();
        assert!(
            text.contains("\"minimumRegisterIntervalInSeconds\":20"),
            "{text}"
        );
        assert!(text.contains("\"pruneThresholdInSeconds\":120"), "{text}");
    }
}
