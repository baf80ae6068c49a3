//! Why a Dockerfile build failed. Every error about an instruction starts with `line N:`.

use std::path::PathBuf;

use crate::error::Tail;

/// Errors of [`super::parse`] and [`super::build`].
#[derive(Debug, thiserror::Error)]
pub enum DockerfileError {
    /// The text is not a Dockerfile Kiln understands.
    #[error("line {line}: {reason}")]
    Syntax {
        /// Where.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// An instruction (or flag) Kiln does not build.
    #[error("line {line}: {instruction} is not supported by Kiln: {hint}")]
    Unsupported {
        /// Where.
        line: usize,
        /// The instruction, with the offending flag or argument.
        instruction: String,
        /// What to do instead.
        hint: String,
    },
    /// An instruction that cannot be carried out as written (a missing source, a path leaving
    /// the app, an unknown user, an unknown base image).
    #[error("line {line}: {instruction}: {reason}")]
    Invalid {
        /// Where.
        line: usize,
        /// `COPY`, `FROM`, ...
        instruction: &'static str,
        /// What is wrong and what to do.
        reason: String,
    },
    /// `ADD <url>` could not download its file (egress rules, an unreachable server, an HTTP
    /// error status, a file over the disk limit, the time limit).
    #[error("line {line}: ADD {url}: {reason}")]
    Fetch {
        /// Where.
        line: usize,
        /// The URL, variables substituted.
        url: String,
        /// What went wrong and what to do.
        reason: String,
    },
    /// A `RUN` exited non-zero.
    #[error("line {line}: RUN {command} failed with exit code {code}{tail}")]
    RunFailed {
        /// Where.
        line: usize,
        /// The command as written.
        command: String,
        /// Its exit code (128 + signal when killed).
        code: i32,
        /// Its last lines.
        tail: Tail,
    },
    /// A `RUN` overran the build's time or memory, or its container failed.
    #[error("line {line}: RUN {command}: {source}")]
    Run {
        /// Where.
        line: usize,
        /// The command as written.
        command: String,
        /// What happened (time or memory limit, sandbox failure).
        source: Box<crate::StagingError>,
    },
    /// The container backend failed around a step.
    #[error("line {line}: {what}: {source}")]
    Sandbox {
        /// Where.
        line: usize,
        /// What was being done.
        what: String,
        /// The backend's error.
        source: Box<kiln_containers::Error>,
    },
    /// Copying files into a layer failed.
    #[error("line {line}: {what}: {source}")]
    Archive {
        /// Where.
        line: usize,
        /// What was being copied.
        what: String,
        /// The archive error (a hostile path, a missing file).
        source: Box<kiln_rootfs::archive::ArchiveError>,
    },
    /// The build's files (cache, output, context) could not be read or written.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Writing a layer or the image layout failed.
    #[error("writing the image: {0}")]
    Layout(#[from] Box<kiln_rootfs::layout::LayoutError>),
    /// The cache holds something unreadable.
    #[error("the layer cache entry {} is corrupt: {reason}; remove it", path.display())]
    Cache {
        /// The entry.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A blocking task of the build panicked or was cancelled.
    #[error("build task failed: {0}")]
    Task(String),
}

impl DockerfileError {
    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| DockerfileError::Io { what, path, source }
    }

    /// Cloud Foundry's staging exit code for it: 223 (the build failed) when the app's
    /// Dockerfile or files are at fault, an `ADD <url>` download failed, or a `RUN` failed or
    /// overran its limits, 1 when the
    /// platform failed around the build.
    pub fn exit_code(&self) -> i32 {
        match self {
            DockerfileError::Syntax { .. }
            | DockerfileError::Unsupported { .. }
            | DockerfileError::Invalid { .. }
            | DockerfileError::Fetch { .. }
            | DockerfileError::RunFailed { .. }
            | DockerfileError::Archive { .. } => 223,
            DockerfileError::Run { source, .. } => source.exit_code(),
            DockerfileError::Sandbox { .. }
            | DockerfileError::Io { .. }
            | DockerfileError::Layout(_)
            | DockerfileError::Cache { .. }
            | DockerfileError::Task(_) => 1,
        }
    }

    /// The line the error is about, if it is about one.
    pub fn line(&self) -> Option<usize> {
        match self {
            DockerfileError::Syntax { line, .. }
            | DockerfileError::Unsupported { line, .. }
            | DockerfileError::Invalid { line, .. }
            | DockerfileError::Fetch { line, .. }
            | DockerfileError::RunFailed { line, .. }
            | DockerfileError::Run { line, .. }
            | DockerfileError::Sandbox { line, .. }
            | DockerfileError::Archive { line, .. } => Some(*line),
            _ => None,
        }
    }
}

impl From<kiln_rootfs::layout::LayoutError> for DockerfileError {
    fn from(e: kiln_rootfs::layout::LayoutError) -> Self {
        DockerfileError::Layout(Box::new(e))
    }
}

impl From<tokio::task::JoinError> for DockerfileError {
    fn from(e: tokio::task::JoinError) -> Self {
        DockerfileError::Task(e.to_string())
    }
}
