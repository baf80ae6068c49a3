//! The cell's periodic work: advertising itself (every interval and at once on a change),
//! listing its instances, registering routes again (and at once when a router says hello on
//! `router.start`), and publishing instance metrics from the containers' cgroups.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kiln_bus::cell::{self, CellInstances, InstanceMetrics, InstanceState};
use kiln_bus::router;
use tokio_util::sync::CancellationToken;

use crate::cell::Shared;
use crate::clock;
use crate::report;

/// Advertises the cell every interval and whenever it changes.
pub(crate) async fn advertise(cell: Arc<Shared>, stop: CancellationToken) {
    let mut ticks = clock::every(Duration::from_millis(
        cell.config.timings.advertise_interval_ms.max(100),
    ));
    loop {
        report::publish(
            &cell.nats,
            cell::CELL_ADVERTISE.to_string(),
            &cell.cell_state(),
        )
        .await;
        tokio::select! {
            _ = ticks.tick() => {}
            () = cell.changed.notified() => {}
            () = stop.cancelled() => return,
        }
    }
}

/// Lists the cell's instances every interval.
pub(crate) async fn list_instances(cell: Arc<Shared>, stop: CancellationToken) {
    let mut ticks = clock::every(Duration::from_secs(
        cell.config.timings.instances_interval_secs.max(1),
    ));
    loop {
        let listing = CellInstances {
            cell_id: cell.config.cell_id.clone(),
            // STARTING and RUNNING ones only: one that ended is on its way out (its end is
            // reported already), and listing it would make the controller adopt it again.
            instances: cell
                .instances()
                .values()
                .map(|i| i.actual().clone())
                .filter(|a| matches!(a.state, InstanceState::Starting | InstanceState::Running))
                .collect(),
        };
        report::publish(&cell.nats, cell::CELL_INSTANCES.to_string(), &listing).await;
        tokio::select! {
            _ = ticks.tick() => {}
            () = stop.cancelled() => return,
        }
    }
}

/// Registers the routes of RUNNING instances every interval and on `router.start`.
pub(crate) async fn register_routes(cell: Arc<Shared>, stop: CancellationToken) {
    let mut ticks = clock::every(Duration::from_secs(
        cell.config.timings.register_interval_secs.max(1),
    ));
    let mut hellos = match cell.nats.subscribe(router::ROUTER_START).await {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "router.start-subscribe-failed");
            None
        }
    };
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            Some(_) = async { match hellos.as_mut() { Some(h) => h.next().await, None => std::future::pending().await } } => {
                tracing::info!("router.hello");
            }
            () = stop.cancelled() => return,
        }
        let running: Vec<_> = cell.instances().values().cloned().collect();
        for inst in running {
            if inst.registered.load(Ordering::SeqCst) {
                report::routes(&cell.nats, &inst, &cell.config.zone, true).await;
            }
        }
    }
}

/// Publishes every instance's usage every interval.
pub(crate) async fn metrics(cell: Arc<Shared>, stop: CancellationToken) {
    let mut ticks = clock::every(Duration::from_secs(
        cell.config.timings.metrics_interval_secs.max(1),
    ));
    let mut previous: HashMap<String, (u64, Instant)> = HashMap::new();
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = stop.cancelled() => return,
        }
        let instances: Vec<_> = cell.instances().values().cloned().collect();
        previous.retain(|guid, _| instances.iter().any(|i| i.handle() == guid));
        // Those with a container, read all at once.
        let instances: HashMap<String, _> = instances
            .into_iter()
            .filter(|i| i.actual().port != 0)
            .map(|i| (i.handle().to_string(), i))
            .collect();
        let handles = instances.keys().cloned().collect();
        for (handle, m) in cell.backend.metrics_of(handles).await {
            let (Some(inst), Ok(m)) = (instances.get(&handle), m) else {
                continue;
            };
            let now = Instant::now();
            let cpu_percent = match previous.insert(inst.handle().to_string(), (m.cpu_time_ns, now))
            {
                Some((cpu, at)) if now > at => {
                    let wall = now.duration_since(at).as_nanos() as f64;
                    m.cpu_time_ns.saturating_sub(cpu) as f64 / wall * 100.0
                }
                _ => 0.0,
            };
            let message = InstanceMetrics {
                app_guid: inst.start.app_guid.clone(),
                process_type: inst.start.process_type.clone(),
                index: inst.start.index,
                instance_guid: inst.start.instance_guid.clone(),
                cpu_percent,
                memory_bytes: m.memory_bytes,
                memory_quota_bytes: m.memory_limit_bytes,
                disk_bytes: m.disk_bytes,
                disk_quota_bytes: m.disk_limit_bytes,
                timestamp_ns: report::now_ns(),
            };
            report::publish(&cell.nats, cell::INSTANCE_METRICS.to_string(), &message).await;
        }
    }
}
