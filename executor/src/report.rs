//! What the cell says on the bus: instance state changes, app log lines, route
//! registrations. Publishing is fire-and-forget (NATS core); a message lost while the bus is
//! away is made good by the periodic reports and re-registrations.

use std::time::{SystemTime, UNIX_EPOCH};

use kiln_bus::cell::{self, AppLogLine, CrashReason, InstanceState, InstanceStateChange};
use kiln_bus::router::{self, RegistryMessage};
use serde::Serialize;
use tracing::warn;

use crate::instance::Instance;

/// Nanoseconds since the Unix epoch.
pub fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// Publishes `message` on `subject`.
pub async fn publish<T: Serialize>(nats: &async_nats::Client, subject: String, message: &T) {
    if let Err(e) = nats
        .publish(subject.clone(), kiln_bus::encode(message).into())
        .await
    {
        warn!(subject, error = %e, "bus.publish-failed");
    }
}

/// A line in the app's log from `source` (`CELL` or `APP/PROC/WEB/0`).
pub async fn log(
    nats: &async_nats::Client,
    app_guid: &str,
    source: &str,
    stream: &str,
    message: &str,
) {
    let line = AppLogLine {
        app_guid: app_guid.to_string(),
        source: source.to_string(),
        stream: stream.to_string(),
        message: message.to_string(),
        timestamp_ns: now_ns(),
    };
    publish(nats, cell::app_log(app_guid), &line).await;
}

/// A `CELL` line in the instance's app log.
pub async fn cell_log(nats: &async_nats::Client, instance: &Instance, message: &str) {
    log(
        nats,
        &instance.start.app_guid,
        cell::CELL_SOURCE,
        "OUT",
        message,
    )
    .await;
}

/// How an instance ended, for [`set_state`].
#[derive(Debug, Clone, Default)]
pub struct Ending {
    /// Why it crashed.
    pub crash_reason: Option<CrashReason>,
    /// Its exit status.
    pub exit_status: Option<i32>,
    /// A sentence for people.
    pub description: Option<String>,
}

/// Moves the instance to `state` and publishes the change.
pub async fn set_state(
    nats: &async_nats::Client,
    instance: &Instance,
    state: InstanceState,
    ending: Ending,
) {
    let actual = {
        let mut actual = instance.actual();
        actual.state = state;
        actual.since_ns = u64::try_from(now_ns()).unwrap_or(u64::MAX);
        actual.clone()
    };
    let change = InstanceStateChange {
        instance: actual,
        crash_reason: ending.crash_reason,
        exit_status: ending.exit_status,
        description: ending.description,
    };
    publish(nats, cell::INSTANCE_STATE.to_string(), &change).await;
}

/// The router message for the instance's routes (`None` before it has a port).
pub fn registry_message(instance: &Instance, zone: &str) -> Option<RegistryMessage> {
    let actual = instance.actual().clone();
    if actual.port == 0 {
        return None;
    }
    let start = &instance.start;
    Some(RegistryMessage {
        host: actual.host,
        port: actual.port,
        uris: start.routes.clone(),
        app: start.app_guid.clone(),
        private_instance_id: start.instance_guid.clone(),
        private_instance_index: start.index.to_string(),
        tags: [
            ("component".to_string(), "kiln-executor".to_string()),
            ("process_type".to_string(), start.process_type.clone()),
        ]
        .into(),
        stale_threshold_in_seconds: router::DEFAULT_STALE_THRESHOLD_SECS,
        availability_zone: Some(zone.to_string()),
        ..RegistryMessage::default()
    })
}

/// Registers (or unregisters) the instance's routes, if it has any and a port.
pub async fn routes(nats: &async_nats::Client, instance: &Instance, zone: &str, register: bool) {
    if instance.start.routes.is_empty() {
        return;
    }
    if let Some(message) = registry_message(instance, zone) {
        let subject = if register {
            router::ROUTER_REGISTER
        } else {
            router::ROUTER_UNREGISTER
        };
        publish(nats, subject.to_string(), &message).await;
    }
}
