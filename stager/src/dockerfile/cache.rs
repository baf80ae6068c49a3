//! The layer cache: layers of earlier builds by step key, and the base layers of stacks.
//!
//! A step's key is the sha256 of its parent's key and what the step does (the instruction
//! after substitution; for `RUN` also the build args in scope; for `COPY`/`ADD` a digest of the
//! sources' names, modes and contents, not their mtimes). Keys chain from the base (the stack's
//! digest and the build's [`cache_scope`](super::BuildOptions::cache_scope)), so an unchanged
//! prefix of a Dockerfile maps to the same keys on the next build of the same scope.
//!
//! Builds may share a cache at once, in one process or several: entries, blobs and base
//! records appear only by renaming a complete temporary file or directory of the build's own,
//! nothing is ever removed by a build, and two builds making the same step keep the first one
//! stored (the other uses it from then on). [`sweep`] removes what crashed builds left.
//!
//! ```text
//! <cache>/blobs/sha256/<hex>        gzip layer blobs (the layout writer's blob store)
//! <cache>/bases/<stack hex>.json    the base layer made from a stack's unpacked tree
//! <cache>/steps/<key>/layer.json    a step's layer: blob digest, size and diff id
//! <cache>/steps/<key>/layer/        the same layer unpacked, overlay form (see
//!                                   kiln_containers::backend::convert_changes)
//! <cache>/tmp/                      steps being made, renamed into steps/ when complete
//! ```

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use kiln_rootfs::layout::{write_tree_layer, LayerBlob};
use oci_spec::image::{Descriptor, MediaType, Sha256Digest};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::error::DockerfileError;

/// A layer in the cache.
#[derive(Debug, Clone)]
pub(crate) struct CachedLayer {
    /// The layer unpacked (overlay form), for stacking under `RUN` containers.
    pub dir: PathBuf,
    /// The blob in `<cache>/blobs`.
    pub blob: LayerBlob,
}

#[derive(Debug, Serialize, Deserialize)]
struct LayerRecord {
    digest: String,
    size: u64,
    diff_id: String,
}

impl LayerRecord {
    fn of(blob: &LayerBlob) -> Self {
        LayerRecord {
            digest: blob.descriptor.digest().to_string(),
            size: blob.descriptor.size(),
            diff_id: blob.diff_id.clone(),
        }
    }

    fn blob(&self) -> Option<LayerBlob> {
        let hex = self.digest.strip_prefix("sha256:")?;
        let digest: Sha256Digest = hex.parse().ok()?;
        Some(LayerBlob {
            descriptor: Descriptor::new(MediaType::ImageLayerGzip, self.size, digest),
            diff_id: self.diff_id.clone(),
        })
    }
}

/// The cache directory.
#[derive(Debug, Clone)]
pub(crate) struct Cache {
    root: PathBuf,
}

impl Cache {
    pub fn open(root: &Path) -> Result<Cache, DockerfileError> {
        for dir in ["blobs/sha256", "bases", "steps", "tmp"] {
            let path = root.join(dir);
            fs::create_dir_all(&path).map_err(DockerfileError::io("creating", &path))?;
        }
        Ok(Cache {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The key of a step: `parent` chained with `parts`.
    pub fn key(parent: &str, parts: &[&[u8]]) -> String {
        let mut h = Sha256::new();
        h.update(parent.as_bytes());
        for part in parts {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        hex::encode(h.finalize())
    }

    /// The blob file of `digest`.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.root.join("blobs/sha256").join(hex)
    }

    /// The layer of step `key`, if an earlier build made it.
    pub fn get(&self, key: &str) -> Result<Option<CachedLayer>, DockerfileError> {
        let entry = self.root.join("steps").join(key);
        let record_path = entry.join("layer.json");
        let Ok(text) = fs::read(&record_path) else {
            return Ok(None);
        };
        let corrupt = |reason: String| DockerfileError::Cache {
            path: entry.clone(),
            reason,
        };
        let record: LayerRecord =
            serde_json::from_slice(&text).map_err(|e| corrupt(e.to_string()))?;
        let blob = record
            .blob()
            .ok_or_else(|| corrupt(format!("bad digest {}", record.digest)))?;
        if !self.blob_path(&record.digest).is_file() || !entry.join("layer").is_dir() {
            return Err(corrupt(format!(
                "its blob {} or layer dir is missing",
                record.digest
            )));
        }
        Ok(Some(CachedLayer {
            dir: entry.join("layer"),
            blob,
        }))
    }

    /// A fresh directory under `<cache>/tmp` for making a step (removed on drop).
    pub fn scratch(&self) -> Result<tempfile::TempDir, DockerfileError> {
        let tmp = self.root.join("tmp");
        tempfile::Builder::new()
            .prefix(&format!("step-{}-", std::process::id()))
            .tempdir_in(&tmp)
            .map_err(DockerfileError::io("creating a directory in", tmp))
    }

    /// Stores step `key`: `scratch/layer` (overlay form), archived into a blob, or with
    /// `separate_oci` `scratch/oci` (its OCI form, archived and then removed). Mtimes later
    /// than `clamp_mtime` are archived as it.
    pub fn put(
        &self,
        key: &str,
        scratch: tempfile::TempDir,
        separate_oci: bool,
        clamp_mtime: u64,
    ) -> Result<CachedLayer, DockerfileError> {
        let oci = scratch
            .path()
            .join(if separate_oci { "oci" } else { "layer" });
        let tree = write_tree_layer(&self.root, &oci, clamp_mtime)?;
        if separate_oci {
            fs::remove_dir_all(&oci).map_err(DockerfileError::io("removing", &oci))?;
        }
        let record = serde_json::to_vec(&LayerRecord::of(&tree.blob)).unwrap_or_default();
        let record_path = scratch.path().join("layer.json");
        fs::write(&record_path, record).map_err(DockerfileError::io("writing", &record_path))?;
        let entry = self.root.join("steps").join(key);
        let made = scratch.keep();
        if let Err(e) = fs::rename(&made, &entry) {
            // Another build made it first: theirs is as good.
            let _ = fs::remove_dir_all(&made);
            if !entry.join("layer.json").is_file() {
                return Err(DockerfileError::io("storing the layer in", &entry)(e));
            }
        }
        self.get(key)?.ok_or_else(|| DockerfileError::Cache {
            path: entry,
            reason: "vanished after it was stored".into(),
        })
    }

    /// The base layer made from `rootfs`, the tree of stack `digest`: archived once.
    pub fn base(&self, digest: &str, rootfs: &Path) -> Result<LayerBlob, DockerfileError> {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        let path = self.root.join("bases").join(format!("{hex}.json"));
        if let Ok(text) = fs::read(&path) {
            if let Some(blob) = serde_json::from_slice::<LayerRecord>(&text)
                .ok()
                .filter(|r| self.blob_path(&r.digest).is_file())
                .and_then(|r| r.blob())
            {
                return Ok(blob);
            }
        }
        let tree = write_tree_layer(&self.root, rootfs, u64::MAX)?;
        let record = serde_json::to_vec(&LayerRecord::of(&tree.blob)).unwrap_or_default();
        // A temp file of this call's own: two builds of one process may make the same base
        // at once (the same blob, so whichever record lands last is as good).
        let bases = self.root.join("bases");
        let prefix = format!(".base-{}-", std::process::id());
        let mut tmp = tempfile::NamedTempFile::with_prefix_in(prefix, &bases)
            .map_err(DockerfileError::io("creating a file in", &bases))?;
        tmp.write_all(&record)
            .map_err(DockerfileError::io("writing", tmp.path().to_path_buf()))?;
        tmp.persist(&path)
            .map_err(|e| DockerfileError::io("writing", &path)(e.error))?;
        Ok(tree.blob)
    }
}

/// Removes what builds of processes that are gone left in the cache at `root` (their pid is
/// in the names; the cache may be shared with live builds of other processes): steps being
/// made (`tmp/step-<pid>-*`), stage views (`tmp/view-<pid>-*`, unmounted first if still
/// mounted, and removed only when empty, so nothing is ever deleted through a mount), and temp
/// files of blobs and base records. A missing cache is no error.
pub fn sweep(root: &Path) {
    let gone = |name: &str| {
        let pid = name.split('-').nth(1).and_then(|p| p.parse::<u32>().ok());
        !pid.is_some_and(|p| Path::new("/proc").join(p.to_string()).exists())
    };
    let entries = |dir: &Path| -> Vec<(PathBuf, String)> {
        fs::read_dir(dir)
            .map(|e| {
                e.flatten()
                    .map(|e| (e.path(), e.file_name().to_string_lossy().into_owned()))
                    .filter(|(_, name)| gone(name))
                    .collect()
            })
            .unwrap_or_default()
    };
    for (path, name) in entries(&root.join("tmp")) {
        let removed = if name.starts_with("step-") {
            fs::remove_dir_all(&path)
        } else if name.starts_with("view-") {
            super::view::unmount(&path).ok();
            fs::remove_dir(&path)
        } else {
            continue;
        };
        if let Err(e) = removed {
            tracing::warn!(path = %path.display(), error = %e, "removing a leftover of an earlier build");
        }
    }
    for dir in [root.join("blobs/sha256"), root.join("bases")] {
        for (path, name) in entries(&dir) {
            if name.starts_with('.') {
                let _ = fs::remove_file(&path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sweep_removes_only_what_dead_processes_left() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let live = cache.scratch().unwrap();
        fs::write(live.path().join("f"), "x").unwrap();
        // No process has pid 4000000000 (above the kernel's pid_max).
        let dead = dir.path().join("tmp/step-4000000000-abc");
        fs::create_dir_all(dead.join("layer")).unwrap();
        let dead_view = dir.path().join("tmp/view-4000000000-abc");
        fs::create_dir(&dead_view).unwrap();
        let dead_blob = dir.path().join("blobs/sha256/.layer.tmp-4000000000-1");
        fs::write(&dead_blob, "partial").unwrap();
        let live_blob = dir
            .path()
            .join(format!("blobs/sha256/.layer.tmp-{}-1", std::process::id()));
        fs::write(&live_blob, "partial").unwrap();
        sweep(dir.path());
        assert!(!dead.exists() && !dead_view.exists() && !dead_blob.exists());
        assert!(live.path().join("f").exists() && live_blob.exists());
        sweep(&dir.path().join("missing"));
    }
}
