//! Cells: the executors that run app instances, and what they say and are told on the bus.
//!
//! A cell advertises a [`CellState`] on [`CELL_ADVERTISE`] every [`ADVERTISE_INTERVAL_SECS`]
//! and at once when it changes (like Diego's cell state and the DEA's `dea.advertise`); a
//! controller forgets a cell not heard from in [`CELL_TTL_SECS`]. The controller places an
//! instance by publishing an [`InstanceStart`] on [`start_subject`]`(cell_id)` and ends one
//! with an [`InstanceStop`] on [`stop_subject`]`(cell_id)`. The cell reports every change of
//! an instance's state ([`InstanceStateChange`]) on [`INSTANCE_STATE`], and every
//! [`INSTANCES_INTERVAL_SECS`] the full list of what it runs ([`CellInstances`]) on
//! [`CELL_INSTANCES`], so a controller can converge desired and actual state after lost
//! messages. App output and lifecycle lines go to [`app_log`]`(app_guid)` ([`AppLogLine`], or
//! an array of them: read with [`decode_app_log`]),
//! usage to [`INSTANCE_METRICS`] ([`InstanceMetrics`]). Restarting crashed instances is the
//! controller's job, not the cell's.
//!
//! Evacuation: a cell told to drain ([`CellDrain`] on [`drain_subject`]`(cell_id)`, or its
//! process sent SIGTERM) advertises `evacuating: true` at once and keeps its instances running
//! and routed; the controller starts each elsewhere and stops it on the draining cell once
//! the replacement is RUNNING. When the cell has nothing left (or after its evacuation
//! timeout, stopping what remains) it exits.
//!
//! Exec (`kiln ssh -c`): the controller asks the cell of an instance to run a command in the
//! instance's container with a NATS request ([`InstanceExec`] on [`exec_subject`]`(cell_id)`);
//! the cell answers on the request's reply subject with an [`ExecResult`] once the command
//! ended or was killed at its timeout.
//!
//! Sessions (`kiln ssh` without `-c`): an [`InstanceExec`] naming a `session` is answered as
//! soon as the command started (an empty [`ExecResult`], or one with the `error`); then its
//! stdin comes as raw bytes on [`session_subject`]`(id, "in")` (an empty message closes it),
//! `kill` ends it, and `ping` (every [`SESSION_PING_SECS`]) keeps it alive: without one for
//! [`SESSION_IDLE_SECS`] the cell kills it. The cell publishes its stdout and stderr as raw
//! bytes on `out` and `err` and, once it ended, an [`ExecResult`] (exit code or error, no
//! output) on `exit`, all in order on the subjects under [`session_from_cell`]`(id)`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Subject of cell advertisements ([`CellState`]).
pub const CELL_ADVERTISE: &str = "kiln.cell.advertise";
/// How often a cell advertises itself (and also at once on every change).
pub const ADVERTISE_INTERVAL_SECS: u64 = 2;
/// After this long without an advertisement, a cell is gone and its instances lost.
pub const CELL_TTL_SECS: u64 = 10;
/// Subject of instance state changes ([`InstanceStateChange`]).
pub const INSTANCE_STATE: &str = "kiln.instance.state";
/// Subject of the periodic full list of a cell's instances ([`CellInstances`]).
pub const CELL_INSTANCES: &str = "kiln.cell.instances";
/// How often a cell lists its instances.
pub const INSTANCES_INTERVAL_SECS: u64 = 5;
/// Subject of instance usage reports ([`InstanceMetrics`]).
pub const INSTANCE_METRICS: &str = "kiln.instance.metrics";
/// Subject filter for every app's log lines.
pub const APP_LOG_ALL: &str = "kiln.logs.app.*";
/// The `source` of lifecycle lines a cell writes to an app's log.
pub const CELL_SOURCE: &str = "CELL";

/// Where the controller sends [`InstanceStart`]s for cell `cell_id`.
pub fn start_subject(cell_id: &str) -> String {
    format!("kiln.cell.{cell_id}.start")
}

/// Where the controller sends [`InstanceStop`]s for cell `cell_id`.
pub fn stop_subject(cell_id: &str) -> String {
    format!("kiln.cell.{cell_id}.stop")
}

/// Where the controller tells cell `cell_id` to drain ([`CellDrain`]).
pub fn drain_subject(cell_id: &str) -> String {
    format!("kiln.cell.{cell_id}.drain")
}

/// Where the controller asks cell `cell_id` to run a command in an instance's container
/// ([`InstanceExec`], a request answered with an [`ExecResult`]).
pub fn exec_subject(cell_id: &str) -> String {
    format!("kiln.cell.{cell_id}.exec")
}

/// Subject `part` (`in`, `kill`, `ping`) of what the controller sends to session `id`.
pub fn session_subject(id: &str, part: &str) -> String {
    format!("kiln.session.{id}.to_cell.{part}")
}

/// The subjects (`.out`, `.err`, `.exit`) of what the cell sends back for session `id`.
pub fn session_from_cell(id: &str) -> String {
    format!("kiln.session.{id}.from_cell")
}

/// How often the controller pings a session it relays.
pub const SESSION_PING_SECS: u64 = 5;
/// A session nobody pinged for this long is killed by its cell.
pub const SESSION_IDLE_SECS: u64 = 30;
/// The longest a session may last, seconds.
pub const SESSION_MAX_SECS: u64 = 8 * 3600;

/// Reads a message of an app's log subject: one [`AppLogLine`], or a JSON array of them (the
/// router sends an app's lines of a few milliseconds together).
pub fn decode_app_log(subject: &str, body: &[u8]) -> Result<Vec<AppLogLine>, crate::DecodeError> {
    if body.trim_ascii_start().starts_with(b"[") {
        crate::decode(subject, body)
    } else {
        crate::decode(subject, body).map(|line| vec![line])
    }
}

/// The subject of app `app_guid`'s log lines.
pub fn app_log(app_guid: &str) -> String {
    format!("kiln.logs.app.{app_guid}")
}

/// The log source of an app instance's output: `APP/PROC/WEB/0`.
pub fn app_source(process_type: &str, index: u32) -> String {
    format!("APP/PROC/{}/{index}", process_type.to_uppercase())
}

/// A cell says it is alive and what room it has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CellState {
    /// The cell, unique on the bus (also in its command subjects).
    pub cell_id: String,
    /// Its availability zone; placement spreads instances across zones.
    pub zone: String,
    /// Stacks it can run droplets of.
    pub stacks: Vec<String>,
    /// Memory it offers in all, MiB.
    pub total_memory_mb: u64,
    /// Memory not reserved by instances, MiB.
    pub available_memory_mb: u64,
    /// Disk it offers in all, MiB.
    pub total_disk_mb: u64,
    /// Disk not reserved by instances, MiB.
    pub available_disk_mb: u64,
    /// Containers it may run in all.
    pub total_containers: u64,
    /// Containers it may still start.
    pub available_containers: u64,
    /// Instances it runs or starts, per app guid (the DEA's `app_id_to_count`).
    #[serde(default)]
    pub instances_per_app: BTreeMap<String, u64>,
    /// Instances still starting (Diego's `starting_container_count`).
    #[serde(default)]
    pub starting: u64,
    /// The cell is draining: place nothing new on it.
    #[serde(default)]
    pub evacuating: bool,
}

/// How a cell decides an instance is healthy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthCheckType {
    /// A TCP connection to the app's port succeeds (the default).
    #[default]
    Port,
    /// A GET of `endpoint` on the app's port answers 200.
    Http,
    /// The process is alive.
    Process,
}

/// The health check of a process, as the app's manifest gives it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    /// What is checked.
    #[serde(rename = "type", default)]
    pub kind: HealthCheckType,
    /// The path of an `http` check (default `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Seconds the instance has to become healthy after start (default: the cell's, 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// Seconds one probe may take (default: the cell's, 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invocation_timeout_secs: Option<u64>,
}

/// Start one instance of a process on the addressed cell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceStart {
    /// The app.
    pub app_guid: String,
    /// Its name (for `VCAP_APPLICATION`).
    pub app_name: String,
    /// Its space (for `VCAP_APPLICATION`).
    #[serde(default)]
    pub space_guid: String,
    /// The process.
    pub process_guid: String,
    /// Its type: `web`, `worker`, ...
    pub process_type: String,
    /// The instance's index among the process's instances.
    pub index: u32,
    /// The instance, unique: chosen by the controller, used to stop it.
    pub instance_guid: String,
    /// The droplet to run.
    pub droplet_guid: String,
    /// Where the cell GETs the droplet (internal credential required).
    pub droplet_url: String,
    /// sha256 of the droplet, hex: what the download is checked against and cached by.
    pub droplet_sha256: String,
    /// The stack the droplet was staged on.
    pub stack: String,
    /// Memory limit, MiB.
    pub memory_mb: u64,
    /// Disk limit, MiB.
    pub disk_mb: u64,
    /// The command, run through the droplet's launcher.
    pub start_command: String,
    /// The app's environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// How the cell decides it is healthy.
    #[serde(default)]
    pub health_check: HealthCheck,
    /// Routes to register once healthy (`app.example.com`, `app.example.com/api`).
    #[serde(default)]
    pub routes: Vec<String>,
    /// The image an operator set for the stack; None: the cell's own copy of the stack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack_image: Option<crate::StackImageRef>,
    /// Set for an image droplet (a Dockerfile build or a pushed OCI image): the instance runs
    /// on the image's own filesystem, which `stack_image` names (fetched like a stack image),
    /// with this process instead of a buildpack droplet and its launcher; `droplet_url` and
    /// `droplet_sha256` are then empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageProcess>,
}

/// How an image droplet's instance runs: from the image's config, as the controller resolved
/// it with the process's own command.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageProcess {
    /// The argv: the image's `ENTRYPOINT` + `CMD`, or `["/bin/sh", "-c", command]` when the
    /// process has a command of its own.
    pub command: Vec<String>,
    /// The image's `USER` (a name or `uid[:gid]`); empty: root (root inside the container's
    /// user namespace only).
    #[serde(default)]
    pub user: String,
    /// The image's `WORKDIR`; empty: `/`.
    #[serde(default)]
    pub working_dir: String,
    /// The image's `ENV`, `KEY=VALUE`; the app's and the instance's variables come after.
    #[serde(default)]
    pub env: Vec<String>,
    /// The port the app listens on inside the container, and `PORT`: the image's first
    /// exposed TCP port, else 8080.
    pub port: u16,
}

/// Stop an instance (and unregister its routes first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceStop {
    /// The instance.
    pub instance_guid: String,
}

/// Drain the addressed cell: advertise it evacuating (nothing new is placed on it), keep its
/// instances running and routed until the controller has started each elsewhere and stopped
/// it here, or until the cell's evacuation timeout (then it stops what remains), and exit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CellDrain {}

/// How long a command may run when the request gives no timeout, seconds.
pub const EXEC_DEFAULT_TIMEOUT_SECS: u64 = 60;
/// The longest a command may run, seconds (longer requests are cut to this).
pub const EXEC_MAX_TIMEOUT_SECS: u64 = 600;
/// How much of each of a command's stdout and stderr comes back, bytes (the rest is dropped
/// and the result says `truncated`).
pub const EXEC_OUTPUT_LIMIT: usize = 1 << 20;

/// Run a command in an instance's container on the addressed cell (a NATS request; the
/// answer is an [`ExecResult`]). The command runs as the app's user (vcap) in its working
/// directory (`/home/vcap/app`) with the app's environment and the instance's (`PORT`,
/// `CF_INSTANCE_*`, `VCAP_APPLICATION`, ...), its stdin empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceExec {
    /// The instance (its container).
    pub instance_guid: String,
    /// The argv, run through no shell: `["sh", "-c", "echo $PORT"]` for one. A name without
    /// `/` is looked up in the `PATH`.
    pub command: Vec<String>,
    /// Seconds before the command (and whatever it started) is killed; 0 means
    /// [`EXEC_DEFAULT_TIMEOUT_SECS`], more than [`EXEC_MAX_TIMEOUT_SECS`] is cut to it.
    #[serde(default)]
    pub timeout_secs: u64,
    /// A session id: stdin and output stream over the bus (see the module doc) and the
    /// answer comes once the command started. `None`: run to the end, no stdin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
}

/// What became of an [`InstanceExec`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecResult {
    /// The command's exit code (128 + the signal when killed by one); `None` when it could
    /// not be started (see `error`) or was killed at its timeout.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// Its stdout, invalid UTF-8 replaced, at most [`EXEC_OUTPUT_LIMIT`] bytes of it.
    #[serde(default)]
    pub stdout: String,
    /// Its stderr, likewise.
    #[serde(default)]
    pub stderr: String,
    /// Some output was dropped: over [`EXEC_OUTPUT_LIMIT`], or to fit the answer in the
    /// bus's largest message.
    #[serde(default)]
    pub truncated: bool,
    /// The command ran past its timeout and was killed (with everything it started).
    #[serde(default)]
    pub timed_out: bool,
    /// Why the command did not run or did not finish ("instance i-1 is not running on cell
    /// c1"); `None` when it ran to its end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The lifecycle state of an instance, as Cloud Foundry shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum InstanceState {
    /// Being set up or not yet healthy.
    Starting,
    /// Healthy, its routes registered.
    Running,
    /// Ended on its own, by the OOM killer or by failing its health check; its container is
    /// gone. The controller decides about a restart.
    Crashed,
    /// Stopped as asked; its container is gone. Also the answer to a start refused by a cell
    /// that is evacuating or shutting down: nothing is wrong with the instance, and the
    /// controller places it elsewhere (a refusal for any other reason is CRASHED
    /// `start_failed`).
    Stopped,
}

/// Why an instance crashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CrashReason {
    /// The process exited (see the exit status).
    Exit,
    /// The kernel's OOM killer ended it.
    Oom,
    /// It did not become healthy within its start timeout, or stopped being healthy.
    HealthCheck,
    /// It could not be started at all (droplet download or checksum, container, unknown
    /// stack); the description says why.
    StartFailed,
}

/// The where and what of an instance, shared by state changes and cell listings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActualInstance {
    /// The app.
    pub app_guid: String,
    /// The process.
    pub process_guid: String,
    /// The process type.
    pub process_type: String,
    /// Its index.
    pub index: u32,
    /// The instance.
    pub instance_guid: String,
    /// The cell it is on.
    pub cell_id: String,
    /// Its state now.
    pub state: InstanceState,
    /// The host address of its port (the cell's advertised IP), once known.
    #[serde(default)]
    pub host: String,
    /// The host port forwarded to the app's port 8080 (0 before the container exists).
    #[serde(default)]
    pub port: u16,
    /// When it entered this state, ns since the Unix epoch (u64: flattened into
    /// [`InstanceStateChange`], where serde cannot carry u128).
    pub since_ns: u64,
    /// The manifest digest of the root filesystem its container runs on, once it exists.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stack_digest: String,
}

/// An instance changed state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceStateChange {
    /// The instance as it is now.
    #[serde(flatten)]
    pub instance: ActualInstance,
    /// For CRASHED: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crash_reason: Option<CrashReason>,
    /// For CRASHED by exit or OOM: the exit status (128 + signal when killed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_status: Option<i32>,
    /// For CRASHED and STOPPED: a sentence for people ("APP/PROC/WEB/0 exited with status 3").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// Every instance a cell has now (STARTING and RUNNING ones).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CellInstances {
    /// The cell.
    pub cell_id: String,
    /// Its instances.
    pub instances: Vec<ActualInstance>,
}

/// One line of an app's log: output of an instance or a lifecycle line of its cell.
/// Same shape as the controller's app log lines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppLogLine {
    /// The app.
    pub app_guid: String,
    /// `APP/PROC/WEB/0` ([`app_source`]) or `CELL` ([`CELL_SOURCE`]).
    pub source: String,
    /// `OUT` or `ERR`.
    pub stream: String,
    /// The text, without its newline.
    pub message: String,
    /// Nanoseconds since the Unix epoch.
    pub timestamp_ns: u128,
}

/// What an instance uses, from its container's cgroups and disk quota.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceMetrics {
    /// The app.
    pub app_guid: String,
    /// The process type.
    pub process_type: String,
    /// The instance's index.
    pub index: u32,
    /// The instance.
    pub instance_guid: String,
    /// CPU used since the previous report, in percent of one core.
    pub cpu_percent: f64,
    /// Memory in use, bytes.
    pub memory_bytes: u64,
    /// Memory limit, bytes.
    pub memory_quota_bytes: u64,
    /// Disk written, bytes.
    pub disk_bytes: u64,
    /// Disk limit, bytes.
    pub disk_quota_bytes: u64,
    /// When measured, ns since the Unix epoch.
    pub timestamp_ns: u128,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{decode, encode};

    #[test]
    fn subjects_name_the_cell_and_the_app() {
        assert_eq!(start_subject("cell-1"), "kiln.cell.cell-1.start");
        assert_eq!(stop_subject("cell-1"), "kiln.cell.cell-1.stop");
        assert_eq!(drain_subject("cell-1"), "kiln.cell.cell-1.drain");
        assert_eq!(decode::<CellDrain>("s", b"{}").unwrap(), CellDrain {});
        assert_eq!(exec_subject("cell-1"), "kiln.cell.cell-1.exec");
        assert_eq!(app_log("a1"), "kiln.logs.app.a1");
        assert_eq!(app_source("web", 0), "APP/PROC/WEB/0");
    }

    #[test]
    fn starts_round_trip_and_default_their_health_check() {
        let body = br#"{"app_guid":"a","app_name":"n","process_guid":"p","process_type":"web",
            "index":1,"instance_guid":"i","droplet_guid":"d","droplet_url":"http://cc/x",
            "droplet_sha256":"00","stack":"tiny","memory_mb":64,"disk_mb":128,
            "start_command":"httpd -f"}"#;
        let start: InstanceStart = decode("kiln.cell.c.start", body).unwrap();
        assert_eq!(start.health_check.kind, HealthCheckType::Port);
        assert!(start.routes.is_empty() && start.env.is_empty());
        let mut http = start.clone();
        http.health_check = HealthCheck {
            kind: HealthCheckType::Http,
            endpoint: Some("/health".into()),
            timeout_secs: Some(5),
            invocation_timeout_secs: None,
        };
        let text = String::from_utf8(encode(&http)).unwrap();
        assert!(text.contains(r#""health_check":{"type":"http""#), "{text}");
        assert_eq!(decode::<InstanceStart>("s", text.as_bytes()).unwrap(), http);
    }

    #[test]
    fn execs_default_their_timeout_and_results_round_trip() {
        let body = br#"{"instance_guid":"i","command":["sh","-c","echo $PORT"]}"#;
        let exec: InstanceExec = decode("kiln.cell.c.exec", body).unwrap();
        assert_eq!(exec.timeout_secs, 0);
        assert_eq!(exec.command, ["sh", "-c", "echo $PORT"]);
        let done = ExecResult {
            exit_code: Some(3),
            stdout: "8080\n".into(),
            stderr: "err\n".into(),
            ..ExecResult::default()
        };
        let text = String::from_utf8(encode(&done)).unwrap();
        assert!(!text.contains("error"), "{text}");
        assert_eq!(decode::<ExecResult>("s", text.as_bytes()).unwrap(), done);
        let refused: ExecResult =
            decode("s", br#"{"exit_code":null,"error":"not running"}"#).unwrap();
        assert_eq!(refused.error.as_deref(), Some("not running"));
        assert!(!refused.truncated && !refused.timed_out && refused.exit_code.is_none());
    }

    #[test]
    fn state_changes_are_flat_with_uppercase_states() {
        let change = InstanceStateChange {
            instance: ActualInstance {
                app_guid: "a".into(),
                process_guid: "p".into(),
                process_type: "web".into(),
                index: 0,
                instance_guid: "i".into(),
                cell_id: "c".into(),
                state: InstanceState::Crashed,
                host: "10.0.0.1".into(),
                port: 61001,
                since_ns: 1,
                stack_digest: String::new(),
            },
            crash_reason: Some(CrashReason::HealthCheck),
            exit_status: None,
            description: Some("failed health check".into()),
        };
        let text = String::from_utf8(encode(&change)).unwrap();
        assert!(text.contains(r#""state":"CRASHED""#), "{text}");
        assert!(text.contains(r#""crash_reason":"health_check""#), "{text}");
        assert!(!text.contains("exit_status"), "{text}");
        assert_eq!(
            decode::<InstanceStateChange>(INSTANCE_STATE, text.as_bytes()).unwrap(),
            change
        );
        let listing = CellInstances {
            cell_id: "c".into(),
            instances: vec![change.instance.clone()],
        };
        assert_eq!(
            decode::<CellInstances>(CELL_INSTANCES, &encode(&listing)).unwrap(),
            listing
        );
    }

    #[test]
    fn cell_states_and_metrics_round_trip() {
        let state = CellState {
            cell_id: "c".into(),
            zone: "z1".into(),
            stacks: vec!["tiny".into()],
            total_memory_mb: 1024,
            available_memory_mb: 960,
            total_disk_mb: 4096,
            available_disk_mb: 3968,
            total_containers: 8,
            available_containers: 7,
            instances_per_app: [("a".to_string(), 1)].into(),
            starting: 0,
            evacuating: false,
        };
        assert_eq!(
            decode::<CellState>(CELL_ADVERTISE, &encode(&state)).unwrap(),
            state
        );
        let m = InstanceMetrics {
            app_guid: "a".into(),
            process_type: "web".into(),
            index: 0,
            instance_guid: "i".into(),
            cpu_percent: 1.5,
            memory_bytes: 1 << 20,
            memory_quota_bytes: 64 << 20,
            disk_bytes: 4096,
            disk_quota_bytes: 128 << 20,
            timestamp_ns: 2,
        };
        assert_eq!(
            decode::<InstanceMetrics>(INSTANCE_METRICS, &encode(&m)).unwrap(),
            m
        );
        let line = AppLogLine {
            app_guid: "a".into(),
            source: CELL_SOURCE.into(),
            stream: "OUT".into(),
            message: "Creating container".into(),
            timestamp_ns: 3,
        };
        assert_eq!(decode::<AppLogLine>("s", &encode(&line)).unwrap(), line);
        assert_eq!(
            decode_app_log("s", &encode(&line)).unwrap(),
            std::slice::from_ref(&line)
        );
        let two = encode(&[&line, &line]);
        assert_eq!(
            decode_app_log("s", &two).unwrap(),
            [line.clone(), line.clone()]
        );
        assert!(decode_app_log("s", b" [{\"app_guid\":1}]").is_err());
    }
}
