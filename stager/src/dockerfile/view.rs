//! A stage's tree as its image would show it, for the steps that look at it without a
//! container (`WORKDIR`, `COPY`'s destination and `--chown` names, `COPY --from`): a read-only
//! overlay of the stage's layers (overlay form, container ids) over the stack's tree, mounted
//! on the host in a scratch dir and unmounted when the view is dropped. A stage without layers
//! is the stack's tree itself. Paths are looked up inside it without following a symlink out of
//! it ([`View::resolve`]), and files are read with `kiln_rootfs::archive`'s in-root walk.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use super::error::DockerfileError;

/// How many symlinks a lookup follows before giving up (as the kernel's ELOOP).
const MAX_LINKS: usize = 40;

/// What a lookup through too many symlinks resolves to: a name with a NUL byte, which every
/// file operation refuses (so it reads as missing and cannot be created).
const LOOP: &str = "too many levels of symbolic links\0";

/// A mounted (or plain) view of a stage's tree.
#[derive(Debug)]
pub(crate) struct View {
    root: PathBuf,
    /// The mount point's scratch dir, when mounted.
    mount: Option<tempfile::TempDir>,
}

impl View {
    /// The tree of `base` with `layers` (bottom first) over it.
    pub fn open(base: &Path, layers: &[PathBuf], scratch: &Path) -> Result<View, DockerfileError> {
        if layers.is_empty() {
            return Ok(View {
                root: base.to_path_buf(),
                mount: None,
            });
        }
        let dir = tempfile::Builder::new()
            .prefix(&format!("view-{}-", std::process::id()))
            .tempdir_in(scratch)
            .map_err(DockerfileError::io("creating a directory in", scratch))?;
        let mut lower = String::new();
        for layer in layers.iter().rev() {
            lower.push_str(&layer.to_string_lossy());
            lower.push(':');
        }
        lower.push_str(&base.to_string_lossy());
        let options = format!("lowerdir={lower}");
        kiln_containers::mount_overlay(dir.path(), &options, true).map_err(DockerfileError::io(
            "mounting a read-only overlay at",
            dir.path(),
        ))?;
        Ok(View {
            root: dir.path().to_path_buf(),
            mount: Some(dir),
        })
    }

    /// A tree that needs no mount (the build context, a stack's tree).
    pub fn plain(root: &Path) -> View {
        View {
            root: root.to_path_buf(),
            mount: None,
        }
    }

    /// The root of the tree on the host.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `path` (absolute, in the image) with every symlink along it resolved inside the tree,
    /// as the container would see it: a path relative to the root. The last component is
    /// followed too when `follow_last`. Missing components are kept as written. A path that
    /// needs more than [`MAX_LINKS`] symlinks resolves to [`LOOP`], which no file operation
    /// accepts: a symlink is never left in the result, where the host would follow it.
    pub fn resolve(&self, path: &str, follow_last: bool) -> PathBuf {
        let mut todo: Vec<String> = components(path).into_iter().rev().collect();
        let mut out: Vec<String> = Vec::new();
        let mut links = 0;
        while let Some(c) = todo.pop() {
            if c == ".." {
                out.pop();
                continue;
            }
            out.push(c);
            let last = todo.is_empty();
            if last && !follow_last {
                break;
            }
            let host = self.root.join(out.join("/"));
            let Ok(meta) = std::fs::symlink_metadata(&host) else {
                continue;
            };
            if !meta.file_type().is_symlink() {
                continue;
            }
            if links >= MAX_LINKS {
                return PathBuf::from(LOOP);
            }
            links += 1;
            let Ok(target) = std::fs::read_link(&host) else {
                continue;
            };
            out.pop();
            let target = target.to_string_lossy().into_owned();
            if target.starts_with('/') {
                out.clear();
            }
            for t in components(&target).into_iter().rev() {
                todo.push(t);
            }
        }
        PathBuf::from(out.join("/"))
    }

    /// Metadata of `rel` (from [`View::resolve`]) in the tree, not following a last symlink.
    pub fn metadata(&self, rel: &Path) -> Option<std::fs::Metadata> {
        std::fs::symlink_metadata(self.root.join(rel)).ok()
    }

    /// The contents of file `path` of the image (`/etc/passwd`), if it is a regular file.
    pub fn read(&self, path: &str) -> Option<String> {
        let rel = self.resolve(path, true);
        let meta = self.metadata(&rel)?;
        if !meta.is_file() || meta.len() > 1 << 20 {
            return None;
        }
        std::fs::read_to_string(self.root.join(rel)).ok()
    }
}

impl Drop for View {
    fn drop(&mut self) {
        if let Some(dir) = &self.mount {
            if let Err(e) = unmount(dir.path()) {
                tracing::warn!(path = %dir.path().display(), error = %e, "unmounting a stage view");
            }
        }
    }
}

/// The normal components of `path` (`.` and empty ones dropped, `..` kept).
fn components(path: &str) -> Vec<String> {
    Path::new(path)
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect()
}

pub(crate) fn unmount(target: &Path) -> io::Result<()> {
    let target_c = CString::new(target.as_os_str().as_bytes())?;
    // SAFETY: a valid NUL-terminated path; the result is checked.
    if unsafe { libc::umount2(target_c.as_ptr(), 0) } == 0 {
        return Ok(());
    }
    // Busy (a walk still finishing): detach it; the kernel frees it when idle.
    // SAFETY: as above.
    if unsafe { libc::umount2(target_c.as_ptr(), libc::MNT_DETACH) } == 0 {
        return Ok(());
    }
    Err(io::Error::last_os_error())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_resolve_inside_the_tree_and_a_loop_never_leaves_one_in_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::os::unix::fs::symlink("/", root.join("up")).unwrap();
        std::os::unix::fs::symlink("../../etc", root.join("etc/parent")).unwrap();
        std::os::unix::fs::symlink(".", root.join("l")).unwrap();
        let view = View::plain(root);
        assert_eq!(
            view.resolve("/up/etc/passwd", true),
            PathBuf::from("etc/passwd")
        );
        assert_eq!(view.resolve("/etc/parent/x", true), PathBuf::from("etc/x"));
        // 41 links to get to `up`: the lookup gives up instead of returning `up/...`.
        let deep = format!("/{}up/etc/passwd", "l/".repeat(41));
        let resolved = view.resolve(&deep, true);
        assert_eq!(resolved, PathBuf::from(LOOP));
        assert!(view.metadata(&resolved).is_none());
        assert!(std::fs::create_dir_all(root.join(&resolved)).is_err());
    }
}
