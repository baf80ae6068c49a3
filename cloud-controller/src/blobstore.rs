//! The blobstore: packages, droplets and build caches as files named by their sha256, written
//! atomically (a temp file renamed into place once its digest is known), streamed in and out
//! with bounded memory, and verified on read. Behind [`Blobstore`] so that an S3-compatible
//! store can follow.

use std::io;
use std::path::{Path, PathBuf};

use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

/// A stored blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    /// Hex sha256 of the content.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

/// Why a blob could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// More than the limit was sent.
    #[error("the upload is larger than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// No blob with that digest.
    #[error("no blob {0}")]
    NotFound(String),
    /// The content no longer matches its digest.
    #[error("blob {0} is corrupt: its content does not match its sha256")]
    Corrupt(String),
    /// The sender's stream failed.
    #[error("reading the upload: {0}")]
    Source(String),
    /// Disk I/O.
    #[error("blobstore I/O on {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Where blobs live.
pub trait Blobstore: Send + Sync {
    /// Stores the stream (at most `limit` bytes) and returns its digest and size.
    fn put<S, E>(
        &self,
        stream: S,
        limit: u64,
    ) -> impl std::future::Future<Output = Result<Blob, BlobError>> + Send
    where
        S: Stream<Item = Result<bytes::Bytes, E>> + Send + Unpin,
        E: std::fmt::Display + Send;
    /// A local path to read blob `sha256` from, after checking its digest.
    fn open_verified(
        &self,
        sha256: &str,
    ) -> impl std::future::Future<Output = Result<PathBuf, BlobError>> + Send;
}

/// Blobs as files under a directory: `<root>/<aa>/<sha256>`.
#[derive(Debug, Clone)]
pub struct LocalBlobstore {
    root: PathBuf,
}

impl LocalBlobstore {
    /// A blobstore in `root` (created if missing).
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, BlobError> {
        let root = root.into();
        for dir in [root.clone(), root.join("tmp")] {
            std::fs::create_dir_all(&dir).map_err(|source| BlobError::Io {
                path: dir.clone(),
                source,
            })?;
        }
        Ok(LocalBlobstore { root })
    }

    fn path_of(&self, sha256: &str) -> PathBuf {
        self.root.join(sha256.get(..2).unwrap_or("xx")).join(sha256)
    }

    fn io(path: &Path) -> impl FnOnce(io::Error) -> BlobError + '_ {
        move |source| BlobError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// A temp file removed on drop (a no-op once it was renamed into place).
struct Partial(PathBuf);

impl Drop for Partial {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl LocalBlobstore {
    /// Removes partial files left by a controller that stopped mid-upload.
    pub fn sweep_partials(&self) -> Result<usize, BlobError> {
        let dir = self.root.join("tmp");
        let entries = std::fs::read_dir(&dir).map_err(Self::io(&dir))?;
        let mut removed = 0;
        for e in entries.flatten() {
            if std::fs::remove_file(e.path()).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// What a garbage collection removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Collected {
    /// Blobs removed.
    pub blobs: usize,
    /// Their bytes.
    pub bytes: u64,
}

fn is_digest(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

impl LocalBlobstore {
    /// Removes every blob not in `keep` whose file is older than `grace` (so a blob stored a
    /// moment ago, whose record is about to be written, stays). Only `<aa>/<sha256>` files are
    /// considered; anything else under the root is left alone.
    pub fn collect_garbage(
        &self,
        keep: &std::collections::HashSet<String>,
        grace: std::time::Duration,
    ) -> Result<Collected, BlobError> {
        let mut collected = Collected::default();
        let shards = std::fs::read_dir(&self.root).map_err(Self::io(&self.root))?;
        for shard in shards.flatten() {
            let name = shard.file_name();
            let is_shard = name.len() == 2
                && name
                    .to_str()
                    .is_some_and(|n| n.bytes().all(|b| b.is_ascii_hexdigit()));
            if !is_shard || !shard.path().is_dir() {
                continue;
            }
            let dir = shard.path();
            for blob in std::fs::read_dir(&dir).map_err(Self::io(&dir))?.flatten() {
                let name = blob.file_name().to_string_lossy().into_owned();
                if !is_digest(&name) || keep.contains(&name) {
                    continue;
                }
                let Ok(meta) = blob.metadata() else { continue };
                let age = meta.modified().ok().and_then(|m| m.elapsed().ok());
                if age.is_none_or(|a| a < grace) {
                    continue;
                }
                if std::fs::remove_file(blob.path()).is_ok() {
                    collected.blobs += 1;
                    collected.bytes += meta.len();
                }
            }
        }
        Ok(collected)
    }
}

impl Blobstore for LocalBlobstore {
    async fn put<S, E>(&self, mut stream: S, limit: u64) -> Result<Blob, BlobError>
    where
        S: Stream<Item = Result<bytes::Bytes, E>> + Send + Unpin,
        E: std::fmt::Display + Send,
    {
        let tmp = self.root.join("tmp").join(uuid::Uuid::new_v4().to_string());
        // Removes the partial file however this ends (an error, or the upload dropped).
        let _partial = Partial(tmp.clone());
        let result = async {
            let mut file = tokio::fs::File::create(&tmp)
                .await
                .map_err(Self::io(&tmp))?;
            let mut hash = Sha256::new();
            let mut size = 0u64;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| BlobError::Source(e.to_string()))?;
                size += chunk.len() as u64;
                if size > limit {
                    return Err(BlobError::TooLarge { limit });
                }
                hash.update(&chunk);
                file.write_all(&chunk).await.map_err(Self::io(&tmp))?;
            }
            file.sync_all().await.map_err(Self::io(&tmp))?;
            let sha256 = hex::encode(hash.finalize());
            let dest = self.path_of(&sha256);
            if let Some(dir) = dest.parent() {
                tokio::fs::create_dir_all(dir)
                    .await
                    .map_err(Self::io(dir))?;
            }
            tokio::fs::rename(&tmp, &dest)
                .await
                .map_err(Self::io(&dest))?;
            Ok(Blob { sha256, size })
        }
        .await;
        result
    }

    async fn open_verified(&self, sha256: &str) -> Result<PathBuf, BlobError> {
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(BlobError::NotFound(sha256.to_string()));
        }
        let path = self.path_of(sha256);
        let check = path.clone();
        let actual = tokio::task::spawn_blocking(move || -> io::Result<String> {
            let mut file = std::fs::File::open(&check)?;
            let mut hash = Sha256::new();
            io::copy(&mut file, &mut hash)?;
            Ok(hex::encode(hash.finalize()))
        })
        .await
        .map_err(|e| BlobError::Source(e.to_string()))?;
        match actual {
            Ok(actual) if actual == sha256 => Ok(path),
            Ok(_) => Err(BlobError::Corrupt(sha256.to_string())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(BlobError::NotFound(sha256.to_string()))
            }
            Err(source) => Err(BlobError::Io { path, source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(parts: &[&'static [u8]]) -> impl Stream<Item = Result<bytes::Bytes, String>> + Unpin {
        futures::stream::iter(
            parts
                .iter()
                .map(|p| Ok(bytes::Bytes::from_static(p)))
                .collect::<Vec<_>>(),
        )
    }

    #[tokio::test]
    async fn blobs_are_named_by_digest_limited_and_verified() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalBlobstore::open(dir.path()).unwrap();
        let blob = store
            .put(chunks(&[b"hello ", b"world"]), 100)
            .await
            .unwrap();
        assert_eq!(blob.sha256, hex::encode(Sha256::digest(b"hello world")));
        assert_eq!(blob.size, 11);
        let path = store.open_verified(&blob.sha256).await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"hello world");
        let err = store
            .put(chunks(&[b"0123456789", b"x"]), 10)
            .await
            .unwrap_err();
        assert!(matches!(err, BlobError::TooLarge { limit: 10 }));
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0,
            "no partial file left"
        );
        std::fs::write(&path, "tampered").unwrap();
        assert!(matches!(
            store.open_verified(&blob.sha256).await,
            Err(BlobError::Corrupt(_))
        ));
        assert!(matches!(
            store.open_verified("../etc/passwd").await,
            Err(BlobError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn garbage_collection_removes_only_old_unreferenced_blobs() {
        use std::time::{Duration, SystemTime};
        let dir = tempfile::tempdir().unwrap();
        let store = LocalBlobstore::open(dir.path()).unwrap();
        let kept = store.put(chunks(&[b"kept"]), 100).await.unwrap();
        let old = store.put(chunks(&[b"old garbage"]), 100).await.unwrap();
        let new = store.put(chunks(&[b"new"]), 100).await.unwrap();
        let hour_ago = SystemTime::now() - Duration::from_secs(3600);
        for b in [&kept, &old] {
            let f = std::fs::File::options()
                .write(true)
                .open(store.path_of(&b.sha256))
                .unwrap();
            f.set_modified(hour_ago).unwrap();
        }
        let other = dir.path().join("resources");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("x"), "not a blob").unwrap();
        let keep = [kept.sha256.clone()].into_iter().collect();
        let collected = store
            .collect_garbage(&keep, Duration::from_secs(60))
            .unwrap();
        assert_eq!(
            collected,
            Collected {
                blobs: 1,
                bytes: 11
            }
        );
        assert!(store.open_verified(&kept.sha256).await.is_ok());
        assert!(
            store.open_verified(&new.sha256).await.is_ok(),
            "inside the grace period"
        );
        assert!(matches!(
            store.open_verified(&old.sha256).await,
            Err(BlobError::NotFound(_))
        ));
        assert!(other.join("x").exists(), "files that are not blobs stay");
    }
}
