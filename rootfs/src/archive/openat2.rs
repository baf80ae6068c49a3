//! Thin wrappers over the `*at` system calls the safe extractor and archiver use.
//!
//! Every path lookup that crosses more than one component goes through [`open_in_root`], which
//! calls `openat2(2)` with `RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS`: the kernel treats the given
//! directory fd as `/` for the whole walk (absolute symlinks and `..` are clamped to it), so a
//! hostile tree cannot send a lookup to the host, even by racing renames. The other wrappers
//! take a directory fd plus ONE path component and never follow a symlink in that component.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

/// How many times an `openat2` that failed with `EAGAIN` (the kernel saw a concurrent rename or
/// mount during a scoped walk) is retried before giving up.
const EAGAIN_RETRIES: usize = 32;

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in path"))
}

/// Turns a `-1` return into the thread's `errno`.
fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Opens a host directory as an `O_PATH` fd to use as the root of scoped lookups.
pub(crate) fn open_dir_path(dir: &Path) -> io::Result<OwnedFd> {
    let c = cstring(dir.as_os_str().as_bytes())?;
    let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    let fd = check(unsafe { libc::open(c.as_ptr(), flags) })?;
    // SAFETY: `fd` was just returned by open(2), so it is a valid fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens `path` below `root` as if `root` were `/` (`RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS`).
/// A leading `/` in `path` is ignored; an empty path means `root` itself. `O_CLOEXEC` is added.
pub(crate) fn open_in_root(
    root: BorrowedFd<'_>,
    path: &Path,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> io::Result<OwnedFd> {
    let bytes = path.as_os_str().as_bytes();
    let trimmed: &[u8] = match bytes.iter().position(|b| *b != b'/') {
        Some(start) => &bytes[start..],
        None => b".",
    };
    let c = cstring(trimmed)?;
    // SAFETY: open_how is a plain C struct of integers; all-zero is a valid value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.mode = if flags & (libc::O_CREAT | libc::O_TMPFILE) != 0 {
        u64::from(mode)
    } else {
        0
    };
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    let mut retries = 0;
    loop {
        // SAFETY: the fd is borrowed for the call, `c` is NUL-terminated and `how` is a fully
        // initialised open_how whose size we pass, as openat2(2) requires.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                root.as_raw_fd(),
                c.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if ret >= 0 {
            let fd = libc::c_int::try_from(ret)
                .map_err(|_| io::Error::other("openat2 returned an out-of-range fd"))?;
            // SAFETY: openat2 returned a fresh fd that nothing else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) if retries < EAGAIN_RETRIES => retries += 1,
            _ => return Err(err),
        }
    }
}

/// `openat(dir, name, flags | O_NOFOLLOW | O_CLOEXEC, mode)` for a single component.
pub(crate) fn open_child(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> io::Result<OwnedFd> {
    let c = cstring(name.as_bytes())?;
    let flags = flags | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: valid fd and NUL-terminated name; the mode argument is read only with O_CREAT.
    let fd = check(unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), flags, mode) })?;
    // SAFETY: openat returned a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Re-opens an `O_PATH` fd with real access `flags` through `/proc/self/fd`, reaching exactly
/// the same inode without another path walk.
pub(crate) fn reopen(fd: BorrowedFd<'_>, flags: libc::c_int) -> io::Result<OwnedFd> {
    let proc_path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let c = cstring(proc_path.as_bytes())?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    let new = check(unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC) })?;
    // SAFETY: open returned a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`; `Ok(None)` when the name does not exist.
pub(crate) fn lstat_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Option<libc::stat>> {
    let c = cstring(name.as_bytes())?;
    // SAFETY: stat is a plain C struct of integers; all-zero is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd, NUL-terminated name and a writable stat buffer for the kernel to fill.
    let ret = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            c.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    match check(ret) {
        Ok(_) => Ok(Some(st)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `fstat(fd)`.
pub(crate) fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    // SAFETY: stat is a plain C struct of integers; all-zero is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd and a writable stat buffer for the kernel to fill.
    check(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    Ok(st)
}

/// `mkdirat(dir, name, mode)`.
pub(crate) fn mkdir_at(dir: BorrowedFd<'_>, name: &OsStr, mode: libc::mode_t) -> io::Result<()> {
    let c = cstring(name.as_bytes())?;
    // SAFETY: valid fd and NUL-terminated name.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), mode) }).map(drop)
}

/// `symlinkat(target, dir, name)`.
pub(crate) fn symlink_at(target: &[u8], dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let t = cstring(target)?;
    let c = cstring(name.as_bytes())?;
    // SAFETY: valid fd and two NUL-terminated strings.
    check(unsafe { libc::symlinkat(t.as_ptr(), dir.as_raw_fd(), c.as_ptr()) }).map(drop)
}

/// `linkat(old_dir, old_name, new_dir, new_name, 0)`: a symlink at `old_name` is linked itself,
/// never followed.
pub(crate) fn link_at(
    old_dir: BorrowedFd<'_>,
    old_name: &OsStr,
    new_dir: BorrowedFd<'_>,
    new_name: &OsStr,
) -> io::Result<()> {
    let o = cstring(old_name.as_bytes())?;
    let n = cstring(new_name.as_bytes())?;
    // SAFETY: valid fds and NUL-terminated names.
    let ret = unsafe {
        libc::linkat(
            old_dir.as_raw_fd(),
            o.as_ptr(),
            new_dir.as_raw_fd(),
            n.as_ptr(),
            0,
        )
    };
    check(ret).map(drop)
}

/// `unlinkat(dir, name, flags)`; pass `libc::AT_REMOVEDIR` for an empty directory.
pub(crate) fn unlink_at(dir: BorrowedFd<'_>, name: &OsStr, flags: libc::c_int) -> io::Result<()> {
    let c = cstring(name.as_bytes())?;
    // SAFETY: valid fd and NUL-terminated name.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), flags) }).map(drop)
}

/// `fchownat(dir, name, uid, gid, AT_SYMLINK_NOFOLLOW)`: changes a symlink itself.
pub(crate) fn lchown_at(dir: BorrowedFd<'_>, name: &OsStr, uid: u32, gid: u32) -> io::Result<()> {
    let c = cstring(name.as_bytes())?;
    let flags = libc::AT_SYMLINK_NOFOLLOW;
    // SAFETY: valid fd and NUL-terminated name.
    check(unsafe { libc::fchownat(dir.as_raw_fd(), c.as_ptr(), uid, gid, flags) }).map(drop)
}

/// `readlinkat(dir, name)`.
pub(crate) fn read_link_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Vec<u8>> {
    let c = cstring(name.as_bytes())?;
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: valid fd, NUL-terminated name, and `buf` is writable for `buf.len()` bytes.
    let n = unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            c.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
    if n >= buf.len() {
        return Err(io::Error::other("symlink target longer than PATH_MAX"));
    }
    buf.truncate(n);
    Ok(buf)
}

/// The names in a directory (without `.` and `..`), sorted for determinism. Reads through a
/// fresh open file description of `dir` so the caller's fd offset is untouched.
pub(crate) fn read_dir_names(dir: BorrowedFd<'_>) -> io::Result<Vec<OsString>> {
    let own = open_child(dir, OsStr::new("."), libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
    let raw = own.into_raw_fd();
    // SAFETY: `raw` is an fd we own; on success fdopendir takes it over (closedir closes it).
    let dirp = unsafe { libc::fdopendir(raw) };
    if dirp.is_null() {
        let err = io::Error::last_os_error();
        // SAFETY: fdopendir failed, so we still own `raw` and must close it ourselves.
        drop(unsafe { OwnedFd::from_raw_fd(raw) });
        return Err(err);
    }
    let mut names = Vec::new();
    let result = loop {
        // SAFETY: errno is thread-local; clearing it lets us tell end-of-directory from failure.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: `dirp` is a valid DIR* until the closedir below.
        let ent = unsafe { libc::readdir(dirp) };
        if ent.is_null() {
            let err = io::Error::last_os_error();
            break match err.raw_os_error() {
                Some(0) | None => Ok(()),
                Some(_) => Err(err),
            };
        }
        // SAFETY: readdir returned a valid dirent whose d_name is NUL-terminated and stays valid
        // until the next readdir on `dirp`; we copy it out right away.
        let name = unsafe { std::ffi::CStr::from_ptr((*ent).d_name.as_ptr()) };
        let bytes = name.to_bytes();
        if bytes != b"." && bytes != b".." {
            names.push(OsString::from_vec(bytes.to_vec()));
        }
    };
    // SAFETY: `dirp` is valid and closed exactly once; this also closes `raw`.
    unsafe { libc::closedir(dirp) };
    result?;
    names.sort();
    Ok(names)
}

/// Removes `name` in `dir` and, for a directory, everything below it, never following a
/// symlink. A missing name is not an error.
pub(crate) fn remove_all_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let Some(st) = lstat_at(dir, name)? else {
        return Ok(());
    };
    if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
        return unlink_at(dir, name, 0);
    }
    let child = open_child(dir, name, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
    for entry in read_dir_names(child.as_fd())? {
        remove_all_at(child.as_fd(), &entry)?;
    }
    drop(child);
    unlink_at(dir, name, libc::AT_REMOVEDIR)
}
