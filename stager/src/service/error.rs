//! Errors of the staging service: those that stop the service ([`ServiceError`]), those that
//! end one build ([`BuildError`], published as a failed result), and those of moving bits to
//! and from the controller ([`TransferError`]).

use std::path::PathBuf;

use crate::dockerfile::DockerfileError;
use crate::error::StagingError;

/// Why the service could not start or keep serving.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Subscribing to the staging requests failed.
    #[error("subscribing to {subject} on the bus: {source}")]
    Subscribe {
        /// The subject.
        subject: &'static str,
        /// The client's error.
        #[source]
        source: async_nats::SubscribeError,
    },
    /// The bus did not confirm the subscription.
    #[error("confirming the subscription with the bus: {0}")]
    RoundTrip(#[source] kiln_bus::RoundTripError),
    /// The subscription ended without the service being asked to stop (the client was closed).
    #[error("the subscription to {0} ended: the connection to the bus was closed")]
    SubscriptionEnded(&'static str),
    /// The internal credential could not be read.
    #[error("reading the internal token from {}: {source}", path.display())]
    Token {
        /// The token file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The internal credential file is empty.
    #[error("the internal token file {} is empty", .0.display())]
    EmptyToken(PathBuf),
    /// The HTTP client could not be built.
    #[error("building the HTTP client: {0}")]
    HttpClient(#[source] reqwest::Error),
}

/// Why moving a file to or from the controller failed.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The URL is not an `http(s)` URL.
    #[error("`{0}` is not an http or https URL")]
    InvalidUrl(String),
    /// The server answered with an error status.
    #[error("{0}")]
    Status(reqwest::StatusCode),
    /// The request failed on the way (connection refused, reset, timed out).
    #[error("{0}")]
    Http(String),
    /// The body is larger than allowed.
    #[error("it is larger than {limit_mib} MiB, the staging disk limit")]
    TooLarge {
        /// The limit.
        limit_mib: u64,
    },
    /// The local file could not be read or written.
    #[error("{context} {}: {source}", path.display())]
    Io {
        /// What was being done.
        context: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl TransferError {
    /// A reqwest error with its chain of causes ("error sending request: connection refused"),
    /// without the URL, which the caller names.
    pub(crate) fn http(e: reqwest::Error) -> TransferError {
        TransferError::Http(with_causes(&e.without_url()))
    }

    pub(crate) fn io(
        context: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> TransferError {
        let path = path.into();
        move |source| TransferError::Io {
            context,
            path,
            source,
        }
    }
}

/// Why one build failed; its `Display` is the reason of the failed result.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The request cannot be staged as it is (bad guid, unknown buildpack, bad egress rule).
    #[error("invalid staging request: {0}")]
    InvalidRequest(String),
    /// The request's stack is not one of this stager's.
    #[error("stager {stager} cannot stage on stack `{stack}`: it has {}", stacks.join(", "))]
    UnknownStack {
        /// The stager.
        stager: String,
        /// What was asked for.
        stack: String,
        /// What it has.
        stacks: Vec<String>,
    },
    /// The image an operator set for the stack could not be fetched or imported.
    #[error("the stack image {digest}: {message}")]
    StackImage {
        /// The image's manifest digest.
        digest: String,
        /// Why.
        message: String,
    },
    /// An image of the controller's image store a Dockerfile names could not be fetched or
    /// imported.
    #[error("the image `{name}` ({digest}): {message}")]
    Image {
        /// Its name in the controller's image store.
        name: String,
        /// Its manifest digest.
        digest: String,
        /// Why.
        message: String,
    },
    /// A Dockerfile build was asked for (`--stack docker`) but the app has none.
    #[error("the app has no Dockerfile at its root: push it with a Dockerfile or choose a buildpack stack (kiln stacks)")]
    NoDockerfile,
    /// The Dockerfile could not be built; the builder's message names the line.
    #[error("building the Dockerfile: {0}")]
    Dockerfile(#[from] DockerfileError),
    /// The built image could not be packed into the droplet.
    #[error("packing the image into the droplet {}: {source}", path.display())]
    Pack {
        /// The droplet file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The per-build work dir could not be made.
    #[error("creating a work dir in {}: {source}", path.display())]
    WorkDir {
        /// Where.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The package could not be downloaded.
    #[error("downloading the package from {url}: {source}")]
    Package {
        /// Where from (without its query).
        url: String,
        /// Why.
        #[source]
        source: TransferError,
    },
    /// An admin buildpack could not be downloaded.
    #[error("downloading buildpack `{name}` from {url}: {source}")]
    Buildpack {
        /// The buildpack.
        name: String,
        /// Where from (without its query).
        url: String,
        /// Why.
        #[source]
        source: TransferError,
    },
    /// An admin buildpack's download is not the zip the controller named.
    #[error("buildpack `{name}` downloaded from {url} has sha256 {actual}, not {expected} as the staging request says: it was not used (was it uploaded again meanwhile? stage again)")]
    BuildpackChecksum {
        /// The buildpack.
        name: String,
        /// Where from (without its query).
        url: String,
        /// What the request said.
        expected: String,
        /// What came.
        actual: String,
    },
    /// The stager's buildpack cache could not be used.
    #[error("the buildpack cache at {}: {source}", path.display())]
    BuildpackCache {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Staging failed.
    #[error("{0}")]
    Staging(#[from] StagingError),
    /// The droplet could not be uploaded.
    #[error("uploading the droplet to {url}: {source}")]
    DropletUpload {
        /// Where to (without its query).
        url: String,
        /// Why.
        #[source]
        source: TransferError,
    },
    /// The stager stopped before the staging finished.
    #[error("the stager {stager} stopped and gave up this staging after a {grace_secs} s grace; stage again")]
    Abandoned {
        /// The stager.
        stager: String,
        /// How long it waited.
        grace_secs: u64,
    },
}

impl BuildError {
    /// Cloud Foundry's staging exit code: the staging's own; for a Dockerfile build 223 when
    /// the app's Dockerfile or a `RUN` failed (see [`DockerfileError::exit_code`]); 222 for
    /// `--stack docker` without a Dockerfile; 1 for everything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            BuildError::Staging(e) => e.exit_code(),
            BuildError::Dockerfile(e) => e.exit_code(),
            // As a buildpack staging that detects nothing to build.
            BuildError::NoDockerfile => 222,
            _ => 1,
        }
    }
}

/// `e` and its causes, `: `-separated (a store error says which blob or entry, its cause why).
pub(crate) fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
