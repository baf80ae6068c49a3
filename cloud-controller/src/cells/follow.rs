//! Listens to the cells on the bus: advertisements, instance state changes, full instance
//! listings, usage, and app log lines (into the controller's app logs).

use std::time::{Duration, Instant};

use futures::StreamExt;
use kiln_bus::cell::{
    self, CellInstances, CellState, InstanceMetrics, InstanceState, InstanceStateChange,
};

use super::{backoff, HeardCell, Inner, Known};
use crate::logs::AppLogLine;
use crate::state::AppState;

/// A start not reported by its cell within this long is given up (and placed again).
pub const PENDING_TIMEOUT: Duration = Duration::from_secs(30);

/// Follows the cell subjects until the bus connection ends.
pub async fn run(s: AppState) -> Result<(), async_nats::SubscribeError> {
    let mut adverts = s.nats.subscribe(cell::CELL_ADVERTISE).await?;
    let mut states = s.nats.subscribe(cell::INSTANCE_STATE).await?;
    let mut listings = s.nats.subscribe(cell::CELL_INSTANCES).await?;
    let mut metrics = s.nats.subscribe(cell::INSTANCE_METRICS).await?;
    let mut logs = s.nats.subscribe(cell::APP_LOG_ALL).await?;
    loop {
        tokio::select! {
            biased;
            Some(m) = states.next() => match kiln_bus::decode::<InstanceStateChange>(&m.subject, &m.payload) {
                Ok(c) => {
                    let wake = state_changed(&mut s.cells.lock(), c);
                    if wake {
                        s.cells.wake.notify_one();
                    }
                }
                Err(e) => tracing::warn!(error = %e, "ignoring a message"),
            },
            Some(m) = adverts.next() => match kiln_bus::decode::<CellState>(&m.subject, &m.payload) {
                Ok(c) => {
                    let new = {
                        let mut inner = s.cells.lock();
                        let id = c.cell_id.clone();
                        inner.cells.insert(id, HeardCell { state: c, at: Instant::now() }).is_none()
                    };
                    if new {
                        s.cells.wake.notify_one();
                    }
                }
                Err(e) => tracing::warn!(error = %e, "ignoring a message"),
            },
            Some(m) = listings.next() => match kiln_bus::decode::<CellInstances>(&m.subject, &m.payload) {
                Ok(l) => listed(&mut s.cells.lock(), l),
                Err(e) => tracing::warn!(error = %e, "ignoring a message"),
            },
            Some(m) = metrics.next() => match kiln_bus::decode::<InstanceMetrics>(&m.subject, &m.payload) {
                Ok(u) => {
                    let mut inner = s.cells.lock();
                    if inner.instances.contains_key(&u.instance_guid) {
                        inner.metrics.insert(u.instance_guid.clone(), u);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "ignoring a message"),
            },
            Some(m) = logs.next() => match kiln_bus::decode::<cell::AppLogLine>(&m.subject, &m.payload) {
                Ok(l) => s.logs.push(AppLogLine {
                    app_guid: l.app_guid,
                    source: l.source,
                    stream: l.stream,
                    message: l.message,
                    timestamp_ns: l.timestamp_ns,
                }),
                Err(e) => tracing::warn!(error = %e, "ignoring a log line"),
            },
            else => return Ok(()),
        }
    }
}

/// Records a state change; true when convergence should run now (an instance ended).
fn state_changed(inner: &mut Inner, c: InstanceStateChange) -> bool {
    let guid = c.instance.instance_guid.clone();
    match c.instance.state {
        InstanceState::Starting | InstanceState::Running => {
            let version = inner.instances.get(&guid).and_then(|k| k.version.clone());
            let stopping = inner.instances.get(&guid).and_then(|k| k.stopping);
            inner.instances.insert(
                guid,
                Known {
                    actual: c.instance,
                    version,
                    pending: false,
                    at: Instant::now(),
                    stopping,
                },
            );
            false
        }
        InstanceState::Crashed => {
            let known = inner.instances.remove(&guid);
            inner.metrics.remove(&guid);
            // A crash while being stopped is the stop, not a crash.
            if known.is_some_and(|k| k.stopping.is_none()) {
                let key = (c.instance.process_guid.clone(), c.instance.index);
                let description = c.description.unwrap_or_else(|| "crashed".into());
                let entry = inner.crashes.entry(key).or_insert(backoff::Crashes {
                    count: 0,
                    last: Instant::now(),
                    description: String::new(),
                });
                entry.count += 1;
                entry.last = Instant::now();
                entry.description = description;
            }
            true
        }
        InstanceState::Stopped => {
            inner.instances.remove(&guid);
            inner.metrics.remove(&guid);
            true
        }
    }
}

/// A cell's full listing: what it lists is known (adopted if new); what it no longer lists,
/// and was not just asked for, is gone.
fn listed(inner: &mut Inner, l: CellInstances) {
    let now = Instant::now();
    let listed: std::collections::HashSet<&str> = l
        .instances
        .iter()
        .map(|i| i.instance_guid.as_str())
        .collect();
    inner.instances.retain(|guid, k| {
        k.actual.cell_id != l.cell_id
            || listed.contains(guid.as_str())
            || (k.pending && now.duration_since(k.at) < PENDING_TIMEOUT)
    });
    for actual in l.instances {
        let k = inner
            .instances
            .entry(actual.instance_guid.clone())
            .or_insert_with(|| Known {
                actual: actual.clone(),
                version: None,
                pending: false,
                at: now,
                stopping: None,
            });
        k.actual = actual;
        k.pending = false;
        k.at = now;
    }
}
