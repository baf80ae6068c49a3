//! Idmapped mounts: one unshifted copy of a stack, seen by each container as owned by its own
//! host uid range.
//!
//! util-linux 2.38 ignores `X-mount.idmap`, so this uses the syscalls: a user namespace with
//! the container's mapping is made by a short-lived child, then `open_tree(OPEN_TREE_CLONE)`,
//! `mount_setattr(MOUNT_ATTR_IDMAP | MOUNT_ATTR_RDONLY)` and `move_mount` put a read-only,
//! shifted view of the stack at the target.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::bundle::IdRange;

const OPEN_TREE_CLONE: libc::c_uint = 1;
const OPEN_TREE_CLOEXEC: libc::c_uint = libc::O_CLOEXEC as libc::c_uint;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Mounts `source` read-only at `target` (an existing directory), shifted by `ids`: a file
/// owned by uid N on disk appears owned by host uid `ids.host_base + N`.
pub fn mount_idmapped(source: &Path, target: &Path, ids: IdRange) -> io::Result<()> {
    let userns = user_namespace(ids)?;
    let source_c = cstring(source)?;
    let target_c = cstring(target)?;
    // SAFETY: plain syscall with a valid NUL-terminated path; the result is checked.
    let tree = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            source_c.as_ptr(),
            OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC,
        )
    };
    if tree < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `tree` is a fresh fd returned by open_tree that nothing else owns.
    let tree = unsafe { OwnedFd::from_raw_fd(tree as i32) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP | MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    let empty = c"";
    // SAFETY: `attr` is a properly laid out mount_attr that outlives the call, and its size is
    // passed; the fds are open.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: valid fds and NUL-terminated paths; the result is checked.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            target_c.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A user namespace mapping 0..size to `ids`, held by the returned fd.
///
/// A forked child unshares its user namespace and waits; the parent writes the maps, opens the
/// namespace, and kills the child. The child only makes async-signal-safe calls. It closes
/// every fd it inherited but its end of the pipe at once (they are the whole process's: pipes
/// whose readers wait for EOF, other backends' files), and dies with the thread that forked it,
/// so a backend killed meanwhile leaves no child behind.
fn user_namespace(ids: IdRange) -> io::Result<OwnedFd> {
    let mut ready = [0 as libc::c_int; 2];
    // SAFETY: `ready` has room for the two fds pipe2 writes.
    if unsafe { libc::pipe2(ready.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds were just created by pipe2 and are owned here only.
    let (ready_read, ready_write) =
        unsafe { (File::from_raw_fd(ready[0]), File::from_raw_fd(ready[1])) };
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    let keep = ready_write.as_raw_fd() as libc::c_uint;
    // SAFETY: after fork the child calls only async-signal-safe functions (close_range, prctl,
    // getppid, unshare, write, pause, _exit) and never returns into Rust code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: async-signal-safe syscalls only, ending in _exit or an endless pause.
        unsafe {
            // Failures (an old kernel without close_range) only leave the copies open.
            if keep > 0 {
                libc::syscall(libc::SYS_close_range, 0, keep - 1, 0);
            }
            libc::syscall(libc::SYS_close_range, keep + 1, libc::c_uint::MAX, 0);
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 || libc::getppid() != parent
            {
                libc::_exit(1);
            }
            let ok: u8 = if libc::unshare(libc::CLONE_NEWUSER) == 0 {
                1
            } else {
                0
            };
            libc::write(
                ready_write.as_raw_fd(),
                &ok as *const u8 as *const libc::c_void,
                1,
            );
            if ok == 0 {
                libc::_exit(1);
            }
            loop {
                libc::pause();
            }
        }
    }
    drop(ready_write);
    let result = (|| {
        let mut ok = [0u8; 1];
        (&ready_read).read_exact(&mut ok)?;
        if ok[0] != 1 {
            return Err(io::Error::other(
                "unshare(CLONE_NEWUSER) failed in the helper child",
            ));
        }
        let map = format!("0 {} {}\n", ids.host_base, ids.size);
        File::options()
            .write(true)
            .open(format!("/proc/{pid}/uid_map"))?
            .write_all(map.as_bytes())?;
        File::options()
            .write(true)
            .open(format!("/proc/{pid}/gid_map"))?
            .write_all(map.as_bytes())?;
        let ns = File::open(format!("/proc/{pid}/ns/user"))?;
        Ok(OwnedFd::from(ns))
    })();
    // SAFETY: `pid` is our own child; kill and reap it whatever happened above.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
    result
}

fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}
