//! The cell: its instances and capacity, the commands it takes from the bus, start-up
//! recovery, evacuation and graceful shutdown.
//!
//! Capacity is reserved when a start is accepted (memory, disk, one container) and given back
//! when the instance's container is gone; a start the cell cannot take (unknown stack, no
//! room, a duplicate instance guid) is answered at once with CRASHED (`start_failed`), so the
//! controller places it elsewhere. One refused only because the cell is evacuating or
//! shutting down (placed before the controller heard so) is answered STOPPED: nothing is wrong
//! with the instance, and the controller places it elsewhere without counting a crash.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use futures::StreamExt;
use kiln_bus::cell::{
    self, CellDrain, CellState, CrashReason, InstanceStart, InstanceState, InstanceStop,
};
use kiln_containers::Backend;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
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
    /// Draining (evacuation): advertised so nothing new is placed here; no new starts.
    pub evacuating: AtomicBool,
    /// Cancelled when a drain command came: whoever runs the executor evacuates and exits.
    pub drain: CancellationToken,
    /// How many instances the cell holds, for waiting until evacuation left none.
    pub held: watch::Sender<usize>,
    /// The instance tasks.
    pub tasks: TaskTracker,
}

impl Shared {
    pub fn instances(&self) -> MutexGuard<'_, BTreeMap<String, Arc<Instance>>> {
        self.instances.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The instance is gone: its capacity is free again.
    pub fn forget(&self, guid: &str) {
        let mut instances = self.instances();
        instances.remove(guid);
        self.held.send_replace(instances.len());
        drop(instances);
        self.changed.notify_one();
    }

    /// Starts evacuating: the cell advertises itself evacuating at once (so the controller
    /// places nothing new here and starts this cell's instances elsewhere) and refuses new
    /// starts; its instances keep running and routed until they are stopped.
    pub fn evacuate(&self) {
        if !self.evacuating.swap(true, Ordering::SeqCst) {
            info!(cell = %self.config.cell_id, instances = self.instances().len(), "executor.evacuating");
            self.changed.notify_one();
        }
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
            } else if self.evacuating.load(Ordering::SeqCst) {
                Some("the cell is evacuating".to_string())
            } else if instances.contains_key(&s.instance_guid) {
                Some(format!(
                    "instance {} is already on this cell",
                    s.instance_guid
                ))
            } else if s.image.is_none() && !self.config.stacks.contains(&s.stack) {
                // (An image droplet brings its own root filesystem.)
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
                self.held.send_replace(instances.len());
                None
            };
            refused
        };
        if let Some(why) = refused {
            let leaving =
                self.stopping.load(Ordering::SeqCst) || self.evacuating.load(Ordering::SeqCst);
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
            let (state, crash_reason) = if leaving {
                (InstanceState::Stopped, None)
            } else {
                (InstanceState::Crashed, Some(CrashReason::StartFailed))
            };
            let ending = Ending {
                crash_reason,
                description: Some(why),
                ..Ending::default()
            };
            report::set_state(&self.nats, &inst, state, ending).await;
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

    /// Serves start, stop, drain and exec commands until `done` is cancelled; their tasks. The
    /// subscriptions end with the tasks, so a stopped executor answers no more commands (one
    /// started again in the same process is the only one to answer).
    pub async fn serve_commands(
        self: Arc<Self>,
        done: CancellationToken,
    ) -> Result<Vec<JoinHandle<()>>, crate::ExecutorError> {
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
        let drains = subscribe(cell::drain_subject(&self.config.cell_id)).await?;
        let execs = subscribe(cell::exec_subject(&self.config.cell_id)).await?;
        // The server has the subscriptions once this returns: commands sent after start()
        // are not lost (a flush only writes them to the socket).
        kiln_bus::round_trip(&self.nats, kiln_bus::ROUND_TRIP_TIMEOUT)
            .await
            .map_err(|e| crate::ExecutorError::Subscribe {
                subject: cell::start_subject(&self.config.cell_id),
                message: e.to_string(),
            })?;
        let next = |mut sub: async_nats::Subscriber, done: CancellationToken| async move {
            let m = tokio::select! {
                m = sub.next() => m,
                () = done.cancelled() => None,
            };
            (sub, m)
        };
        let (cell, stop) = (self.clone(), done.clone());
        let drains = tokio::spawn(async move {
            let mut drains = drains;
            loop {
                let (sub, m) = next(drains, stop.clone()).await;
                drains = sub;
                let Some(m) = m else { return };
                // An empty body is a drain too (`nats pub kiln.cell.c1.drain ""`).
                let valid = m.payload.is_empty()
                    || kiln_bus::decode::<CellDrain>(&m.subject, &m.payload).is_ok();
                if !valid {
                    warn!(subject = %m.subject, "command.invalid");
                    continue;
                }
                info!(cell = %cell.config.cell_id, "executor.drain-requested");
                cell.evacuate();
                cell.drain.cancel();
            }
        });
        let (cell, stop) = (self.clone(), done.clone());
        let stops = tokio::spawn(async move {
            let mut stops = stops;
            loop {
                let (sub, m) = next(stops, stop.clone()).await;
                stops = sub;
                let Some(m) = m else { return };
                match kiln_bus::decode::<InstanceStop>(&m.subject, &m.payload) {
                    Ok(stop) => cell.stop(&stop.instance_guid),
                    Err(e) => warn!(error = %e, "command.invalid"),
                }
            }
        });
        let execs = tokio::spawn(crate::exec::serve(self.clone(), execs, done.clone()));
        let cell = self;
        let starts = tokio::spawn(async move {
            let mut starts = starts;
            loop {
                let (sub, m) = next(starts, done.clone()).await;
                starts = sub;
                let Some(m) = m else { return };
                match kiln_bus::decode::<InstanceStart>(&m.subject, &m.payload) {
                    Ok(start) => cell.start(start).await,
                    Err(e) => warn!(error = %e, "command.invalid"),
                }
            }
        });
        Ok(vec![drains, stops, execs, starts])
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
        stack_image: None,
        image: None,
    }
}
