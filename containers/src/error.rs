//! The backend's error type: one variant per thing a caller can get wrong or the machine can
//! refuse, each carrying what is needed to act on it.

use std::path::PathBuf;

use crate::network::NetworkError;
use crate::runtime::RuntimeError;
use crate::volume::VolumeError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "unknown stack {stack:?}: import it first (kiln-rootfs import) or pick one of: {known}"
    )]
    UnknownStack { stack: String, known: String },

    #[error("a container with handle {0:?} already exists")]
    HandleTaken(String),

    #[error("invalid handle {handle:?}: {reason}")]
    InvalidHandle { handle: String, reason: String },

    #[error("no container with handle {0:?}")]
    NotFound(String),

    #[error("invalid limits: {0}")]
    InvalidLimits(String),

    #[error("invalid container spec: {0}")]
    InvalidSpec(String),

    #[error("the stack image archive holds image {found}, not the {expected} it was fetched as")]
    StackDigestMismatch { expected: String, found: String },

    #[error("host port {0} is already in use")]
    PortInUse(u16),

    #[error("host port {port} is outside the backend's range {first}-{last}")]
    PortOutOfRange { port: u16, first: u16, last: u16 },

    #[error("no free host port left in the range {first}-{last}")]
    PortsExhausted { first: u16, last: u16 },

    #[error("the container pool is full ({0} containers): destroy some first")]
    PoolExhausted(usize),

    #[error("unknown user {user:?} in container {handle:?}: not in its /etc/passwd")]
    UnknownUser { handle: String, user: String },

    #[error("cannot start {path:?} ({step}): {source}")]
    ProcessStart {
        path: String,
        /// fork, exec, ...
        step: String,
        source: std::io::Error,
    },

    #[error("container {handle:?} is {state}, not active")]
    NotActive { handle: String, state: String },

    #[error(transparent)]
    Runtime(#[from] RuntimeError),

    #[error(transparent)]
    Volume(#[from] VolumeError),

    #[error(transparent)]
    Network(#[from] NetworkError),

    #[error(transparent)]
    Archive(#[from] kiln_rootfs::archive::ArchiveError),

    #[error(transparent)]
    Stack(#[from] kiln_rootfs::store::StoreError),

    #[error("{context} ({path}): {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("container state file {path} is unreadable: {source}")]
    State {
        path: PathBuf,
        source: serde_json::Error,
    },

    #[error(
        "creating container {handle:?} failed: {source}{}",
        cleanup_note(cleanup)
    )]
    CreateFailed {
        handle: String,
        source: Box<Error>,
        /// What went wrong while undoing the partial create, if anything did.
        cleanup: Option<Box<Error>>,
    },

    #[error(
        "destroying container {handle:?} failed: {source}{}",
        others_note(others)
    )]
    DestroyFailed {
        handle: String,
        source: Box<Error>,
        /// Other containers that could not be destroyed either.
        others: Vec<String>,
    },

    #[error(
        "the data dir {0} is in use by another backend: stop it first (one backend per data dir)"
    )]
    DataDirInUse(PathBuf),

    #[error("backend task failed: {0}")]
    Task(String),
}

fn others_note(others: &[String]) -> String {
    if others.is_empty() {
        String::new()
    } else {
        format!(" (and {others:?} are left too)")
    }
}

fn cleanup_note(cleanup: &Option<Box<Error>>) -> String {
    match cleanup {
        Some(e) => format!("; cleaning up also failed: {e}"),
        None => String::new(),
    }
}

impl Error {
    pub(crate) fn io(
        context: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Error::Io {
            context,
            path: path.into(),
            source,
        }
    }
}

impl From<tokio::task::JoinError> for Error {
    fn from(e: tokio::task::JoinError) -> Self {
        Error::Task(e.to_string())
    }
}
