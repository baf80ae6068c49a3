//! The cells as the controller knows them: what each advertises, the instances they report,
//! their usage and the crash history of each instance index. Fed from the bus ([`follow`]);
//! read by convergence ([`converge`]) and the process stats endpoint.

pub mod backoff;
pub mod converge;
pub mod desired;
mod follow;
pub mod placement;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use kiln_bus::cell::{ActualInstance, CellState, InstanceMetrics};

pub use follow::run as follow;

/// A cell and when it was last heard.
#[derive(Debug, Clone)]
pub struct HeardCell {
    /// Its last advertisement.
    pub state: CellState,
    /// When it came.
    pub at: Instant,
}

/// An instance the controller knows of.
#[derive(Debug, Clone)]
pub struct Known {
    /// As the cell last reported it (or as it was asked to start).
    pub actual: ActualInstance,
    /// The process version it was started for; `None` for one found running (adopted after a
    /// controller restart), which counts as current.
    pub version: Option<String>,
    /// Asked to start, not reported by its cell yet.
    pub pending: bool,
    /// When the controller last heard of it (or asked for it).
    pub at: Instant,
    /// When a stop was last sent, if one was.
    pub stopping: Option<Instant>,
}

/// What the controller knows of cells and instances.
#[derive(Default)]
pub struct Inner {
    /// Cells by id.
    pub cells: HashMap<String, HeardCell>,
    /// Instances by instance guid (STARTING and RUNNING ones, and starts not yet reported).
    pub instances: HashMap<String, Known>,
    /// Last usage report per instance guid.
    pub metrics: HashMap<String, InstanceMetrics>,
    /// Crash history per (process guid, index).
    pub crashes: HashMap<(String, u32), backoff::Crashes>,
    /// Instances reported CRASHED or STOPPED lately, by guid, with when: a cell listing
    /// taken before the end but heard after it must not bring them back.
    pub ended: HashMap<String, Instant>,
    /// Why a process's instances cannot be placed, per process guid.
    pub unplaceable: HashMap<String, String>,
    /// A cell not heard from for this long is lost (none: `CELL_TTL_SECS`).
    pub cell_ttl: Option<std::time::Duration>,
}

/// Shared knowledge of cells, and a way to ask convergence to run now.
pub struct Cells {
    inner: Mutex<Inner>,
    /// Wakes the convergence loop (a change of desired state, a lost cell, a crash).
    pub wake: tokio::sync::Notify,
    /// When this controller started: nothing is started before cells had time to list what
    /// they run (no duplicates after a restart).
    pub started: Instant,
}

impl Default for Cells {
    fn default() -> Self {
        Cells {
            inner: Mutex::default(),
            wake: tokio::sync::Notify::new(),
            started: Instant::now(),
        }
    }
}

impl Cells {
    /// The state, locked (never held across an await).
    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}
