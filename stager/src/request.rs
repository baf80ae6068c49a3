//! What a staging is asked to do and what it gives back.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use kiln_containers::NetOutRule;

use crate::log::LogLine;

/// Limits of one staging. Defaults: 1 GiB memory, 4 GiB disk, 15 minutes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StagingLimits {
    /// Memory of the staging container.
    pub memory_bytes: u64,
    /// Disk the staging container may write.
    pub disk_bytes: u64,
    /// Wall time of the whole staging.
    pub timeout: Duration,
}

impl Default for StagingLimits {
    fn default() -> Self {
        StagingLimits {
            memory_bytes: 1 << 30,
            disk_bytes: 4 << 30,
            timeout: Duration::from_secs(15 * 60),
        }
    }
}

/// One staging.
#[derive(Debug, Clone)]
pub struct StagingRequest {
    /// Names the staging container (`staging-<id>`): letters, digits, `-_.`.
    pub id: String,
    /// The app: a directory, a `.zip`, or a `.tar`/`.tar.gz`/`.tgz`.
    pub app: PathBuf,
    /// The stack to stage on (what buildpacks see as `CF_STACK`).
    pub stack: String,
    /// The root filesystem of the staging container when it is not the backend's copy of
    /// `stack`: an image of the backend's stack store by digest (an operator's
    /// `stack.<name>.image`).
    pub stack_image: Option<String>,
    /// Buildpacks in order: directories, `.zip` files or built-in names. Empty: detect among
    /// the built-in buildpacks in priority order.
    pub buildpacks: Vec<String>,
    /// How `buildpacks` are used when there are some: `false`, all of them run in order (as
    /// `-b` names them); `true`, they are candidates detected in order and the first that
    /// accepts the app runs alone (as the controller's admin buildpacks are).
    pub detect: bool,
    /// Environment variables of the app, visible to buildpacks.
    pub env: Vec<(String, String)>,
    /// The cache of this app's previous staging, if any (`.tgz`).
    pub cache_in: Option<PathBuf>,
    /// Where to write the droplet (`.tgz`).
    pub droplet_out: PathBuf,
    /// Where to write the new cache (`.tgz`); none: the cache is dropped.
    pub cache_out: Option<PathBuf>,
    /// Memory, disk and time.
    pub limits: StagingLimits,
    /// Egress allowed while staging (like Cloud Foundry's staging security groups). Empty:
    /// no network.
    pub egress: Vec<NetOutRule>,
    /// A start command that overrides what buildpacks and the Procfile say (`-c`).
    pub start_command: Option<String>,
}

impl StagingRequest {
    /// A request with default limits, no egress, no cache, and detection among built-ins.
    pub fn new(
        id: &str,
        app: impl Into<PathBuf>,
        stack: &str,
        droplet_out: impl Into<PathBuf>,
    ) -> Self {
        StagingRequest {
            id: id.to_string(),
            app: app.into(),
            stack: stack.to_string(),
            stack_image: None,
            buildpacks: Vec::new(),
            detect: false,
            env: Vec::new(),
            cache_in: None,
            droplet_out: droplet_out.into(),
            cache_out: None,
            limits: StagingLimits::default(),
            egress: Vec::new(),
            start_command: None,
        }
    }
}

/// What one buildpack's detect said.
#[derive(Debug, Clone, PartialEq)]
pub struct DetectOutcome {
    /// The buildpack.
    pub buildpack: String,
    /// Whether it accepted the app.
    pub detected: bool,
    /// Its explanation (what it printed).
    pub output: Vec<String>,
}

/// A successful staging.
#[derive(Debug, Clone)]
pub struct StagingResult {
    /// The droplet file (the request's `droplet_out`).
    pub droplet: PathBuf,
    /// sha256 of the droplet file, hex.
    pub droplet_sha256: String,
    /// Size of the droplet file in bytes.
    pub droplet_size: u64,
    /// The buildpack that gave the start command, as its detect named it.
    pub detected_buildpack: String,
    /// Every buildpack that ran, in order.
    pub buildpacks: Vec<String>,
    /// Each detect that ran.
    pub detect: Vec<DetectOutcome>,
    /// Process types and their commands.
    pub process_types: BTreeMap<String, String>,
    /// The `web` command ("" when there is none).
    pub start_command: String,
    /// The new cache, when one was asked for.
    pub cache: Option<PathBuf>,
    /// Wall time of each phase, in order.
    pub phases: Vec<(String, Duration)>,
    /// The whole log.
    pub log: Vec<LogLine>,
}
