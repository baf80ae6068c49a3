//! Why a staging failed, in words a buildpack author or app developer can act on, and the
//! Cloud Foundry exit code of each failure.

use std::fmt;
use std::path::PathBuf;

/// The phase of staging a failure happened in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    /// Creating the staging container.
    Create,
    /// Copying the app, buildpacks and cache in.
    AppIn,
    /// Running `bin/detect`.
    Detect,
    /// `bin/supply` (Cloud Foundry v2, every buildpack but the last).
    Supply,
    /// `bin/finalize` (Cloud Foundry v2, the last buildpack).
    Finalize,
    /// `bin/compile` (Heroku contract, the last buildpack without `bin/finalize`).
    Compile,
    /// `bin/build` of a Cloud Native Buildpack.
    Build,
    /// `bin/release`, or reading `launch.toml`.
    Release,
    /// Packing the droplet and the cache.
    DropletOut,
}

impl Phase {
    /// The Cloud Foundry staging exit code of a failure in this phase.
    pub fn exit_code(self) -> i32 {
        match self {
            Phase::Detect => 222,
            Phase::Compile | Phase::Build => 223,
            Phase::Release => 224,
            Phase::Supply => 225,
            Phase::Finalize => 226,
            Phase::Create | Phase::AppIn | Phase::DropletOut => 1,
        }
    }

    /// The phase's name as the log prints it.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Create => "create",
            Phase::AppIn => "app in",
            Phase::Detect => "detect",
            Phase::Supply => "supply",
            Phase::Finalize => "finalize",
            Phase::Compile => "compile",
            Phase::Build => "build",
            Phase::Release => "release",
            Phase::DropletOut => "droplet out",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The last lines a failing step printed, shown under the error.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tail(pub Vec<String>);

impl fmt::Display for Tail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("\n  (it printed nothing)");
        }
        f.write_str("\n  last output:")?;
        for line in &self.0 {
            write!(f, "\n    {line}")?;
        }
        Ok(())
    }
}

/// Errors of staging.
#[derive(Debug, thiserror::Error)]
pub enum StagingError {
    /// The app bits cannot be staged (unreadable, hostile entries, bad Procfile).
    #[error("invalid app: {reason}")]
    InvalidApp {
        /// What is wrong and what to do.
        reason: String,
    },
    /// The platform cannot stage (no built-in buildpacks, a stack without a `vcap` user).
    #[error("cannot stage: {reason}")]
    Platform {
        /// What is wrong and who can fix it.
        reason: String,
    },
    /// `-b NAME` is neither a directory, a zip, nor a built-in buildpack.
    #[error("unknown buildpack `{name}`: not a directory, a .zip file, or a built-in buildpack (built-in: {known})")]
    UnknownBuildpack {
        /// What was asked for.
        name: String,
        /// The built-in names.
        known: String,
    },
    /// A buildpack breaks its contract before it runs (missing or non-executable scripts,
    /// bad `buildpack.toml`, wrong position).
    #[error("buildpack {buildpack}: {reason}")]
    InvalidBuildpack {
        /// The buildpack's name.
        buildpack: String,
        /// What is wrong and what to do.
        reason: String,
    },
    /// No buildpack accepted the app.
    #[error("no buildpack detected: tried {}{}", tried.join(", "), hint)]
    NoneDetected {
        /// Every buildpack whose detect ran, in order.
        tried: Vec<String>,
        /// What to do about it.
        hint: String,
    },
    /// A buildpack script failed.
    #[error("{phase} failed: buildpack {buildpack} exited with status {status} (staging exit code {}){tail}", phase.exit_code())]
    BuildpackFailed {
        /// Where it failed.
        phase: Phase,
        /// Which buildpack.
        buildpack: String,
        /// The script's exit status.
        status: i32,
        /// What it printed last.
        tail: Tail,
    },
    /// A buildpack produced output that breaks the contract (invalid release YAML, a supply
    /// writing outside its deps dir, an invalid `launch.toml`).
    #[error("{phase} failed: buildpack {buildpack} {reason} (staging exit code {})", phase.exit_code())]
    ContractViolated {
        /// Where.
        phase: Phase,
        /// Which buildpack.
        buildpack: String,
        /// What it did wrong.
        reason: String,
    },
    /// A step was killed for using more memory than staging may.
    #[error("{phase} of buildpack {buildpack} ran out of memory: staging may use {limit_mib} MiB (raise the staging memory limit){tail}")]
    OutOfMemory {
        /// Where.
        phase: Phase,
        /// Which buildpack.
        buildpack: String,
        /// The limit.
        limit_mib: u64,
        /// What it printed last.
        tail: Tail,
    },
    /// Staging ran longer than its time limit.
    #[error("staging timed out after {limit_secs} s in {phase} of buildpack {buildpack} (raise the staging time limit){tail}")]
    TimedOut {
        /// Where.
        phase: Phase,
        /// Which buildpack.
        buildpack: String,
        /// The limit.
        limit_secs: u64,
        /// What it printed last.
        tail: Tail,
    },
    /// The container backend failed.
    #[error("{phase}: {context}: {source}")]
    Sandbox {
        /// Where.
        phase: Phase,
        /// What staging was doing.
        context: String,
        /// The backend's error.
        #[source]
        source: Box<kiln_containers::Error>,
    },
    /// Host-side I/O failed (reading the app, writing the droplet).
    #[error("{context} {}: {source}", path.display())]
    Io {
        /// What staging was doing.
        context: &'static str,
        /// The file involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl StagingError {
    /// The Cloud Foundry staging exit code: 222 detect, 223 compile/build, 224 release,
    /// 225 supply, 226 finalize; 1 for anything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            StagingError::NoneDetected { .. } => 222,
            StagingError::BuildpackFailed { phase, .. }
            | StagingError::ContractViolated { phase, .. }
            | StagingError::OutOfMemory { phase, .. }
            | StagingError::TimedOut { phase, .. } => phase.exit_code(),
            _ => 1,
        }
    }

    pub(crate) fn io(
        context: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| StagingError::Io {
            context,
            path,
            source,
        }
    }

    pub(crate) fn sandbox(
        phase: Phase,
        context: impl Into<String>,
    ) -> impl FnOnce(kiln_containers::Error) -> Self {
        let context = context.into();
        move |source| StagingError::Sandbox {
            phase,
            context,
            source: Box::new(source),
        }
    }
}
