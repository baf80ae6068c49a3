//! The machine's cache of built stack layouts, outside any checkout, so an expensive recipe
//! (`bookworm`: minutes of debootstrap) is built once per machine and recipe version.
//!
//! ```text
//! <root>/<name>-<version>/        a complete OCI image layout (appears only by rename)
//! <root>/<name>.lock              flock'ed exclusively while checking or building <name>
//! <root>/.build-<name>-<pid>-<n>/ a build in progress: layout/ and the recipe's scratch tree
//! ```
//!
//! `<root>` is `$KILN_STACK_CACHE` if set and not empty, else `/var/cache/kiln/stacks`.
//! Concurrent callers (threads, or processes such as parallel test binaries) serialise on the
//! lock: the first builds, the others wait and then find the layout. A build writes into its
//! `.build-*` directory, flushes the filesystem and renames `layout/` to `<name>-<version>`,
//! so a crashed or killed build never leaves a half layout under the final name; its
//! `.build-*` directory is removed by the next caller that takes the lock. Older versions'
//! directories are left alone (remove them by hand to reclaim space).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::scratch::{remove_scratch, Scratch};
use super::{build_with_progress, recipe_version, RecipeError, StackLayout};
use crate::layout::read_manifest_digest;

/// The environment variable naming the cache root.
pub const CACHE_ENV: &str = "KILN_STACK_CACHE";
/// The cache root when [`CACHE_ENV`] is unset or empty.
pub const DEFAULT_CACHE_ROOT: &str = "/var/cache/kiln/stacks";

/// The cache root: `$KILN_STACK_CACHE` if set and not empty, else [`DEFAULT_CACHE_ROOT`].
pub fn cache_root() -> PathBuf {
    std::env::var_os(CACHE_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CACHE_ROOT))
}

/// The layout of recipe `name` in the machine's cache ([`cache_root`]), built there first if
/// missing (progress logged at `info` level). Blocks while another thread or process builds
/// it. The returned layout is not re-verified here; [`crate::StackStore::import`] verifies
/// every blob anyway.
pub fn cached(name: &str) -> Result<StackLayout, RecipeError> {
    cached_in(&cache_root(), name, &mut |line| {
        tracing::info!(recipe = name, "{line}");
    })
}

/// Like [`cached`], with the cache at `root` (created if missing) and each line of progress
/// (including "waiting for another build") passed to `progress`.
pub fn cached_in(
    root: &Path,
    name: &str,
    progress: &mut dyn FnMut(&str),
) -> Result<StackLayout, RecipeError> {
    let version = recipe_version(name)?;
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RecipeError::Io { path, source }
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(root)
        .map_err(io_err(root))?;
    let dir = root.join(format!("{name}-{version}"));
    let lock_path = root.join(format!("{name}.lock"));
    let _lock = lock(&lock_path, progress).map_err(io_err(&lock_path))?;
    if dir.join("index.json").is_file() {
        let manifest_digest = read_manifest_digest(&dir, name)?;
        return Ok(StackLayout {
            dir,
            manifest_digest,
        });
    }

    // Holding the lock, nobody else builds `name` here: any `.build-<name>-*` is left over.
    let prefix = format!(".build-{name}-");
    if let Ok(entries) = fs::read_dir(root) {
        for entry in entries.filter_map(Result::ok) {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                let path = entry.path();
                progress(&format!(
                    "removing an interrupted build: {}",
                    path.display()
                ));
                remove_scratch(&path).map_err(io_err(&path))?;
            }
        }
    }
    if fs::symlink_metadata(&dir).is_ok() {
        // Only a rename ever creates it, so this is not ours: refuse rather than delete.
        return Err(RecipeError::Io {
            path: dir.clone(),
            source: io::Error::other("exists but holds no index.json; remove it by hand"),
        });
    }

    progress(&format!(
        "building `{name}` (recipe version {version}) into the cache {}",
        root.display()
    ));
    let started = Instant::now();
    let build = Scratch::create(root, &prefix).map_err(io_err(root))?;
    let out = build.path().join("layout");
    let built = build_with_progress(name, &out, progress)?;
    sync_filesystem(&out).map_err(io_err(&out))?;
    fs::rename(&out, &dir).map_err(io_err(&dir))?;
    File::open(root)
        .and_then(|d| d.sync_all())
        .map_err(io_err(root))?;
    drop(build);
    progress(&format!(
        "cached `{name}` in {:.1} s: {}",
        started.elapsed().as_secs_f64(),
        dir.display()
    ));
    Ok(StackLayout {
        dir,
        manifest_digest: built.manifest_digest,
    })
}

/// Opens (creating) `path` and takes an exclusive `flock` on it, telling `progress` if it has
/// to wait. The lock is released when the returned file is closed.
fn lock(path: &Path, progress: &mut dyn FnMut(&str)) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    if flock(&file, libc::LOCK_EX | libc::LOCK_NB).is_err() {
        progress(&format!(
            "waiting for another build to finish (lock {})",
            path.display()
        ));
        flock(&file, libc::LOCK_EX)?;
    }
    Ok(file)
}

fn flock(file: &File, op: libc::c_int) -> io::Result<()> {
    loop {
        // SAFETY: flock only takes the fd, which `file` keeps open for the whole call.
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Flushes the filesystem holding `path`, so the layout is on disk before it is renamed into
/// place.
fn sync_filesystem(path: &Path) -> io::Result<()> {
    let file = File::open(path)?;
    // SAFETY: syncfs only takes the fd, which `file` keeps open for the whole call.
    if unsafe { libc::syncfs(file.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
