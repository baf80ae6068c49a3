//! OCI image layouts on disk: writing one (for recipes and tests) and reading one back with
//! every blob verified against its descriptor.
//!
//! A layout is a directory holding `oci-layout`, `index.json` and content-addressed blobs under
//! `blobs/sha256/<hex>`. Only sha256 digests are supported; layers may be gzip or plain tar.
//!
//! Layers are written from memory ([`write_layout`], [`write_layer`]) or streamed from a
//! directory tree on disk ([`write_tree_layer`]), then listed with [`write_layout_with_layers`].
//!
//! Image archives (a tar of a layout, or a `docker save` archive) become a layout with
//! [`layout_from_archive`].

mod derive;
mod docker_save;
mod from_archive;
mod read;
mod tree;
mod write;

use std::io::{self, Read};
use std::path::PathBuf;

use sha2::{Digest as _, Sha256};

pub use derive::{derive_layout, LayerFile};
pub use from_archive::{layout_from_archive, ArchiveFormat, ArchiveLayout, ImageArchiveError};
pub(crate) use read::{open_blob, read_manifest_digest, LayerCompression};
pub use read::{read_image, LayoutImage};
pub use tree::{write_tree_layer, TreeLayer, TreeSummary};
pub(crate) use write::write_atomic;
pub use write::{write_layer, write_layout, write_layout_with_layers, LayerBlob};

/// The annotation naming an image in `index.json`.
pub const REF_NAME: &str = oci_spec::image::ANNOTATION_REF_NAME;

/// An OCI image layout written to disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackLayout {
    /// The layout directory.
    pub dir: PathBuf,
    /// The manifest's digest, `sha256:<hex>`.
    pub manifest_digest: String,
}

/// Errors from writing, reading or verifying an OCI image layout.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// Reading or writing a file of the layout failed.
    #[error("I/O on {}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A JSON document of the layout (or one of its blobs) did not parse or serialise.
    #[error("{what} is not a valid OCI document")]
    Json {
        /// Which document, e.g. `index.json` or `manifest sha256:...`.
        what: String,
        /// The underlying error.
        source: serde_json::Error,
    },
    /// `index.json` lists no manifest.
    #[error("{}: index.json lists no image manifest", dir.display())]
    NoManifest {
        /// The layout directory.
        dir: PathBuf,
    },
    /// `index.json` lists several manifests and none is annotated with the wanted name.
    #[error("{}: no manifest in index.json is annotated {REF_NAME}={name} (found: {})", dir.display(), available.join(", "))]
    NoMatchingManifest {
        /// The layout directory.
        dir: PathBuf,
        /// The name asked for.
        name: String,
        /// The ref names present.
        available: Vec<String>,
    },
    /// A digest that is not `sha256:<64 hex>`.
    #[error("blob {digest}: only sha256 digests are supported")]
    UnsupportedDigest {
        /// The digest as written in the descriptor.
        digest: String,
    },
    /// A blob named by a descriptor is not in the layout.
    #[error("blob {digest} is missing from the layout ({})", path.display())]
    BlobMissing {
        /// The blob's digest.
        digest: String,
        /// Where it should be.
        path: PathBuf,
    },
    /// A blob's content does not hash to its digest.
    #[error("blob {digest} is corrupt: its content hashes to sha256:{actual}")]
    DigestMismatch {
        /// The digest the descriptor promises.
        digest: String,
        /// The hex sha256 of what is actually there.
        actual: String,
    },
    /// A blob's size differs from its descriptor's.
    #[error("blob {digest} is corrupt: it is {actual} bytes, its descriptor says {expected}")]
    SizeMismatch {
        /// The blob's digest.
        digest: String,
        /// The size the descriptor promises.
        expected: u64,
        /// The size found (or at least found, if it grew while being read).
        actual: u64,
    },
    /// A manifest or config blob larger than any sane document.
    #[error("blob {digest}: {size} bytes is too large for a {what}")]
    TooLarge {
        /// The blob's digest.
        digest: String,
        /// Its declared size.
        size: u64,
        /// `manifest` or `config`.
        what: &'static str,
    },
    /// A layer compressed in a way this crate cannot read.
    #[error("layer {digest}: unsupported media type {media_type} (only gzip or plain tar layers)")]
    UnsupportedMediaType {
        /// The layer's digest.
        digest: String,
        /// Its media type.
        media_type: String,
    },
    /// An image archive that cannot be turned into a layout (the error names the archive).
    #[error(transparent)]
    Archive(#[from] ImageArchiveError),
    /// Building an OCI document failed (a missing required field).
    #[error("building the {what}")]
    Build {
        /// Which document.
        what: &'static str,
        /// The underlying error.
        source: oci_spec::OciSpecError,
    },
}

/// The lowercase hex sha256 of `bytes`.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Wraps a blob reader: hashes and counts what passes through, never reads more than one byte
/// past the expected size, and checks both in [`VerifyingReader::finish`].
pub(crate) struct VerifyingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
    digest: String,
    expected_hex: String,
    expected_size: u64,
}

impl<R: Read> VerifyingReader<R> {
    pub(crate) fn new(inner: R, digest: &str, expected_hex: &str, expected_size: u64) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            count: 0,
            digest: digest.to_string(),
            expected_hex: expected_hex.to_string(),
            expected_size,
        }
    }

    /// Reads whatever is left (a tar reader stops at the end-of-archive blocks), then checks
    /// the size and the digest.
    pub(crate) fn finish(mut self) -> Result<(), LayoutError> {
        io::copy(&mut self, &mut io::sink()).map_err(|source| LayoutError::Io {
            path: PathBuf::from(&self.digest),
            source,
        })?;
        if self.count != self.expected_size {
            return Err(LayoutError::SizeMismatch {
                digest: self.digest,
                expected: self.expected_size,
                actual: self.count,
            });
        }
        let actual = hex::encode(self.hasher.finalize());
        if actual != self.expected_hex {
            return Err(LayoutError::DigestMismatch {
                digest: self.digest,
                actual,
            });
        }
        Ok(())
    }
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let allowed = (self.expected_size + 1).saturating_sub(self.count);
        let len = buf
            .len()
            .min(usize::try_from(allowed).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..len])?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}
