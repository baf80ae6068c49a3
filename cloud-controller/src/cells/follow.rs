//! Listens to the cells on the bus: advertisements, instance state changes, full instance
//! listings, usage, and app log lines (into the controller's app logs).
//!
//! A crash (CRASHED not caused by a stop) counts for the back-off, gets an `API` line in the
//! app's log at once ("Process has crashed with type: ...") and an `audit.app.process.crash`
//! event, written by a task of its own so that the database never holds up the bus. While
//! the controller's own bus connection is down, silence proves nothing: no cell is lost and
//! no pending start times out for it.

use std::time::{Duration, Instant};

use async_nats::connection::State as BusState;
use futures::StreamExt;
use kiln_bus::cell::{
    self, ActualInstance, CellInstances, CellState, CrashReason, InstanceMetrics, InstanceState,
    InstanceStateChange,
};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::{backoff, HeardCell, Inner, Known};
use crate::audit;
use crate::logs::AppLogLine;
use crate::state::AppState;

/// A start not reported by its cell within this long is given up (and placed again).
pub const PENDING_TIMEOUT: Duration = Duration::from_secs(30);

/// How long an ended instance is remembered: longer than a cell's listing takes to come.
const ENDED_MEMORY: Duration = Duration::from_secs(3 * cell::INSTANCES_INTERVAL_SECS);

/// Crashes waiting for their audit event; past this many (a flood), events are dropped.
const CRASH_QUEUE: usize = 1024;

/// The source of the controller's own lines in an app's log.
pub const API_SOURCE: &str = "API";

/// A crash to tell people about.
#[derive(Debug, Clone, PartialEq)]
pub struct CrashReport {
    /// The instance as the cell last reported it (CRASHED, `since_ns` when).
    pub instance: ActualInstance,
    /// Why, as the cell says.
    pub reason: Option<CrashReason>,
    /// The exit status, when it exited (137 when the OOM killer ended it).
    pub exit_status: Option<i32>,
    /// The cell's sentence ("APP/PROC/WEB/0 exited with status 3").
    pub description: String,
    /// Crashes of this index so far, this one included.
    pub count: u32,
    /// When the next restart comes, after this crash; `None`: never.
    pub wait: Option<Duration>,
}

impl CrashReport {
    fn restart(&self) -> String {
        match self.wait {
            Some(w) if w.is_zero() => "restarting now".to_string(),
            Some(w) => format!("restarting in {} s", w.as_secs()),
            None => format!(
                "not restarted again after {} crashes",
                backoff::GIVE_UP_AFTER
            ),
        }
    }

    /// The `API` line of the app's log.
    pub fn log_line(&self) -> AppLogLine {
        let i = &self.instance;
        AppLogLine {
            app_guid: i.app_guid.clone(),
            source: API_SOURCE.to_string(),
            stream: "OUT".to_string(),
            message: format!(
                "Process has crashed with type: {}, index {}, instance {}, reason: CRASHED ({}), exit_description: {}, crash_count: {} ({})",
                i.process_type,
                i.index,
                i.instance_guid,
                reason_name(self.reason),
                self.description,
                self.count,
                self.restart(),
            ),
            timestamp_ns: u128::from(i.since_ns),
        }
    }

    /// The data of its `audit.app.process.crash` event.
    pub fn event_data(&self) -> Value {
        let i = &self.instance;
        json!({
            "process_type": i.process_type,
            "index": i.index,
            "instance": i.instance_guid,
            "cell_id": i.cell_id,
            "reason": "CRASHED",
            "crash_reason": reason_name(self.reason),
            "exit_status": self.exit_status,
            "exit_description": self.description,
            "crash_count": self.count,
            "crash_timestamp": i.since_ns,
            "next_restart_in_secs": self.wait.map(|w| w.as_secs()),
        })
    }
}

/// `exit`, `oom`, `health_check`, `start_failed` (as on the bus), `unknown` when not given.
fn reason_name(reason: Option<CrashReason>) -> String {
    reason
        .and_then(|r| serde_json::to_value(r).ok())
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| "unknown".to_string())
}

/// What a state change means for the rest of the controller.
#[derive(Debug, Default)]
struct Changed {
    /// Convergence should run now (an instance ended).
    wake: bool,
    /// A crash to report.
    crash: Option<CrashReport>,
}

/// Follows the cell subjects until the bus connection ends.
pub async fn run(s: AppState) -> Result<(), async_nats::SubscribeError> {
    let mut adverts = s.nats.subscribe(cell::CELL_ADVERTISE).await?;
    let mut states = s.nats.subscribe(cell::INSTANCE_STATE).await?;
    let mut listings = s.nats.subscribe(cell::CELL_INSTANCES).await?;
    let mut metrics = s.nats.subscribe(cell::INSTANCE_METRICS).await?;
    let mut logs = s.nats.subscribe(cell::APP_LOG_ALL).await?;
    // Ends when `crashes` is dropped, that is with this function.
    let (crashes, queue) = mpsc::channel(CRASH_QUEUE);
    tokio::spawn(record_crashes(s.clone(), queue));
    let mut bus_check = tokio::time::interval(Duration::from_secs(1));
    bus_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            Some(m) = states.next() => match kiln_bus::decode::<InstanceStateChange>(&m.subject, &m.payload) {
                Ok(c) => {
                    let changed = state_changed(&mut s.cells.lock(), c, Instant::now());
                    if let Some(crash) = changed.crash {
                        s.logs.push(crash.log_line());
                        if crashes.try_send(crash).is_err() {
                            tracing::warn!("too many crashes at once: an audit event is left out");
                        }
                    }
                    if changed.wake {
                        s.cells.wake.notify_one();
                    }
                }
                Err(e) => tracing::warn!(error = %e, "ignoring a message"),
            },
            Some(m) = adverts.next() => match kiln_bus::decode::<CellState>(&m.subject, &m.payload) {
                Ok(c) => {
                    // A new cell, or one that began (or ended) evacuating: converge now, so
                    // an evacuating cell's instances are started elsewhere at once.
                    let wake = {
                        let mut inner = s.cells.lock();
                        let id = c.cell_id.clone();
                        let evacuating = c.evacuating;
                        inner
                            .cells
                            .insert(id, HeardCell { state: c, at: Instant::now() })
                            .is_none_or(|before| before.state.evacuating != evacuating)
                    };
                    if wake {
                        s.cells.wake.notify_one();
                    }
                }
                Err(e) => tracing::warn!(error = %e, "ignoring a message"),
            },
            Some(m) = listings.next() => match kiln_bus::decode::<CellInstances>(&m.subject, &m.payload) {
                Ok(l) => listed(&mut s.cells.lock(), l, Instant::now()),
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
            Some(m) = logs.next() => match cell::decode_app_log(&m.subject, &m.payload) {
                Ok(lines) => {
                    for l in lines {
                        s.logs.push(AppLogLine {
                            app_guid: l.app_guid,
                            source: l.source,
                            stream: l.stream,
                            message: l.message,
                            timestamp_ns: l.timestamp_ns,
                        });
                    }
                }
                Err(e) => tracing::warn!(error = %e, "ignoring a log message"),
            },
            _ = bus_check.tick() => {
                if s.nats.connection_state() != BusState::Connected {
                    bus_away(&mut s.cells.lock(), Instant::now());
                }
            }
            else => return Ok(()),
        }
    }
}

/// Records each crash as an `audit.app.process.crash` event (actor: system `cell`), in order.
async fn record_crashes(s: AppState, mut queue: mpsc::Receiver<CrashReport>) {
    while let Some(crash) = queue.recv().await {
        let app_guid = crash.instance.app_guid.as_str();
        let app: Result<Option<(String, String)>, sqlx::Error> =
            sqlx::query_as("SELECT name, space_guid FROM apps WHERE guid = $1")
                .bind(app_guid)
                .fetch_optional(&s.db)
                .await;
        match app {
            Ok(Some((name, space))) => {
                audit::record(
                    &s,
                    "audit.app.process.crash",
                    audit::Actor::System("cell"),
                    audit::app(app_guid, &name),
                    Some(&space),
                    crash.event_data(),
                )
                .await
            }
            Ok(None) => tracing::debug!(app = app_guid, "a crash of a deleted app"),
            Err(e) => {
                tracing::error!(error = %e, app = app_guid, "recording a crash: finding the app")
            }
        }
    }
}

/// The controller's bus connection is down: what it cannot hear is not silence. Every cell
/// counts as just heard and every pending start as just sent (a start published now goes
/// out when the connection is back).
fn bus_away(inner: &mut Inner, now: Instant) {
    for c in inner.cells.values_mut() {
        c.at = now;
    }
    for k in inner.instances.values_mut().filter(|k| k.pending) {
        k.at = now;
    }
}

/// Records a state change.
fn state_changed(inner: &mut Inner, c: InstanceStateChange, now: Instant) -> Changed {
    let guid = c.instance.instance_guid.clone();
    match c.instance.state {
        InstanceState::Starting | InstanceState::Running => {
            if inner.ended.contains_key(&guid) {
                return Changed::default(); // late news of an instance that is gone
            }
            let version = inner.instances.get(&guid).and_then(|k| k.version.clone());
            let stopping = inner.instances.get(&guid).and_then(|k| k.stopping);
            inner.instances.insert(
                guid,
                Known {
                    actual: c.instance,
                    version,
                    pending: false,
                    at: now,
                    stopping,
                },
            );
            Changed::default()
        }
        InstanceState::Crashed => {
            let known = inner.instances.remove(&guid);
            inner.metrics.remove(&guid);
            inner.ended.insert(guid, now);
            // A crash while being stopped is the stop, not a crash.
            let crash = known.filter(|k| k.stopping.is_none()).map(|_| {
                let key = (c.instance.process_guid.clone(), c.instance.index);
                let description = c.description.unwrap_or_else(|| "crashed".into());
                let entry = inner.crashes.entry(key).or_insert(backoff::Crashes {
                    count: 0,
                    last: now,
                    description: String::new(),
                });
                entry.count += 1;
                entry.last = now;
                entry.description = description.clone();
                CrashReport {
                    instance: c.instance,
                    reason: c.crash_reason,
                    exit_status: c.exit_status,
                    description,
                    count: entry.count,
                    wait: entry.wait(),
                }
            });
            Changed { wake: true, crash }
        }
        InstanceState::Stopped => {
            inner.instances.remove(&guid);
            inner.metrics.remove(&guid);
            inner.ended.insert(guid, now);
            Changed {
                wake: true,
                crash: None,
            }
        }
    }
}

/// A cell's full listing: what it lists as STARTING or RUNNING is known (adopted if new),
/// unless its end was already reported (a listing taken just before the end); what it no
/// longer lists, and was not just asked for, is gone.
fn listed(inner: &mut Inner, l: CellInstances, now: Instant) {
    inner
        .ended
        .retain(|_, at| now.duration_since(*at) < ENDED_MEMORY);
    let live: Vec<ActualInstance> = l
        .instances
        .into_iter()
        .filter(|i| matches!(i.state, InstanceState::Starting | InstanceState::Running))
        .filter(|i| !inner.ended.contains_key(&i.instance_guid))
        .collect();
    let listed: std::collections::HashSet<&str> =
        live.iter().map(|i| i.instance_guid.as_str()).collect();
    inner.instances.retain(|guid, k| {
        k.actual.cell_id != l.cell_id
            || listed.contains(guid.as_str())
            || (k.pending && now.duration_since(k.at) < PENDING_TIMEOUT)
    });
    for actual in live {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(guid: &str, state: InstanceState) -> ActualInstance {
        ActualInstance {
            app_guid: "app".into(),
            process_guid: "proc".into(),
            process_type: "web".into(),
            index: 0,
            instance_guid: guid.into(),
            cell_id: "c1".into(),
            state,
            host: "10.0.0.1".into(),
            port: 61001,
            since_ns: 5,
            stack_digest: String::new(),
        }
    }

    fn known(guid: &str) -> Known {
        Known {
            actual: instance(guid, InstanceState::Running),
            version: Some("v1".into()),
            pending: false,
            at: Instant::now(),
            stopping: None,
        }
    }

    fn crashed(guid: &str, status: i32) -> InstanceStateChange {
        InstanceStateChange {
            instance: instance(guid, InstanceState::Crashed),
            crash_reason: Some(CrashReason::Exit),
            exit_status: Some(status),
            description: Some(format!("APP/PROC/WEB/0 exited with status {status}")),
        }
    }

    #[test]
    fn a_crash_counts_and_is_reported_with_the_next_restart() {
        let mut inner = Inner::default();
        let now = Instant::now();
        for (n, guid) in ["i1", "i2", "i3", "i4"].into_iter().enumerate() {
            inner.instances.insert(guid.into(), known(guid));
            let changed = state_changed(&mut inner, crashed(guid, 3), now);
            assert!(changed.wake);
            let crash = changed.crash.expect("a crash report");
            assert_eq!(crash.count, n as u32 + 1);
            assert_eq!(crash.exit_status, Some(3));
            let line = crash.log_line();
            assert_eq!(line.source, "API");
            assert!(
                line.message
                    .starts_with("Process has crashed with type: web, index 0"),
                "{}",
                line.message
            );
            assert!(
                line.message.contains("exited with status 3"),
                "{}",
                line.message
            );
            let data = crash.event_data();
            assert_eq!(data["crash_reason"], "exit");
            assert_eq!(data["exit_status"], 3);
            assert_eq!(data["instance"], guid);
            assert_eq!(data["crash_count"], n + 1);
        }
        let c = &inner.crashes[&("proc".to_string(), 0)];
        assert_eq!(c.count, 4);
        assert_eq!(c.wait(), Some(backoff::FIRST_WAIT));
        assert!(inner.instances.is_empty());
    }

    #[test]
    fn a_crash_during_a_stop_or_of_an_unknown_instance_is_no_crash() {
        let mut inner = Inner::default();
        let mut k = known("i1");
        k.stopping = Some(Instant::now());
        inner.instances.insert("i1".into(), k);
        let changed = state_changed(&mut inner, crashed("i1", 137), Instant::now());
        assert!(changed.wake && changed.crash.is_none());
        let changed = state_changed(&mut inner, crashed("i9", 1), Instant::now());
        assert!(changed.crash.is_none());
        assert!(inner.crashes.is_empty());
    }

    #[test]
    fn an_oom_crash_names_its_reason() {
        let mut inner = Inner::default();
        inner.instances.insert("i1".into(), known("i1"));
        let mut c = crashed("i1", 137);
        c.crash_reason = Some(CrashReason::Oom);
        let crash = state_changed(&mut inner, c, Instant::now()).crash.unwrap();
        assert_eq!(crash.event_data()["crash_reason"], "oom");
        assert!(crash.log_line().message.contains("(oom)"));
    }

    #[test]
    fn a_listing_sent_before_the_end_does_not_bring_an_instance_back() {
        let mut inner = Inner::default();
        let now = Instant::now();
        inner.instances.insert("i1".into(), known("i1"));
        state_changed(&mut inner, crashed("i1", 3), now);
        // Taken while it still ran, heard after its crash; and one with it CRASHED.
        let listing = |state| CellInstances {
            cell_id: "c1".into(),
            instances: vec![instance("i1", state)],
        };
        listed(&mut inner, listing(InstanceState::Running), now);
        assert!(inner.instances.is_empty());
        inner.ended.clear();
        listed(&mut inner, listing(InstanceState::Crashed), now);
        assert!(inner.instances.is_empty());
        // A late RUNNING of an ended instance is ignored too; a live one is adopted.
        inner.ended.insert("i1".into(), now);
        state_changed(
            &mut inner,
            InstanceStateChange {
                instance: instance("i1", InstanceState::Running),
                crash_reason: None,
                exit_status: None,
                description: None,
            },
            now,
        );
        assert!(inner.instances.is_empty());
        listed(
            &mut inner,
            listing(InstanceState::Running),
            now + ENDED_MEMORY,
        );
        assert!(inner.instances.contains_key("i1") && inner.ended.is_empty());
    }

    #[test]
    fn while_the_bus_is_away_no_cell_is_lost_and_no_start_times_out() {
        let mut inner = Inner::default();
        let long_ago = Instant::now() - Duration::from_secs(60);
        let state = CellState {
            cell_id: "c1".into(),
            zone: "z1".into(),
            stacks: vec![],
            total_memory_mb: 0,
            available_memory_mb: 0,
            total_disk_mb: 0,
            available_disk_mb: 0,
            total_containers: 0,
            available_containers: 0,
            instances_per_app: Default::default(),
            starting: 0,
            evacuating: false,
        };
        inner.cells.insert(
            "c1".into(),
            HeardCell {
                state,
                at: long_ago,
            },
        );
        let mut pending = known("i1");
        pending.pending = true;
        pending.at = long_ago;
        inner.instances.insert("i1".into(), pending);
        let now = Instant::now();
        bus_away(&mut inner, now);
        assert_eq!(inner.cells["c1"].at, now);
        assert_eq!(inner.instances["i1"].at, now);
    }
}
