//! The stack store: imports OCI stack images once per machine, keyed by manifest digest.
//!
//! On disk, under the store's root:
//!
//! ```text
//! images/<manifest hex>/rootfs/      the unpacked tree (unshifted; read-only by convention)
//! images/<manifest hex>/image.json   digest, env, user, working dir, import time
//! names/<name>.json                  {"name": ..., "digest": "sha256:..."}
//! tmp/                               in-progress imports, renamed into images/ when complete
//! ```
//!
//! An image directory only ever appears by an atomic `rename` of a complete temporary one, so
//! concurrent imports of one image are safe (the loser discards its copy) and a crashed import
//! leaves nothing but a temporary directory, removed by the next `open` once its process is gone.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::archive::ArchiveError;
use crate::layout::{
    layout_from_archive, read_image, write_atomic, ImageArchiveError, LayoutError, LayoutImage,
};
use crate::unpack::{unpack_image, UnpackError};

mod disk;

use disk::{
    check_name, digest_hex, sorted_names, sync_filesystem, to_json, ImageRecord, NameRecord,
    TempDir,
};

const IMAGE_RECORD: &str = "image.json";
/// The shortest hex digest prefix [`StackStore::resolve`] accepts.
pub const MIN_DIGEST_PREFIX: usize = 12;

/// A stack image unpacked in the store.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StackImage {
    /// The name it was imported (or resolved) under, if any.
    pub name: Option<String>,
    /// `sha256:<hex>` of the image manifest.
    pub digest: String,
    /// The unpacked, read-only-by-convention tree.
    pub rootfs: PathBuf,
    /// `Env` from the image config.
    pub env: Vec<String>,
    /// `User` from the image config.
    pub user: Option<String>,
    /// `WorkingDir` from the image config.
    pub working_dir: Option<String>,
    /// When the image was first unpacked here, RFC 3339 UTC.
    pub imported_at: String,
}

/// Errors from the stack store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file or directory of the store could not be read or written.
    #[error("I/O on {}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A stack name that cannot be stored.
    #[error(
        "invalid stack name `{name}`: use 1-128 of [A-Za-z0-9._-], starting with a letter or digit"
    )]
    InvalidName {
        /// The name given.
        name: String,
    },
    /// The layout is unreadable, or a blob is missing or corrupt (the error names it).
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// A layer could not be unpacked.
    #[error("unpacking image {digest}")]
    Unpack {
        /// The manifest digest.
        digest: String,
        /// What went wrong.
        source: UnpackError,
    },
    /// A layout archive could not be extracted.
    #[error("extracting {}", archive.display())]
    Archive {
        /// The archive file.
        archive: PathBuf,
        /// What went wrong.
        source: ArchiveError,
    },
    /// A tar archive that holds neither an OCI layout nor a `docker save` archive.
    #[error("{} is neither an OCI image layout nor a docker save archive (no index.json or manifest.json at its top or in its only directory)", archive.display())]
    NotALayout {
        /// The archive file.
        archive: PathBuf,
    },
    /// No stack by that name or digest.
    #[error("unknown stack `{name}`: import one with `kiln-rootfs import --store <STORE> <NAME> <OCI layout dir or tar>` (build the tiny stack with `kiln-rootfs build tiny --out <DIR>`)")]
    UnknownStack {
        /// The name or digest asked for.
        name: String,
    },
    /// A digest prefix matching several images.
    #[error("digest prefix `{prefix}` is ambiguous: it matches {}", matches.join(", "))]
    AmbiguousDigest {
        /// The prefix asked for.
        prefix: String,
        /// The matching digests.
        matches: Vec<String>,
    },
    /// A metadata file of the store is not valid JSON.
    #[error("{} is not valid store metadata", path.display())]
    Metadata {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: serde_json::Error,
    },
    /// A name points at an image that is no longer in the store.
    #[error("stack `{name}` points at {digest}, which is not in the store; import it again")]
    DanglingName {
        /// The name.
        name: String,
        /// The digest it points at.
        digest: String,
    },
}

/// The machine's store of unpacked stack images.
#[derive(Debug, Clone)]
pub struct StackStore {
    root: PathBuf,
}

impl StackStore {
    /// Opens the store at `root`, creating it if missing, and removes temporary directories
    /// left by imports whose process is gone.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let store = Self { root: root.into() };
        for dir in ["images", "names", "tmp"] {
            let path = store.root.join(dir);
            fs::create_dir_all(&path).map_err(|source| StoreError::Io { path, source })?;
        }
        store.clean_stale_temps();
        Ok(store)
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Imports the OCI image layout in `layout_dir` under `name`: picks the manifest (the one
    /// annotated with ref name `name` if there are several), verifies every blob, unpacks the
    /// layers unless this image is already in the store, and records `name -> digest`.
    pub fn import(&self, layout_dir: &Path, name: &str) -> Result<StackImage, StoreError> {
        check_name(name)?;
        let image = read_image(layout_dir, name)?;
        let hex = digest_hex(&image.manifest_digest)?;
        if self.image_dir(&hex).join(IMAGE_RECORD).exists() {
            tracing::debug!(digest = %image.manifest_digest, "image already unpacked");
        } else {
            self.unpack(layout_dir, &image, &hex)?;
        }
        let record = NameRecord {
            name: name.to_string(),
            digest: image.manifest_digest.clone(),
        };
        write_atomic(&self.name_path(name), &to_json(&record))?;
        self.load(&hex, Some(name.to_string()))
    }

    /// Imports an image archive: a tar (plain or gzip) of an OCI layout, at the archive's top
    /// or in its only top-level directory, or a `docker save` archive (converted to a layout;
    /// with several images, the one tagged `name` is taken). The archive is unpacked with the
    /// safe extractor into a temporary directory of the store, which is removed afterwards. See
    /// [`crate::layout::layout_from_archive`].
    pub fn import_archive(&self, archive: &Path, name: &str) -> Result<StackImage, StoreError> {
        check_name(name)?;
        let tmp = self.temp_dir("archive")?;
        let layout = layout_from_archive(archive, &tmp.0, Some(name)).map_err(|e| match e {
            LayoutError::Archive(ImageArchiveError::Extract { archive, source }) => {
                StoreError::Archive { archive, source }
            }
            LayoutError::Archive(ImageArchiveError::NotAnImage { archive, .. }) => {
                StoreError::NotALayout { archive }
            }
            other => StoreError::Layout(other),
        })?;
        self.import(&layout.dir, name)
    }

    /// Finds a stack by name (`tiny`), by digest (`sha256:<hex>`), or by a unique hex prefix of
    /// at least [`MIN_DIGEST_PREFIX`] characters (with or without `sha256:`).
    pub fn resolve(&self, name_or_digest: &str) -> Result<StackImage, StoreError> {
        if check_name(name_or_digest).is_ok() {
            if let Some(record) = self.read_name(name_or_digest)? {
                return self.load(&digest_hex(&record.digest)?, Some(record.name));
            }
        }
        let prefix = name_or_digest
            .strip_prefix("sha256:")
            .unwrap_or(name_or_digest);
        let is_hex = prefix
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if is_hex && (MIN_DIGEST_PREFIX..=64).contains(&prefix.len()) {
            let matches: Vec<String> = self
                .image_hexes()?
                .into_iter()
                .filter(|h| h.starts_with(prefix))
                .collect();
            match matches.as_slice() {
                [] => {}
                [hex] => return self.load(hex, self.name_for(hex)?),
                many => {
                    return Err(StoreError::AmbiguousDigest {
                        prefix: name_or_digest.to_string(),
                        matches: many.iter().map(|h| format!("sha256:{h}")).collect(),
                    })
                }
            }
        }
        Err(StoreError::UnknownStack {
            name: name_or_digest.to_string(),
        })
    }

    /// Every image in the store: one entry per name (sorted by name), then the images no name
    /// points at. Names whose image is gone are skipped with a warning.
    pub fn list(&self) -> Result<Vec<StackImage>, StoreError> {
        let mut out = Vec::new();
        let mut named = HashSet::new();
        for record in self.name_records()? {
            let hex = digest_hex(&record.digest)?;
            match self.load(&hex, Some(record.name)) {
                Ok(image) => out.push(image),
                Err(e @ StoreError::DanglingName { .. }) => tracing::warn!("{e}"),
                Err(e) => return Err(e),
            }
            named.insert(hex);
        }
        for hex in self.image_hexes()? {
            if !named.contains(&hex) {
                out.push(self.load(&hex, None)?);
            }
        }
        Ok(out)
    }

    fn image_dir(&self, hex: &str) -> PathBuf {
        self.root.join("images").join(hex)
    }

    fn name_path(&self, name: &str) -> PathBuf {
        self.root.join("names").join(format!("{name}.json"))
    }

    /// Unpacks into a temporary directory, flushes it, and renames it into `images/<hex>`.
    fn unpack(&self, layout_dir: &Path, image: &LayoutImage, hex: &str) -> Result<(), StoreError> {
        let tmp = self.temp_dir("import")?;
        unpack_image(layout_dir, image, &tmp.0.join("rootfs")).map_err(|source| {
            StoreError::Unpack {
                digest: image.manifest_digest.clone(),
                source,
            }
        })?;
        let config = image.config.config().clone().unwrap_or_default();
        let record = ImageRecord {
            digest: image.manifest_digest.clone(),
            env: config.env().clone().unwrap_or_default(),
            user: config.user().clone(),
            working_dir: config.working_dir().clone(),
            imported_at: crate::time::rfc3339(SystemTime::now()),
            layers: image
                .manifest
                .layers()
                .iter()
                .map(|l| l.digest().to_string())
                .collect(),
        };
        write_atomic(&tmp.0.join(IMAGE_RECORD), &to_json(&record))?;
        sync_filesystem(&tmp.0)?;
        let dest = self.image_dir(hex);
        match fs::rename(&tmp.0, &dest) {
            Ok(()) => Ok(()),
            // Another import of the same image finished first; keep its copy.
            Err(_) if dest.join(IMAGE_RECORD).exists() => Ok(()),
            Err(source) => Err(StoreError::Io { path: dest, source }),
        }
    }

    fn load(&self, hex: &str, name: Option<String>) -> Result<StackImage, StoreError> {
        let dir = self.image_dir(hex);
        let path = dir.join(IMAGE_RECORD);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(match name {
                    Some(name) => StoreError::DanglingName {
                        name,
                        digest: format!("sha256:{hex}"),
                    },
                    None => StoreError::UnknownStack {
                        name: format!("sha256:{hex}"),
                    },
                })
            }
            Err(source) => return Err(StoreError::Io { path, source }),
        };
        let record: ImageRecord = serde_json::from_slice(&bytes)
            .map_err(|source| StoreError::Metadata { path, source })?;
        Ok(StackImage {
            name,
            digest: record.digest,
            rootfs: dir.join("rootfs"),
            env: record.env,
            user: record.user,
            working_dir: record.working_dir,
            imported_at: record.imported_at,
        })
    }

    fn read_name(&self, name: &str) -> Result<Option<NameRecord>, StoreError> {
        let path = self.name_path(name);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| StoreError::Metadata { path, source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::Io { path, source }),
        }
    }

    fn name_records(&self) -> Result<Vec<NameRecord>, StoreError> {
        let mut records = Vec::new();
        for file in sorted_names(&self.root.join("names"))? {
            if let Some(name) = file.strip_suffix(".json").filter(|n| check_name(n).is_ok()) {
                records.extend(self.read_name(name)?);
            }
        }
        Ok(records)
    }

    fn name_for(&self, hex: &str) -> Result<Option<String>, StoreError> {
        let digest = format!("sha256:{hex}");
        Ok(self
            .name_records()?
            .into_iter()
            .find(|r| r.digest == digest)
            .map(|r| r.name))
    }

    /// Hex digests of the complete images in the store, sorted.
    fn image_hexes(&self) -> Result<Vec<String>, StoreError> {
        Ok(sorted_names(&self.root.join("images"))?
            .into_iter()
            .filter(|h| self.image_dir(h).join(IMAGE_RECORD).exists())
            .collect())
    }

    fn temp_dir(&self, kind: &str) -> Result<TempDir, StoreError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let path = self
            .root
            .join("tmp")
            .join(format!("{kind}-{pid}-{nanos}-{n}"));
        fs::create_dir(&path).map_err(|source| StoreError::Io {
            path: path.clone(),
            source,
        })?;
        Ok(TempDir(path))
    }

    fn clean_stale_temps(&self) {
        let tmp = self.root.join("tmp");
        let Ok(names) = sorted_names(&tmp) else {
            return;
        };
        for name in names {
            let pid = name.split('-').nth(1).and_then(|p| p.parse::<u32>().ok());
            let alive = pid.is_some_and(|p| Path::new("/proc").join(p.to_string()).exists());
            if !alive {
                tracing::info!(dir = %name, "removing a temporary directory left by a dead import");
                if let Err(e) = fs::remove_dir_all(tmp.join(&name)) {
                    tracing::warn!(dir = %name, "could not remove: {e}");
                }
            }
        }
    }
}
