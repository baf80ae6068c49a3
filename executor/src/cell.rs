//! The cell: its instances and capacity, the commands it takes from the bus, start-up
//! recovery, and graceful shutdown.
//!
//! Capacity is reserved when a start is accepted (memory, disk, one container) and given back
//! when the instance's container is gone; a start the cell cannot take (unknown stack, no
//! room, a duplicate instance guid, shutting down) is answered at once with CRASHED
//! (`start_failed`), so the controller places it elsewhere.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use futures::StreamExt;
use kiln_bus::cell::{self, CellState, CrashReason, InstanceStart, InstanceState, InstanceStop};
use kiln_containers::Backend;
use tokio::sync::Notify;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::droplets::DropletCache;
use crate::instance::{self, Instance};
use crate::report::{self, Ending};

/// What every task of the executor shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub config: Config,
    pub backend: Backend,
    pub nats: async_nats::Client,
    pub droplets: DropletCache,
    /// Instances by guid, from accepted start until their container is gone.
    pub instances: Mutex<BTreeMap<String, Arc<Instance>>>,
    /// Something the advertisement shows changed: advertise at once.
    pub changed: Notify,
    /// Shutting down: no new starts.
    pub stopping: AtomicBool,
    /// Draining (evacuation): advertised so nothing new is placed here.
    pub evacuating: AtomicBool,
    /// The instance tasks.
    pub tasks: TaskTracker,
}

impl Shared {
    pub fn instances(&self) -> MutexGuard<'_, BTreeMap<String, Arc<Instance>>> {
        self.instances.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The instance is gone: its capacity is free again.
    pub fn forget(&self, guid: &str) {
        self.instances().remove(guid);
        self.changed.notify_one();
    }

    /// The advertisement as of now.
    pub fn cell_state(&self) -> CellState {
        let instances = self.instances();
        let (mut memory, mut disk, mut starting) = (0u64, 0u64, 0u64);
        let mut per_app: BTreeMap<String, u64> = BTreeMap::new();
        for inst in instances.values() {
            memory = memory.saturating_add(inst.start.memory_mb);
            disk = disk.saturating_add(inst.start.disk_mb);
            if inst.actual().state == InstanceState::Starting {
                starting += 1;
            }
            *per_app.entry(inst.start.app_guid.clone()).or_default() += 1;
        }
        let c = &self.config;
        CellState {
            cell_id: c.cell_id.clone(),
            zone: c.zone.clone(),
            stacks: c.stacks.clone(),
            total_memory_mb: c.memory_mb,
            available_memory_mb: c.memory_mb.saturating_sub(memory),
            total_disk_mb: c.disk_mb,
            available_disk_mb: c.disk_mb.saturating_sub(disk),
            total_containers: c.max_containers,
            available_containers: c.max_containers.saturating_sub(instances.len() as u64),
            instances_per_app: per_app,
            starting,
            evacuating: self.evacuating.load(Ordering::SeqCst),
        }
    }

    /// Accepts and starts `start`, or refuses it with CRASHED.
    pub async fn start(self: &Arc<Self>, start: InstanceStart) {
        let inst = Arc::new(Instance::new(
            start,
            &self.config.cell_id,
            &self.config.host_ip,
        ));
        let refused = {
            let mut instances = self.instances();
            let state = self.cell_state_of(&instances);
            let s = &inst.start;
            let refused = if self.stopping.load(Ordering::SeqCst) {
                Some("the cell is shutting down".to_string())
            } else if instances.contains_key(&s.instance_guid) {
                Some(format!(
                    "instance {} is already on this cell",
                    s.instance_guid
                ))
            } else if !self.config.stacks.contains(&s.stack) {
                Some(format!(
                    "the cell has no stack {:?} (it has {})",
                    s.stack,
                    self.config.stacks.join(", ")
                ))
            } else if state.available_containers == 0 {
                Some("the cell has no room for another container".to_string())
            } else if state.available_memory_mb < s.memory_mb {
                Some(format!(
                    "insufficient memory: {} MB asked, {} MB available",
                    s.memory_mb, state.available_memory_mb
                ))
            } else if state.available_disk_mb < s.disk_mb {
                Some(format!(
                    "insufficient disk: {} MB asked, {} MB available",
                    s.disk_mb, state.available_disk_mb
                ))
            } else {
                instances.insert(s.instance_guid.clone(), inst.clone());
                None
            };
            refused
        };
        if let Some(why) = refused {
            warn!(instance = %inst.handle(), reason = %why, "instance.refused");
            report::cell_log(
                &self.nats,
                &inst,
                &format!(
                    "Cell {} refused instance {}: {why}",
                    self.config.cell_id,
                    inst.handle()
                ),
            )
            .await;
            let ending = Ending {
                crash_reason: Some(CrashReason::StartFailed),
                description: Some(why),
                ..Ending::default()
            };
            report::set_state(&self.nats, &inst, InstanceState::Crashed, ending).await;
            return;
        }
        self.changed.notify_one();
        self.tasks.spawn(instance::run(self.clone(), inst));
    }

    fn cell_state_of(&self, instances: &BTreeMap<String, Arc<Instance>>) -> CellStateLite {
        let memory: u64 = instances.values().map(|i| i.start.memory_mb).sum();
        let disk: u64 = instances.values().map(|i| i.start.disk_mb).sum();
        CellStateLite {
            available_memory_mb: self.config.memory_mb.saturating_sub(memory),
            available_disk_mb: self.config.disk_mb.saturating_sub(disk),
            available_containers: self
                .config
                .max_containers
                .saturating_sub(instances.len() as u64),
        }
    }

    /// Stops the instance `guid`, if the cell has it.
    pub fn stop(&self, guid: &str) {
        match self.instances().get(guid) {
            Some(inst) => inst.stop.cancel(),
            None => debug!(instance = guid, "instance.stop-unknown"),
        }
    }

    /// Serves start and stop commands until the subscriptions end.
    pub async fn serve_commands(self: Arc<Self>) -> Result<(), crate::ExecutorError> {
        let subscribe = |subject: String| {
            let nats = self.nats.clone();
            async move {
                nats.subscribe(subject.clone())
                    .await
                    .map_err(|e| crate::ExecutorError::Subscribe {
                        subject,
                        message: e.to_string(),
                    })
            }
        };
        let starts = subscribe(cell::start_subject(&self.config.cell_id)).await?;
        let stops = subscribe(cell::stop_subject(&self.config.cell_id)).await?;
        // The server has the subscriptions once this returns: commands sent after start()
        // are not lost.
        self.nats
            .flush()
            .await
            .map_err(|e| crate::ExecutorError::Subscribe {
                subject: cell::start_subject(&self.config.cell_id),
                message: e.to_string(),
            })?;
        let cell = self.clone();
        tokio::spawn(async move {
            let mut stops = stops;
            while let Some(m) = stops.next().await {
                match kiln_bus::decode::<InstanceStop>(&m.subject, &m.payload) {
                    Ok(stop) => cell.stop(&stop.instance_guid),
                    Err(e) => warn!(error = %e, "command.invalid"),
                }
            }
        });
        let cell = self;
        tokio::spawn(async move {
            let mut starts = starts;
            while let Some(m) = starts.next().await {
                match kiln_bus::decode::<InstanceStart>(&m.subject, &m.payload) {
                    Ok(start) => cell.start(start).await,
                    Err(e) => warn!(error = %e, "command.invalid"),
                }
            }
        });
        Ok(())
    }

    /// Finds the instance containers a previous executor left (their processes cannot be
    /// re-attached: the backend lost their output and exit), destroys them, and reports each
    /// STOPPED so the controller's convergence starts it again.
    pub async fn recover(&self) {
        let filter = [(
            instance::ROLE_PROPERTY.to_string(),
            instance::ROLE.to_string(),
        )]
        .into();
        for handle in self.backend.list(&filter) {
            let props = self
                .backend
                .info(&handle)
                .map(|i| i.properties)
                .unwrap_or_default();
            let prop = |k: &str| props.get(k).cloned().unwrap_or_default();
            let start = InstanceStart {
                app_guid: prop("kiln.app_guid"),
                process_guid: prop("kiln.process_guid"),
                process_type: prop("kiln.process_type"),
                index: prop("kiln.index").parse().unwrap_or(0),
                instance_guid: prop("kiln.instance_guid"),
                ..empty_start()
            };
            let inst = Instance::new(start, &self.config.cell_id, &self.config.host_ip);
            let result = self.backend.destroy(&handle).await;
            info!(container = %handle, instance = %inst.handle(), destroyed = result.is_ok(), "recovery.instance-lost");
            if let Err(e) = result {
                warn!(container = %handle, error = %e, "recovery.destroy-failed");
            }
            let why = "the cell restarted and cannot re-attach to the instance's process: its container was destroyed";
            report::cell_log(&self.nats, &inst, why).await;
            let ending = Ending {
                description: Some(why.to_string()),
                ..Ending::default()
            };
            report::set_state(&self.nats, &inst, InstanceState::Stopped, ending).await;
        }
    }
}

/// The free capacity, computed under the instances lock.
struct CellStateLite {
    available_memory_mb: u64,
    available_disk_mb: u64,
    available_containers: u64,
}

fn empty_start() -> InstanceStart {
    InstanceStart {
        app_guid: String::new(),
        app_name: String::new(),
        space_guid: String::new(),
        process_guid: String::new(),
        process_type: String::new(),
        index: 0,
        instance_guid: String::new(),
        droplet_guid: String::new(),
        droplet_url: String::new(),
        droplet_sha256: String::new(),
        stack: String::new(),
        memory_mb: 0,
        disk_mb: 0,
        start_command: String::new(),
        env: BTreeMap::new(),
        health_check: Default::default(),
        routes: Vec::new(),
    }
}
