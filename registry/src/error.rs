//! The one error type of this crate. Every variant that comes from talking to a registry names
//! the image reference; the `oci-client` error, when there is one, is the `source()`.

use std::io;
use std::path::PathBuf;

use oci_client::errors::OciDistributionError;

/// Errors from pulling or pushing an image.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A reference that does not parse (`host:port/repo:tag` or `host:port/repo@sha256:...`).
    #[error("invalid image reference `{reference}`")]
    InvalidReference {
        /// The reference as given.
        reference: String,
        /// Why it does not parse.
        source: oci_client::ParseError,
    },
    /// The registry has no such repository, tag or digest.
    #[error("image {reference} is not in registry {registry}")]
    UnknownImage {
        /// The reference.
        reference: String,
        /// The registry (`host:port`).
        registry: String,
        /// The registry's answer.
        source: OciDistributionError,
    },
    /// No connection to the registry (refused, timed out, TLS handshake failed, name not
    /// resolved).
    #[error("cannot reach registry {registry} over {scheme} for {reference}")]
    Unreachable {
        /// The reference.
        reference: String,
        /// The registry (`host:port`).
        registry: String,
        /// `https`, or `http` when plain HTTP was allowed.
        scheme: &'static str,
        /// The transport error.
        source: OciDistributionError,
    },
    /// The registry wants credentials, or refused the ones given.
    #[error("registry {registry} refused access to {reference} (check the credentials)")]
    Unauthorized {
        /// The reference.
        reference: String,
        /// The registry (`host:port`).
        registry: String,
        /// The registry's answer.
        source: OciDistributionError,
    },
    /// A blob whose content does not hash to the digest that named it.
    #[error("{reference}: blob {digest} is corrupt: its content hashes to {actual}")]
    DigestMismatch {
        /// The reference.
        reference: String,
        /// The digest asked for.
        digest: String,
        /// The digest of what came.
        actual: String,
    },
    /// A blob whose size differs from its descriptor's.
    #[error("{reference}: blob {digest} is {actual} bytes, its descriptor says {expected}")]
    SizeMismatch {
        /// The reference.
        reference: String,
        /// The blob's digest.
        digest: String,
        /// The size the descriptor promises.
        expected: u64,
        /// The size that came.
        actual: u64,
    },
    /// An image index without a manifest for the wanted platform.
    #[error("{reference}: the image index has no {wanted} image (found: {})", available.join(", "))]
    NoMatchingPlatform {
        /// The reference.
        reference: String,
        /// The platform asked for (`linux/amd64`).
        wanted: String,
        /// The platforms the index lists.
        available: Vec<String>,
    },
    /// A manifest this crate does not handle (Docker schema 1, an artifact, ...).
    #[error("{reference}: unsupported manifest (media type {media_type})")]
    UnsupportedManifest {
        /// The reference.
        reference: String,
        /// Its media type, or a description of what was found.
        media_type: String,
    },
    /// A manifest or index that does not parse.
    #[error("{reference}: the {what} is not a valid OCI document")]
    InvalidDocument {
        /// The reference.
        reference: String,
        /// `manifest sha256:...`, `image index sha256:...`.
        what: String,
        /// The underlying error.
        source: serde_json::Error,
    },
    /// Any other failure reported by the registry or the client.
    #[error("{reference}: registry request failed")]
    Registry {
        /// The reference.
        reference: String,
        /// The error.
        source: OciDistributionError,
    },
    /// The HTTP client could not be built (TLS set-up).
    #[error("building the registry client")]
    Client {
        /// The error.
        source: OciDistributionError,
    },
    /// Reading or writing a file of the layout failed.
    #[error("I/O on {}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The layout to push is unreadable, or one of its blobs is missing or corrupt.
    #[error("reading the OCI image layout {}", dir.display())]
    Layout {
        /// The layout directory.
        dir: PathBuf,
        /// What is wrong with it.
        source: kiln_rootfs::LayoutError,
    },
}
