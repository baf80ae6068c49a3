//! Root filesystems of containers: a shared, read-only stack layer under a writable layer of
//! their own whose size the kernel limits.
//!
//! The writable layers live in a btrfs filesystem on a loop-mounted file in the data dir (this
//! kernel has no ext4/XFS project quotas; btrfs qgroups work): one subvolume per container with
//! a qgroup limit, holding overlayfs's `upper` and `work` dirs. The stack is mounted idmapped
//! (see [`crate::idmap`]) as the overlay's lower layer, so one unshifted copy serves every
//! container whatever its uid range.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::bundle::IdRange;
use crate::idmap;

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("`{command}` failed: {stderr}; is btrfs-progs installed (deploy/setup)?")]
    Command { command: String, stderr: String },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> VolumeError + 'a {
    move |source| VolumeError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The btrfs store holding every container's writable layer.
#[derive(Debug, Clone)]
pub struct VolumeStore {
    image: PathBuf,
    mountpoint: PathBuf,
    size_bytes: u64,
}

/// Where a container's layers are mounted on the host.
#[derive(Debug, Clone)]
pub struct VolumePaths {
    /// The idmapped, read-only view of the stack.
    pub lower: PathBuf,
    /// Extra read-only layers above the stack, bottom first: (host directory, where its
    /// idmapped view is mounted).
    pub layers: Vec<(PathBuf, PathBuf)>,
    /// The merged root filesystem the container runs on.
    pub rootfs: PathBuf,
}

impl VolumeStore {
    /// Opens the store at `<data_dir>/store`, making and mounting it on first use.
    pub fn open(data_dir: &Path, size_bytes: u64) -> Result<Self, VolumeError> {
        let store = VolumeStore {
            image: data_dir.join("store.img"),
            mountpoint: data_dir.join("store"),
            size_bytes,
        };
        if is_mountpoint(&store.mountpoint) {
            return Ok(store);
        }
        std::fs::create_dir_all(&store.mountpoint)
            .map_err(io_err("create directory", &store.mountpoint))?;
        if !store.image.exists() {
            let file = std::fs::File::create(&store.image)
                .map_err(io_err("create store image", &store.image))?;
            file.set_len(size_bytes)
                .map_err(io_err("size store image", &store.image))?;
            run(Command::new("mkfs.btrfs").arg("-q").arg(&store.image))?;
        }
        run(Command::new("mount")
            .args(["-t", "btrfs", "-o", "loop,noatime"])
            .arg(&store.image)
            .arg(&store.mountpoint))?;
        run(Command::new("btrfs")
            .args(["quota", "enable"])
            .arg(&store.mountpoint))?;
        Ok(store)
    }

    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    fn subvolume(&self, handle: &str) -> PathBuf {
        self.mountpoint.join(handle)
    }

    /// Makes the root filesystem of a container: a subvolume limited to `disk_bytes`, the
    /// idmapped stack at `paths.lower`, and the overlay at `paths.rootfs`.
    pub fn create(
        &self,
        handle: &str,
        stack_rootfs: &Path,
        ids: IdRange,
        disk_bytes: u64,
        paths: &VolumePaths,
    ) -> Result<(), VolumeError> {
        let subvolume = self.subvolume(handle);
        btrfs::create_subvolume(&self.mountpoint, handle)
            .map_err(io_err("create btrfs subvolume", &subvolume))?;
        btrfs::limit_referenced(&subvolume, disk_bytes)
            .map_err(io_err("set the btrfs qgroup limit of", &subvolume))?;
        let upper = subvolume.join("upper");
        let work = subvolume.join("work");
        for dir in [&upper, &work, &paths.lower, &paths.rootfs]
            .into_iter()
            .chain(paths.layers.iter().map(|(_, at)| at))
        {
            std::fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
        }
        // The overlay's root directory takes its owner from the upper layer: container root.
        std::os::unix::fs::chown(&upper, Some(ids.host_base), Some(ids.host_base))
            .map_err(io_err("chown", &upper))?;
        idmap::mount_idmapped(stack_rootfs, &paths.lower, ids)
            .map_err(io_err("idmapped mount of the stack at", &paths.lower))?;
        // overlayfs lists lower layers top first.
        let mut lowerdirs = String::new();
        for (source, at) in paths.layers.iter().rev() {
            idmap::mount_idmapped(source, at, ids)
                .map_err(io_err("idmapped mount of a layer at", at))?;
            lowerdirs.push_str(&format!("{}:", at.display()));
        }
        let options = format!(
            "lowerdir={lowerdirs}{},upperdir={},workdir={}",
            paths.lower.display(),
            upper.display(),
            work.display()
        );
        mount_overlay(&paths.rootfs, &options, false)
            .map_err(io_err("mount overlay at", &paths.rootfs))
    }

    /// Undoes [`VolumeStore::create`], whatever part of it was done. Safe to call twice.
    pub fn destroy(&self, handle: &str, paths: &VolumePaths) -> Result<(), VolumeError> {
        let layers = paths.layers.iter().map(|(_, at)| at);
        for mountpoint in [&paths.rootfs]
            .into_iter()
            .chain(layers)
            .chain([&paths.lower])
        {
            unmount(mountpoint).map_err(io_err("unmount", mountpoint))?;
        }
        let subvolume = self.subvolume(handle);
        if subvolume.exists() {
            let qgroup = qgroup_id(&subvolume);
            run(Command::new("btrfs")
                .args(["subvolume", "delete"])
                .arg(&subvolume))?;
            if let Some(id) = qgroup {
                // Forget the accounting group too; it can linger while the kernel cleans up.
                let _ = Command::new("btrfs")
                    .args(["qgroup", "destroy", &id])
                    .arg(&self.mountpoint)
                    .output();
            }
        }
        Ok(())
    }

    /// Bytes written by the container, as its qgroup counts them: read from sysfs
    /// (`/sys/fs/btrfs/<fsid>/qgroups/0_<id>/referenced`, as of the last transaction commit)
    /// with two ioctls and no process; through `btrfs qgroup show` where sysfs lacks it.
    pub fn disk_usage(&self, handle: &str) -> Result<u64, VolumeError> {
        if let Some(bytes) = self
            .disk_usage_file(handle)
            .and_then(|file| std::fs::read_to_string(file).ok())
            .and_then(|text| text.trim().parse().ok())
        {
            return Ok(bytes);
        }
        let subvolume = self.subvolume(handle);
        let Some(id) = qgroup_id(&subvolume) else {
            return Ok(0);
        };
        let out = run(Command::new("btrfs")
            .args(["qgroup", "show", "--raw", "--sync"])
            .arg(&self.mountpoint))?;
        Ok(out
            .lines()
            .filter_map(|line| {
                let mut cols = line.split_whitespace();
                (cols.next() == Some(id.as_str())).then(|| cols.next())?
            })
            .find_map(|referenced| referenced.parse().ok())
            .unwrap_or(0))
    }

    /// The sysfs file that shows the container's [`VolumeStore::disk_usage`]
    /// (`/sys/fs/btrfs/<fsid>/qgroups/0_<id>/referenced`), found with two ioctls; `None` where
    /// the kernel has none.
    pub fn disk_usage_file(&self, handle: &str) -> Option<PathBuf> {
        let (fsid, id) = btrfs::fsid_and_subvolume_id(&self.subvolume(handle)).ok()?;
        let file = Path::new("/sys/fs/btrfs")
            .join(fsid)
            .join("qgroups")
            .join(format!("0_{id}"))
            .join("referenced");
        file.exists().then_some(file)
    }

    /// Unmounts the store (the loop device goes with it). Containers must be gone first.
    pub fn unmount(&self) -> Result<(), VolumeError> {
        unmount(&self.mountpoint).map_err(io_err("unmount", &self.mountpoint))
    }
}

/// The two btrfs ioctls on the path of every create (a `btrfs` process each would cost more
/// than the rest of the volume's set-up).
mod btrfs {
    use std::ffi::CString;
    use std::fs::File;
    use std::io;
    use std::os::fd::AsRawFd;
    use std::path::Path;

    /// `_IOW(0x94, 14, struct btrfs_ioctl_vol_args)`
    const IOC_SUBVOL_CREATE: libc::c_ulong = 0x5000_940e;
    /// `_IOR(0x94, 43, struct btrfs_ioctl_qgroup_limit_args)`
    const IOC_QGROUP_LIMIT: libc::c_ulong = 0x8030_942b;
    /// `_IOWR(0x94, 18, struct btrfs_ioctl_ino_lookup_args)`
    const IOC_INO_LOOKUP: libc::c_ulong = 0xd000_9412;
    /// `_IOR(0x94, 31, struct btrfs_ioctl_fs_info_args)`
    const IOC_FS_INFO: libc::c_ulong = 0x8400_941f;
    /// The inode number of a subvolume's root directory.
    const FIRST_FREE_OBJECTID: u64 = 256;

    #[repr(C)]
    struct InoLookupArgs {
        treeid: u64,
        objectid: u64,
        name: [u8; 4080],
    }

    // The kernel copies exactly the size in the ioctl number: 4096 and 1024 bytes.
    const _: () = assert!(std::mem::size_of::<InoLookupArgs>() == 4096);
    const _: () = assert!(std::mem::size_of::<FsInfoArgs>() == 1024);

    #[repr(C)]
    struct FsInfoArgs {
        max_id: u64,
        num_devices: u64,
        fsid: [u8; 16],
        rest: [u8; 992],
    }

    /// The filesystem's fsid as sysfs names it (`/sys/fs/btrfs/<fsid>`) and the id of the
    /// subvolume at `path` (its qgroup is `0/<id>`).
    pub fn fsid_and_subvolume_id(path: &Path) -> io::Result<(String, u64)> {
        let dir = File::open(path)?;
        let mut lookup = InoLookupArgs {
            treeid: 0, // 0: the tree of the subvolume the fd is in
            objectid: FIRST_FREE_OBJECTID,
            name: [0; 4080],
        };
        // SAFETY: `lookup` is a btrfs_ioctl_ino_lookup_args (4096 bytes) laid out as the
        // kernel expects and lives across the call; the fd is open.
        if unsafe { libc::ioctl(dir.as_raw_fd(), IOC_INO_LOOKUP, &mut lookup) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut info = FsInfoArgs {
            max_id: 0,
            num_devices: 0,
            fsid: [0; 16],
            rest: [0; 992],
        };
        // SAFETY: `info` is a btrfs_ioctl_fs_info_args (1024 bytes) laid out as the kernel
        // expects and lives across the call; the fd is open.
        if unsafe { libc::ioctl(dir.as_raw_fd(), IOC_FS_INFO, &mut info) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let f = info.fsid;
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let fsid = format!(
            "{}-{}-{}-{}-{}",
            hex(&f[0..4]),
            hex(&f[4..6]),
            hex(&f[6..8]),
            hex(&f[8..10]),
            hex(&f[10..16])
        );
        Ok((fsid, lookup.treeid))
    }
    const QGROUP_LIMIT_MAX_RFER: u64 = 1;

    #[repr(C)]
    struct VolArgs {
        fd: i64,
        name: [u8; 4088],
    }

    #[repr(C)]
    struct QgroupLimitArgs {
        qgroupid: u64,
        flags: u64,
        max_rfer: u64,
        max_excl: u64,
        rsv_rfer: u64,
        rsv_excl: u64,
    }

    /// Creates subvolume `name` in the directory `parent`.
    pub fn create_subvolume(parent: &Path, name: &str) -> io::Result<()> {
        let dir = File::open(parent)?;
        let mut args = VolArgs {
            fd: 0,
            name: [0; 4088],
        };
        let bytes = CString::new(name)?.into_bytes();
        if bytes.len() >= args.name.len() || bytes.contains(&b'/') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "bad subvolume name",
            ));
        }
        args.name[..bytes.len()].copy_from_slice(&bytes);
        // SAFETY: `args` is a btrfs_ioctl_vol_args laid out as the kernel expects and lives
        // across the call; `dir` is an open directory.
        if unsafe { libc::ioctl(dir.as_raw_fd(), IOC_SUBVOL_CREATE, &args) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Limits the bytes the subvolume at `path` may reference (its own qgroup, `0/<id>`).
    pub fn limit_referenced(path: &Path, bytes: u64) -> io::Result<()> {
        let subvolume = File::open(path)?;
        let mut args = QgroupLimitArgs {
            qgroupid: 0, // 0: the qgroup of the subvolume the fd is in
            flags: QGROUP_LIMIT_MAX_RFER,
            max_rfer: bytes,
            max_excl: 0,
            rsv_rfer: 0,
            rsv_excl: 0,
        };
        // SAFETY: `args` is a btrfs_ioctl_qgroup_limit_args laid out as the kernel expects and
        // lives across the call; the fd is open.
        if unsafe { libc::ioctl(subvolume.as_raw_fd(), IOC_QGROUP_LIMIT, &mut args) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// The qgroup (`0/<subvolume id>`) of a subvolume.
fn qgroup_id(subvolume: &Path) -> Option<String> {
    let out = Command::new("btrfs")
        .args(["inspect-internal", "rootid"])
        .arg(subvolume)
        .output()
        .ok()?;
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !id.is_empty()).then(|| format!("0/{id}"))
}

/// Mounts an overlay at `target` (`options`: `lowerdir=…[,upperdir=…,workdir=…]`), nosuid and
/// nodev, read-only if asked; the stager's Dockerfile views use it too.
pub fn mount_overlay(target: &Path, options: &str, read_only: bool) -> io::Result<()> {
    let target_c = CString::new(target.as_os_str().as_bytes())?;
    let options_c = CString::new(options)?;
    let flags = libc::MS_NOSUID | libc::MS_NODEV | if read_only { libc::MS_RDONLY } else { 0 };
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            c"overlay".as_ptr(),
            target_c.as_ptr(),
            c"overlay".as_ptr(),
            flags,
            options_c.as_ptr() as *const libc::c_void,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Unmounts every mount stacked at `target`; nothing mounted there is fine.
pub(crate) fn unmount(target: &Path) -> io::Result<()> {
    let target_c = CString::new(target.as_os_str().as_bytes())?;
    while is_mountpoint(target) {
        // SAFETY: valid NUL-terminated path; the result is checked.
        if unsafe { libc::umount2(target_c.as_ptr(), 0) } != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EBUSY) {
                return Err(err);
            }
            // Still busy (a process is leaving): detach it; the kernel frees it when idle.
            // SAFETY: as above.
            if unsafe { libc::umount2(target_c.as_ptr(), libc::MNT_DETACH) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// Whether something is mounted exactly at `path`.
pub(crate) fn is_mountpoint(path: &Path) -> bool {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let wanted = path.to_string_lossy();
    mountinfo.lines().any(|line| {
        line.split(' ')
            .nth(4)
            .is_some_and(|mp| unescape_mountinfo(mp) == wanted)
    })
}

fn unescape_mountinfo(field: &str) -> String {
    field
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

fn run(cmd: &mut Command) -> Result<String, VolumeError> {
    let describe = format!("{cmd:?}").replace('"', "");
    let out = cmd.output().map_err(|e| VolumeError::Command {
        command: describe.clone(),
        stderr: e.to_string(),
    })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    } else {
        Err(VolumeError::Command {
            command: describe,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}
