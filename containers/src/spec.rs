//! What callers ask of the backend (desired state) and what it reports back (observed state).
//!
//! These types are plain data: the backend validates them, persists them with a container's
//! state, and serves them back from `info`, so they are all serde-serializable.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

/// Everything needed to create a container.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ContainerSpec {
    /// Unique name of the container on this backend: `[A-Za-z0-9_.-]`, 1 to 64 characters.
    pub handle: String,
    /// The stack image to use as the root filesystem, by name (`tiny`) or digest.
    pub stack: String,
    pub limits: Limits,
    /// `KEY=VALUE` pairs every process in the container starts with.
    pub env: Vec<String>,
    /// Host paths made visible inside the container, always read-only.
    pub bind_mounts: Vec<BindMount>,
    /// Host directories laid out like a root filesystem (`home/vcap/app/...`), stacked
    /// read-only over the stack, bottom first: a droplet unpacked once and shared by every
    /// container that runs it. Files keep their container uids on disk (like the stack) and
    /// are mounted idmapped; writes go to the container's own writable layer (copy-up).
    #[serde(default)]
    pub layers: Vec<PathBuf>,
    /// Host ports forwarded to container ports, set up at create.
    pub net_in: Vec<NetIn>,
    /// Egress allowed from the start; everything else is denied.
    pub net_out: Vec<NetOutRule>,
    /// Free-form labels kept with the container (app guid, instance index, ...).
    pub properties: BTreeMap<String, String>,
}

/// Resource limits, all enforced by the kernel.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Limits {
    /// Memory (and memory + swap) limit in bytes.
    pub memory_bytes: u64,
    /// Relative CPU weight, as cgroup `cpu.shares` (2..=262144).
    pub cpu_shares: u64,
    /// Bytes the container may write to its root filesystem.
    pub disk_bytes: u64,
    /// Maximum number of processes and threads.
    pub pids: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 256 << 20,
            cpu_shares: 1024,
            disk_bytes: 1 << 30,
            pids: 1024,
        }
    }
}

/// A read-only bind mount of a host path into the container.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BindMount {
    pub host_path: PathBuf,
    pub container_path: PathBuf,
}

/// A port forwarding: connections to `host_port` on the host reach `container_port`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct NetIn {
    /// `None` takes the next free port of the backend's range.
    pub host_port: Option<u16>,
    pub container_port: u16,
}

/// A port forwarding as set up.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
}

/// An egress allow rule, like Garden's NetOut or a Cloud Foundry security group entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NetOutRule {
    pub protocol: Protocol,
    /// Destination networks, as `a.b.c.d` or `a.b.c.d/len`. Empty means any.
    pub networks: Vec<String>,
    /// Destination port ranges (inclusive). Empty means any port.
    pub ports: Vec<(u16, u16)>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    All,
    Tcp,
    Udp,
    Icmp,
}

/// A process to run in a container.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProcessSpec {
    pub path: String,
    pub args: Vec<String>,
    /// Added to (and overriding) the container's env.
    pub env: Vec<String>,
    /// Working directory; defaults to the user's home.
    pub dir: Option<String>,
    /// A user name from the container's `/etc/passwd` or a numeric uid; defaults to `vcap`.
    pub user: Option<String>,
    pub rlimits: Vec<Rlimit>,
    /// Killed (SIGKILL) when it runs longer than this.
    pub timeout: Option<Duration>,
}

impl ProcessSpec {
    /// A process running `path` with `args` as the default user.
    pub fn new(path: impl Into<String>, args: &[&str]) -> Self {
        ProcessSpec {
            path: path.into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: Vec::new(),
            dir: None,
            user: None,
            rlimits: Vec::new(),
            timeout: None,
        }
    }

    /// The same process, run as `user`.
    pub fn user(mut self, user: &str) -> Self {
        self.user = Some(user.to_string());
        self
    }
}

/// A POSIX resource limit, e.g. `RLIMIT_NOFILE`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Rlimit {
    /// The OCI name, `RLIMIT_NOFILE`, `RLIMIT_CORE`, ...
    pub kind: String,
    pub soft: u64,
    pub hard: u64,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcessExit {
    /// The exit code, or 128 + the signal number when killed by a signal.
    pub code: i32,
    /// The kernel's OOM killer ended it.
    pub oom_killed: bool,
    /// The backend killed it because it overran its timeout.
    pub timed_out: bool,
}

/// The lifecycle state of a container.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ContainerState {
    /// Being set up; only ever seen by recovery after a crash.
    Creating,
    Active,
    /// Stopped by `stop`: no process runs, resources are still held until `destroy`.
    Stopped,
}

/// What `info` reports.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ContainerInfo {
    pub handle: String,
    pub state: ContainerState,
    pub stack: String,
    pub stack_digest: String,
    pub container_ip: Ipv4Addr,
    pub host_ip: Ipv4Addr,
    pub mapped_ports: Vec<PortMapping>,
    pub net_out: Vec<NetOutRule>,
    /// Ids of the processes started with `run` that are still running.
    pub processes: Vec<String>,
    pub properties: BTreeMap<String, String>,
    pub limits: Limits,
}

/// What `metrics` reports, read from the container's cgroups and disk quota.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct ContainerMetrics {
    pub cpu_time_ns: u64,
    pub memory_bytes: u64,
    pub memory_limit_bytes: u64,
    pub disk_bytes: u64,
    pub disk_limit_bytes: u64,
}

/// What the backend can hold in all.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Capacity {
    pub memory_bytes: u64,
    pub disk_bytes: u64,
    pub max_containers: u64,
}
