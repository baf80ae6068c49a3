//! What a container wrote, as an image layer: its overlay upper dir (the writable layer in its
//! btrfs subvolume, `<data>/store/<handle>/upper`, see [`crate::volume`]) copied out in two
//! forms, with the host-shifted uids and gids mapped back to the container's own:
//!
//! - the *overlay* form, for stacking under later containers as one of
//!   [`crate::ContainerSpec::layers`]: deletions stay overlayfs whiteouts (character devices
//!   0/0) and opaque directories keep `trusted.overlay.opaque=y`, so that overlayfs hides what
//!   the container deleted;
//! - the *OCI* form, ready to be archived as an image layer (`kiln_rootfs::layout::
//!   write_tree_layer`): a whiteout becomes an empty file `.wh.<name>` and an opaque directory
//!   gets an empty `.wh..wh..opq` inside. Regular files are hard links to the overlay form's,
//!   so the second form costs no file data.
//!
//! Left out: what the backend itself put in the container's root (`/.kiln-init`'s mount point,
//! `/etc/hosts`, `/etc/hostname`), and directories that were only copied up (no exported child,
//! not opaque, and the same owner and mode as in the layers below). Device nodes, fifos and
//! sockets are skipped; extended attributes other than the opaque mark are not kept. A copy-up
//! that overlayfs stored as metadata only (`metacopy`) or a renamed directory (`redirect_dir`)
//! is refused: the backend mounts overlays without those features.
//!
//! The container should be stopped first ([`Backend::stop`]): the walk reads the upper dir by
//! host paths and never follows a symlink, but a process still writing would make a torn copy.

use std::collections::HashMap;
use std::ffi::{CString, OsString};
use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::Backend;
use crate::bundle::IdRange;
use crate::error::{Error, Result};

/// Paths (relative to the root) the backend writes into every container, never exported.
pub const RUNTIME_FILES: &[&str] = &[".kiln-init", "etc/hosts", "etc/hostname"];

/// The OCI name of a whiteout for `name`.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// The OCI marker of an opaque directory.
pub const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";
/// overlayfs's xattr marking an opaque directory (mounted by the host, so `trusted.`).
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
/// overlayfs xattrs this export cannot honour.
const REFUSED_XATTRS: &[&str] = &["trusted.overlay.redirect", "trusted.overlay.metacopy"];

/// What [`Backend::export_changes`] (or [`convert_changes`]) wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangesSummary {
    /// Regular files (hard links counted once).
    pub files: u64,
    /// Directories.
    pub dirs: u64,
    /// Symlinks.
    pub symlinks: u64,
    /// Further names of a file already exported.
    pub hardlinks: u64,
    /// Deleted paths.
    pub whiteouts: u64,
    /// Directories whose lower content is hidden.
    pub opaque_dirs: u64,
    /// Device nodes, fifos and sockets left out.
    pub skipped: u64,
    /// Bytes of file content.
    pub bytes: u64,
    /// Entries whose owner was outside the container's id range (exported as owned by 0).
    pub foreign_owners: u64,
}

impl ChangesSummary {
    /// Whether the container changed nothing.
    pub fn is_empty(&self) -> bool {
        self.files + self.dirs + self.symlinks + self.hardlinks + self.whiteouts == 0
    }
}

impl Backend {
    /// Copies what the container `handle` wrote to its root filesystem into `overlay_dir` and
    /// `oci_dir` (both created; they must not exist yet, and must be on one filesystem), owned
    /// by container ids: see the [module docs](self). The container must still exist (its
    /// overlay mounted), and should be stopped.
    pub async fn export_changes(
        &self,
        handle: &str,
        overlay_dir: &Path,
        oci_dir: &Path,
    ) -> Result<ChangesSummary> {
        let record = self.inner.record(handle)?;
        let paths = self.inner.volume_paths(&record);
        // The subvolume layout of `VolumeStore::create`: `<data>/store/<handle>/{upper,work}`.
        let upper = self
            .inner
            .config
            .data_dir
            .join("store")
            .join(handle)
            .join("upper");
        // Lower layers top first, as overlayfs stacks them; their idmapped views show the same
        // shifted owners as the upper dir.
        let mut lowers: Vec<PathBuf> = paths
            .layers
            .iter()
            .rev()
            .map(|(_, at)| at.clone())
            .collect();
        lowers.push(paths.lower.clone());
        let ids = record.ids;
        let overlay_dir = overlay_dir.to_path_buf();
        let oci_dir = oci_dir.to_path_buf();
        tokio::task::spawn_blocking(move || {
            convert_changes(&upper, &lowers, ids, &overlay_dir, &oci_dir)
                .map_err(|e| Error::io("export the changes of the container", &upper, e))
        })
        .await?
    }
}

/// The conversion behind [`Backend::export_changes`]: `upper` (an overlayfs upper dir whose
/// owners are shifted by `ids`) over `lowers` (top first, shifted the same way) into
/// `overlay_out` and `oci_out`, neither of which may exist yet.
pub fn convert_changes(
    upper: &Path,
    lowers: &[PathBuf],
    ids: IdRange,
    overlay_out: &Path,
    oci_out: &Path,
) -> io::Result<ChangesSummary> {
    if !fs::symlink_metadata(upper)?.is_dir() {
        return Err(io::Error::other(format!(
            "{} is not a directory",
            upper.display()
        )));
    }
    fs::create_dir(overlay_out)?;
    fs::create_dir(oci_out)?;
    let mut export = Export {
        upper,
        lowers,
        ids,
        overlay_out,
        oci_out,
        links: HashMap::new(),
        summary: ChangesSummary::default(),
    };
    export.dir(Path::new(""))?;
    // The root directory itself: the container's root, as overlayfs shows it.
    let meta = fs::symlink_metadata(upper)?;
    for out in [overlay_out, oci_out] {
        std::os::unix::fs::lchown(out, Some(0), Some(0))?;
        fs::set_permissions(out, meta.permissions())?;
    }
    Ok(export.summary)
}

struct Export<'a> {
    upper: &'a Path,
    lowers: &'a [PathBuf],
    ids: IdRange,
    overlay_out: &'a Path,
    oci_out: &'a Path,
    /// (dev, ino) of upper files with several names -> the first name exported.
    links: HashMap<(u64, u64), PathBuf>,
    summary: ChangesSummary,
}

impl Export<'_> {
    /// Exports the children of directory `rel`; returns whether any was exported.
    fn dir(&mut self, rel: &Path) -> io::Result<bool> {
        let mut names: Vec<OsString> = fs::read_dir(self.upper.join(rel))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()?;
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        let mut any = false;
        for name in names {
            let child = rel.join(&name);
            if RUNTIME_FILES.iter().any(|f| Path::new(f) == child) {
                continue;
            }
            any |= self.entry(&child, &name)?;
        }
        Ok(any)
    }

    /// Exports one entry; returns whether anything was written for it.
    fn entry(&mut self, rel: &Path, name: &OsString) -> io::Result<bool> {
        let src = self.upper.join(rel);
        let meta = fs::symlink_metadata(&src)?;
        let kind = meta.file_type();
        let overlay = self.overlay_out.join(rel);
        let oci = self.oci_out.join(rel);
        if kind.is_char_device() && meta.rdev() == 0 {
            mknod_whiteout(&overlay)?;
            let mut wh = OsString::from(WHITEOUT_PREFIX);
            wh.push(name);
            let oci = oci.with_file_name(wh);
            File::create(&oci)?;
            for path in [&overlay, &oci] {
                std::os::unix::fs::lchown(path, Some(0), Some(0))?;
                set_mtime(path, &meta)?;
            }
            fs::set_permissions(&oci, fs::Permissions::from_mode(0o644))?;
            self.summary.whiteouts += 1;
            return Ok(true);
        }
        let (uid, gid) = self.unshift(&meta);
        for xattr in REFUSED_XATTRS {
            if get_xattr(&src, xattr)?.is_some() {
                return Err(io::Error::other(format!(
                    "{}: overlayfs stored it with {xattr}, which this export cannot read",
                    rel.display()
                )));
            }
        }
        if kind.is_dir() {
            let opaque = get_xattr(&src, OPAQUE_XATTR)?.is_some_and(|v| v == b"y");
            fs::create_dir(&overlay)?;
            fs::create_dir(&oci)?;
            let children = self.dir(rel)?;
            if !opaque && !children && self.same_below(rel, &meta)? {
                fs::remove_dir(&overlay)?;
                fs::remove_dir(&oci)?;
                return Ok(false);
            }
            if opaque {
                set_xattr(&overlay, OPAQUE_XATTR, b"y")?;
                let marker = oci.join(OPAQUE_WHITEOUT);
                File::create(&marker)?;
                std::os::unix::fs::lchown(&marker, Some(0), Some(0))?;
                fs::set_permissions(&marker, fs::Permissions::from_mode(0o644))?;
                set_mtime(&marker, &meta)?;
                self.summary.opaque_dirs += 1;
            }
            for path in [&overlay, &oci] {
                std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
                fs::set_permissions(path, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
                set_mtime(path, &meta)?;
            }
            self.summary.dirs += 1;
            return Ok(true);
        }
        if kind.is_symlink() {
            let target = fs::read_link(&src)?;
            for path in [&overlay, &oci] {
                std::os::unix::fs::symlink(&target, path)?;
                std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
                set_mtime(path, &meta)?;
            }
            self.summary.symlinks += 1;
            return Ok(true);
        }
        if kind.is_file() {
            if meta.nlink() > 1 {
                let key = (meta.dev(), meta.ino());
                if let Some(first) = self.links.get(&key) {
                    fs::hard_link(self.overlay_out.join(first), &overlay)?;
                    fs::hard_link(self.overlay_out.join(first), &oci)?;
                    self.summary.hardlinks += 1;
                    return Ok(true);
                }
                self.links.insert(key, rel.to_path_buf());
            }
            let mut from = fs::File::options()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&src)?;
            let mut to = fs::File::options()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&overlay)?;
            let bytes = io::copy(&mut from, &mut to)?;
            drop(to);
            std::os::unix::fs::lchown(&overlay, Some(uid), Some(gid))?;
            // After the chown, which clears set-id bits.
            fs::set_permissions(&overlay, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
            set_mtime(&overlay, &meta)?;
            fs::hard_link(&overlay, &oci)?;
            self.summary.files += 1;
            self.summary.bytes += bytes;
            return Ok(true);
        }
        tracing::debug!(path = %rel.display(), "not exporting a device node, fifo or socket");
        self.summary.skipped += 1;
        Ok(false)
    }

    /// The container ids of an upper entry's owner.
    fn unshift(&mut self, meta: &fs::Metadata) -> (u32, u32) {
        let range = self.ids.host_base..self.ids.host_base.saturating_add(self.ids.size);
        if range.contains(&meta.uid()) && range.contains(&meta.gid()) {
            (
                meta.uid() - self.ids.host_base,
                meta.gid() - self.ids.host_base,
            )
        } else {
            self.summary.foreign_owners += 1;
            (0, 0)
        }
    }

    /// Whether directory `rel` exists in the lower layers with the owner and mode of `meta`
    /// (so that exporting it, with nothing in it, would change nothing).
    fn same_below(&self, rel: &Path, meta: &fs::Metadata) -> io::Result<bool> {
        let Some(below) = lookup_below(self.lowers, rel)? else {
            return Ok(false);
        };
        Ok(below.is_dir()
            && below.uid() == meta.uid()
            && below.gid() == meta.gid()
            && below.mode() == meta.mode())
    }
}

/// `rel` as the stack of `lowers` (top first) shows it, without following any symlink: `None`
/// when it is absent, deleted by a whiteout, or hidden under a non-directory.
fn lookup_below(lowers: &[PathBuf], rel: &Path) -> io::Result<Option<fs::Metadata>> {
    let components: Vec<_> = rel.components().collect();
    for lower in lowers {
        let mut path = lower.clone();
        let mut opaque = false;
        for (i, component) in components.iter().enumerate() {
            path.push(component);
            let meta = match fs::symlink_metadata(&path) {
                Ok(meta) => meta,
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => return Ok(None),
                Err(e) => return Err(e),
            };
            if meta.file_type().is_char_device() && meta.rdev() == 0 {
                return Ok(None);
            }
            if i + 1 == components.len() {
                return Ok(Some(meta));
            }
            if !meta.is_dir() {
                return Ok(None);
            }
            opaque |= get_xattr(&path, OPAQUE_XATTR)?.is_some_and(|v| v == b"y");
        }
        if opaque {
            return Ok(None);
        }
    }
    Ok(None)
}

fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

/// An overlayfs whiteout at `path`: a character device 0/0.
fn mknod_whiteout(path: &Path) -> io::Result<()> {
    let c = cstring(path)?;
    // SAFETY: a valid NUL-terminated path; the result is checked.
    if unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR, libc::makedev(0, 0)) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The value of xattr `name` of `path` (not following a symlink), `None` if it has none.
fn get_xattr(path: &Path, name: &str) -> io::Result<Option<Vec<u8>>> {
    let c = cstring(path)?;
    let n = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut buf = vec![0u8; 256];
    // SAFETY: valid NUL-terminated strings and a buffer of the length passed.
    let len = unsafe {
        libc::lgetxattr(
            c.as_ptr(),
            n.as_ptr(),
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
        )
    };
    if len < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENODATA) | Some(libc::ENOTSUP) => Ok(None),
            // Longer than any overlayfs mark this export reads: present, value unknown.
            Some(libc::ERANGE) => Ok(Some(Vec::new())),
            _ => Err(e),
        };
    }
    buf.truncate(len as usize);
    Ok(Some(buf))
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let c = cstring(path)?;
    let n = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: valid NUL-terminated strings and a value of the length passed.
    let rc = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr() as *const libc::c_void,
            value.len(),
            0,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Gives `path` (not following a symlink) the modification time of `meta`.
fn set_mtime(path: &Path, meta: &fs::Metadata) -> io::Result<()> {
    let c = cstring(path)?;
    let times = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: meta.mtime(),
            tv_nsec: meta.mtime_nsec(),
        },
    ];
    // SAFETY: a valid NUL-terminated path and an array of two timespecs.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDS: IdRange = IdRange {
        host_base: 500_000,
        size: 65536,
    };

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    fn chown(path: &Path, id: u32) {
        std::os::unix::fs::lchown(path, Some(id), Some(id)).expect("chown");
    }

    /// An upper dir as overlayfs leaves it: a new file owned by shifted root, a file of
    /// shifted uid 2000, a whiteout, an opaque dir, a copied-up parent, a runtime file.
    fn upper_and_lower(tmp: &Path) -> (PathBuf, PathBuf) {
        let lower = tmp.join("lower");
        fs::create_dir_all(lower.join("etc")).unwrap();
        fs::create_dir_all(lower.join("srv/old")).unwrap();
        fs::write(lower.join("etc/gone"), b"x").unwrap();
        let upper = tmp.join("upper");
        fs::create_dir_all(upper.join("etc")).unwrap();
        fs::create_dir_all(upper.join("srv")).unwrap();
        fs::create_dir_all(upper.join("data")).unwrap();
        fs::write(upper.join("owned-by-root"), b"root").unwrap();
        fs::write(upper.join("data/app"), b"app").unwrap();
        fs::write(upper.join("etc/hosts"), b"127.0.0.1 localhost").unwrap();
        fs::write(upper.join(".kiln-init"), b"").unwrap();
        mknod_whiteout(&upper.join("etc/gone")).unwrap();
        set_xattr(&upper.join("srv"), OPAQUE_XATTR, b"y").unwrap();
        std::os::unix::fs::symlink("/data/app", upper.join("link")).unwrap();
        fs::hard_link(upper.join("data/app"), upper.join("data/app2")).unwrap();
        for p in [
            upper.clone(),
            upper.join("etc"),
            upper.join("srv"),
            upper.join("owned-by-root"),
            upper.join("link"),
            upper.join("etc/hosts"),
            lower.join("etc"),
        ] {
            chown(&p, IDS.host_base);
        }
        for p in [upper.join("data"), upper.join("data/app")] {
            chown(&p, IDS.host_base + 2000);
        }
        fs::set_permissions(upper.join("data/app"), fs::Permissions::from_mode(0o4755)).unwrap();
        (upper, lower)
    }

    #[test]
    fn whiteouts_opaque_dirs_and_owners_are_converted() {
        if !is_root() {
            eprintln!("skipped: needs root (mknod, trusted xattrs, chown)");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let (upper, lower) = upper_and_lower(tmp.path());
        let overlay = tmp.path().join("overlay");
        let oci = tmp.path().join("oci");
        let summary = convert_changes(&upper, &[lower], IDS, &overlay, &oci).unwrap();
        assert_eq!(summary.whiteouts, 1);
        assert_eq!(summary.opaque_dirs, 1);
        assert_eq!(summary.hardlinks, 1);
        assert_eq!(summary.foreign_owners, 0);

        // Overlay form: the whiteout and the opaque mark as overlayfs wants them.
        let wh = fs::symlink_metadata(overlay.join("etc/gone")).unwrap();
        assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
        assert_eq!(
            get_xattr(&overlay.join("srv"), OPAQUE_XATTR).unwrap(),
            Some(b"y".to_vec())
        );
        assert!(!overlay.join("srv/.wh..wh..opq").exists());

        // OCI form: `.wh.` files.
        let wh = fs::symlink_metadata(oci.join("etc/.wh.gone")).unwrap();
        assert!(wh.is_file() && wh.len() == 0);
        assert!(oci.join("srv/.wh..wh..opq").is_file());
        assert!(!oci.join("etc/gone").exists());
        assert_eq!(get_xattr(&oci.join("srv"), OPAQUE_XATTR).unwrap(), None);

        // Owners back in container ids; set-id bits kept; symlinks kept as symlinks.
        for form in [&overlay, &oci] {
            let m = fs::symlink_metadata(form.join("owned-by-root")).unwrap();
            assert_eq!((m.uid(), m.gid()), (0, 0));
            let m = fs::symlink_metadata(form.join("data/app")).unwrap();
            assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (2000, 2000, 0o4755));
            assert_eq!(
                fs::read_link(form.join("link")).unwrap(),
                Path::new("/data/app")
            );
            assert_eq!(
                fs::symlink_metadata(form.join("data/app2")).unwrap().ino(),
                m.ino()
            );
            // The backend's own files are not part of the changes.
            assert!(!form.join("etc/hosts").exists());
            assert!(!form.join(".kiln-init").exists());
        }
    }

    #[test]
    fn a_copied_up_directory_left_empty_is_pruned_a_changed_one_kept() {
        if !is_root() {
            eprintln!("skipped: needs root (chown)");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let lower = tmp.path().join("lower");
        let upper = tmp.path().join("upper");
        for d in [&lower, &upper] {
            fs::create_dir_all(d.join("etc")).unwrap();
            fs::create_dir_all(d.join("opt")).unwrap();
            chown(&d.join("etc"), IDS.host_base);
            chown(&d.join("opt"), IDS.host_base);
        }
        // Only /etc/hosts was written in etc (by the backend); opt changed its mode.
        fs::write(upper.join("etc/hosts"), b"").unwrap();
        fs::set_permissions(upper.join("opt"), fs::Permissions::from_mode(0o700)).unwrap();
        fs::set_permissions(lower.join("opt"), fs::Permissions::from_mode(0o755)).unwrap();
        let overlay = tmp.path().join("overlay");
        let oci = tmp.path().join("oci");
        let summary = convert_changes(&upper, &[lower], IDS, &overlay, &oci).unwrap();
        assert!(!overlay.join("etc").exists());
        assert!(overlay.join("opt").is_dir());
        assert_eq!(summary.dirs, 1);
    }

    #[test]
    fn lookups_below_stop_at_whiteouts_and_opaque_dirs() {
        if !is_root() {
            eprintln!("skipped: needs root (mknod, trusted xattrs)");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let top = tmp.path().join("top");
        let bottom = tmp.path().join("bottom");
        fs::create_dir_all(top.join("a")).unwrap();
        fs::create_dir_all(bottom.join("a/b")).unwrap();
        fs::create_dir_all(bottom.join("c")).unwrap();
        fs::create_dir_all(bottom.join("d")).unwrap();
        mknod_whiteout(&top.join("c")).unwrap();
        let lowers = [top.clone(), bottom];
        assert!(lookup_below(&lowers, Path::new("a/b")).unwrap().is_some());
        assert!(lookup_below(&lowers, Path::new("c")).unwrap().is_none());
        assert!(lookup_below(&lowers, Path::new("d")).unwrap().is_some());
        set_xattr(&top.join("a"), OPAQUE_XATTR, b"y").unwrap();
        assert!(lookup_below(&lowers, Path::new("a/b")).unwrap().is_none());
    }
}
