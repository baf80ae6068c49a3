//! Unpacking an image's layers, in order, into a rootfs directory.
//!
//! Each layer goes through the safe extractor ([`crate::archive::extract_in_root`]) in image
//! mode: leading `/` and `./` stripped, `..` refused, OCI whiteouts applied, uid/gid/mode kept
//! as in the tar (the tree is unshifted), device nodes and fifos skipped. The layer blob is
//! hashed again while it streams, so a blob swapped after verification is still caught.

use std::fs::Permissions;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;

use crate::archive::{extract_in_root, ArchiveError, ExtractOptions, ExtractSummary};
use crate::layout::{open_blob, LayerCompression, LayoutError, LayoutImage};

/// Errors from unpacking an image's layers.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// A layer blob could not be read or failed verification.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// A layer's content was refused or could not be written.
    #[error("layer {digest}")]
    Layer {
        /// The layer's digest.
        digest: String,
        /// What went wrong.
        source: ArchiveError,
    },
    /// The rootfs directory to unpack into could not be created.
    #[error("creating {}", path.display())]
    CreateRootfs {
        /// The rootfs directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// The options every image layer is extracted with.
pub const LAYER_OPTIONS: ExtractOptions = ExtractOptions {
    owner: None,
    allow_absolute_and_dot_prefix: true,
    whiteouts: true,
};

/// Unpacks the layers of `image` (read from the layout in `layout_dir`) into `rootfs`, which is
/// created if missing. Returns the summed summary of all layers.
pub fn unpack_image(
    layout_dir: &Path,
    image: &LayoutImage,
    rootfs: &Path,
) -> Result<ExtractSummary, UnpackError> {
    // The tree's root is the container's `/`: 0755 whatever the umask (a layer's `./` entry
    // may still set it).
    std::fs::create_dir_all(rootfs)
        .and_then(|()| std::fs::set_permissions(rootfs, Permissions::from_mode(0o755)))
        .map_err(|source| UnpackError::CreateRootfs {
            path: rootfs.to_path_buf(),
            source,
        })?;
    let mut total = ExtractSummary::default();
    for layer in image.manifest.layers() {
        let digest = layer.digest().to_string();
        let compression = LayerCompression::of(layer)?;
        let mut blob = open_blob(layout_dir, layer)?;
        let summary = match compression {
            LayerCompression::Gzip => extract(rootfs, MultiGzDecoder::new(&mut blob)),
            LayerCompression::None => extract(rootfs, &mut blob),
        }
        .map_err(|source| UnpackError::Layer {
            digest: digest.clone(),
            source,
        })?;
        blob.finish()?;
        tracing::debug!(layer = %digest, ?summary, "unpacked layer");
        add(&mut total, &summary);
    }
    Ok(total)
}

fn extract(rootfs: &Path, reader: impl Read) -> Result<ExtractSummary, ArchiveError> {
    extract_in_root(rootfs, Path::new("/"), reader, &LAYER_OPTIONS)
}

fn add(total: &mut ExtractSummary, s: &ExtractSummary) {
    total.files += s.files;
    total.dirs += s.dirs;
    total.symlinks += s.symlinks;
    total.hardlinks += s.hardlinks;
    total.whiteouts += s.whiteouts;
    total.skipped += s.skipped;
    total.bytes += s.bytes;
}
