//! Kiln's executor: the cell agent. It runs app instances in containers of the runc backend
//! (`kiln-containers`) for the cloud controller, which talks to it only over NATS (the
//! contract is `kiln_bus::cell`).
//!
//! # Layout
//! - [`config`]: what the cell is and offers, its timings (TOML file and flags).
//! - [`droplets`]: the droplet cache: download, sha256 check, LRU, unpack once per droplet
//!   into a read-only container layer.
//! - [`instance`]: one instance's life: container, process, logs, health, routes, the end.
//! - [`health`]: `port`, `http` and `process` probes.
//! - `exec`: commands run in an instance's container on request (`kiln ssh -c`).
//! - `cell`: capacity, start/stop/drain commands, evacuation, recovery; `loops`:
//!   advertisements, instance listings, route re-registration, metrics; `report`: what goes
//!   on the bus.
//!
//! [`Executor::start`] wires it all on a running backend and bus connection;
//! [`Executor::evacuate_and_stop`] hands the instances over to other cells (through the
//! controller) and then stops; [`Executor::shutdown`] is the graceful stop at once (routes
//! unregistered, instances stopped).

mod cell;
mod clock;
pub mod config;
pub mod droplets;
pub mod error;
mod exec;
pub mod health;
pub mod instance;
mod launch;
mod loops;
mod report;
mod session;
mod stack_images;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use kiln_bus::cell::CellState;
use kiln_containers::Backend;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

pub use config::{Config, Timings};
pub use droplets::{DropletCache, Token};
pub use error::{DropletError, ExecutorError};

/// A running executor.
#[derive(Debug)]
pub struct Executor {
    shared: Arc<cell::Shared>,
    loops: Vec<JoinHandle<()>>,
    stop_loops: CancellationToken,
}

impl Executor {
    /// Starts serving on `backend` (stacks imported) and `nats`: destroys and reports the
    /// instance containers a previous executor left, subscribes to the cell's commands and
    /// starts advertising.
    pub async fn start(
        config: Config,
        backend: Backend,
        nats: async_nats::Client,
    ) -> Result<Executor, ExecutorError> {
        config.validate().map_err(ExecutorError::Config)?;
        let token = match &config.internal_token_file {
            Some(path) => Some(
                Token::from_file(path)
                    .map_err(|source| ExecutorError::Token {
                        path: path.clone(),
                        source,
                    })?
                    .ok_or_else(|| ExecutorError::EmptyToken(path.clone()))?,
            ),
            None => None,
        };
        let droplets = DropletCache::open(
            &config.data_dir.join("droplets"),
            config.droplet_cache_mb.saturating_mul(1 << 20),
            token,
        )
        .map_err(|e| ExecutorError::Config(e.to_string()))?;
        let shared = Arc::new(cell::Shared {
            config,
            backend,
            nats,
            droplets,
            instances: Default::default(),
            changed: Default::default(),
            stopping: Default::default(),
            evacuating: Default::default(),
            drain: CancellationToken::new(),
            held: tokio::sync::watch::Sender::new(0),
            tasks: TaskTracker::new(),
        });
        shared.recover().await;
        let stop_loops = CancellationToken::new();
        let mut loops = shared.clone().serve_commands(stop_loops.clone()).await?;
        loops.extend([
            tokio::spawn(loops::advertise(shared.clone(), stop_loops.clone())),
            tokio::spawn(loops::list_instances(shared.clone(), stop_loops.clone())),
            tokio::spawn(loops::register_routes(shared.clone(), stop_loops.clone())),
            tokio::spawn(loops::metrics(shared.clone(), stop_loops.clone())),
        ]);
        info!(cell = %shared.config.cell_id, "executor.started");
        Ok(Executor {
            shared,
            loops,
            stop_loops,
        })
    }

    /// The cell's advertisement as of now.
    pub fn cell_state(&self) -> CellState {
        self.shared.cell_state()
    }

    /// The droplet cache (its download and unpack counters).
    pub fn droplets(&self) -> &DropletCache {
        &self.shared.droplets
    }

    /// Starts evacuating: advertises the cell evacuating at once, so the controller places
    /// nothing new on it and starts each of its instances elsewhere, and refuses new starts.
    /// The instances keep running and routed until the controller stops them (once their
    /// replacements are RUNNING). Idempotent.
    pub fn evacuate(&self) {
        self.shared.evacuate();
    }

    /// Resolves once a drain command (`kiln.cell.<id>.drain`) came; the cell is evacuating
    /// by then. Whoever runs the executor then calls [`Executor::evacuate_and_stop`] (the
    /// binary does, and exits).
    pub async fn drain_requested(&self) {
        self.shared.drain.cancelled().await;
    }

    /// Waits, evacuating, until the cell holds no instance or `timeout` passed.
    pub async fn evacuated(&self, timeout: Duration) -> Evacuation {
        self.evacuate();
        let mut held = self.shared.held.subscribe();
        let emptied = tokio::time::timeout(timeout, held.wait_for(|n| *n == 0)).await;
        let left = self.shared.instances().len();
        if emptied.is_ok() || left == 0 {
            info!("executor.evacuated");
            Evacuation::Complete
        } else {
            warn!(
                left,
                timeout_secs = timeout.as_secs(),
                "executor.evacuation-timed-out"
            );
            Evacuation::TimedOut { left }
        }
    }

    /// Evacuation, then the graceful stop: advertises the cell evacuating, waits until the
    /// controller has moved every instance elsewhere (each stopped here once its replacement
    /// is RUNNING) or `timeout` passed, then stops what remains (routes unregistered first)
    /// like [`Executor::shutdown`].
    pub async fn evacuate_and_stop(self, timeout: Duration) -> Evacuation {
        let outcome = self.evacuated(timeout).await;
        self.shutdown().await;
        outcome
    }

    /// Graceful stop: refuses new starts, stops every instance (routes unregistered first,
    /// SIGTERM, grace, SIGKILL, container destroyed, STOPPED reported), then ends its loops.
    pub async fn shutdown(self) {
        let shared = &self.shared;
        shared.stopping.store(true, Ordering::SeqCst);
        shared.evacuating.store(true, Ordering::SeqCst);
        shared.changed.notify_one();
        let instances: Vec<_> = shared.instances().values().cloned().collect();
        info!(instances = instances.len(), "executor.stopping");
        for inst in instances {
            inst.stop.cancel();
        }
        shared.tasks.close();
        shared.tasks.wait().await;
        // The last advertisement shows the cell empty and evacuating.
        report::publish(
            &shared.nats,
            kiln_bus::cell::CELL_ADVERTISE.to_string(),
            &shared.cell_state(),
        )
        .await;
        let _ = shared.nats.flush().await;
        self.stop_loops.cancel();
        for task in self.loops {
            let _ = task.await;
        }
        info!("executor.stopped");
    }
}

/// How an evacuation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evacuation {
    /// The cell holds no instance: each was stopped by the controller (after starting it
    /// elsewhere) or ended on its own.
    Complete,
    /// The timeout came first; `left` instances were still on the cell (a stop follows).
    TimedOut {
        /// Instances the cell still held.
        left: usize,
    },
}

/// Imports `stack` into `backend` from the machine's stack cache, building it there the first
/// time (`kiln_rootfs::recipes::cached`).
pub async fn import_stack(backend: &Backend, stack: &str) -> Result<(), ExecutorError> {
    let failed = |message: String| ExecutorError::Stack {
        stack: stack.to_string(),
        message,
    };
    if !kiln_rootfs::recipes::KNOWN.contains(&stack) {
        return Err(failed(format!(
            "unknown (known: {})",
            kiln_rootfs::recipes::KNOWN.join(", ")
        )));
    }
    let name = stack.to_string();
    let layout = tokio::task::spawn_blocking(move || kiln_rootfs::recipes::cached(&name))
        .await
        .map_err(|e| failed(e.to_string()))?
        .map_err(|e| failed(e.to_string()))?;
    backend.import_stack(&layout.dir, stack).await?;
    Ok(())
}
