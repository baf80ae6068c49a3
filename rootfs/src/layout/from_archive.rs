//! Image archives handed in by operators and users (`kiln admin image import ARCHIVE`,
//! `kiln push --docker-image ARCHIVE`), turned into an OCI image layout on disk.
//!
//! Two kinds of tar archive (plain or gzip) are accepted:
//!
//! - an OCI image layout (`index.json`, `oci-layout`, `blobs/`), at the archive's top or in its
//!   only top-level directory: used as it is, so its manifest digest is the archive's own;
//! - a `docker save` archive (`manifest.json` listing each image's `Config` and `Layers`
//!   paths, plus `repositories`), converted by [`super::docker_save`] into a layout next to it.
//!
//! `docker save` from Docker 25 on writes both: `index.json` wins, so those archives keep the
//! digests Docker gave them. The archive is always unpacked with the safe extractor
//! ([`crate::archive::extract_in_root`]): a hostile archive cannot write outside the work
//! directory, and paths named in `manifest.json` are checked to stay inside it too.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

use flate2::bufread::MultiGzDecoder;

use super::docker_save;
use super::LayoutError;
use crate::archive::{extract_in_root, ArchiveError, ExtractOptions};

/// Where [`layout_from_archive`] unpacks the archive, inside its work directory.
const EXTRACT_DIR: &str = "archive";
/// Where it writes the layout converted from a `docker save` archive.
const CONVERTED_DIR: &str = "layout";
/// How many top-level names [`ImageArchiveError::NotAnImage`] lists.
const LISTED_NAMES: usize = 10;

/// What kind of archive [`layout_from_archive`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchiveFormat {
    /// A tar of an OCI image layout, used as it is.
    OciLayout,
    /// A `docker save` archive, converted.
    DockerSave {
        /// The `RepoTags` of the image picked (may be empty: Docker saves untagged images
        /// with none).
        repo_tags: Vec<String>,
    },
}

/// The OCI image layout made from an image archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveLayout {
    /// The layout directory, inside the work directory given to [`layout_from_archive`].
    pub dir: PathBuf,
    /// What the archive was.
    pub format: ArchiveFormat,
}

/// Why an image archive could not be turned into an OCI image layout. Every variant names the
/// archive, and the file inside it where that helps.
#[derive(Debug, thiserror::Error)]
pub enum ImageArchiveError {
    /// The tar could not be read or unpacked (a hostile entry, a truncated stream, ...).
    #[error("extracting {}", archive.display())]
    Extract {
        /// The archive file.
        archive: PathBuf,
        /// What went wrong.
        source: ArchiveError,
    },
    /// Neither `index.json` nor `manifest.json` at the archive's top or in its only directory.
    #[error(
        "{} is neither an OCI image layout nor a docker save archive: no index.json or \
         manifest.json at its top or in its only directory (found: {})",
        archive.display(),
        if found.is_empty() { "nothing".to_string() } else { found.join(", ") }
    )]
    NotAnImage {
        /// The archive file.
        archive: PathBuf,
        /// The first few names at the archive's top.
        found: Vec<String>,
    },
    /// `manifest.json` (or a config it names) is too large to be what it claims.
    #[error("{}: {file} is {size} bytes, too large for a docker save document", archive.display())]
    TooLarge {
        /// The archive file.
        archive: PathBuf,
        /// The file inside the archive.
        file: String,
        /// Its size.
        size: u64,
    },
    /// `manifest.json` does not parse as a `docker save` manifest.
    #[error("{}: manifest.json is not a docker save manifest", archive.display())]
    DockerManifest {
        /// The archive file.
        archive: PathBuf,
        /// The underlying error.
        source: serde_json::Error,
    },
    /// `manifest.json` lists no image.
    #[error("{}: manifest.json lists no image", archive.display())]
    NoImages {
        /// The archive file.
        archive: PathBuf,
    },
    /// Several images and nothing to pick one by.
    #[error(
        "{} holds {} images; name the one to import (found: {})",
        archive.display(), available.len(), available.join(", ")
    )]
    SeveralImages {
        /// The archive file.
        archive: PathBuf,
        /// Each image's repo tags (comma-joined within an image), or its config file if untagged.
        available: Vec<String>,
    },
    /// Several images and none tagged with the name asked for.
    #[error(
        "{}: no image tagged `{wanted}` (found: {})",
        archive.display(), available.join(", ")
    )]
    NoMatchingImage {
        /// The archive file.
        archive: PathBuf,
        /// The name asked for.
        wanted: String,
        /// Each image's repo tags, or its config file if untagged.
        available: Vec<String>,
    },
    /// Several images tagged with the name asked for.
    #[error(
        "{}: several images match `{wanted}` (found: {}); name one by its full tag",
        archive.display(), matches.join(", ")
    )]
    AmbiguousImage {
        /// The archive file.
        archive: PathBuf,
        /// The name asked for.
        wanted: String,
        /// The matching images' repo tags.
        matches: Vec<String>,
    },
    /// `manifest.json` names a path that is absolute, has `..`, leaves the archive through a
    /// symlink, or is not a regular file in it.
    #[error("{}: manifest.json names `{path}`, which is not a file inside the archive", archive.display())]
    BadPath {
        /// The archive file.
        archive: PathBuf,
        /// The path as written in `manifest.json`.
        path: String,
    },
    /// A config whose file name is its digest (as `docker save` writes it) hashes to another.
    #[error("{}: image config {path} is corrupt: its content hashes to sha256:{actual}", archive.display())]
    ConfigCorrupt {
        /// The archive file.
        archive: PathBuf,
        /// The config's path inside the archive.
        path: String,
        /// The hex sha256 of its content.
        actual: String,
    },
    /// An image config that does not parse.
    #[error("{}: {path} is not an image config", archive.display())]
    Config {
        /// The archive file.
        archive: PathBuf,
        /// The config's path inside the archive.
        path: String,
        /// The underlying error.
        source: serde_json::Error,
    },
    /// The image lists a different number of layers than its config's `rootfs.diff_ids`.
    #[error(
        "{}: image {config} lists {layers} layers but its config has {diff_ids} diff_ids",
        archive.display()
    )]
    LayerCount {
        /// The archive file.
        archive: PathBuf,
        /// The config's path inside the archive.
        config: String,
        /// Layers in `manifest.json`.
        layers: usize,
        /// Entries in `rootfs.diff_ids`.
        diff_ids: usize,
    },
    /// A layer whose uncompressed content does not hash to its config's diff_id.
    #[error(
        "{}: layer {layer} is corrupt: its content hashes to {actual}, the image config says {expected}",
        archive.display()
    )]
    LayerCorrupt {
        /// The archive file.
        archive: PathBuf,
        /// The layer's path inside the archive.
        layer: String,
        /// The diff_id the config promises.
        expected: String,
        /// `sha256:<hex>` of what is there.
        actual: String,
    },
}

/// Turns the image archive `archive` (a tar, plain or gzip, of an OCI image layout or a
/// `docker save` archive) into an OCI image layout inside `work_dir`, and returns where it is.
///
/// `work_dir` is created if missing and must not already hold an earlier call's output (the
/// caller gives a fresh temporary directory and removes it afterwards: the layout is inside
/// it). `image` picks among several images of a `docker save` archive: an image one of whose
/// repo tags is `image`, `image:latest`, or ends in `/image` or `/image:latest`. With one image
/// in the archive that one is taken whatever `image` says, as [`super::read_image`] does for
/// a layout. For an OCI layout `image` is not used here: [`super::read_image`] picks by ref
/// name.
///
/// A `docker save` image is converted deterministically (the same archive gives the same
/// manifest digest): layers stay uncompressed tars, each checked against its config's
/// diff_id; see [`super::docker_save`] for the media types.
pub fn layout_from_archive(
    archive: &Path,
    work_dir: &Path,
    image: Option<&str>,
) -> Result<ArchiveLayout, LayoutError> {
    let extract_dir = work_dir.join(EXTRACT_DIR);
    fs::create_dir_all(work_dir)
        .and_then(|()| fs::create_dir(&extract_dir))
        .map_err(|source| LayoutError::Io {
            path: extract_dir.clone(),
            source,
        })?;
    extract(archive, &extract_dir)?;
    match find_image(&extract_dir) {
        Some(Found::OciLayout(dir)) => Ok(ArchiveLayout {
            dir,
            format: ArchiveFormat::OciLayout,
        }),
        Some(Found::DockerSave(dir)) => {
            let out = work_dir.join(CONVERTED_DIR);
            let converted = docker_save::convert(archive, &dir, &out, image)?;
            Ok(ArchiveLayout {
                dir: converted.layout.dir,
                format: ArchiveFormat::DockerSave {
                    repo_tags: converted.repo_tags,
                },
            })
        }
        None => Err(ImageArchiveError::NotAnImage {
            archive: archive.to_path_buf(),
            found: top_names(&extract_dir),
        }
        .into()),
    }
}

/// Unpacks `archive` (plain or gzip tar) into `dir` with the safe extractor.
fn extract(archive: &Path, dir: &Path) -> Result<(), LayoutError> {
    let io_err = |source| LayoutError::Io {
        path: archive.to_path_buf(),
        source,
    };
    let mut reader = BufReader::new(File::open(archive).map_err(io_err)?);
    let gzip = reader
        .fill_buf()
        .map_err(io_err)?
        .starts_with(&[0x1f, 0x8b]);
    let opts = ExtractOptions::default();
    let target = Path::new("/");
    let extracted = if gzip {
        extract_in_root(dir, target, MultiGzDecoder::new(reader), &opts)
    } else {
        extract_in_root(dir, target, reader, &opts)
    };
    extracted.map(drop).map_err(|source| {
        ImageArchiveError::Extract {
            archive: archive.to_path_buf(),
            source,
        }
        .into()
    })
}

enum Found {
    OciLayout(PathBuf),
    DockerSave(PathBuf),
}

/// The image inside an unpacked archive: at its top, or in its only directory. A directory
/// with `index.json` is a layout even if it also has `manifest.json` (Docker 25 writes both).
fn find_image(dir: &Path) -> Option<Found> {
    let at = |d: &Path| {
        if d.join("index.json").is_file() {
            Some(Found::OciLayout(d.to_path_buf()))
        } else if d.join("manifest.json").is_file() {
            Some(Found::DockerSave(d.to_path_buf()))
        } else {
            None
        }
    };
    if let Some(found) = at(dir) {
        return Some(found);
    }
    let subdirs: Vec<PathBuf> = fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    match subdirs.as_slice() {
        [only] => at(only),
        _ => None,
    }
}

/// The first few names at the top of `dir`, sorted, for an error message.
fn top_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    if names.len() > LISTED_NAMES {
        let more = names.len() - LISTED_NAMES;
        names.truncate(LISTED_NAMES);
        names.push(format!("and {more} more"));
    }
    names
}

/// An I/O error on `path` as a [`LayoutError`].
pub(super) fn io_error(path: &Path) -> impl FnOnce(io::Error) -> LayoutError + '_ {
    move |source| LayoutError::Io {
        path: path.to_path_buf(),
        source,
    }
}
