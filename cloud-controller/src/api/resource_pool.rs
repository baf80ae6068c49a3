//! The resource pool: every file of every package that became READY, stored by its sha1 under
//! the blobstore root (`resources/<ab>/<cd>/<sha1>`), so that a later upload can name files
//! instead of sending them. Files are written to a temp file while their sha1 and size are
//! computed, then renamed into place (a crash leaves only a temp file, swept at start); every
//! read checks the sha1 and size again and drops a file that no longer matches.
//! Files outside `[min, max]` bytes are not pooled, so never matched.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha1::{Digest, Sha1};

use crate::state::AppState;

/// Why the pool could not take or give a file.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// Disk I/O.
    #[error("resource pool I/O on {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The pooled file is gone or no longer has the sha1 and size it is named by.
    #[error("the resource pool has no intact file {sha1} of {size} bytes")]
    Missing {
        /// Its sha1.
        sha1: String,
        /// Its size.
        size: u64,
    },
    /// Writing where the file goes.
    #[error("writing a pooled file out: {0}")]
    Out(#[source] io::Error),
    /// A package to take files from could not be read.
    #[error("reading the package: {0}")]
    Package(String),
}

/// The pool of one controller (cheap to make: it is a directory and two limits).
#[derive(Debug, Clone)]
pub struct ResourcePool {
    root: PathBuf,
    tmp: PathBuf,
    min: u64,
    max: u64,
}

impl ResourcePool {
    /// The pool under `blob_root`, writing temp files in `<blob_root>/tmp` (swept at start).
    pub fn new(blob_root: &Path, min: u64, max: u64) -> ResourcePool {
        ResourcePool {
            root: blob_root.join("resources"),
            tmp: blob_root.join("tmp"),
            min,
            max,
        }
    }

    /// The pool of the running controller.
    pub fn of(s: &AppState) -> ResourcePool {
        let c = &s.config;
        Self::new(
            &c.data_dir.join("blobs"),
            c.resource_pool_min_bytes,
            c.resource_pool_max_bytes,
        )
    }

    fn path_of(&self, sha1: &str) -> Option<PathBuf> {
        let ok = sha1.len() == 40 && sha1.bytes().all(|b| b.is_ascii_hexdigit());
        ok.then(|| self.root.join(&sha1[..2]).join(&sha1[2..4]).join(sha1))
    }

    fn pooled_size(&self, size: u64) -> bool {
        (self.min..=self.max).contains(&size)
    }

    /// Whether the pool holds `sha1` with `size` bytes (by name and size; the content is
    /// checked when it is used).
    pub fn has(&self, sha1: &str, size: u64) -> bool {
        self.pooled_size(size)
            && self
                .path_of(sha1)
                .and_then(|p| std::fs::metadata(p).ok())
                .is_some_and(|m| m.is_file() && m.len() == size)
    }

    /// Copies `sha1` (`size` bytes) into `out`, checking both; a pooled file that fails the
    /// check is removed so that it is no longer matched.
    pub fn copy_to(&self, sha1: &str, size: u64, out: &mut impl Write) -> Result<(), PoolError> {
        let missing = || PoolError::Missing {
            sha1: sha1.to_string(),
            size,
        };
        let path = self.path_of(sha1).ok_or_else(missing)?;
        let file = std::fs::File::open(&path).map_err(|_| missing())?;
        let mut hashing = Hashing::new(out);
        let n = io::copy(&mut file.take(size.saturating_add(1)), &mut hashing)
            .map_err(PoolError::Out)?;
        if n != size || hex::encode(hashing.hash.finalize()) != sha1 {
            tracing::warn!(sha1, "a pooled file no longer matches its sha1: removed");
            let _ = std::fs::remove_file(&path);
            return Err(missing());
        }
        Ok(())
    }

    /// Adds `content` (said to be `size` bytes): written to a temp file while hashed, renamed
    /// into place. Content whose length is not `size`, or a size outside the pooled range, is
    /// not added.
    fn add(&self, content: &mut impl Read, size: u64) -> Result<bool, PoolError> {
        if !self.pooled_size(size) {
            return Ok(false);
        }
        let tmp = self.tmp.join(format!("pool-{}", uuid::Uuid::new_v4()));
        let _guard = RemoveOnDrop(tmp.clone());
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| PoolError::Io { path, source }
        };
        let file = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
        let mut hashing = Hashing::new(io::BufWriter::new(file));
        let n = io::copy(&mut content.take(size.saturating_add(1)), &mut hashing)
            .map_err(io_err(&tmp))?;
        hashing.out.flush().map_err(io_err(&tmp))?;
        if n != size {
            return Ok(false);
        }
        let sha1 = hex::encode(hashing.hash.finalize());
        let Some(dest) = self.path_of(&sha1) else {
            return Ok(false);
        };
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        std::fs::rename(&tmp, &dest).map_err(io_err(&dest))?;
        Ok(true)
    }

    /// Adds every regular file of the package at `path` (a zip or a tar.gz); returns how many
    /// were pooled.
    pub fn add_package(&self, path: &Path) -> Result<usize, PoolError> {
        let mut file = std::fs::File::open(path).map_err(|e| PoolError::Package(e.to_string()))?;
        let mut magic = [0u8; 2];
        file.read_exact(&mut magic)
            .map_err(|e| PoolError::Package(e.to_string()))?;
        let damaged = |e: &dyn std::fmt::Display| PoolError::Package(e.to_string());
        let mut added = 0;
        if magic == [0x1f, 0x8b] {
            let file = std::fs::File::open(path).map_err(|e| damaged(&e))?;
            let gz = flate2::read::GzDecoder::new(io::BufReader::new(file));
            let mut tar = tar::Archive::new(gz);
            for entry in tar.entries().map_err(|e| damaged(&e))? {
                let mut entry = entry.map_err(|e| damaged(&e))?;
                if entry.header().entry_type().is_file() {
                    let size = entry.size();
                    added += usize::from(self.add(&mut entry, size)?);
                }
            }
            return Ok(added);
        }
        let mut zip = zip::ZipArchive::new(file).map_err(|e| damaged(&e))?;
        for i in 0..zip.len() {
            let mut entry = zip.by_index(i).map_err(|e| damaged(&e))?;
            let kind = entry.unix_mode().map(|m| m & 0o170000);
            if entry.is_file() && matches!(kind, None | Some(0) | Some(0o100000)) {
                let size = entry.size();
                added += usize::from(self.add(&mut entry, size)?);
            }
        }
        Ok(added)
    }
}

/// A writer that hashes what goes through it.
struct Hashing<W> {
    out: W,
    hash: Sha1,
}

impl<W: Write> Hashing<W> {
    fn new(out: W) -> Self {
        Hashing {
            out,
            hash: Sha1::new(),
        }
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// A temp file removed however its writer ends (a no-op once renamed into place).
pub struct RemoveOnDrop(pub PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_pooled_by_sha1_and_size_and_checked_on_use() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        let pool = ResourcePool::new(dir.path(), 2, 100);
        let sha = hex::encode(Sha1::digest(b"hello"));
        assert!(!pool.has(&sha, 5));
        assert!(pool.add(&mut &b"hello"[..], 5).unwrap());
        assert!(!pool.add(&mut &b"x"[..], 1).unwrap(), "below the minimum");
        assert!(
            !pool.add(&mut &b"short"[..], 9).unwrap(),
            "not the size said"
        );
        assert!(pool.has(&sha, 5) && !pool.has(&sha, 4) && !pool.has("../etc", 5));
        assert!(dir
            .path()
            .join(format!("resources/{}/{}/{sha}", &sha[..2], &sha[2..4]))
            .is_file());
        let mut out = Vec::new();
        pool.copy_to(&sha, 5, &mut out).unwrap();
        assert_eq!(out, b"hello");
        let path = pool.path_of(&sha).unwrap();
        std::fs::write(&path, "jello").unwrap();
        assert!(matches!(
            pool.copy_to(&sha, 5, &mut Vec::new()),
            Err(PoolError::Missing { .. })
        ));
        assert!(!path.exists(), "a damaged file leaves the pool");
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }

    #[test]
    fn the_regular_files_of_a_tar_gz_are_pooled() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        let pool = ResourcePool::new(dir.path(), 1, 100);
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let mut tar = tar::Builder::new(gz);
        let mut header = tar::Header::new_gnu();
        header.set_size(5);
        tar.append_data(&mut header, "app/a.txt", &b"tarry"[..])
            .unwrap();
        let mut link = tar::Header::new_gnu();
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_size(0);
        tar.append_link(&mut link, "app/l", "a.txt").unwrap();
        let bytes = tar.into_inner().unwrap().finish().unwrap();
        std::fs::write(dir.path().join("p.tgz"), bytes).unwrap();
        assert_eq!(pool.add_package(&dir.path().join("p.tgz")).unwrap(), 1);
        assert!(pool.has(&hex::encode(Sha1::digest(b"tarry")), 5));
    }
}
