//! The executor's errors: one enum for starting and running the cell, one for droplets (whose
//! messages end up in CRASHED reports and app logs, so they say what went wrong plainly).

use std::path::PathBuf;

/// Starting or running the executor failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    /// The configuration cannot work.
    #[error("configuration: {0}")]
    Config(String),
    /// The internal credential could not be read.
    #[error("reading the internal credential from {path}: {source}")]
    Token {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The internal credential file is empty.
    #[error("the internal credential file {0} is empty")]
    EmptyToken(PathBuf),
    /// The HTTP client could not be built.
    #[error("building the HTTP client: {0}")]
    HttpClient(#[source] reqwest::Error),
    /// A NATS subscription failed.
    #[error("subscribing to {subject}: {message}")]
    Subscribe {
        /// The subject.
        subject: String,
        /// Why.
        message: String,
    },
    /// A stack could not be built or imported.
    #[error("the {stack} stack: {message}")]
    Stack {
        /// Its name.
        stack: String,
        /// Why.
        message: String,
    },
    /// The container backend failed.
    #[error(transparent)]
    Container(#[from] kiln_containers::Error),
    /// A file of the data dir could not be made or read.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// To what.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Getting the stack image an operator set ready on this cell failed.
#[derive(Debug, thiserror::Error)]
pub enum StackImageError {
    /// The image could not be downloaded from the controller.
    #[error("fetching stack image {digest}: {source}")]
    Fetch {
        /// The image.
        digest: String,
        /// Why.
        source: DropletError,
    },
    /// The archive is not the image, or not an image the store can unpack.
    #[error("importing stack image {digest}: {message}")]
    Import {
        /// The image.
        digest: String,
        /// Why.
        message: String,
    },
}

/// Getting a droplet ready to run failed.
#[derive(Debug, thiserror::Error)]
pub enum DropletError {
    /// The start message's sha256 is not 64 hex digits.
    #[error("the droplet sha256 {0:?} is not 64 hex digits")]
    BadSha(String),
    /// The URL is not http(s).
    #[error("the droplet URL {0:?} is not an http(s) URL")]
    BadUrl(String),
    /// The download failed on the way.
    #[error("downloading {url} failed: {message}")]
    Download {
        /// Where from (no query, no credentials).
        url: String,
        /// Why.
        message: String,
    },
    /// The controller did not answer 200.
    #[error("downloading {url} failed: HTTP {status}")]
    Status {
        /// Where from.
        url: String,
        /// The status.
        status: u16,
    },
    /// The bits are not the droplet the controller named.
    #[error("droplet checksum mismatch: expected sha256 {expected}, downloaded {actual}")]
    Checksum {
        /// What the start message said.
        expected: String,
        /// What arrived.
        actual: String,
    },
    /// The droplet is bigger than the whole cache.
    #[error("the droplet is larger than the droplet cache ({limit_mib} MiB)")]
    TooLarge {
        /// The cache size.
        limit_mib: u64,
    },
    /// The droplet could not be unpacked.
    #[error("unpacking the droplet: {0}")]
    Unpack(String),
    /// A file of the cache could not be made or read.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// To what.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl DropletError {
    pub(crate) fn io(
        op: &'static str,
        path: &std::path::Path,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_path_buf();
        move |source| DropletError::Io { op, path, source }
    }
}
