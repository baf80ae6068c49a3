//! On-disk helpers of the stack store: the JSON records, temporary directories, name checks
//! and directory listings.

use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::layout::LayoutError;

#[derive(Serialize, Deserialize)]
pub(super) struct NameRecord {
    pub(super) name: String,
    pub(super) digest: String,
}

#[derive(Serialize, Deserialize)]
pub(super) struct ImageRecord {
    pub(super) digest: String,
    pub(super) env: Vec<String>,
    pub(super) user: Option<String>,
    pub(super) working_dir: Option<String>,
    pub(super) imported_at: String,
    pub(super) layers: Vec<String>,
}

/// Removes its directory when dropped (after a successful rename there is nothing left).
pub(super) struct TempDir(pub(super) PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.0) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(dir = %self.0.display(), "could not remove temporary directory: {e}");
            }
        }
    }
}

pub(super) fn check_name(name: &str) -> Result<(), StoreError> {
    let ok = (1..=128).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidName {
            name: name.to_string(),
        })
    }
}

pub(super) fn digest_hex(digest: &str) -> Result<String, StoreError> {
    digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .map(str::to_string)
        .ok_or_else(|| {
            StoreError::Layout(LayoutError::UnsupportedDigest {
                digest: digest.to_string(),
            })
        })
}

pub(super) fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising these plain structs of strings cannot fail.
    serde_json::to_vec_pretty(value).unwrap_or_default()
}

/// The UTF-8 names in `dir` that do not start with `.`, sorted.
pub(super) fn sorted_names(dir: &Path) -> Result<Vec<String>, StoreError> {
    let io_err = |source| StoreError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err)? {
        let entry = entry.map_err(io_err)?;
        if let Some(name) = entry.file_name().to_str().filter(|n| !n.starts_with('.')) {
            names.push(name.to_string());
        }
    }
    names.sort();
    Ok(names)
}

/// Flushes the filesystem holding `dir` so a renamed image is complete even after a crash.
pub(super) fn sync_filesystem(dir: &Path) -> Result<(), StoreError> {
    let io_err = |source| StoreError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let file = File::open(dir).map_err(io_err)?;
    // SAFETY: syncfs only reads the fd, which `file` keeps open for the duration of the call.
    if unsafe { libc::syncfs(file.as_raw_fd()) } != 0 {
        return Err(io_err(io::Error::last_os_error()));
    }
    Ok(())
}
