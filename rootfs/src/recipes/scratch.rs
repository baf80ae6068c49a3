//! Scratch directories for recipes: created next to their output, removed when dropped (also
//! on an error or a panic), and removed safely even if a chroot build inside left a filesystem
//! mounted there: every mount below the directory is detached first, and the removal never
//! descends into another filesystem, so a leftover bind mount of the host's `/dev` or `/proc`
//! can never make it delete host files.
//!
//! A process killed outright leaves its scratch directory behind; [`remove_stale`] removes
//! those whose process is gone (their names end in `<pid>-<n>`).

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A directory removed (with everything below it) when dropped.
#[derive(Debug)]
pub(crate) struct Scratch {
    path: PathBuf,
}

impl Scratch {
    /// Creates `<parent>/<prefix><pid>-<n>`, mode 0755 (`parent` must exist).
    pub(crate) fn create(parent: &Path, prefix: &str) -> io::Result<Self> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = parent.join(format!("{prefix}{}-{n}", std::process::id()));
        fs::DirBuilder::new().mode(0o755).create(&path)?;
        Ok(Self { path })
    }

    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = remove_scratch(&self.path) {
            tracing::warn!(dir = %self.path.display(), "could not remove scratch directory: {e}");
        }
    }
}

/// Detaches every mount at or below `path`, then removes `path` and everything below it
/// without crossing into another filesystem. A missing `path` is not an error.
pub(crate) fn remove_scratch(path: &Path) -> io::Result<()> {
    if fs::symlink_metadata(path).is_err() {
        return Ok(());
    }
    unmount_below(path);
    remove_tree(path)
}

/// Removes the scratch directories `<parent>/<prefix><pid>-<n>` whose process is gone.
pub(crate) fn remove_stale(parent: &Path, prefix: &str) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(prefix)) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or_default();
        let alive = pid.parse::<u32>().is_ok_and(|p| {
            p == std::process::id() || Path::new("/proc").join(p.to_string()).exists()
        });
        if !alive {
            let path = entry.path();
            tracing::info!(dir = %path.display(), "removing a stale scratch directory");
            if let Err(e) = remove_scratch(&path) {
                tracing::warn!(dir = %path.display(), "could not remove stale scratch directory: {e}");
            }
        }
    }
}

/// Removes the children of the directory `dir` for which `remove` is true (all of them with
/// `|_| true`), each with [`remove_tree`]. A missing `dir` is not an error.
pub(crate) fn remove_children(dir: &Path, remove: impl Fn(&str) -> bool) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        if remove(&entry.file_name().to_string_lossy()) {
            remove_tree(&entry.path())?;
        }
    }
    Ok(())
}

/// Removes `path` (not following symlinks) and, for a directory, everything below it that
/// is on the same filesystem; a directory on another filesystem (a mount point) is an error
/// rather than a reason to descend. Keeps going after a failure and returns the first one.
pub(crate) fn remove_tree(path: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    if meta.is_dir() {
        remove_dir_on(path, meta.dev())
    } else {
        fs::remove_file(path)
    }
}

fn remove_dir_on(dir: &Path, dev: u64) -> io::Result<()> {
    let mut first_err = None;
    for entry in fs::read_dir(dir)? {
        let result = entry.and_then(|entry| {
            let path = entry.path();
            let meta = fs::symlink_metadata(&path)?;
            if !meta.is_dir() {
                fs::remove_file(&path)
            } else if meta.dev() != dev {
                Err(io::Error::other(format!(
                    "{} is another filesystem (still mounted?); not descending",
                    path.display()
                )))
            } else {
                remove_dir_on(&path, dev)
            }
        });
        if let Err(e) = result {
            first_err.get_or_insert(e);
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    fs::remove_dir(dir)
}

/// Detaches (`MNT_DETACH`) every mount point at or below `path`, deepest first, as listed in
/// `/proc/self/mountinfo`. Failures are logged: the removal that follows refuses to cross
/// whatever is still mounted.
fn unmount_below(path: &Path) {
    let base = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let Ok(mountinfo) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_mountinfo(field)))
        .filter(|p| p.starts_with(&base))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    points.dedup();
    for point in points {
        let Ok(c_path) = CString::new(point.as_os_str().as_bytes()) else {
            continue;
        };
        // SAFETY: `c_path` is a valid NUL-terminated string that outlives the call; umount2
        // does not retain the pointer.
        let rc = unsafe { libc::umount2(c_path.as_ptr(), libc::MNT_DETACH) };
        if rc == 0 {
            tracing::warn!(mount = %point.display(), "detached a mount left in a scratch directory");
        } else {
            let e = io::Error::last_os_error();
            tracing::warn!(mount = %point.display(), "could not detach a mount: {e}");
        }
    }
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\134` for a backslash, ...).
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal {
            Some(d) => {
                let value = d.iter().fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
                out.push(u8::try_from(value).unwrap_or(b'?'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mountinfo(r"/a\040b/c\134d"), r"/a b/c\d");
        assert_eq!(unescape_mountinfo(r"/plain"), "/plain");
        assert_eq!(unescape_mountinfo(r"/trailing\04"), r"/trailing\04");
    }

    #[test]
    fn scratch_is_removed_on_drop_with_odd_contents() {
        let parent = tempfile::tempdir().expect("tempdir");
        let path = {
            let scratch = Scratch::create(parent.path(), ".t-").expect("create");
            let p = scratch.path().to_path_buf();
            fs::create_dir_all(p.join("a/b")).expect("mkdir");
            fs::write(p.join("a/b/f"), b"x").expect("write");
            std::os::unix::fs::symlink("/etc", p.join("etc-link")).expect("symlink");
            std::os::unix::fs::symlink("a", p.join("a-link")).expect("symlink");
            p
        };
        assert!(!path.exists());
        assert!(Path::new("/etc/passwd").exists(), "symlink not followed");
    }

    #[test]
    fn stale_scratch_of_a_dead_process_is_removed_and_live_ones_kept() {
        let parent = tempfile::tempdir().expect("tempdir");
        // pid_max is at most 2^22, so this pid cannot be running.
        let dead = parent.path().join(".t-99999999-0");
        let live = parent.path().join(format!(".t-{}-7", std::process::id()));
        for d in [&dead, &live] {
            fs::create_dir_all(d.join("x")).expect("mkdir");
        }
        remove_stale(parent.path(), ".t-");
        assert!(!dead.exists());
        assert!(live.exists());
    }
}
