//! Droplets on the cell: downloaded from the controller's internal endpoint (streamed, with the
//! internal credential, sha256 checked as the bytes arrive), kept in a size-capped cache
//! (least recently used first out), and unpacked once per sha256 into a directory laid out
//! like a root filesystem (`home/vcap/app`, ...) that containers get as a read-only layer
//! ([`kiln_containers::ContainerSpec::layers`]): later starts of the same droplet neither
//! download nor extract again, and a droplet in use is never evicted.
//!
//! Layout under `<data_dir>/droplets`: `blobs/<sha256>.tgz`, `layers/<sha256>/`, `tmp/`
//! (partial downloads and unpacks, emptied at start).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tracing::info;

use crate::error::DropletError;

/// The uid and gid of `vcap` in Kiln's stacks (tiny and bookworm): droplet files are stored
/// with it, unshifted, and the idmapped layer mount maps it into each container's range.
pub const VCAP_ID: u32 = 2000;

/// The internal credential. Its `Debug` does not show it.
#[derive(Clone)]
pub struct Token(String);

impl Token {
    /// Reads the credential from `path` (surrounding whitespace removed); `None` if empty.
    pub fn from_file(path: &Path) -> std::io::Result<Option<Token>> {
        let text = std::fs::read_to_string(path)?;
        let text = text.trim();
        Ok((!text.is_empty()).then(|| Token(text.to_string())))
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(..)")
    }
}

/// A droplet ready to be a container layer; hand it back with [`DropletCache::release`].
#[derive(Debug, Clone)]
pub struct Layer {
    /// The droplet's sha256.
    pub sha256: String,
    /// The unpacked droplet (a root filesystem layer).
    pub path: PathBuf,
    /// It was downloaded for this start.
    pub downloaded: bool,
    /// It was unpacked for this start.
    pub unpacked: bool,
}

/// The droplet cache of a cell.
#[derive(Debug)]
pub struct DropletCache {
    root: PathBuf,
    limit_bytes: u64,
    client: reqwest::Client,
    token: Option<Token>,
    downloads: AtomicU64,
    unpacks: AtomicU64,
    temp_names: AtomicU64,
    state: Mutex<CacheState>,
}

#[derive(Debug, Default)]
struct CacheState {
    /// Containers using each layer.
    in_use: HashMap<String, usize>,
    /// One preparation per sha256 at a time.
    locks: HashMap<String, Arc<tokio::sync::Mutex<()>>>,
}

impl DropletCache {
    /// Opens the cache under `root`, removing partial work a previous run left.
    pub fn open(
        root: &Path,
        limit_bytes: u64,
        token: Option<Token>,
    ) -> Result<DropletCache, DropletError> {
        let tmp = root.join("tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(DropletError::io("clean", &tmp))?;
        }
        for dir in [root.join("blobs"), root.join("layers"), tmp] {
            std::fs::create_dir_all(&dir).map_err(DropletError::io("create", &dir))?;
        }
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(60))
            .no_proxy()
            .build()
            .map_err(|e| DropletError::Download {
                url: String::new(),
                message: format!("building the HTTP client: {e}"),
            })?;
        Ok(DropletCache {
            root: root.to_path_buf(),
            limit_bytes,
            client,
            token,
            downloads: AtomicU64::new(0),
            unpacks: AtomicU64::new(0),
            temp_names: AtomicU64::new(0),
            state: Mutex::new(CacheState::default()),
        })
    }

    /// How many droplets were downloaded since start.
    pub fn downloads(&self) -> u64 {
        self.downloads.load(Ordering::Relaxed)
    }

    /// How many droplets were unpacked since start.
    pub fn unpacks(&self) -> u64 {
        self.unpacks.load(Ordering::Relaxed)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, CacheState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The droplet `sha256` from `url`, downloaded and unpacked if it is not here yet, and
    /// marked in use until [`DropletCache::release`].
    pub async fn acquire(&self, url: &str, sha256: &str) -> Result<Layer, DropletError> {
        let sha = sha256.to_ascii_lowercase();
        if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(DropletError::BadSha(sha256.to_string()));
        }
        let lock = self.state().locks.entry(sha.clone()).or_default().clone();
        let _guard = lock.lock().await;
        let blob = self.root.join("blobs").join(format!("{sha}.tgz"));
        let path = self.root.join("layers").join(&sha);
        let (mut downloaded, mut unpacked) = (false, false);
        if !path.is_dir() {
            if !blob.is_file() {
                self.download(url, Some(&sha), &blob).await?;
                downloaded = true;
            }
            self.unpack(&blob, &path).await?;
            unpacked = true;
        }
        // The blob's mtime is its last use, for eviction.
        if let Ok(file) = std::fs::File::options().append(true).open(&blob) {
            let _ = file.set_modified(SystemTime::now());
        }
        *self.state().in_use.entry(sha.clone()).or_default() += 1;
        self.evict();
        Ok(Layer {
            sha256: sha,
            path,
            downloaded,
            unpacked,
        })
    }

    /// The lock that keeps one preparation of `key` at a time.
    pub(crate) fn lock_for(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.state()
            .locks
            .entry(key.to_string())
            .or_default()
            .clone()
    }

    /// A fresh path in the cache's temporary directory.
    pub(crate) fn temp_path(&self, stem: &str) -> PathBuf {
        let n = self.temp_names.fetch_add(1, Ordering::Relaxed);
        self.root.join("tmp").join(format!("{stem}-{n}"))
    }

    /// A container no longer uses `layer`.
    pub fn release(&self, layer: &Layer) {
        let mut state = self.state();
        if let Some(n) = state.in_use.get_mut(&layer.sha256) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                state.in_use.remove(&layer.sha256);
            }
        }
    }

    /// Streams `url` into `blob` (through a temporary file), checking its sha256 against
    /// `sha` when given.
    pub(crate) async fn download(
        &self,
        url: &str,
        sha: Option<&str>,
        blob: &Path,
    ) -> Result<(), DropletError> {
        let shown = shown_url(url);
        let parsed = reqwest::Url::parse(url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| DropletError::BadUrl(shown.clone()))?;
        let failed = |e: reqwest::Error| DropletError::Download {
            url: shown.clone(),
            message: e.without_url().to_string(),
        };
        let mut request = self.client.get(parsed);
        if let Some(Token(token)) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(failed)?;
        if !response.status().is_success() {
            return Err(DropletError::Status {
                url: shown,
                status: response.status().as_u16(),
            });
        }
        let too_large = DropletError::TooLarge {
            limit_mib: self.limit_bytes >> 20,
        };
        if response
            .content_length()
            .is_some_and(|n| n > self.limit_bytes)
        {
            return Err(too_large);
        }
        let n = self.downloads.fetch_add(1, Ordering::Relaxed);
        let tmp = self.root.join("tmp").join(format!("download-{n}"));
        let result = async {
            let mut file = tokio::fs::File::create(&tmp)
                .await
                .map_err(DropletError::io("create", &tmp))?;
            let (mut hash, mut written) = (Sha256::new(), 0u64);
            let mut body = response.bytes_stream();
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(failed)?;
                written += chunk.len() as u64;
                if written > self.limit_bytes {
                    return Err(too_large);
                }
                hash.update(&chunk);
                file.write_all(&chunk)
                    .await
                    .map_err(DropletError::io("write", &tmp))?;
            }
            file.flush()
                .await
                .map_err(DropletError::io("write", &tmp))?;
            let actual = hex::encode(hash.finalize());
            if let Some(sha) = sha.filter(|sha| *sha != actual) {
                return Err(DropletError::Checksum {
                    expected: sha.to_string(),
                    actual,
                });
            }
            tokio::fs::rename(&tmp, blob)
                .await
                .map_err(DropletError::io("store", blob))?;
            info!(sha256 = actual, bytes = written, url = %shown, "downloaded");
            Ok(())
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }

    async fn unpack(&self, blob: &Path, layer: &Path) -> Result<(), DropletError> {
        let n = self.unpacks.fetch_add(1, Ordering::Relaxed);
        let tmp = self.root.join("tmp").join(format!("layer-{n}"));
        let (blob, layer_) = (blob.to_path_buf(), layer.to_path_buf());
        let tmp_ = tmp.clone();
        let result = tokio::task::spawn_blocking(move || unpack_into(&blob, &tmp_, &layer_))
            .await
            .map_err(|e| DropletError::Unpack(e.to_string()))
            .and_then(|r| r);
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        } else {
            info!(layer = %layer.display(), "droplet.unpacked");
        }
        result
    }

    /// Removes least recently used droplets not in use until the blobs fit the limit.
    fn evict(&self) {
        let blobs = self.root.join("blobs");
        let mut found: Vec<(SystemTime, u64, String)> = std::fs::read_dir(&blobs)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let sha = name.strip_suffix(".tgz")?.to_string();
                let meta = e.metadata().ok()?;
                Some((meta.modified().ok()?, meta.len(), sha))
            })
            .collect();
        found.sort();
        let mut total: u64 = found.iter().map(|f| f.1).sum();
        let state = self.state();
        for (_, size, sha) in found {
            if total <= self.limit_bytes {
                break;
            }
            if state.in_use.contains_key(&sha) {
                continue;
            }
            let _ = std::fs::remove_file(blobs.join(format!("{sha}.tgz")));
            let _ = std::fs::remove_dir_all(self.root.join("layers").join(&sha));
            info!(sha256 = %sha, "droplet.evicted");
            total = total.saturating_sub(size);
        }
    }
}

/// Unpacks the droplet `blob` under `tmp/home/vcap` (files owned by vcap), then moves `tmp`
/// to `layer`.
fn unpack_into(blob: &Path, tmp: &Path, layer: &Path) -> Result<(), DropletError> {
    use std::os::unix::fs::PermissionsExt;
    let home = tmp.join("home");
    let vcap = home.join("vcap");
    std::fs::create_dir_all(&vcap).map_err(DropletError::io("create", &vcap))?;
    for dir in [tmp, &home, &vcap] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
            .map_err(DropletError::io("chmod", dir))?;
    }
    std::os::unix::fs::chown(&vcap, Some(VCAP_ID), Some(VCAP_ID))
        .map_err(DropletError::io("chown", &vcap))?;
    let file = std::fs::File::open(blob).map_err(DropletError::io("open", blob))?;
    let options = kiln_rootfs::archive::ExtractOptions {
        owner: Some((VCAP_ID, VCAP_ID)),
        // Droplets hold links such as `node_modules -> /home/vcap/deps/0/node_modules`; they
        // resolve inside the container (and inside the layer while unpacking).
        allow_absolute_and_dot_prefix: true,
        ..Default::default()
    };
    let gz = flate2::read::GzDecoder::new(std::io::BufReader::new(file));
    kiln_rootfs::archive::extract_in_root(tmp, Path::new(kiln_droplet::HOME), gz, &options)
        .map_err(|e| DropletError::Unpack(e.to_string()))?;
    std::fs::rename(tmp, layer).map_err(DropletError::io("store", layer))
}

/// `url` without credentials or query, for messages.
fn shown_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_password(None);
            let _ = u.set_username("");
            u.set_query(None);
            u.to_string()
        }
        Err(_) => url.chars().take(200).collect(),
    }
}
