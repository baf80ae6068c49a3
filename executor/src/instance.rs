//! One app instance from start to end, in one task: the droplet layer, the container (limits,
//! NetIn 8080, the instance environment), the process (through the droplet's launcher, as
//! vcap, its output on the app's log), health checks until healthy (RUNNING, routes
//! registered) and after, and the end: stopped as asked (unregister, SIGTERM, grace,
//! SIGKILL, destroy) or crashed (exit, OOM, failed health check: unregister, destroy,
//! CRASHED). Restarting is the controller's decision, never the cell's.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use kiln_bus::cell::{ActualInstance, CrashReason, HealthCheckType, InstanceStart, InstanceState};
use kiln_containers::network::Listeners;
use kiln_containers::ProcessExit;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn, Instrument};

use crate::cell::Shared;
use crate::clock;
use crate::launch;
use crate::report::{self, Ending};

/// Container property naming what a container is, so a restarted executor finds its own.
pub const ROLE_PROPERTY: &str = "kiln.role";
/// The value of [`ROLE_PROPERTY`] on instance containers.
pub const ROLE: &str = "app-instance";

/// An instance the cell holds.
#[derive(Debug)]
pub struct Instance {
    /// What the controller asked for.
    pub start: InstanceStart,
    actual: Mutex<ActualInstance>,
    /// Its routes are registered now (RUNNING and not being stopped).
    pub registered: AtomicBool,
    /// Cancelled to stop it.
    pub stop: CancellationToken,
}

impl Instance {
    /// A new instance, STARTING on `cell_id`.
    pub fn new(start: InstanceStart, cell_id: &str, host: &str) -> Instance {
        let actual = ActualInstance {
            app_guid: start.app_guid.clone(),
            process_guid: start.process_guid.clone(),
            process_type: start.process_type.clone(),
            index: start.index,
            instance_guid: start.instance_guid.clone(),
            cell_id: cell_id.to_string(),
            state: InstanceState::Starting,
            host: host.to_string(),
            port: 0,
            since_ns: u64::try_from(report::now_ns()).unwrap_or(u64::MAX),
            stack_digest: String::new(),
        };
        Instance {
            start,
            actual: Mutex::new(actual),
            registered: AtomicBool::new(false),
            stop: CancellationToken::new(),
        }
    }

    /// Its actual state.
    pub fn actual(&self) -> MutexGuard<'_, ActualInstance> {
        self.actual.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Its container's handle.
    pub fn handle(&self) -> &str {
        &self.start.instance_guid
    }

    /// `APP/PROC/WEB/0`.
    pub fn source(&self) -> String {
        kiln_bus::cell::app_source(&self.start.process_type, self.start.index)
    }
}

/// How the running part ended.
enum Outcome {
    Stopped,
    Exited(ProcessExit),
    Unhealthy { starting: bool },
    Lost(String),
}

/// Runs `inst` to its end, then forgets it.
pub(crate) async fn run(cell: Arc<Shared>, inst: Arc<Instance>) {
    let span = info_span!(
        "instance",
        app = %inst.start.app_guid,
        instance = %inst.start.instance_guid,
        index = inst.start.index,
        container = %inst.handle(),
    );
    async {
        lifecycle(&cell, &inst).await;
        cell.forget(inst.handle());
    }
    .instrument(span)
    .await
}

async fn lifecycle(cell: &Shared, inst: &Instance) {
    let nats = &cell.nats;
    let id = &cell.config.cell_id;
    let guid = inst.handle();
    report::set_state(nats, inst, InstanceState::Starting, Ending::default()).await;
    report::cell_log(
        nats,
        inst,
        &format!("Cell {id} creating container for instance {guid}"),
    )
    .await;
    // An image droplet has no droplet layer: its image (`stack_image`) is the whole root.
    let layer = match inst.start.image {
        Some(_) => None,
        None => {
            let layer = tokio::select! {
                layer = cell.droplets.acquire(&inst.start.droplet_url, &inst.start.droplet_sha256) => layer,
                () = inst.stop.cancelled() => return launch::stopped(cell, inst).await,
            };
            match layer {
                Ok(layer) => Some(layer),
                Err(e) => return launch::start_failed(cell, inst, None, e.to_string()).await,
            }
        }
    };
    let layer = layer.as_ref();
    if let Some(layer) = layer.filter(|l| l.downloaded) {
        info!(sha256 = %layer.sha256, unpacked = layer.unpacked, "instance.droplet-downloaded");
    }
    if let Some(image) = &inst.start.stack_image {
        let ready = tokio::select! {
            ready = cell.droplets.ensure_stack_image(&cell.backend, image) => ready,
            () = inst.stop.cancelled() => {
                if let Some(layer) = layer {
                    cell.droplets.release(layer);
                }
                return launch::stopped(cell, inst).await;
            }
        };
        if let Err(e) = ready {
            return launch::start_failed(cell, inst, layer, e.to_string()).await;
        }
    }
    let created = cell
        .backend
        .create(launch::container_spec(inst, layer))
        .await;
    let info = match created {
        Ok(info) => info,
        Err(e) => return launch::start_failed(cell, inst, layer, e.to_string()).await,
    };
    let port = info.mapped_ports.first().map(|m| m.host_port).unwrap_or(0);
    let app = std::net::SocketAddr::from((
        info.container_ip,
        info.mapped_ports
            .first()
            .map(|m| m.container_port)
            .unwrap_or(0),
    ));
    {
        let mut actual = inst.actual();
        actual.port = port;
        actual.stack_digest = info.stack_digest.clone();
    }
    info!(port, stack = %info.stack_digest, "container.created");
    report::cell_log(
        nats,
        inst,
        &format!("Cell {id} successfully created container for instance {guid}"),
    )
    .await;

    let mut process = match cell
        .backend
        .run(guid, launch::process_spec(cell, inst, port))
        .await
    {
        Ok(p) => p,
        Err(e) => {
            launch::destroy(cell, inst, layer).await;
            return launch::start_failed(cell, inst, None, format!("starting the process: {e}"))
                .await;
        }
    };
    let source = inst.source();
    let pumps = [
        tokio::spawn(launch::pump(
            cell.nats.clone(),
            process.take_stdout(),
            inst.start.app_guid.clone(),
            source.clone(),
            "OUT",
        )),
        tokio::spawn(launch::pump(
            cell.nats.clone(),
            process.take_stderr(),
            inst.start.app_guid.clone(),
            source,
            "ERR",
        )),
    ];
    let mut exited = tokio::spawn(async move { process.wait().await });
    report::cell_log(nats, inst, "Starting health monitoring of container").await;
    let listeners = match inst.start.health_check.kind {
        HealthCheckType::Port => match cell.backend.listeners(guid).await {
            Ok(l) => Some(l),
            Err(e) => {
                warn!(error = %e, "port checks connect to the app instead");
                None
            }
        },
        _ => None,
    };
    let outcome = monitor(cell, inst, app, listeners.as_ref(), &mut exited).await;

    if inst.registered.swap(false, Ordering::SeqCst) {
        report::routes(nats, inst, &cell.config.zone, false).await;
    }
    if matches!(outcome, Outcome::Stopped) {
        report::cell_log(nats, inst, &format!("Cell {id} stopping instance {guid}")).await;
        if let Err(e) = cell
            .backend
            .stop(guid, cell.config.timings.stop_grace())
            .await
        {
            warn!(error = %e, "instance.stop-failed");
        }
    }
    launch::destroy(cell, inst, layer).await;
    exited.abort();
    for pump in pumps {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), pump).await;
    }
    let source = inst.source();
    let (state, ending) = match outcome {
        Outcome::Stopped => (
            InstanceState::Stopped,
            Ending {
                description: Some("stopped as requested".into()),
                ..Ending::default()
            },
        ),
        Outcome::Exited(exit) => {
            let oom = exit.oom_killed;
            let description = if oom {
                format!("{source} exited with status {} (out of memory)", exit.code)
            } else {
                format!("{source} exited with status {}", exit.code)
            };
            (
                InstanceState::Crashed,
                Ending {
                    crash_reason: Some(if oom {
                        CrashReason::Oom
                    } else {
                        CrashReason::Exit
                    }),
                    exit_status: Some(exit.code),
                    description: Some(description),
                },
            )
        }
        Outcome::Unhealthy { starting } => {
            let description = if starting {
                let secs = start_timeout(cell, inst).as_secs();
                format!("Instance never healthy after {secs}s: failed health check")
            } else {
                "Instance became unhealthy: failed health check".to_string()
            };
            (
                InstanceState::Crashed,
                Ending {
                    crash_reason: Some(CrashReason::HealthCheck),
                    description: Some(description),
                    ..Ending::default()
                },
            )
        }
        Outcome::Lost(why) => (
            InstanceState::Crashed,
            Ending {
                crash_reason: Some(CrashReason::Exit),
                description: Some(why),
                ..Ending::default()
            },
        ),
    };
    if state == InstanceState::Crashed {
        if let Some(d) = &ending.description {
            report::cell_log(nats, inst, d).await;
        }
    }
    info!(state = ?state, reason = ?ending.crash_reason, "instance.ended");
    report::set_state(nats, inst, state, ending).await;
}

/// The wait after a starting instance's first failed probe; it doubles up to the configured
/// starting probe interval.
const FIRST_STARTING_PROBE_WAIT: std::time::Duration = std::time::Duration::from_millis(10);

/// Health checks of `app` (the container's address, the app's port; a port check asks
/// `listeners` when there are) until the process ends, the instance is stopped, or it fails
/// its check.
async fn monitor(
    cell: &Shared,
    inst: &Instance,
    app: std::net::SocketAddr,
    listeners: Option<&Listeners>,
    exited: &mut JoinHandle<kiln_containers::Result<ProcessExit>>,
) -> Outcome {
    let timings = &cell.config.timings;
    let check = &inst.start.health_check;
    let probe_timeout = check
        .invocation_timeout_secs
        .map(std::time::Duration::from_secs)
        .unwrap_or_else(|| timings.probe_timeout());
    let deadline = Instant::now() + start_timeout(cell, inst);
    // While starting, probes come quickly at first (most apps listen within tens of ms) and
    // then slow down to the configured interval: 10, 20, 40, ... ms.
    let mut starting_wait = FIRST_STARTING_PROBE_WAIT;
    // Once it runs, probes come on the cell's clock, in one wake-up with other instances'.
    let mut running_probes: Option<tokio::time::Interval> = None;
    loop {
        tokio::select! {
            biased;
            () = inst.stop.cancelled() => return Outcome::Stopped,
            exit = &mut *exited => return match exit {
                Ok(Ok(exit)) => Outcome::Exited(exit),
                Ok(Err(e)) => Outcome::Lost(format!("lost the process: {e}")),
                Err(e) => Outcome::Lost(format!("lost the process: {e}")),
            },
            () = async {
                if let Some(due) = running_probes.as_mut() {
                    due.tick().await;
                }
            } => {}
        }
        let healthy = tokio::select! {
            h = crate::health::probe(check, app, listeners, probe_timeout) => h,
            () = inst.stop.cancelled() => return Outcome::Stopped,
        };
        match (running_probes.is_some(), healthy) {
            (false, true) => {
                report::set_state(&cell.nats, inst, InstanceState::Running, Ending::default())
                    .await;
                report::cell_log(&cell.nats, inst, "Container became healthy").await;
                inst.registered.store(true, Ordering::SeqCst);
                report::routes(&cell.nats, inst, &cell.config.zone, true).await;
                cell.changed.notify_one();
                info!("instance.healthy");
                running_probes = Some(clock::every(timings.running_probe_interval()));
            }
            (true, false) => {
                report::cell_log(&cell.nats, inst, "Container became unhealthy").await;
                return Outcome::Unhealthy { starting: false };
            }
            (false, false) if Instant::now() >= deadline => {
                return Outcome::Unhealthy { starting: true }
            }
            (false, false) => {
                let wait = starting_wait.min(timings.starting_probe_interval());
                starting_wait = starting_wait.saturating_mul(2);
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = inst.stop.cancelled() => return Outcome::Stopped,
                }
            }
            // The next probe about an interval after this one ended (a slow probe is not
            // followed at once by another), on the cell's clock again.
            (true, true) => {
                running_probes = Some(clock::every(timings.running_probe_interval()));
            }
        }
    }
}

fn start_timeout(cell: &Shared, inst: &Instance) -> std::time::Duration {
    inst.start
        .health_check
        .timeout_secs
        .map(std::time::Duration::from_secs)
        .unwrap_or_else(|| cell.config.timings.start_timeout())
}
