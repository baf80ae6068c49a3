//! Convergence: desired instances (the database) against actual ones (what cells report).
//! Starts the missing (placed by [`super::placement`], held back by the crash back-off), stops
//! the extra, replaces instances of an older process version or on an evacuating cell only
//! once their successor is RUNNING (rolling), and forgets a lost cell's instances so they are
//! started elsewhere. Runs every second and whenever something changes; stops only instances
//! a cell reported, never on a guess.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use kiln_bus::cell::{
    self, ActualInstance, HealthCheck, HealthCheckType, InstanceStart, InstanceState, InstanceStop,
    CELL_TTL_SECS,
};
use kiln_bus::StackImageRef;

use super::desired::{self, DesiredProcess};
use super::follow::PENDING_TIMEOUT;
use super::placement::{self, Candidate, Need};
use super::{backoff, Inner, Known};
use crate::state::{new_guid, AppState};

/// A stop not acted on is sent again after this long.
const STOP_RESEND: Duration = Duration::from_secs(15);

/// What one pass decided.
#[derive(Debug, Default)]
pub struct Actions {
    /// (cell, start).
    pub starts: Vec<(String, InstanceStart)>,
    /// (cell, stop).
    pub stops: Vec<(String, InstanceStop)>,
}

/// Converges forever: once cells had time to list what they run, every second and on a wake.
pub async fn run(s: AppState, settle: Duration) {
    tokio::time::sleep(settle).await;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = s.cells.wake.notified() => {}
        }
        if let Err(e) = pass(&s).await {
            tracing::error!(error = %e, "convergence");
        }
    }
}

/// One pass: read desired state, decide under the lock, then publish.
pub async fn pass(s: &AppState) -> Result<(), sqlx::Error> {
    let desired = desired::load(&s.db).await?;
    let actions = {
        let mut inner = s.cells.lock();
        plan(&mut inner, &desired, &s.internal_url, Instant::now())
    };
    for (cell_id, start) in actions.starts {
        tracing::info!(app = %start.app_guid, instance = %start.instance_guid, index = start.index, cell = %cell_id, "starting an instance");
        let _ = s
            .nats
            .publish(
                cell::start_subject(&cell_id),
                kiln_bus::encode(&start).into(),
            )
            .await;
    }
    for (cell_id, stop) in actions.stops {
        tracing::info!(instance = %stop.instance_guid, cell = %cell_id, "stopping an instance");
        let _ = s
            .nats
            .publish(cell::stop_subject(&cell_id), kiln_bus::encode(&stop).into())
            .await;
    }
    Ok(())
}

fn is_current(k: &Known, p: &DesiredProcess, inner: &Inner) -> bool {
    let evacuating = inner
        .cells
        .get(&k.actual.cell_id)
        .is_some_and(|c| c.state.evacuating);
    !evacuating && k.version.as_ref().is_none_or(|v| *v == p.version)
}

fn stop(actions: &mut Actions, k: &mut Known, now: Instant) {
    if k.pending
        || k.stopping
            .is_some_and(|t| now.duration_since(t) < STOP_RESEND)
    {
        return;
    }
    k.stopping = Some(now);
    actions.stops.push((
        k.actual.cell_id.clone(),
        InstanceStop {
            instance_guid: k.actual.instance_guid.clone(),
        },
    ));
}

/// Decides what to start and stop, updating what is known (lost cells, pending starts).
pub fn plan(
    inner: &mut Inner,
    desired: &HashMap<String, DesiredProcess>,
    internal_url: &str,
    now: Instant,
) -> Actions {
    let mut actions = Actions::default();
    let ttl = inner.cell_ttl.unwrap_or(Duration::from_secs(CELL_TTL_SECS));
    let lost: Vec<String> = inner
        .cells
        .iter()
        .filter(|(_, c)| now.duration_since(c.at) >= ttl)
        .map(|(id, _)| id.clone())
        .collect();
    for id in &lost {
        // A drained cell that exited last said it was evacuating with nothing left: no alarm.
        let drained = inner.cells.remove(id).is_some_and(|c| {
            c.state.evacuating && c.state.instances_per_app.values().all(|n| *n == 0)
        });
        if drained {
            tracing::info!(cell = %id, "cell gone after evacuating");
        } else {
            tracing::warn!(cell = %id, "cell lost: its instances will run elsewhere");
        }
    }
    inner.instances.retain(|_, k| {
        let expired = k.pending && now.duration_since(k.at) >= PENDING_TIMEOUT;
        !lost.contains(&k.actual.cell_id) && !expired
    });
    let live: std::collections::HashSet<String> = inner.cells.keys().cloned().collect();
    inner
        .instances
        .retain(|_, k| k.pending || live.contains(&k.actual.cell_id));
    inner.metrics.retain(|g, _| inner.instances.contains_key(g));

    // Instances nobody wants: their process is not desired, or their index is past the count.
    let unwanted: Vec<String> = inner
        .instances
        .iter()
        .filter(|(_, k)| {
            desired
                .get(&k.actual.process_guid)
                .is_none_or(|p| k.actual.index >= p.instances)
        })
        .map(|(g, _)| g.clone())
        .collect();
    for g in unwanted {
        if let Some(k) = inner.instances.get_mut(&g) {
            stop(&mut actions, k, now);
        }
    }
    inner.unplaceable.retain(|p, _| desired.contains_key(p));
    inner
        .crashes
        .retain(|(p, i), _| desired.get(p).is_some_and(|d| *i < d.instances));

    // One view of the cells for the whole pass, so what one process takes is not offered to
    // the next.
    let mut candidates: Vec<Candidate> = inner
        .cells
        .values()
        .map(|c| Candidate {
            state: c.state.clone(),
            same_process: 0,
        })
        .collect();
    candidates.sort_by(|a, b| a.state.cell_id.cmp(&b.state.cell_id));
    let mut processes: Vec<&DesiredProcess> = desired.values().collect();
    processes.sort_by(|a, b| a.guid.cmp(&b.guid));
    for p in processes {
        for c in candidates.iter_mut() {
            c.same_process = inner
                .instances
                .values()
                .filter(|k| k.actual.process_guid == p.guid && k.actual.cell_id == c.state.cell_id)
                .count() as u64;
        }
        converge_process(inner, &mut candidates, p, internal_url, now, &mut actions);
    }
    actions
}

fn converge_process(
    inner: &mut Inner,
    candidates: &mut [Candidate],
    p: &DesiredProcess,
    internal_url: &str,
    now: Instant,
    actions: &mut Actions,
) {
    let need = Need {
        stack: if p.image.is_some() { "" } else { &p.stack },
        memory_mb: p.memory_mb,
        disk_mb: p.disk_mb,
    };
    let mut unplaceable = None;
    for index in 0..p.instances {
        let group: Vec<String> = inner
            .instances
            .iter()
            .filter(|(_, k)| {
                k.actual.process_guid == p.guid && k.actual.index == index && k.stopping.is_none()
            })
            .map(|(g, _)| g.clone())
            .collect();
        let (current, stale): (Vec<String>, Vec<String>) = group.into_iter().partition(|g| {
            inner
                .instances
                .get(g)
                .is_some_and(|k| is_current(k, p, inner))
        });
        let running = |g: &String| {
            inner
                .instances
                .get(g)
                .is_some_and(|k| k.actual.state == InstanceState::Running && !k.pending)
        };
        if current.is_empty() {
            let key = (p.guid.clone(), index);
            if inner.crashes.get(&key).is_some_and(|c| !c.restart_due(now)) {
                continue;
            }
            let command = match (&p.command, &p.image) {
                (_, Some((_, Err(why)))) | (Err(why), None) => {
                    unplaceable = Some(why.clone());
                    continue;
                }
                (Ok(c), _) => c.clone(),
                (Err(_), Some((_, Ok(image)))) => image.command.join(" "),
            };
            match placement::place(candidates, &need) {
                Ok(i) => {
                    placement::reserve(&mut candidates[i], &need);
                    let cell_id = candidates[i].state.cell_id.clone();
                    let start = start_message(p, index, command, internal_url);
                    inner.instances.insert(
                        start.instance_guid.clone(),
                        pending_known(p, index, &cell_id, &start.instance_guid),
                    );
                    actions.starts.push((cell_id, start));
                }
                Err(e) => unplaceable = Some(e.to_string()),
            }
            continue;
        }
        let mut current = current;
        // The one to keep: a RUNNING one first, then the oldest.
        current.sort_by_key(|g| {
            let k = &inner.instances[g];
            (k.actual.state != InstanceState::Running, k.actual.since_ns)
        });
        let kept_running = running(&current[0]);
        if kept_running {
            let kept = &inner.instances[&current[0]];
            let healthy_for = Duration::from_nanos(now_ns().saturating_sub(kept.actual.since_ns));
            if healthy_for >= backoff::RESET_AFTER {
                inner.crashes.remove(&(p.guid.clone(), index));
            }
            for g in stale.iter().chain(current.iter().skip(1)) {
                if let Some(k) = inner.instances.get_mut(g) {
                    stop(actions, k, now);
                }
            }
        }
    }
    match unplaceable {
        Some(why) => {
            inner.unplaceable.insert(p.guid.clone(), why);
        }
        None => {
            inner.unplaceable.remove(&p.guid);
        }
    }
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn pending_known(p: &DesiredProcess, index: u32, cell_id: &str, instance: &str) -> Known {
    Known {
        actual: ActualInstance {
            app_guid: p.app_guid.clone(),
            process_guid: p.guid.clone(),
            process_type: p.kind.clone(),
            index,
            instance_guid: instance.to_string(),
            cell_id: cell_id.to_string(),
            state: InstanceState::Starting,
            host: String::new(),
            port: 0,
            since_ns: now_ns(),
            stack_digest: String::new(),
        },
        version: Some(p.version.clone()),
        pending: true,
        at: Instant::now(),
        stopping: None,
    }
}

fn start_message(
    p: &DesiredProcess,
    index: u32,
    command: String,
    internal_url: &str,
) -> InstanceStart {
    let kind = match p.health_check.as_str() {
        "http" => HealthCheckType::Http,
        "process" => HealthCheckType::Process,
        _ => HealthCheckType::Port,
    };
    InstanceStart {
        app_guid: p.app_guid.clone(),
        app_name: p.app_name.clone(),
        space_guid: p.space_guid.clone(),
        process_guid: p.guid.clone(),
        process_type: p.kind.clone(),
        index,
        instance_guid: new_guid(),
        droplet_guid: p.droplet_guid.clone(),
        // An image droplet is fetched as its image (`stack_image`), not as a droplet.
        droplet_url: match p.image {
            Some(_) => String::new(),
            None => format!(
                "{internal_url}/internal/v1/droplets/{}/download",
                p.droplet_guid
            ),
        },
        droplet_sha256: match p.image {
            Some(_) => String::new(),
            None => p.droplet_sha256.clone(),
        },
        stack: p.stack.clone(),
        memory_mb: p.memory_mb,
        disk_mb: p.disk_mb,
        start_command: command,
        env: p.env.clone(),
        health_check: HealthCheck {
            kind,
            endpoint: p.health_check_endpoint.clone(),
            timeout_secs: p.health_check_timeout,
            invocation_timeout_secs: p.health_check_invocation_timeout,
        },
        routes: p.routes.clone(),
        stack_image: p
            .image
            .as_ref()
            .map(|(digest, _)| digest)
            .or(p.stack_image.as_ref())
            .map(|digest| StackImageRef {
                digest: digest.clone(),
                url: format!("{internal_url}/internal/v1/images/{digest}/archive"),
            }),
        image: p
            .image
            .as_ref()
            .and_then(|(_, process)| process.as_ref().ok().cloned()),
    }
}
